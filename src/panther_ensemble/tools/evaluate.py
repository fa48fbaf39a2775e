"""PANTHER metrics as the organizers compute them, with DeepMind's `surface-distance` package.

Per subject: volumetric Dice, surface Dice at 5 mm, robust Hausdorff 95, MASD (mean of the two directed
average surface distances), tumor volumes in mm³. Aggregates: their means and the RMSE of tumor burden.
An empty (or all-ones) prediction scores Dice 0, surface Dice 0 and HD95 = MASD = the image diagonal in mm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from surface_distance import metrics as sd

from ..core.errors import PantherError
from ..core.log import log, warn
from ..engine.image import IMAGE_SUFFIXES, image_files, image_stem
from ..engine.spec import is_tumor_name

SURFACE_TOLERANCE_MM = 5.0
TUMOR_LABEL = 1


def tumor_metrics(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """Metrics of two boolean masks; `spacing` follows the array axes (z, y, x for SimpleITK arrays)."""
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    voxel_mm3 = float(np.prod(spacing))
    volumes = {"pred_volume_mm3": float(prediction.sum()) * voxel_mm3,
               "gt_volume_mm3": float(truth.sum()) * voxel_mm3}
    diagonal = float(np.linalg.norm(np.array(prediction.shape) * np.array(spacing)))
    if not truth.any() and not prediction.any():  # nothing to find and nothing found: full agreement
        return {"volumetric_dice": 1.0, "surface_dice": 1.0, "hausdorff95": 0.0, "masd": 0.0, **volumes}
    if not prediction.any() or prediction.all() or not truth.any():
        return {"volumetric_dice": 0.0, "surface_dice": 0.0, "hausdorff95": diagonal, "masd": diagonal,
                **volumes}
    distances = sd.compute_surface_distances(truth, prediction, spacing_mm=tuple(float(s) for s in spacing))
    gt_to_pred, pred_to_gt = sd.compute_average_surface_distance(distances)
    return {
        "volumetric_dice": float(sd.compute_dice_coefficient(truth, prediction)),
        "surface_dice": float(sd.compute_surface_dice_at_tolerance(distances, SURFACE_TOLERANCE_MM)),
        "hausdorff95": float(sd.compute_robust_hausdorff(distances, 95)),
        "masd": float((gt_to_pred + pred_to_gt) / 2),
        **volumes,
    }


def aggregate(per_subject: dict[str, dict]) -> dict:
    rows = list(per_subject.values())
    if not rows:
        raise ValueError("no subjects to aggregate")

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    burden_error = [r["pred_volume_mm3"] - r["gt_volume_mm3"] for r in rows]
    return {
        "mean_volumetric_dice": mean("volumetric_dice"),
        "mean_surface_dice": mean("surface_dice"),
        "mean_hausdorff95": mean("hausdorff95"),
        "mean_masd": mean("masd"),
        "tumor_burden_rmse": math.sqrt(float(np.mean(np.square(burden_error)))),
        "n_subjects": len(rows),
    }


def _read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError:
        raise PantherError(f"{path}: cannot be read as an image") from None


def evaluate_pair(prediction_file: Path, truth_file: Path, tumor_label: int = TUMOR_LABEL,
                  pred_label: int = TUMOR_LABEL) -> dict:
    """Metrics of one case: the prediction's `pred_label` (this product's masks: 1) against the ground truth's
    `tumor_label` (PANTHER's annotations: 2, beside the pancreas's 1)."""
    prediction, truth = _read(prediction_file), _read(truth_file)
    if prediction.GetSize() != truth.GetSize():
        raise PantherError(f"{prediction_file}: size {prediction.GetSize()} differs from the ground truth's "
                           f"{truth.GetSize()} ({truth_file})")
    if not np.allclose(prediction.GetSpacing(), truth.GetSpacing(), rtol=1e-4, atol=1e-5):
        raise PantherError(f"{prediction_file}: spacing {prediction.GetSpacing()} differs from the ground "
                           f"truth's {truth.GetSpacing()} ({truth_file})")
    spacing_zyx = tuple(reversed(truth.GetSpacing()))
    return tumor_metrics(sitk.GetArrayFromImage(prediction) == pred_label,
                         sitk.GetArrayFromImage(truth) == tumor_label, spacing_zyx)


def _by_case(folder: Path) -> dict[str, Path]:
    """Files keyed by case: a `_seg` suffix and nnU-Net's `_0000` channel suffix do not count. Two files of one case
    (case.mha beside case_0000.mha, say, a leftover of an older run) are refused: which one counted would be chance."""
    if not Path(folder).is_dir():
        raise PantherError(f"{folder}: folder does not exist")
    cases: dict[str, Path] = {}
    for path in image_files(Path(folder)):
        case = image_stem(path).removesuffix("_seg").removesuffix("_0000")
        if case in cases:
            raise PantherError(f"{folder}: {cases[case].name} and {path.name} are both case '{case}'; keep one of "
                               "them (a leftover of an older run?)")
        cases[case] = path
    return cases


def label_names(near: Path) -> tuple[dict[str, int], Path] | None:
    """The label names of a dataset.json in the folder `near` or its parent (nnU-Net's raw layout: labelsTr/ beside
    dataset.json), with the file; None where there is none (or it holds no labels)."""
    for folder in (Path(near), Path(near).parent):
        candidate = folder / "dataset.json"
        try:
            labels = json.loads(candidate.read_text()).get("labels")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(labels, dict) and all(isinstance(v, int) for v in labels.values()):
            return labels, candidate
    return None


def truth_tumor_label(given: int | None, truth_file: Path) -> int:
    """The ground truth's tumor label: `given` (--tumor-label) where it is; else the one named like a tumor in a
    dataset.json beside the truth (said in one line); else 1, with one warning line where the label map holds
    several foreground labels (PANTHER's annotations: the pancreas 1, the tumor 2)."""
    if given is not None:
        return given
    named = label_names(Path(truth_file).parent)
    if named is not None:
        labels, source = named
        tumors = [(name, value) for name, value in labels.items() if is_tumor_name(name)]
        if len(tumors) == 1:
            log(f"ground truth: tumor label {tumors[0][1]} ('{tumors[0][0]}', from {source})")
            return tumors[0][1]
    present = [int(v) for v in np.unique(sitk.GetArrayFromImage(_read(truth_file))) if v != 0]
    if len(present) > 1:
        warn(f"{truth_file}: the ground truth holds labels {', '.join(map(str, present))} and names none of them a "
             f"tumor; label {TUMOR_LABEL} is scored as the tumor (PANTHER's annotations: 2; --tumor-label chooses)")
    return TUMOR_LABEL


def evaluate_folders(pred_dir: Path, gt_dir: Path, tumor_label: int | None = None,
                     pred_label: int = TUMOR_LABEL) -> dict:
    """{'per_subject': {id: metrics}, 'aggregates': {...}, 'tumor_label': ...} over every ground truth with a
    prediction; files pair by case name (case.mha with case.nii.gz, case_seg.mha or nnU-Net's case_0000.nii.gz).
    The truth's tumor label: `tumor_label`, else truth_tumor_label's."""
    predictions, truths = _by_case(pred_dir), _by_case(gt_dir)
    missing = sorted(set(truths) - set(predictions))
    if missing:
        raise PantherError(f"{pred_dir}: no prediction for {len(missing)} ground truth case(s): "
                           f"{', '.join(missing[:5])}")
    if not truths:
        raise PantherError(f"{gt_dir}: no ground-truth masks ({', '.join(IMAGE_SUFFIXES)})")
    tumor_label = truth_tumor_label(tumor_label, next(iter(truths.values())))
    per_subject = {case: evaluate_pair(predictions[case], truths[case], tumor_label, pred_label) for case in truths}
    return {"per_subject": per_subject, "aggregates": aggregate(per_subject), "tumor_label": tumor_label}
