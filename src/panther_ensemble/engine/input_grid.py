"""Member logits back to the input grid as nnU-Net's export does, and the ensemble's weighted softmax sum there.

nnU-Net's export resamples a member's logits to the image's grid (inside its crop), applies the softmax, pastes the
result into a background-only volume and transposes it back. Done whole, that is a member's fp32 logits, its
probabilities and the uncropped map at once: ~40 bytes per input voxel beside the running sum. Here:
- the sum is kept only over the region the members' crops cover: outside nnU-Net's crop (the image's nonzero box)
  every member says background with probability 1, so that region needs no storage;
- "fast" mode (the default) exports each member slab by slab along one axis: nnU-Net's torch resampling
  (resample_torch_fornnunet) is linear in-plane and either nearest along a separate anisotropic axis (slabs along
  that axis) or linear along it (slabs along the first axis, the linear step computed with PyTorch's own source
  indices and weights): equal to the whole-volume resampling to within float rounding (2e-5 on logits up to 30,
  tests/test_input_grid.py);
- "exact" mode runs the plans' own resampling function over the whole crop on the host, as stock nnU-Net does.
Out of device memory in a slab, the sum moves to the host and the member's remaining slabs run there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from nnunetv2.configuration import ANISO_THRESHOLD
from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
from torch.nn import functional as F

from ..core.log import warn
from .devices import HOST, out_of_memory, release_device_memory
from .members import Member

MODES = ("fast", "exact")
SLAB_BYTES = {"cpu": 8 * 2 ** 20, "device": 64 * 2 ** 20}  # one slab's fp32 probabilities, at most


def crop_box(member: Member, properties: dict) -> tuple[slice, ...]:
    """nnU-Net's crop (bbox_used_for_cropping, in the member's transposed axes) in the input's (z, y, x) axes."""
    bbox = properties["bbox_used_for_cropping"]
    return tuple(slice(*bbox[t]) for t in member.plans_manager.transpose_backward)


def _export_geometry(member: Member, properties: dict) -> tuple[list[int], list[float], list[float]]:
    """(crop shape, the member's spacing, the image's spacing), in the member's transposed axes."""
    original_spacing = [properties["spacing"][i] for i in member.plans_manager.transpose_forward]
    shape = list(properties["shape_after_cropping_and_before_resampling"])
    spacing = member.configuration_manager.spacing
    current_spacing = spacing if len(spacing) == len(shape) else [original_spacing[0], *spacing]
    return shape, current_spacing, original_spacing


def linear_source(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i0, i1, w0, w1) of PyTorch's linear interpolation (align_corners=False) from n_in to n_out samples, computed
    as its kernels do, in float32: output j = input[i0] * w0 + input[i1] * w1."""
    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    source = torch.clamp(scale * (torch.arange(n_out, dtype=torch.float32) + 0.5) - 0.5, min=0)
    i0 = torch.clamp(torch.floor(source).long(), max=n_in - 1)
    w1 = torch.clamp(source - i0.float(), 0, 1)
    return i0, i0 + (i0 < n_in - 1).long(), 1 - w1, w1


def nearest_exact_source(n_in: int, n_out: int) -> torch.Tensor:
    """PyTorch's 'nearest-exact' source index per output sample: floorf((j + 0.5) * scale) with a float scale."""
    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    source = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale.double()).float()
    return torch.clamp(torch.floor(source).long(), max=n_in - 1)


class SlabResampler:
    """resample_torch_fornnunet(logits, shape, current_spacing, new_spacing) of a (classes, *grid) tensor, computed
    for one slab of the output at a time along `axis`."""

    def __init__(self, logits: torch.Tensor, shape: list[int], current_spacing: list[float],
                 new_spacing: list[float]) -> None:
        self.logits, self.shape = logits, list(shape)
        separate, axis = determine_do_sep_z_and_axis(None, current_spacing, new_spacing, ANISO_THRESHOLD)
        self.axis = axis if separate else 0
        self.plane = [n for a, n in enumerate(self.shape) if a != self.axis]
        n_in, n_out = logits.shape[1 + self.axis], self.shape[self.axis]
        if separate:  # nnU-Net: in-plane linear, then nearest ('nearest-exact') along the separate axis
            self.first = self.last = nearest_exact_source(n_in, n_out)
            self.weights = None
        else:
            self.first, self.last, w0, w1 = linear_source(n_in, n_out)
            self.weights = (w0, w1)

    def to(self, device: torch.device) -> SlabResampler:
        self.logits = self.logits.to(device)
        return self

    @property
    def length(self) -> int:
        return self.shape[self.axis]

    def slab(self, start: int, stop: int) -> torch.Tensor:
        """fp32 logits of output samples [start, stop) along the axis: (classes, *shape with that axis cut)."""
        low, high = int(self.first[start:stop].min()), int(self.last[start:stop].max()) + 1
        planes = self.logits.narrow(1 + self.axis, low, high - low).movedim(1 + self.axis, 1).float()
        classes, rows = planes.shape[:2]
        if list(planes.shape[2:]) != self.plane:  # nnU-Net resamples every plane of (classes x rows) planes
            planes = F.interpolate(planes.reshape(1, classes * rows, *planes.shape[2:]), self.plane,
                                   mode="bilinear", antialias=False)[0].reshape(classes, rows, *self.plane)
        device = planes.device
        if self.weights is None:
            out = planes.index_select(1, (self.first[start:stop] - low).to(device))
        else:
            shape = (1, stop - start, 1, 1)
            w0, w1 = (w[start:stop].to(device).reshape(shape) for w in self.weights)
            out = planes.index_select(1, (self.first[start:stop] - low).to(device)) * w0 + \
                planes.index_select(1, (self.last[start:stop] - low).to(device)) * w1
        return out.movedim(1, 1 + self.axis)


def _stock_probabilities(logits: torch.Tensor, member: Member, properties: dict) -> torch.Tensor:
    """The member's probabilities on its crop (transposed axes), by the plans' own resampling function on the
    host, as nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape computes them."""
    shape, current_spacing, original_spacing = _export_geometry(member, properties)
    resampled = member.configuration_manager.resampling_fn_probabilities(logits.cpu(), shape, current_spacing,
                                                                         original_spacing)
    return member.label_manager.apply_inference_nonlin(resampled)


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """torch.argmax(values, dim=0) as uint8 for finite values (a tie goes to the first class, as argmax's), class
    after class: torch's CPU argmax over the leading dimension took 9.85 s on a 512 x 512 x 200 grid's slabs, this
    0.40 s (benchmarks/postprocess.py). The sum is finite: every member's logits are checked before they are added."""
    if values.shape[0] > 255:
        return torch.argmax(values, dim=0)
    best = values[0].clone()
    labels = torch.zeros(values.shape[1:], dtype=torch.uint8, device=values.device)
    for label in range(1, values.shape[0]):
        labels.masked_fill_(values[label] > best, label)
        torch.maximum(best, values[label], out=best)
    return labels


def _slabs(length: int, voxels_per_row: int, classes: int, device: torch.device) -> Iterator[tuple[int, int]]:
    budget = SLAB_BYTES["cpu" if device.type == "cpu" else "device"]
    rows = max(1, budget // max(1, voxels_per_row * classes * 4))
    for start in range(0, length, rows):
        yield start, min(length, start + rows)


def _box_complement(region: tuple[int, ...], box: tuple[slice, ...]) -> Iterator[tuple[slice, ...]]:
    """Disjoint boxes that cover region (a shape) minus box."""
    done: list[slice] = []
    for axis, n in enumerate(region):
        rest = [slice(None)] * (len(region) - axis - 1)
        for part in (slice(0, box[axis].start), slice(box[axis].stop, n)):
            if part.stop > part.start:
                yield (*done, part, *rest)
        done.append(box[axis])


class ProbabilitySum:
    """sum_m w_m * softmax(z_m) over the image's (z, y, x) grid, stored for the region the members' crops cover, on
    `device` (the host after an out-of-memory there)."""

    def __init__(self, shape_zyx: tuple[int, ...], classes: int, device: torch.device) -> None:
        self.shape, self.classes, self.device = tuple(shape_zyx), classes, device
        self.region: tuple[slice, ...] | None = None
        self.total: torch.Tensor | None = None
        self.weight = 0.0

    def add(self, logits: torch.Tensor, member: Member, properties: dict, weight: float, mode: str = "fast") -> None:
        """Add the member's probabilities (its fp16 logits on its preprocessed grid, exported as nnU-Net does)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        box = crop_box(member, properties)
        view = self._view(box).permute(0, *[1 + t for t in member.plans_manager.transpose_forward])
        if mode == "exact":
            view.add_(_stock_probabilities(logits, member, properties).to(view.device), alpha=weight)
        else:
            self._add_slabs(SlabResampler(logits, *_export_geometry(member, properties)), member, box, weight)
        self._add_background_around(box, weight)
        self.weight += weight

    def add_sum(self, other: ProbabilitySum, weight: float) -> None:
        """Add another sum (one member's probabilities, say) with this weight."""
        view = self._view(other.region)
        view.add_(other.total.to(view.device), alpha=weight)
        self._add_background_around(other.region, weight * other.weight)
        self.weight += weight * other.weight

    def _add_slabs(self, resampler: SlabResampler, member: Member, box: tuple[slice, ...], weight: float) -> None:
        transpose = [1 + t for t in member.plans_manager.transpose_forward]
        where = [slice(None)] * 4
        for start, stop in _slabs(resampler.length, math.prod(resampler.plane), self.classes, self.device):
            where[1 + resampler.axis] = slice(start, stop)
            try:
                probabilities = member.label_manager.apply_inference_nonlin(resampler.slab(start, stop))
            except RuntimeError as e:  # torch's OutOfMemoryError among them
                if self.device == HOST or not out_of_memory(e):
                    raise
                self._to_host("bringing a member to the input grid")
                probabilities = member.label_manager.apply_inference_nonlin(resampler.to(HOST).slab(start, stop))
            self._view(box).permute(0, *transpose)[tuple(where)].add_(probabilities.to(self.device), alpha=weight)

    def _view(self, box: tuple[slice, ...]) -> torch.Tensor:
        """The sum over box (input axes), the region grown to cover it first."""
        self._cover(box)
        return self.total[(slice(None), *(slice(b.start - r.start, b.stop - r.start)
                                          for b, r in zip(box, self.region)))]

    def _cover(self, box: tuple[slice, ...]) -> None:
        if self.region is not None and all(r.start <= b.start and b.stop <= r.stop
                                           for b, r in zip(box, self.region)):
            return
        region = box if self.region is None else tuple(slice(min(b.start, r.start), max(b.stop, r.stop))
                                                       for b, r in zip(box, self.region))
        shape = (self.classes, *(r.stop - r.start for r in region))
        try:
            total = self._zeros(shape)
        except RuntimeError as e:  # torch's OutOfMemoryError among them
            if self.device == HOST or not out_of_memory(e):
                raise
            self._to_host("summing the members")
            total = self._zeros(shape)
        total[0] = self.weight  # what the members so far gave the new part: background, probability 1
        if self.total is not None:
            total[(slice(None), *(slice(r.start - n.start, r.stop - n.start)
                                  for r, n in zip(self.region, region)))] = self.total
        self.total, self.region = total, region

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, device=self.device)

    def _labels(self, start: int, stop: int) -> torch.Tensor:
        """The argmax of the weighted mean over rows [start, stop) of the region."""
        return first_argmax(self.total[:, start:stop] / self.weight)

    def _add_background_around(self, box: tuple[slice, ...], weight: float) -> None:
        """Outside its crop, a member's probabilities are background 1."""
        inside = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, self.region))
        for part in _box_complement(tuple(r.stop - r.start for r in self.region), inside):
            self.total[(0, *part)] += weight

    def _to_host(self, step: str) -> None:
        warn(f"out of device memory while {step}: the rest of this case's input-grid work runs on the host")
        self.total = None if self.total is None else self.total.cpu()
        self.device = HOST
        release_device_memory()

    def region_labels(self) -> np.ndarray:
        """uint8 argmax of the weighted mean over the region (self.region: outside it, background), slab by slab:
        what post-processing works on."""
        if self.total is None:
            raise ValueError("no member was added")
        labels = np.zeros(self.total.shape[1:], np.uint8)
        for start, stop in _slabs(self.total.shape[1], math.prod(self.total.shape[2:]), self.classes, self.device):
            try:
                labels[start:stop] = self._labels(start, stop).cpu().numpy()
            except RuntimeError as e:  # torch's OutOfMemoryError among them
                if self.device == HOST or not out_of_memory(e):
                    raise
                self._to_host("taking the argmax")
                labels[start:stop] = self._labels(start, stop).numpy()
        return labels

    def region_probability(self, label: int) -> np.ndarray:
        """float32 weighted-mean probability of `label` over the region (for never-empty post-processing)."""
        try:
            return (self.total[label] / self.weight).float().cpu().numpy()
        except RuntimeError as e:  # torch's OutOfMemoryError among them
            if self.device == HOST or not out_of_memory(e):
                raise
            self._to_host("taking the tumor's probability")
            return (self.total[label] / self.weight).float().numpy()

    def release(self, keep_probability_of: int | None = None) -> np.ndarray | None:
        """Free the sum (once the labels are taken): what post-processing may still ask for, the weighted-mean
        probability of one label over the region (float32, on the host), is kept first. The case's last stage then
        holds 4 bytes per region voxel where the sum held 4 per class."""
        probability = None if keep_probability_of is None else self.region_probability(keep_probability_of)
        self.total = None
        return probability

    def mask(self, label: int) -> np.ndarray:
        """uint8 (z, y, x): argmax of the weighted mean == label (background outside every crop)."""
        if self.total is None:
            raise ValueError("no member was added")
        mask = np.full(self.shape, label == 0, np.uint8)
        for start, stop in _slabs(self.total.shape[1], math.prod(self.total.shape[2:]), self.classes, self.device):
            try:
                labels = self._labels(start, stop)
            except RuntimeError as e:  # torch's OutOfMemoryError among them
                if self.device == HOST or not out_of_memory(e):
                    raise
                self._to_host("taking the argmax")
                labels = self._labels(start, stop)
            z = slice(self.region[0].start + start, self.region[0].start + stop)
            mask[(z, *self.region[1:])] = (labels == label).cpu().numpy()
        return mask

    def probabilities(self) -> torch.Tensor:
        """The weighted mean over the whole grid (classes, z, y, x), on this sum's device: for tools and tests."""
        full = torch.zeros((self.classes, *self.shape), device=self.total.device)
        full[0] = 1
        full[(slice(None), *self.region)] = self.total / self.weight
        return full


def member_probabilities(logits: torch.Tensor, member: Member, properties: dict, mode: str = "fast") -> torch.Tensor:
    """One member's softmax on the input's (z, y, x) grid (classes first), on the logits' device."""
    one = ProbabilitySum(tuple(properties["shape_before_cropping"][i] for i in
                               member.plans_manager.transpose_backward),
                         member.label_manager.num_segmentation_heads, logits.device)
    one.add(logits, member, properties, 1.0, mode)
    return one.probabilities()
