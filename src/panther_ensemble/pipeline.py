"""The ensemble run: load members once, then per image preprocess -> predict -> combine, one member at a time.

Data flows one way; file I/O stays in io/spec/members, the math in preprocess/predict/combine.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import torch

from .budget import Deadline
from .combine import SoftmaxMean, probabilities_on_input_grid, tumor_mask
from .cuda_graph import GraphedForward, capture
from .io import Image
from .members import Member, Network, describe_member, load_network
from .predict import sliding_window_logits, tile_count, tiles_per_forward
from .preprocess import preprocess, preprocessing_key, resampled_shape
from .spec import EnsembleSpec
from .timing import StageTimer, log, log_tile_progress

# fast: resampling on the device and, on a CPU, small tiles a few per forward, inside DESIGN.md's parity bound;
# exact: stock nnU-Net's arithmetic step by step (the plans' resampling on the host, one tile per forward).
MODES = ("fast", "exact")


def group_members(members: list[Member]) -> list[list[Member]]:
    """Members grouped by identical preprocessing, spec order kept within groups."""
    by_preprocessing: dict[str, list[Member]] = defaultdict(list)
    for member in members:
        by_preprocessing[preprocessing_key(member)].append(member)
    return list(by_preprocessing.values())


def load_in_background(members: list[Member], device: torch.device) -> list[Future]:
    """Each member's network (Future of load_network), loaded in this order on a thread of its own, so that later
    members load (checkpoint read, network built, weights copied to the device) while earlier ones predict:
    on a GPU that hides all loading but the first member's. A failure is raised where that network is asked for."""
    futures: list[Future] = [Future() for _ in members]

    def load() -> None:
        for member, future in zip(members, futures):
            try:
                future.set_result(load_network(member, device))
            except BaseException as e:
                future.set_exception(e)

    threading.Thread(target=load, name="load-networks").start()
    return futures


class Ensemble:
    def __init__(self, spec: EnsembleSpec, members: list[Member], device: torch.device, mode: str = "fast",
                 ) -> None:
        """`members` as describe_member gives them: their networks load in the background from here on."""
        self.spec = spec
        self.members = members
        self.device = device
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.groups = group_members(members)
        order = [member for group in self.groups for member in group]
        # by id: members are dataclasses, compared by value and unhashable
        self._networks = dict(zip(map(id, order), load_in_background(order, device)))
        self._graphs: dict[str, GraphedForward | None] = {}  # per architecture and tile shape

    @classmethod
    def load(cls, spec: EnsembleSpec, weights_root, device: torch.device, timer: StageTimer, mode: str = "fast",
             backend: str = "torch") -> Ensemble:
        with timer.stage("load"):
            ensemble = cls(spec, [describe_member(weights_root, m, backend) for m in spec.members], device, mode)
        log(f"loading {len(spec.members)} members ({backend}) from {weights_root} in {len(ensemble.groups)} "
            f"preprocessing group(s) on {device}: their networks in the background, in the order they run")
        return ensemble

    def network(self, member: Member) -> Network:
        """The member's network, waiting for its loading where it is not done yet."""
        return self._networks[id(member)].result()

    def peak_bytes(self, shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> int:
        """An upper estimate of the host memory one image needs, from its header alone.

        Per preprocessing group: the resampled float32 data and its resampling copy, one member's fp16 logits and
        the weight map; on the input grid: one member's logits, probabilities and the running mean.
        """
        input_voxels = int(np.prod(shape_zyx))
        classes = self.members[0].label_manager.num_segmentation_heads
        worst_group = max(int(np.prod(resampled_shape(shape_zyx, spacing_zyx, group[0]))) for group in self.groups)
        return worst_group * (2 * 4 + 2 * (classes + 1)) + input_voxels * (4 + 3 * classes * 4)

    def member_probabilities(self, image: Image, timer: StageTimer, deadline: Deadline | None = None,
                             ) -> Iterator[tuple[Member, torch.Tensor]]:
        """Each member's softmax on the image's (z, y, x) grid, one member after another in spec order within
        shared preprocessing groups (one preprocessing per group). With a deadline, members that would finish
        past it are skipped; `self.dropped` names them afterwards."""
        deadline = deadline or Deadline(None)
        self.dropped: list[Member] = []
        completed = 0
        for g, group in enumerate(self.groups, start=1):
            if not deadline.another_group_fits(completed):
                self._drop(group, "no time for another group")
                continue
            started = time.perf_counter()
            with timer.stage("preprocess"):
                prepared = preprocess(image, group[0], self.device if self.mode == "fast" else None)
            deadline.record_preprocess(time.perf_counter() - started)
            log(f"group {g}: preprocessed {tuple(image.array.shape)} -> {tuple(prepared.data.shape[1:])} "
                f"in {timer.last['preprocess']:.1f}s")
            for m, member in enumerate(group):
                patch = member.configuration_manager.patch_size
                if not deadline.member_fits(tile_count(prepared.data.shape[1:], patch), completed):
                    self._drop(group[m:], "projected to finish past the budget")
                    break
                with timer.stage("load"):
                    network = self.network(member)
                with timer.stage("forward"):
                    logits = self._member_logits(member, network, prepared.data, deadline, completed)
                log(f"  {member.spec.name}: forward in {timer.last['forward']:.1f}s")
                if logits is None:
                    self._drop(group[m:], "projected to finish past the budget")
                    break
                started = time.perf_counter()
                with timer.stage("resample"):
                    probabilities = probabilities_on_input_grid(logits, member, prepared.properties, self.mode)
                del logits
                log(f"  {member.spec.name}: to the input grid in {timer.last['resample']:.1f}s")
                yield member, probabilities
                deadline.record_finish(time.perf_counter() - started)
                completed += 1

    def _member_logits(self, member: Member, network: Network, data: torch.Tensor, deadline: Deadline,
                       completed: int) -> torch.Tensor | None:
        """The member's sliding window, the deadline asked after every forward; None where it stopped it."""
        patch = member.configuration_manager.patch_size
        label = f"{member.spec.name}, patch {patch}"
        if self.device.type == "cuda" and self.mode == "fast" and isinstance(network, torch.nn.Module):
            network = self._graphed(member, network)

        def on_forward(tiles: range, total: int, seconds: float) -> bool:
            deadline.record_forward(seconds, warm_up=tiles.start == 0, tiles=len(tiles))
            log_tile_progress(label, tiles.stop, total, len(tiles))
            return deadline.member_fits(total - tiles.stop, completed)

        return sliding_window_logits(data, network, patch, member.label_manager.num_segmentation_heads, self.device,
                                     on_forward, tiles_per_forward(patch, self.device) if self.mode == "fast" else 1)

    def _graphed(self, member: Member, network: torch.nn.Module) -> Network:
        """The network's forward as a replay of its architecture's CUDA graph (captured at the first member that
        has it), or the network itself where capture failed."""
        configuration = member.configuration_manager
        key = json.dumps([configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                          member.input_shape, member.label_manager.num_segmentation_heads], sort_keys=True, default=str)
        if key not in self._graphs:
            self._graphs[key] = capture(network, (1, *member.input_shape), self.device)
        graphed = self._graphs[key]
        return network if graphed is None else graphed.bind(network)

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
