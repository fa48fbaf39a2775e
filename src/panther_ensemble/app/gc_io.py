"""Grand Challenge's input and output layout: the input socket and its image files (inputs.json, else
images/<socket>/), where the mask goes, and whether it can be written there."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PantherError
from ..engine.image import IMAGE_SUFFIXES, Header, check_image, image_files, image_stem


@dataclass
class CaseInputs:
    """The image files of one input socket (None: a flat folder of images, nnU-Net's imagesTs, names none)."""

    socket: str | None
    files: list[Path]
    root: Path  # the input folder, symlinks resolved: each file must lead inside it (input_header)


def find_inputs(input_dir: Path) -> CaseInputs:
    """The image socket and its files, from inputs.json when present, else from images/<slug>/."""
    input_dir = Path(input_dir)
    if input_dir.is_file():
        raise PantherError(f"{input_dir}: is a file; the input is the folder that holds inputs.json or "
                           "images/<socket>/<name>.mha")
    if not input_dir.is_dir():
        raise PantherError(f"{input_dir}: input folder does not exist")
    inputs_json = input_dir / "inputs.json"
    root = input_dir.resolve()  # on GC, /input is itself a symlink to the task's download folder
    if inputs_json.exists():
        folders = _image_sockets_from_inputs_json(inputs_json, input_dir)
    else:
        images = input_dir / "images"
        folders = {p.name: p for p in sorted(images.iterdir()) if p.is_dir()} if images.is_dir() else {}
        if not folders and image_files(input_dir):  # nnU-Net's flat imagesTs: case_0000.nii.gz, ...
            return _flat_folder(input_dir, root)
    with_files = {slug: image_files(folder) for slug, folder in folders.items()
                  if inside(root, folder, input_dir) and folder.is_dir()}
    with_files = {slug: files for slug, files in with_files.items() if files}
    if not with_files:
        raise PantherError(
            f"{input_dir}: no input image found (expected inputs.json or images/<socket>/<name>.mha "
            f"with one of {', '.join(IMAGE_SUFFIXES)})"
        )
    if len(with_files) > 1:
        raise PantherError(f"{input_dir}: images for several input sockets at once ({', '.join(with_files)}); "
                           "expected exactly one")
    (socket, files), = with_files.items()
    check_distinct_outputs(files)
    return CaseInputs(socket, files, root)


def _flat_folder(input_dir: Path, root: Path) -> CaseInputs:
    """A folder of images as nnU-Net lays out imagesTs: one channel per case (_0000); the spec names the socket."""
    files = [f for f in image_files(input_dir) if inside(root, f, input_dir)]
    channels = [f for f in files if re.search(r"_(?!0000)\d{4}$", image_stem(f))]
    if channels:
        raise PantherError(f"{channels[0]}: a second channel of an nnU-Net case (_0001 and up); the ensemble's "
                           "members take one image (_0000) per case")
    check_distinct_outputs(files)
    return CaseInputs(None, files, root)


def inside(root: Path, path: Path, named: Path) -> bool:
    """True where `path` resolves (symlinks followed) to a place inside `root`; else refused: an input never reads
    outside its folder."""
    if not path.resolve().is_relative_to(root):
        raise PantherError(f"{path}: leads outside the input folder {named} (to {path.resolve()}); inputs are read "
                           "only from inside it")
    return True


def input_header(file: Path, root: Path) -> Header:
    """One input's header, checked: inside the input folder, a readable 3-D scalar image of a scan's geometry."""
    inside(root, file, root)
    return check_image(file)


def case_name(input_file: Path) -> str:
    """The case a file is: its name without the image suffix and without nnU-Net's channel suffix `_0000`
    (case_0000.nii.gz is case), which is also its mask's name."""
    return image_stem(input_file).removesuffix("_0000")


def check_distinct_outputs(files: list[Path]) -> None:
    """Two inputs that would write one mask (case.mha and case.nii.gz, or case_0000.nii.gz) are refused before any
    work: one would overwrite the other."""
    seen: dict[str, Path] = {}
    for file in files:
        name = case_name(file)
        if name in seen:
            raise PantherError(f"{file}: would write the same mask, {name}.mha, as {seen[name].name}; keep one")
        seen[name] = file


def _image_sockets_from_inputs_json(inputs_json: Path, input_dir: Path) -> dict[str, Path]:
    try:
        entries = json.loads(inputs_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PantherError(f"{inputs_json}: not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise PantherError(f"{inputs_json}: expected a JSON list of socket values, got {type(entries).__name__}")
    folders: dict[str, Path] = {}
    for i, entry in enumerate(entries):
        # GC writes each value's socket under "socket" and, for algorithms made before that name, again under
        # "interface" (its ComponentInterfaceValueSerializer); either alone is read
        socket = _socket_of(entry)
        if socket is None:
            raise PantherError(f"{inputs_json}: entry {i} has no socket.slug (nor interface.slug)")
        for key in ("super_kind", "relative_path"):
            if not isinstance(socket.get(key, ""), str | None):
                raise PantherError(f"{inputs_json}: entry {i}'s socket {key} must be a string, got "
                                   f"{socket[key]!r}")
        if (socket.get("super_kind") or "Image") != "Image":
            continue
        relative = socket.get("relative_path") or f"images/{socket['slug']}"
        folders[socket["slug"]] = input_dir / relative
    return folders


def _socket_of(entry: object) -> dict | None:
    if not isinstance(entry, dict):
        return None
    for key in ("socket", "interface"):
        socket = entry.get(key)
        if isinstance(socket, dict) and isinstance(socket.get("slug"), str):
            return socket
    return None


def output_path(output_dir: Path, socket: str, input_file: Path) -> Path:
    return Path(output_dir) / "images" / socket / f"{case_name(input_file)}.mha"


def check_writable(folder: Path) -> None:
    """Create the output folder and prove a file can be written there, before any heavy work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as e:
        raise PantherError(f"{folder}: output folder is not writable ({e.strerror})") from None
