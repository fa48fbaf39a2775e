"""Image files with their geometry: read (validated, header first), list by case id, write masks atomically.

Arrays follow SimpleITK's order (z, y, x); spacing, origin and direction are SimpleITK's (x, y, z).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import PantherError, is_allocation_failure
from ..core.stop import partial_file

IMAGE_SUFFIXES = (".mha", ".nii.gz", ".nii", ".nrrd")
# a header's spacing outside these is no scan's (1e-9 mm shrank a model grid to 0 slices; metres for millimetres
# are caught by the memory check, which says why)
MIN_SPACING_MM, MAX_SPACING_MM = 1e-3, 1e4


@dataclass
class Image:
    """A 3-D scalar image: voxels as (z, y, x), in the file's integer type or as float32 (nnU-Net's preprocessing
    makes its float32 copy: holding a second one here would cost 4 bytes per voxel for the whole run), and the
    geometry nnU-Net needs to export."""

    path: Path
    array: np.ndarray | None  # None once released (pipeline: after the last preprocessing)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    non_finite: int = 0  # NaN/Inf voxels that were set to 0 on reading

    def __post_init__(self) -> None:
        self.shape: tuple[int, int, int] = tuple(self.array.shape)

    def release_voxels(self) -> None:
        """Drop the voxels (the geometry stays, for writing the mask): the rest of the run does not need them."""
        self.array = None

    def nnunet_input(self) -> tuple[np.ndarray, dict]:
        """(1, z, y, x) data and the properties dict exactly as nnU-Net's SimpleITKIO returns them."""
        if self.array is None:
            raise ValueError(f"{self.path}: the voxels were released")
        properties = {
            "sitk_stuff": {"spacing": self.spacing, "origin": self.origin, "direction": self.direction},
            "spacing": list(self.spacing)[::-1],
        }
        return self.array[None], properties


def image_stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def image_files_by_id(folder: Path, drop_suffix: str) -> dict[str, Path]:
    """Image files of a folder keyed by stem, `drop_suffix` (e.g. nnU-Net's "_0000", a "_seg") removed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PantherError(f"{folder}: folder does not exist")
    return {image_stem(p).removesuffix(drop_suffix): p for p in image_files(folder)}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))


@contextmanager
def itk_output_captured() -> Iterator[list[str]]:
    """While it holds, what ITK prints itself (MetaIO's complaints go to stdout, ITK's warnings to stderr, both from
    C++: `MetaImage: M_ReadElementsData: data not read completely` and its numbers on a truncated file) is caught,
    so that a failure is the caller's one line with ITK's words in it. Where the block succeeds, anything caught
    (another thread's lines, say) goes back out as it was."""
    said: list[str] = []
    with _output_lock, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        caught = {1: out, 2: err}
        saved = {fd: os.dup(fd) for fd in caught}
        failed = True
        try:
            for fd, file in caught.items():
                os.dup2(file.fileno(), fd)
            yield said
            failed = False
        finally:
            _flush_c_streams()
            for fd, file in caught.items():
                os.dup2(saved[fd], fd)
                os.close(saved[fd])
                file.seek(0)
                text = file.read()
                if failed:
                    said += [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
                elif text:
                    os.write(fd, text)


_output_lock = threading.RLock()  # one capture at a time (nested ones inside it): the descriptors are the process's


def _flush_c_streams() -> None:
    """C's (and, synchronised with them, C++'s) buffered output, out before the descriptors are put back."""
    with suppress(OSError, AttributeError):  # no C library to ask (not Linux): nothing buffered there is ours to lose
        ctypes.CDLL(None).fflush(None)


def _reason(error: RuntimeError, said: list[str], otherwise: str) -> str:
    """Why ITK could not read a file, in a few words: what it printed (its own lines), else its exception's last
    line (SimpleITK's errno text is stale where MetaIO printed the reason)."""
    if said:
        return "; ".join(said[:2])[:300]
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else otherwise


def _validated_reader(path: Path) -> sitk.ImageFileReader:
    """A reader whose header says: a readable 3-D scalar image. Errors name the file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with itk_output_captured() as said:
            reader.ReadImageInformation()
    except RuntimeError as e:
        raise PantherError(f"{path}: cannot be read as an image ({_reason(e, said, 'unreadable')})") from None
    if reader.GetDimension() != 3:
        raise PantherError(f"{path}: expected a 3-D image, got {reader.GetDimension()}-D")
    if reader.GetNumberOfComponents() != 1:
        raise PantherError(f"{path}: expected a scalar image, got {reader.GetNumberOfComponents()} "
                           "components per voxel")
    spacing = reader.GetSpacing()
    if not all(math.isfinite(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise PantherError(f"{path}: spacing {tuple(spacing)} mm is not a voxel size of a scan (each between "
                           f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm)")
    if min(reader.GetSize()) < 1:
        raise PantherError(f"{path}: size {reader.GetSize()} has an empty axis")
    return reader


@dataclass(frozen=True)
class Header:
    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    bytes_per_voxel: int  # as read_image holds the voxels
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def check_image(path: Path) -> Header:
    """Validate an input's header without reading its voxels (done for every file before heavy work)."""
    reader = _validated_reader(Path(path))
    return Header(tuple(reversed(reader.GetSize())), tuple(reversed(reader.GetSpacing())),
                  _INTEGER_PIXELS.get(reader.GetPixelID(), 4), reader.GetOrigin(), reader.GetDirection())


# integer images of up to 4 bytes are kept in their type (a float32 copy costs 4 bytes per voxel); every other one,
# 8-byte integers included, becomes float32 as nnU-Net's SimpleITKIO makes it (an int64 image kept as it is held 8
# bytes per voxel through preprocessing: 33.8 instead of 29.9 bytes per voxel at the peak, benchmarks/memory.py)
_INTEGER_PIXELS = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
                   sitk.sitkInt32: 4}


def read_image(path: Path) -> Image:
    """Read a 3-D scalar image; anything else is a clear error naming the file."""
    path = Path(path)
    reader = _validated_reader(path)
    try:
        with itk_output_captured() as said:
            image = reader.Execute()
    except RuntimeError as e:
        if is_allocation_failure(e):  # the process's memory limit (RLIMIT_DATA on GC), not a broken file
            raise
        raise PantherError(f"{path}: image data cannot be read ({_reason(e, said, 'truncated?')})") from None
    geometry = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    non_finite = 0
    if image.GetPixelID() in _INTEGER_PIXELS:
        array = sitk.GetArrayFromImage(image)
    else:
        # one float32 copy straight from SimpleITK's buffer (no full copy in the file's type first)
        array = np.array(sitk.GetArrayViewFromImage(image), dtype=np.float32)
        del image
        # NaN/Inf would poison the z-score normalization of the whole image: such voxels become 0 (outside the
        # body to nnU-Net's crop), and the caller warns.
        non_finite = int(array.size - np.count_nonzero(np.isfinite(array)))
        if non_finite:
            np.nan_to_num(array, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return Image(path, array, *geometry, non_finite)


def write_mask(mask: np.ndarray, like: Image, path: Path) -> None:
    """Write a uint8 (z, y, x) mask on the geometry of `like`, compressed; atomically (never half-written)."""
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {like.shape}")
    out = sitk.GetImageFromArray(mask.astype(np.uint8, copy=False))
    out.SetSpacing(like.spacing)
    out.SetOrigin(like.origin)
    out.SetDirection(like.direction)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PantherError(f"{path.parent}: cannot create the output folder ({e.strerror})") from None
    partial = path.with_name(f".{path.stem}.partial.mha")
    try:
        with partial_file(partial):  # removed should the run be stopped while it is written
            sitk.WriteImage(out, str(partial), useCompression=True)
            os.replace(partial, path)
    except (RuntimeError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise PantherError(f"{path}: cannot write the output ({str(e).strip().splitlines()[-1]})") from None
