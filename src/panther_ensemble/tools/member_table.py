"""The member table: every member alone and the ensemble on a labelled folder, PANTHER metrics per column.

It is what metric-aware member selection (the paper's "mix of experts") needs: one run predicts every member
(each preprocessing group once) and the ensemble from the same probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..app.predict_run import device_placement, host_needs
from ..core.errors import PantherError, naming_the_case
from ..core.log import StageTimer, log
from ..core.progress import Progress
from ..engine.ensemble import Ensemble, Placement
from ..engine.image import IMAGE_SUFFIXES, Image, check_image, image_files_by_id, read_image
from ..engine.input_grid import ProbabilitySum
from ..engine.members import Member
from ..engine.memory import check_host_memory
from ..engine.spec import EnsembleSpec, member_labels
from .evaluate import aggregate, tumor_metrics

ENSEMBLE = "ensemble"
POSTPROCESSED = "ensemble + post-processing"
COLUMNS = [("mean_volumetric_dice", "Dice", max), ("mean_surface_dice", "Surface Dice 5 mm", max),
           ("mean_hausdorff95", "HD95 mm", min), ("mean_masd", "MASD mm", min),
           ("tumor_burden_rmse", "Burden RMSE mm³", min)]


def labelled_cases(images_dir: Path, labels_dir: Path) -> list[tuple[str, Path, Path]]:
    images = image_files_by_id(images_dir, "_0000")  # nnU-Net's channel suffix
    labels = image_files_by_id(labels_dir, "_0000")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise PantherError(f"{labels_dir}: no label for {', '.join(missing[:5])}")
    if not images:
        raise PantherError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(case, images[case], labels[case]) for case in images]


def read_labelled_case(image_file: Path, label_file: Path, tumor_label: int) -> tuple[Image, np.ndarray]:
    """The image and its tumor truth (bool, the image's grid)."""
    image = read_image(image_file)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))) == tumor_label
    if truth.shape != image.shape:
        raise PantherError(f"{label_file}: shape {truth.shape} differs from the image's {image.shape}")
    return image, truth


def each_member_alone(ensemble: Ensemble, image: Image, timer: StageTimer) -> Iterator[tuple[Member, ProbabilitySum]]:
    """Each member's probabilities alone on the image's grid, through the product's own pipeline."""
    for member, logits, properties in ensemble.member_logits(image, timer):
        alone = ensemble.new_sum(image)
        alone.add(logits, member, properties, 1.0, ensemble.mode)
        yield member, alone


def load_for_cases(spec: EnsembleSpec, weights_root: Path, device: torch.device, timer: StageTimer,
                   cases: list[tuple[str, Path, Path]], backend: str = "torch") -> Ensemble:
    """The ensemble loaded under predict's memory plan (app.predict_run) for the largest of these cases: the device's
    placement, and every case's host memory checked before any network loads; one probability sum more than
    predict's (each member alone beside the ensemble's)."""
    headers = {image: check_image(image) for _, image, _ in cases}
    largest = max(headers.values(), key=lambda h: math.prod(h.shape_zyx))

    def placement(members: list[Member]) -> Placement:
        chosen = device_placement(members, device, largest.shape_zyx, largest.spacing_zyx)
        classes = members[0].label_manager.num_segmentation_heads
        for image, header in headers.items():
            check_host_memory(image, host_needs(members, header, "fast", device, chosen)
                              + math.prod(header.shape_zyx) * 4 * classes)
        return chosen

    return Ensemble.load(spec, weights_root, device, timer, backend=backend, placement=placement)


def compare_members(spec: EnsembleSpec, weights_root: Path, images_dir: Path, labels_dir: Path,
                    device: torch.device, backend: str = "torch") -> dict[str, dict]:
    """{row label: {'member': its path under the weights root, 'per_subject': ..., 'aggregates': ...}} for each
    member in spec order (engine.spec.member_labels: one row per member, each label unique), then {'per_subject',
    'aggregates'} for the ensemble (and with its post-processing)."""
    timer = StageTimer()
    cases = labelled_cases(images_dir, labels_dir)
    ensemble = load_for_cases(spec, weights_root, device, timer, cases, backend)
    labels = member_labels([m.id for m in spec.members])
    rows: dict[str, dict[str, dict]] = {labels[m.id]: {} for m in spec.members}
    rows[ENSEMBLE] = {}
    with Progress(len(cases), "evaluate") as progress:
        for case, image_file, label_file in cases:
            _compare_case(ensemble, spec, labels, rows, case, image_file, label_file, timer)
            progress.advance()
    log(timer.summary())
    members = {labels[m.id]: str(m.id) for m in spec.members}
    return {name: {**({"member": members[name]} if name in members else {}), "per_subject": per_subject,
                   "aggregates": aggregate(per_subject)} for name, per_subject in rows.items()}


def _compare_case(ensemble: Ensemble, spec: EnsembleSpec, labels: dict, rows: dict, case: str, image_file: Path,
                  label_file: Path, timer: StageTimer) -> None:
    """One labelled case's row in the member table: each member alone, the ensemble (and post-processed)."""
    with naming_the_case(image_file):
        image, truth = read_labelled_case(image_file, label_file, spec.tumor_label)
        spacing = tuple(reversed(image.spacing))
        total = ensemble.new_sum(image)
        for member, alone in each_member_alone(ensemble, image, timer):
            rows[labels[member.id]][case] = tumor_metrics(alone.mask(spec.tumor_label), truth, spacing)
            total.add_sum(alone, member.spec.weight)
        rows[ENSEMBLE][case] = tumor_metrics(total.mask(spec.tumor_label), truth, spacing)
        if ensemble.postprocessing is not None:
            rows.setdefault(POSTPROCESSED, {})[case] = tumor_metrics(
                ensemble.postprocessed_mask(total, image) > 0, truth, spacing)
    log(f"{case}: ensemble Dice {rows[ENSEMBLE][case]['volumetric_dice']:.3f}")


def format_table(result: dict[str, dict]) -> str:
    """A Markdown table, the best value of each column in bold."""
    best = {key: pick(r["aggregates"][key] for r in result.values()) for key, _, pick in COLUMNS}
    lines = ["| member | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, row in result.items():
        cells = []
        for key, _, _ in COLUMNS:
            value = row["aggregates"][key]
            text = f"{value:.0f}" if key == "tumor_burden_rmse" else f"{value:.3f}" if value < 10 else f"{value:.2f}"
            cells.append(f"**{text}**" if np.isclose(value, best[key]) else text)
        lines.append(f"| {f'**{name}**' if name in (ENSEMBLE, POSTPROCESSED) else name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
