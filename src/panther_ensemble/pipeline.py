"""The ensemble run: load members once, then per image preprocess -> predict -> combine.

Data flows one way; file I/O stays in io/spec/members, the math in preprocess/predict/combine.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .budget import Deadline
from .combine import SoftmaxMean, probabilities_on_input_grid, tumor_mask
from .io import Image
from .members import Member, load_member
from .predict import sliding_window_logits, tiles_per_forward
from .preprocess import preprocess, preprocessing_key, resampled_shape
from .spec import EnsembleSpec
from .timing import StageTimer, log, log_tile_progress

# fast: resampling on the device and, on a CPU, small tiles a few per forward, inside DESIGN.md's parity bound;
# exact: stock nnU-Net's arithmetic step by step (the plans' resampling on the host, one tile per forward).
MODES = ("fast", "exact")


@dataclass
class TileGroup:
    """Members that share preprocessing and patch size: one tile grid, every network per tile."""

    members: list[Member]

    @property
    def patch_size(self) -> list[int]:
        return self.members[0].configuration_manager.patch_size


def group_members(members: list[Member]) -> list[list[TileGroup]]:
    """Members grouped by identical preprocessing, then by patch size; spec order kept within groups."""
    by_preprocessing: dict[str, dict[tuple, list[Member]]] = defaultdict(lambda: defaultdict(list))
    for member in members:
        patch = tuple(member.configuration_manager.patch_size)
        by_preprocessing[preprocessing_key(member)][patch].append(member)
    return [[TileGroup(group) for group in by_patch.values()] for by_patch in by_preprocessing.values()]


class Ensemble:
    def __init__(self, spec: EnsembleSpec, members: list[Member], device: torch.device, mode: str = "fast",
                 ) -> None:
        self.spec = spec
        self.members = members
        self.device = device
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.groups = group_members(members)

    @classmethod
    def load(cls, spec: EnsembleSpec, weights_root, device: torch.device, timer: StageTimer, mode: str = "fast",
             backend: str = "torch") -> Ensemble:
        with timer.stage("load"):
            members = [load_member(weights_root, m, backend, device) for m in spec.members]
        ensemble = cls(spec, members, device, mode)
        log(f"loaded {len(members)} members ({backend}) from {weights_root} in {len(ensemble.groups)} "
            f"preprocessing group(s) on {device} in {timer.last['load']:.1f}s")
        return ensemble

    def peak_bytes(self, shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> int:
        """An upper estimate of the host memory one image needs, from its header alone.

        Per preprocessing group: the resampled float32 data and its resampling copy, every tile group's fp16
        logits and weight map; on the input grid: one member's logits, probabilities and the running mean.
        """
        input_voxels = int(np.prod(shape_zyx))
        classes = self.members[0].label_manager.num_segmentation_heads
        worst_group = 0
        for tile_groups in self.groups:
            voxels = int(np.prod(resampled_shape(shape_zyx, spacing_zyx, tile_groups[0].members[0])))
            logits = max(len(group.members) for group in tile_groups) * classes + 1
            worst_group = max(worst_group, voxels * (2 * 4 + 2 * logits))
        return worst_group + input_voxels * (4 + 3 * classes * 4)

    def member_probabilities(self, image: Image, timer: StageTimer, deadline: Deadline | None = None,
                             ) -> Iterator[tuple[Member, torch.Tensor]]:
        """Each member's softmax on the image's (z, y, x) grid, in spec order within shared preprocessing
        groups (one preprocessing per group, one tile grid per patch size). With a deadline, members that
        would finish past it are skipped; `self.dropped` names them afterwards."""
        deadline = deadline or Deadline(None)
        self.dropped: list[Member] = []
        completed = 0
        for g, tile_groups in enumerate(self.groups, start=1):
            if not deadline.another_group_fits(completed):
                self._drop([m for group in tile_groups for m in group.members], "no time for another group")
                continue
            started = time.perf_counter()
            with timer.stage("preprocess"):
                prepared = preprocess(image, tile_groups[0].members[0],
                                      self.device if self.mode == "fast" else None)
            deadline.record_preprocess(time.perf_counter() - started)
            log(f"group {g}: preprocessed {tuple(image.array.shape)} -> {tuple(prepared.data.shape[1:])} "
                f"in {timer.last['preprocess']:.1f}s")
            for group in tile_groups:
                label = f"group {g}, {len(group.members)} member(s), patch {group.patch_size}"

                def on_forward(tiles: range, total: int, finished: int, active: int, seconds: float, label=label,
                               completed=completed) -> int:
                    deadline.record_forward(seconds, warm_up=tiles.start == 0, tiles=len(tiles))
                    batch_done = finished == active
                    if batch_done:
                        log_tile_progress(label, tiles.stop, total, len(tiles))
                    warned = deadline.overrun
                    keep = deadline.members_that_fit(total - (tiles.stop if batch_done else tiles.start), active,
                                                     0 if batch_done else finished, completed)
                    if deadline.overrun and not warned:
                        log("budget: even one member cannot finish within the budget; completing the first "
                            "one anyway and writing its result as soon as it is done")
                    return keep

                with timer.stage("forward"):
                    logits = sliding_window_logits(
                        prepared.data, [m.network for m in group.members], group.patch_size,
                        group.members[0].label_manager.num_segmentation_heads, self.device, on_forward,
                        tiles_per_forward(group.patch_size, self.device) if self.mode == "fast" else 1)
                log(f"{label}: forward in {timer.last['forward']:.1f}s")
                self._drop(group.members[len(logits):], "projected to finish past the budget")
                for member, member_logits in zip(group.members, logits):
                    started = time.perf_counter()
                    with timer.stage("resample"):
                        probabilities = probabilities_on_input_grid(member_logits, member, prepared.properties,
                                                                    self.mode)
                    log(f"  {member.spec.name}: to the input grid in {timer.last['resample']:.1f}s")
                    yield member, probabilities
                    deadline.record_finish(time.perf_counter() - started)
                    completed += 1
                del logits

    def _drop(self, members: list[Member], why: str) -> None:
        if members:
            self.dropped += members
            log(f"budget: dropped {len(members)} member(s) ({why}): {', '.join(m.spec.name for m in members)}")

    def predict(self, image: Image, timer: StageTimer, deadline: Deadline | None = None) -> np.ndarray:
        """The uint8 tumor mask on the image's grid."""
        mean = SoftmaxMean()
        for member, probabilities in self.member_probabilities(image, timer, deadline):
            with timer.stage("combine"):
                mean.add(probabilities, member.spec.weight)
        with timer.stage("combine"):
            return tumor_mask(mean.labels(), self.spec.tumor_label)
