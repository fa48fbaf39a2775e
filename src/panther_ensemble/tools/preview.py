"""A PNG montage of the slices through the tumor: the MRI with the predicted contour (and the ground truth's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import PantherError
from ..core.stop import written_atomically
from .evaluate import truth_tumor_label

PREDICTION_COLOUR, TRUTH_COLOUR = "#ff3b30", "#34c759"


def tumor_slices(masks: list[np.ndarray], count: int) -> list[int]:
    """Up to `count` axial slices spread over the extent of the masks' union (the middle slice if empty)."""
    union = np.zeros(masks[0].shape[0], bool)
    for mask in masks:
        union |= mask.reshape(mask.shape[0], -1).any(1)
    hits = np.flatnonzero(union)
    if hits.size == 0:
        return [masks[0].shape[0] // 2]
    if hits.size <= count:
        return hits.tolist()
    return sorted({int(hits[round(i)]) for i in np.linspace(0, hits.size - 1, count)})


def display_window(image: np.ndarray) -> tuple[float, float]:
    """0.5-99.5 percentile of the body (nonzero) voxels: arbitrary MRI scales render alike."""
    body = image[image != 0]
    if body.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(body, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _read_array(path: Path, like: sitk.Image | None = None) -> tuple[np.ndarray, sitk.Image]:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise PantherError(f"{path}: cannot be read as an image") from None
    if like is not None and image.GetSize() != like.GetSize():
        raise PantherError(f"{path}: size {image.GetSize()} differs from the image's {like.GetSize()}")
    return sitk.GetArrayFromImage(image), image


def write_preview(image_file: Path, mask_file: Path, out: Path, truth_file: Path | None = None,
                  tumor_label: int | None = None, pred_label: int = 1, max_slices: int = 12) -> Path:
    """The montage: the mask's `pred_label` (this product's masks: 1) in red, the ground truth's tumor label in green
    (`tumor_label`, else as evaluate finds it: tools.evaluate.truth_tumor_label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, reference = _read_array(image_file)
    prediction = _read_array(mask_file, reference)[0] == pred_label
    if truth_file is not None:
        truth = _read_array(truth_file, reference)[0] == truth_tumor_label(tumor_label, truth_file)
    else:
        truth = None
    slices = tumor_slices([m for m in (prediction, truth) if m is not None], max_slices)
    low, high = display_window(image)
    x_mm, y_mm = reference.GetSpacing()[:2]
    columns = min(4, len(slices))
    rows = -(-len(slices) // columns)
    panel_height = 3.2 * image.shape[1] * y_mm / (image.shape[2] * x_mm)
    # each row's height holds its panels' titles too, so a title never sits on the row above (constrained layout)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, rows * (panel_height + 0.35) + 0.5),
                                squeeze=False, layout="constrained")
    for axis in axes.ravel():
        axis.axis("off")
    for axis, z in zip(axes.ravel(), slices):
        axis.imshow(image[z], cmap="gray", vmin=low, vmax=high, aspect=y_mm / x_mm, interpolation="nearest")
        for mask, colour in ((truth, TRUTH_COLOUR), (prediction, PREDICTION_COLOUR)):
            if mask is not None and mask[z].any():
                axis.contour(mask[z], levels=[0.5], colors=colour, linewidths=1.2)
        axis.set_title(f"slice {z}", fontsize=8)
    legend = "red: prediction" + (", green: ground truth" if truth is not None else "")
    figure.suptitle(f"{Path(image_file).name}  ({legend})", fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(out) as partial:
        figure.savefig(partial, dpi=90, format="png")
    plt.close(figure)
    return out
