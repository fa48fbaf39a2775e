"""Random-weight nnU-Net result folders and synthetic images, built once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from panther_ensemble.demo import synthetic as syn
from panther_ensemble.demo.synthetic import ALL_ROUNDER, BOUNDARY, T1_MEMBERS, VOLUME

# Preprocessing that differs in every other way nnU-Net allows: transposed axes, masked normalization,
# the all-data fold.
TRANSPOSED = syn.ModelConfig(dataset="Dataset903_Other", trainer="nnUNetTrainer", plans_name="nnUNetPlansT",
                             transpose_forward=(2, 0, 1), spacing=(1.1, 2.5, 1.1), patch_size=(24, 16, 24),
                             use_mask_for_norm=True, folds=("all",), seed=4)


@pytest.fixture(autouse=True, scope="session")
def _cache_of_this_session(tmp_path_factory) -> Iterator[None]:
    """Measurements kept per machine (app.here_cache) go to a folder of the session's, never the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@dataclass
class Workspace:
    root: Path
    weights: Path
    t1_spec: Path
    mixed_spec: Path


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("ensemble")
    weights = root / "weights"
    for config in (ALL_ROUNDER, VOLUME, BOUNDARY, TRANSPOSED):
        syn.make_model_folder(weights, config)
    t1 = syn.write_spec(root / "ensemble" / "task1.toml", T1_MEMBERS)
    mixed = syn.write_spec(root / "mixed.toml", [(TRANSPOSED, "all", "checkpoint_final.pth", 1.0),
                                                 (BOUNDARY, 0, "checkpoint_final.pth", 1.0),
                                                 (ALL_ROUNDER, 1, "checkpoint_final.pth", 2.0)])
    return Workspace(root, weights, t1, mixed)


def gc_input(root: Path, socket: str, images: dict[str, dict]) -> Path:
    return syn.write_gc_input(root / "input", socket, images)


def read_mask(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denominator = a.sum() + b.sum()
    return 1.0 if denominator == 0 else 2.0 * np.logical_and(a, b).sum() / denominator


def labelled_cases(root: Path, shapes: list[tuple[int, int, int]], spacing_xyz: tuple[float, ...]) -> Path:
    """Images (nnU-Net raw naming, case<i>_0000.mha) with label maps (case<i>.mha) whose 'tumor' (1) is the bright
    part of the body (2)."""
    for i, shape in enumerate(shapes):
        image = sitk.ReadImage(str(syn.make_image(root / "images" / f"case{i}_0000.mha", shape, spacing_xyz,
                                                  seed=40 + i)))
        array = sitk.GetArrayFromImage(image)
        label = sitk.GetImageFromArray(np.where(array > 330, 1, np.where(array > 0, 2, 0)).astype(np.uint8))
        label.CopyInformation(image)
        (root / "labels").mkdir(exist_ok=True)
        sitk.WriteImage(label, str(root / "labels" / f"case{i}.mha"))
    return root


def extract_tarball(tarball: Path, folder: Path) -> list[str]:
    """A model tarball's members extracted as GC's shim does; with the 'data' filter where this Python has it
    (3.11.4 and later: the image's Python is 3.11.2). Returns the members' names."""
    import tarfile

    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder)  # our own export; the caller checks the names
        return tar.getnames()
