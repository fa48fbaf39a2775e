"""Post-processing of the ensemble's label map, the spec's `[postprocessing]`: what averaging cannot remove.

Steps, each optional, in this order, on the tumor label: keep the largest component; keep components of at least
`min_volume_mm3`; keep only components touching (a voxel shared or 26-neighbouring) or within `near_organ_mm` of
(voxel centre to voxel centre) the predicted organ (`organ_label`, the pancreas: its largest component); and, when
no tumor voxel is left (or none was found), **never empty**: the connected region around the maximum tumor
probability above `never_empty_floor` (near the organ first, with the organ step) is written instead — PANTHER
scores an empty mask as the worst case there is. Or nnU-Net's own `postprocessing.pkl` (`nnunet`, from a model
folder's crossval results), applied as nnunetv2's apply_postprocessing applies it, its pickle read without running
code.

Components are 26-connected (nnU-Net's choice for its largest-component step), found on the tumor's bounding box
(grown by the organ distance) and the organ's, never on the whole image: a 512 x 512 x 200 case costs their boxes.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core.errors import PantherError

CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connected, as nnU-Net's remove_all_but_largest_component
NNUNET_FUNCTION = ("nnunetv2.postprocessing.remove_connected_components",
                   "remove_all_but_largest_component_from_segmentation")
KEYS = {"keep_largest", "min_volume_mm3", "organ_label", "near_organ_mm", "never_empty_floor", "nnunet"}


@dataclass(frozen=True)
class PostProcessing:
    keep_largest: bool = False
    min_volume_mm3: float | None = None
    organ_label: int | None = None
    near_organ_mm: float | None = None  # needs organ_label; 0: touching
    never_empty_floor: float | None = None
    nnunet: str | None = None  # a postprocessing.pkl under the weights root, instead of the steps

    def __str__(self) -> str:
        if self.nnunet:
            return f"nnU-Net's {self.nnunet}"
        steps = (["largest component"] if self.keep_largest else []) + \
            ([f"components >= {self.min_volume_mm3:g} mm3"] if self.min_volume_mm3 else []) + \
            ([f"within {self.near_organ_mm:g} mm of label {self.organ_label}"] if self.near_organ_mm is not None
             else []) + ([f"never empty (floor {self.never_empty_floor:g})"] if self.never_empty_floor else [])
        return ", ".join(steps) or "none"

    @property
    def active(self) -> bool:
        return str(self) != "none"

    @property
    def kind(self) -> str:
        """What it costs like (engine.deadline's final stage): nnunet (its function labels the whole image per step),
        steps, or none."""
        return "nnunet" if self.nnunet else "steps" if self.active else "none"


def parse(path: Path, table: object, tumor_label: int) -> PostProcessing | None:
    """The spec's [postprocessing] table, checked on its own (the organ label against the members' labels later:
    check_labels)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise PantherError(f"{path}: [postprocessing] must be a table")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise PantherError(f"{path}: unknown key '{unknown[0]}' in [postprocessing] (known: {', '.join(sorted(KEYS))})")

    def number(key: str, low: float, high: float, what: str) -> float | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise PantherError(f"{path}: '{key}' in [postprocessing] must be {what}, got {value!r}")
        return float(value)

    keep_largest = table.get("keep_largest", False)
    if not isinstance(keep_largest, bool):
        raise PantherError(f"{path}: 'keep_largest' in [postprocessing] must be true or false, got {keep_largest!r}")
    floor = table.get("never_empty_floor")
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 < floor < 1):
        raise PantherError(f"{path}: 'never_empty_floor' in [postprocessing] must be a probability in (0, 1), got "
                           f"{floor!r}")
    organ = table.get("organ_label")
    if organ is not None and (isinstance(organ, bool) or not isinstance(organ, int) or organ in (0, tumor_label)):
        raise PantherError(f"{path}: 'organ_label' in [postprocessing] must be the organ's label (not 0, not the "
                           f"tumor's {tumor_label}), got {organ!r}")
    near = number("near_organ_mm", 0, math.inf, "a finite distance in mm, 0 or more")
    if near is not None and organ is None:
        raise PantherError(f"{path}: 'near_organ_mm' in [postprocessing] needs 'organ_label' (the pancreas's label)")
    if organ is not None and near is None:
        raise PantherError(f"{path}: 'organ_label' in [postprocessing] needs 'near_organ_mm' (0: touching the organ)")
    nnunet = table.get("nnunet")
    if nnunet is not None:
        if not isinstance(nnunet, str) or Path(nnunet).is_absolute() or ".." in Path(nnunet).parts:
            raise PantherError(f"{path}: 'nnunet' in [postprocessing] must be a postprocessing.pkl's path under the "
                               f"weights root, got {nnunet!r}")
        if len(table) > 1:
            raise PantherError(f"{path}: [postprocessing] names nnU-Net's postprocessing.pkl or steps, not both")
    return PostProcessing(keep_largest, number("min_volume_mm3", 0, math.inf, "a finite volume in mm³, 0 or more"),
                          organ, near, None if floor is None else float(floor), nnunet)


def check_labels(path: Path, postprocessing: PostProcessing | None, labels: dict[str, int], weights_root: Path,
                 ) -> None:
    """The organ label is one of the members'; nnU-Net's postprocessing.pkl is there and nnU-Net's."""
    if postprocessing is None:
        return
    if postprocessing.organ_label is not None and postprocessing.organ_label not in labels.values():
        raise PantherError(f"{path}: 'organ_label' {postprocessing.organ_label} in [postprocessing] is not among the "
                           f"members' labels {labels}")
    if postprocessing.nnunet:
        load_nnunet_postprocessing(Path(weights_root) / postprocessing.nnunet)


class _NnunetPickle(pickle.Unpickler):
    """nnU-Net's postprocessing.pkl names its functions: only its largest-component step is allowed; anything else
    is refused before it could run."""

    def find_class(self, module: str, name: str):
        if (module, name) == NNUNET_FUNCTION:
            from nnunetv2.postprocessing.remove_connected_components import (
                remove_all_but_largest_component_from_segmentation,
            )

            return remove_all_but_largest_component_from_segmentation
        raise pickle.UnpicklingError(f"{module}.{name}")


def load_nnunet_postprocessing(path: Path) -> tuple[list, list[dict]]:
    """(functions, their keyword arguments) as nnUNetv2_determine_postprocessing saved them."""
    try:
        with open(path, "rb") as f:
            functions, kwargs = _NnunetPickle(f).load()
    except FileNotFoundError:
        raise PantherError(f"{path}: nnU-Net's postprocessing.pkl does not exist") from None
    except pickle.UnpicklingError as e:
        raise PantherError(f"{path}: refused: not nnU-Net's postprocessing (it names {e}, which could run code)") \
            from None
    except Exception as e:  # a truncated or foreign pickle
        raise PantherError(f"{path}: not nnU-Net's postprocessing.pkl ({type(e).__name__})") from None
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as largest,
    )

    if not (isinstance(functions, list) and isinstance(kwargs, list) and len(functions) == len(kwargs)
            and all(f is largest for f in functions) and all(_nnunet_arguments(k) for k in kwargs)):
        raise PantherError(f"{path}: not nnU-Net's postprocessing.pkl (expected its largest-component steps and their "
                           "labels or regions)")
    return functions, kwargs


def _nnunet_arguments(kwargs: object) -> bool:
    """remove_all_but_largest_component_from_segmentation's: labels_or_regions an int, a region (a tuple of ints) or
    a list of those; background_label an int."""
    def label(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def label_or_region(value: object) -> bool:
        return label(value) or (isinstance(value, tuple) and len(value) > 0 and all(map(label, value)))

    if not isinstance(kwargs, dict) or "labels_or_regions" not in kwargs or \
            not set(kwargs) <= {"labels_or_regions", "background_label"}:
        return False
    given = kwargs["labels_or_regions"]
    return (label_or_region(given) or (isinstance(given, list) and len(given) > 0
                                       and all(map(label_or_region, given)))) \
        and label(kwargs.get("background_label", 0))


def nnunet_needs_the_whole_grid(nnunet: tuple[list, list[dict]]) -> bool:
    """Whether nnU-Net's steps must see the image's whole label map: only where they name the background or set
    removed voxels to another label (outside the sum's region every voxel is background, so components of
    foreground labels are the same on the region alone)."""
    def labels(given) -> set:
        items = given if isinstance(given, list) else [given]
        return {v for item in items for v in (item if isinstance(item, tuple) else (item,))}

    return any(0 in labels(k["labels_or_regions"]) or k.get("background_label", 0) != 0 for k in nnunet[1])


def _box(mask: np.ndarray, margin: tuple[int, ...]) -> tuple[slice, ...]:
    """The bounding box of the mask's voxels, grown by margin voxels per axis, inside the array."""
    where = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
             for axis in range(mask.ndim)]
    return tuple(slice(max(0, w[0] - m), min(n, w[-1] + 1 + m)) for w, m, n in zip(where, margin, mask.shape))


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[slice, ...] | None]]:
    """(labelled components, their sizes in voxels (index 0 unused), each one's box). Sizes counted in each box:
    np.bincount over a 512 x 512 x 200 grid took 1.8 s, the boxes 0.2 s (benchmarks/postprocess.py)."""
    labelled, count = ndimage.label(mask, CONNECTIVITY)
    boxes = ndimage.find_objects(labelled)
    if count > 4096:  # a speckled map: one pass over the grid beats thousands of boxes
        return labelled, np.bincount(labelled.ravel(), minlength=count + 1), boxes
    sizes = np.zeros(count + 1, np.int64)
    for index, box in enumerate(boxes, start=1):
        sizes[index] = np.count_nonzero(labelled[box] == index)
    return labelled, sizes, boxes


def _margin(distance_mm: float, spacing_zyx: tuple[float, ...]) -> tuple[int, ...]:
    """Voxels per axis that cover `distance_mm`, and one more: a 26-neighbour of the organ touches it."""
    return tuple(math.ceil(distance_mm / s) + 1 for s in spacing_zyx)


def near_the_organ(component: np.ndarray, organ: np.ndarray, spacing_zyx: tuple[float, ...], distance_mm: float
                   ) -> bool:
    """Whether the component touches the organ (shares or neighbours, 26-connected, one of its voxels) or one of its
    voxels' centres lies within `distance_mm` of an organ voxel's centre; both masks on one box."""
    if not organ.any():
        return False
    if (ndimage.binary_dilation(component, CONNECTIVITY) & organ).any():
        return True
    if distance_mm <= 0:
        return False
    return _within_distance(component, organ, spacing_zyx, distance_mm)


# Voxels per distance transform in _within_distance: scipy's holds 20 bytes per voxel (an int32 feature transform
# per axis and the float64 distances), 160 MB at this size, where a component as large as the grid would need 1 GB.
EDT_VOXELS = 2 ** 23


def _within_distance(component: np.ndarray, organ: np.ndarray, spacing_zyx: tuple[float, ...], distance_mm: float
                     ) -> bool:
    """Whether a component voxel's centre lies within `distance_mm` of an organ voxel's, by distance transforms of
    slabs along the first axis, each grown by the distance: an organ voxel that close to a slab's component voxels
    lies in its grown slab, and every distance in one is to a real organ voxel, so the answer is the whole box's."""
    grow = math.ceil(distance_mm / spacing_zyx[0])
    plane = math.prod(component.shape[1:])
    rows = max(1, EDT_VOXELS // plane - 2 * grow)
    for start in range(0, component.shape[0], rows):
        stop = min(start + rows, component.shape[0])
        if not component[start:stop].any():
            continue
        low, high = max(0, start - grow), min(component.shape[0], stop + grow)
        if not organ[low:high].any():
            continue
        distance = ndimage.distance_transform_edt(~organ[low:high], sampling=spacing_zyx)
        if float(distance[start - low:stop - low][component[start:stop]].min()) <= distance_mm:
            return True
    return False


def the_organ(organ: np.ndarray) -> np.ndarray:
    """The predicted organ's largest connected component (26; ties all kept): PANTHER's pancreas is one organ, and a
    false organ island the networks draw around a distractor must not make the distractor 'near the organ'."""
    if not organ.any():
        return organ
    box = _box(organ, (0,) * organ.ndim)
    labelled, sizes, _ = _components(organ[box])
    if len(sizes) <= 2:
        return organ
    largest = np.zeros_like(organ)
    largest[box] = (sizes == sizes[1:].max())[labelled] & organ[box]
    return largest


def filter_tumor(tumor: np.ndarray, organ: np.ndarray | None, spacing_zyx: tuple[float, ...],
                 postprocessing: PostProcessing) -> np.ndarray:
    """The tumor mask (bool, z y x) after the component steps; worked on the tumor's bounding box only."""
    near = postprocessing.near_organ_mm
    if not tumor.any() or not (postprocessing.keep_largest or postprocessing.min_volume_mm3 or near is not None):
        return tumor
    grow = _margin(near, spacing_zyx) if near is not None else (0,) * tumor.ndim
    box = _box(tumor, grow)
    labelled, sizes, boxes = _components(tumor[box])
    keep = np.ones(len(sizes), bool)
    keep[0] = False
    if postprocessing.keep_largest:
        keep &= sizes == sizes[1:].max()  # ties all kept, as nnU-Net's
    if postprocessing.min_volume_mm3:
        keep &= sizes * float(np.prod(spacing_zyx)) >= postprocessing.min_volume_mm3
    if near is not None:
        organ_box = organ[box]
        for index, where in enumerate(boxes, start=1):
            if where is not None and keep[index]:
                # the component's own box, grown by the distance and a voxel: the organ farther off cannot count
                around = tuple(slice(max(0, w.start - g), min(n, w.stop + g)) for w, g, n in
                               zip(where, grow, organ_box.shape))
                keep[index] = near_the_organ(labelled[around] == index, organ_box[around], spacing_zyx, near)
    result = np.zeros_like(tumor)
    result[box] = keep[labelled]
    return result


def never_empty(probability: np.ndarray, floor: float, prefer: tuple[slice, ...] | None = None) -> np.ndarray | None:
    """The connected region (26) around the maximum tumor probability, of voxels at or above `floor`; None where
    even the maximum is below it. `prefer`: a box searched for the maximum first (around the organ, where a tumor
    far from it was just removed), the whole grid where nothing in it reaches the floor."""
    if probability.size == 0 or float(probability.max()) < floor:
        return None
    peak = np.unravel_index(int(np.argmax(probability)), probability.shape)
    if prefer is not None and probability[prefer].size and float(probability[prefer].max()) >= floor:
        inside = np.unravel_index(int(np.argmax(probability[prefer])), probability[prefer].shape)
        peak = tuple(i + b.start for i, b in zip(inside, prefer))
    above = probability >= floor
    box = _box(above, (0,) * above.ndim)
    labelled, _ = ndimage.label(above[box], CONNECTIVITY)
    region = np.zeros(probability.shape, bool)
    region[box] = labelled == labelled[tuple(p - b.start for p, b in zip(peak, box))]
    return region


def postprocess(labels: np.ndarray, tumor_label: int, spacing_zyx: tuple[float, ...], postprocessing: PostProcessing,
                probability, nnunet: tuple[list, list[dict]] | None = None) -> tuple[np.ndarray, str | None]:
    """(the tumor mask, bool, and what post-processing did, for the summary line) from the label map (uint8, z y x)
    and `probability()`, the tumor's probability on the same grid (asked for only where never-empty is needed);
    `nnunet`: nnU-Net's post-processing as load_nnunet_postprocessing read it (on the sum's region, or the image's
    whole label map where nnunet_needs_the_whole_grid). With the organ step, never-empty looks for the maximum near
    the organ first (its box grown by the distance)."""
    if postprocessing.nnunet:
        from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

        tumor = apply_postprocessing(labels, *nnunet) == tumor_label
        return tumor, f"nnU-Net's post-processing: {int((labels == tumor_label).sum() - tumor.sum())} voxels removed"
    tumor = labels == tumor_label
    before = int(tumor.sum())
    organ = the_organ(labels == postprocessing.organ_label) if postprocessing.near_organ_mm is not None else None
    tumor = filter_tumor(tumor, organ, spacing_zyx, postprocessing)
    notes = [f"{before - int(tumor.sum())} tumor voxels removed"] if before != int(tumor.sum()) else []
    if postprocessing.never_empty_floor and not tumor.any():
        around_organ = _box(organ, _margin(postprocessing.near_organ_mm, spacing_zyx)) \
            if organ is not None and organ.any() else None
        region = never_empty(probability(), postprocessing.never_empty_floor, around_organ)
        if region is None:
            notes.append(f"never empty: no voxel reaches the floor {postprocessing.never_empty_floor:g}, the mask "
                         "stays empty")
        else:
            tumor = region
            notes.append(f"never empty: the region around the maximum tumor probability ({int(region.sum())} voxels "
                         f"at or above {postprocessing.never_empty_floor:g}) written instead of an empty mask")
    return tumor, "; ".join(notes) or None
