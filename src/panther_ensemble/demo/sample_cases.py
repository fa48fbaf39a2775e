"""The shipped sample cases (test/) and the held-out phantoms the demo ensemble is scored on."""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from .phantom import make_phantom
from .synthetic import gc_image_value


@dataclass(frozen=True)
class DemoCase:
    task: str
    flavour: str
    seed: int
    socket: str

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"panther-ensemble/{self.task}/{self.seed}"))


SAMPLE_CASES = (DemoCase("task1", "t1", 9101, "abdominal-t1-mri"), DemoCase("task2", "t2", 9207, "abdominal-t2-mri"))
# never used in training (seeds 1000-1039 t1, 2000-2047 t2), in choosing checkpoints (validation seeds 5100-5111 t1,
# 6100-6111 t2) or members (select: 5400-5411 t1, 6400-6435 t2); 5200-5223 and 6200-6223 scored earlier ensembles,
# 6500-6523 and 6600-6623 earlier Task 2 choices of select (weights/README.md)
HELD_OUT_SEEDS = {"t1": range(5500, 5524), "t2": range(6700, 6724)}


def write_sample_input(case: DemoCase, test_dir: Path) -> Path:
    """test/input/<task>/ in the GC layout: inputs.json and images/<socket>/<uuid>.mha."""
    input_dir = Path(test_dir) / "input" / case.task
    image_file = input_dir / "images" / case.socket / f"{case.uuid}.mha"
    image_file.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_phantom(case.seed, case.flavour).image, str(image_file), useCompression=True)
    (input_dir / "inputs.json").write_text(json.dumps([gc_image_value(case.socket, image_file.name)], indent=2) + "\n")
    return input_dir


def write_held_out(flavour: str, folder: Path) -> Path:
    """Held-out phantoms as images/<id>.mha and labels/<id>.mha, for the member table."""
    for sub in ("images", "labels"):  # the table scores every file there: none may be left from other seeds
        shutil.rmtree(Path(folder) / sub, ignore_errors=True)
    for seed in HELD_OUT_SEEDS[flavour]:
        phantom = make_phantom(seed, flavour)
        for sub, item in (("images", phantom.image), ("labels", phantom.label)):
            (Path(folder) / sub).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(item, str(Path(folder) / sub / f"{flavour}_{seed}.mha"), useCompression=True)
    return Path(folder)


def write_raw_dataset(folder: Path, prefix: str, seeds, labels: dict[str, int], label_map=None, resample=None,
                      flavour: str = "t1") -> None:
    """Phantoms as an nnU-Net raw dataset (imagesTr/<prefix>_<seed>_0000.nii.gz, labelsTr/<prefix>_<seed>.nii.gz,
    dataset.json); `label_map` turns a phantom's labels into the dataset's, `resample(image, interpolator)` changes
    its grid. Nothing is written where dataset.json exists."""
    if (folder / "dataset.json").exists():
        return
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        phantom = make_phantom(seed, flavour)
        image, label = phantom.image, label_map(phantom.label) if label_map else phantom.label
        if resample is not None:
            image, label = resample(image, sitk.sitkLinear), resample(label, sitk.sitkNearestNeighbor)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{prefix}_{seed}_0000.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{prefix}_{seed}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": flavour.upper()}, "labels": labels,
                                                     "numTraining": len(seeds), "file_ending": ".nii.gz"}, indent=2))

