"""The ensemble run: load members once, then per image preprocess -> predict -> back to the input grid, member by
member, each member's probabilities added to the ensemble's sum before the next member's logits are made.

Data flows one way; file I/O stays in io/spec/members, the math in preprocess/predict/input_grid.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import PantherError
from ..core.log import StageTimer, log, warn
from .activations import tiles_per_forward
from .cuda_graph import GraphedForward, capture
from .deadline import Deadline, FinalStage
from .devices import HOST, out_of_memory, release_device_memory
from .image import Image
from .input_grid import MODES, ProbabilitySum
from .loading import NetworkLoader, Verify
from .members import Member, Network, describe_member, import_case_code, load_network
from .postprocess import load_nnunet_postprocessing, nnunet_needs_the_whole_grid, postprocess
from .preprocess import Preprocessed, preprocess, preprocessing_key
from .sliding_window import NonFiniteLogits, sliding_window_logits, tile_count
from .spec import EnsembleSpec, member_labels


@dataclass(frozen=True)
class Placement:
    """Where the run keeps what (memory.plan_device chooses it from the device's free memory)."""

    capture_graphs: bool = True  # on CUDA in fast mode: a tile forward captured per architecture
    input_grid_on_device: bool = True  # the ensemble's probability sum and each member's export
    keep_networks: bool = True  # every member's network stays loaded (else: loaded when needed, then released)


def group_members(members: list[Member]) -> list[list[Member]]:
    """Members grouped by identical preprocessing, spec order kept within groups."""
    by_preprocessing: dict[str, list[Member]] = defaultdict(list)
    for member in members:
        by_preprocessing[preprocessing_key(member)].append(member)
    return list(by_preprocessing.values())


class Ensemble:
    def __init__(self, spec: EnsembleSpec, members: list[Member], device: torch.device, mode: str = "fast",
                 placement: Placement | None = None, verify: Verify | None = None) -> None:
        """`members` as describe_member gives them: their networks load in the background from here on, each
        checked by `verify` (the weights manifest) as it is read."""
        self.spec = spec
        self.members = members
        self.device = device
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.placement = placement or Placement()
        self.groups = group_members(members)
        self.labels = member_labels([m.id for m in members])  # short and unique among them, for the log
        self.loader = NetworkLoader([m for group in self.groups for m in group], device, verify,
                                    keep=self.placement.keep_networks)
        self._graphs: dict[str, GraphedForward | None] = {}  # per architecture and tile shape
        self._images = 0
        self.dropped: list[Member] = []
        pp = spec.postprocessing
        self.postprocessing = pp if pp is not None and pp.active else None
        self.postprocessing_note: str | None = None  # what it did to the last image
        # the case's last stage (mask, post-processing, write), reserved by the deadline before the last member
        self.final_stage = FinalStage(self.postprocessing.kind if self.postprocessing else "none")
        self._nnunet = load_nnunet_postprocessing(members[0].weights_root / pp.nnunet) \
            if self.postprocessing and pp.nnunet else None

    @classmethod
    def load(cls, spec: EnsembleSpec, weights_root, device: torch.device, timer: StageTimer, mode: str = "fast",
             backend: str = "torch", placement: Placement | Callable[[list[Member]], Placement] | None = None,
             verify: Verify | None = None) -> Ensemble:
        """The members described from their folders, then (`placement` may be chosen from them) their networks
        loading in the background."""
        with timer.stage("load"):
            members = [describe_member(weights_root, m, backend) for m in spec.members]
        if callable(placement):  # a server's check that its networks fit comes first
            placement = placement(members)
        with timer.stage("load"):
            import_case_code(members)
            ensemble = cls(spec, members, device, mode, placement, verify)
        datasets = ", ".join(sorted({m.id.dataset for m in spec.members if m.id.dataset})) or "no dataset folder"
        backends = Counter(m.backend for m in members)  # placement may have chosen them per member (on a CPU)
        backends_note = next(iter(backends)) if len(backends) == 1 else ", ".join(f"{n} {b}" for b, n in
                                                                                  backends.items())
        log(f"loading {len(spec.members)} members ({backends_note}) of {datasets} from {weights_root} in "
            f"{len(ensemble.groups)} preprocessing group(s) on {device}: their networks in the background, in the "
            "order they run")
        return ensemble

    @property
    def classes(self) -> int:
        return self.members[0].label_manager.num_segmentation_heads

    def wait_until_ready(self) -> None:
        """Wait for the networks the first image needs (every one where they are kept, else the first) and, on CUDA
        in fast mode, capture each architecture's graph: what a server does before it says it is healthy, so that
        its first case pays neither. A network that fails to load raises here."""
        members = [m for group in self.groups for m in group]
        for member in members if self.placement.keep_networks else members[:1]:
            network = self.loader.network(member)
            if self.device.type == "cuda" and self.mode == "fast" and self.placement.capture_graphs \
                    and isinstance(network, torch.nn.Module):
                self._graphed(member, network)

    def close(self) -> None:
        """Stop loading networks (those of members the deadline dropped are not waited for)."""
        self.loader.cancel()

    def preprocesses_on_host(self) -> bool:
        """Whether the groups' preprocessing runs on the host (a CPU run, or exact mode's stock preprocessing): then
        it can run ahead, beside another case's forwards, without touching the device's memory."""
        return self.device.type == "cpu" or self.mode == "exact"

    def preprocess_ahead(self, image: Image) -> list[Preprocessed]:
        """Every group's preprocessed data for the image, in group order, the image's voxels then released: what
        member_logits would make, made beforehand (app.read_ahead, while another case runs; no log, no timer)."""
        if not self.preprocesses_on_host():
            raise ValueError("preprocessing ahead runs on the host only")
        prepared = [self._preprocess(image, g, group) for g, group in enumerate(self.groups, start=1)]
        image.release_voxels()
        return prepared

    def _preprocess(self, image: Image, g: int, group: list[Member]) -> Preprocessed:
        # numpy's overflow warnings would be lines on stderr: the data are checked for NaN and Inf just below
        with np.errstate(over="ignore", invalid="ignore"):
            prepared = preprocess(image, group[0], self.device if self.mode == "fast" else None)
        if not torch.isfinite(prepared.data).all():  # e.g. intensities near float32's limit overflow the z-score
            raise PantherError(f"{image.path}: NaN or Inf after nnU-Net's normalization of group {g} (does the "
                               "image's intensity scale overflow float32?); no mask")
        return prepared

    def member_logits(self, image: Image, timer: StageTimer, deadline: Deadline | None = None,
                      release_voxels: bool = False, ahead: list[Preprocessed] | None = None
                      ) -> Iterator[tuple[Member, torch.Tensor, dict]]:
        """Each member's fp16 logits on its preprocessed grid and nnU-Net's properties to export them, one member
        after another in spec order within shared preprocessing groups (one preprocessing per group). With a
        deadline, members that would finish past it are skipped; `self.dropped` names them afterwards. The time
        the caller takes between two members (the export) counts as the member's finish for the deadline.
        `release_voxels`: the image's voxels are dropped once the last group is preprocessed. `ahead`: every
        group's data, preprocessed beforehand (preprocess_ahead), each released once its members have run."""
        deadline = deadline or Deadline(None)
        self.dropped = []
        if self._images:
            self.loader.next_image()
        self._images += 1
        completed = 0
        for g, group in enumerate(self.groups, start=1):
            if not deadline.another_group_fits(completed):
                self._drop(group, "no time for another group")
                if ahead is not None:
                    ahead[g - 1] = None
                continue
            if ahead is not None:  # made while another case ran: nothing of it counts against this deadline
                prepared, ahead[g - 1] = ahead[g - 1], None
                log(f"group {g}: preprocessed {image.shape} -> {tuple(prepared.data.shape[1:])} ahead")
            else:
                started = time.perf_counter()
                with timer.stage("preprocess"):
                    prepared = self._preprocess(image, g, group)
                deadline.record_preprocess(time.perf_counter() - started)
                log(f"group {g}: preprocessed {image.shape} -> {tuple(prepared.data.shape[1:])} "
                    f"in {timer.last['preprocess']:.1f}s")
            if g == len(self.groups) and release_voxels:
                image.release_voxels()  # 2-4 bytes per voxel less while the members run
            for m, member in enumerate(group):
                tiles = tile_count(prepared.data.shape[1:], member.configuration_manager.patch_size)
                if not deadline.member_fits(tiles, completed):
                    self._drop(group[m:], "projected to finish past the budget")
                    break
                device = self.device
                try:
                    with timer.stage("load"):
                        network = self.loader.network(member, deadline.wait_for_loading(tiles, completed))
                except TimeoutError:
                    self._drop(group[m:], "its network was still loading when the budget ran out")
                    break
                except RuntimeError as e:  # out of device memory placing it (on the loading thread)
                    if device == HOST or not out_of_memory(e):
                        raise
                    warn(f"out of device memory loading {member.spec.name}: this member runs on the host")
                    release_device_memory()
                    device, network = HOST, load_network(member, HOST)
                # what start-up and the first load took, once per run (benchmarks read it)
                if self._images == 1 and completed == 0 and m == 0 and g == 1:
                    log(f"  first network ready {timer.elapsed():.1f}s after start")
                try:
                    with timer.stage("forward"):
                        logits = self._member_logits(member, network, prepared.data, deadline, completed, device)
                except NonFiniteLogits:
                    warn(f"{member.spec.name}: NaN or Inf in its output on {image.path.name}: dropped, the other "
                         "members decide")
                    self.dropped.append(member)
                    self.loader.done_with(member)
                    continue
                del network
                self.loader.done_with(member)
                if logits is None:
                    self._drop(group[m:], "projected to finish past the budget")
                    break
                forward, started = timer.last["forward"], time.perf_counter()
                yield member, logits, prepared.properties
                del logits
                deadline.record_finish(time.perf_counter() - started)
                completed += 1
                # one line per member: its forwards, and what the caller did with its logits (the export)
                log(f"  member {self.members.index(member) + 1}/{len(self.members)} {self.labels[member.id]}: "
                    f"{tiles} tiles in {forward:.2f}s, to the input grid in {time.perf_counter() - started:.2f}s")
            del prepared

    def _member_logits(self, member: Member, network: Network, data: torch.Tensor, deadline: Deadline,
                       completed: int, device: torch.device) -> torch.Tensor | None:
        """The member's sliding window on `device`, the deadline asked after every forward; None where it stopped
        it; NonFiniteLogits where its output holds NaN or Inf."""
        patch = member.configuration_manager.patch_size
        if device.type == "cuda" and self.mode == "fast" and self.placement.capture_graphs \
                and isinstance(network, torch.nn.Module):
            network = self._graphed(member, network)

        def on_forward(tiles: range, total: int, seconds: float) -> bool:
            deadline.record_forward(seconds, warm_up=tiles.start == 0, tiles=len(tiles))
            return deadline.member_fits(total - tiles.stop, completed)

        return sliding_window_logits(data, network, patch, member.label_manager.num_segmentation_heads, device,
                                     on_forward, tiles_per_forward(member, device) if self.mode == "fast" else 1)

    def _graphed(self, member: Member, network: torch.nn.Module) -> Network:
        """The network's forward as a replay of its architecture's CUDA graph (captured at the first member that
        has it), or the network itself where capture failed."""
        if member.architecture not in self._graphs:
            self._graphs[member.architecture] = capture(network, (1, *member.input_shape), self.device)
        graphed = self._graphs[member.architecture]
        return network if graphed is None else graphed.bind(network)

    def _drop(self, members: list[Member], why: str) -> None:
        if members:
            self.dropped += members
            log(f"budget: dropped {len(members)} member(s) ({why}): {', '.join(self.labels[m.id] for m in members)}")

    def new_sum(self, image: Image) -> ProbabilitySum:
        """An empty probability sum on the image's grid, where the placement puts the input-grid stage."""
        return ProbabilitySum(image.shape, self.classes,
                              self.device if self.placement.input_grid_on_device else HOST)

    def predict(self, image: Image, timer: StageTimer, deadline: Deadline | None = None,
                ahead: list[Preprocessed] | None = None) -> np.ndarray:
        """The uint8 tumor mask on the image's grid. The image's voxels are released once preprocessed (`ahead`:
        the groups' data preprocessed beforehand). The deadline keeps back what the last stage (the mask,
        post-processing, the caller's write) will take."""
        if deadline is not None:
            deadline.reserve_final(self.final_stage.reserve(math.prod(image.shape)))
        total = self.new_sum(image)
        added = 0
        for member, logits, properties in self.member_logits(image, timer, deadline, True, ahead):
            with timer.stage("resample"):
                total.add(logits, member, properties, member.spec.weight, self.mode)
            del logits
            added += 1
        if added == 0:
            raise PantherError(f"{image.path}: every member's output held NaN or Inf; no mask")
        with timer.stage("combine"):
            if self.postprocessing is None:
                return total.mask(self.spec.tumor_label)
            return self.postprocessed_mask(total, image)

    def postprocessed_mask(self, total: ProbabilitySum, image: Image) -> np.ndarray:
        """The spec's post-processing on the label map over the sum's region (outside it every voxel is background;
        nnU-Net's own steps on the whole grid where they name the background). The sum is released once its labels
        (and, for never-empty, the tumor's probability) are taken: post-processing's working set comes after it."""
        labels, region = total.region_labels(), total.region
        probability = total.release(self.spec.tumor_label if self.postprocessing.never_empty_floor else None)
        if self._nnunet is not None and nnunet_needs_the_whole_grid(self._nnunet):
            whole = np.zeros(image.shape, np.uint8)
            whole[region] = labels
            labels, region = whole, tuple(slice(0, n) for n in image.shape)
        tumor, note = postprocess(labels, self.spec.tumor_label, tuple(reversed(image.spacing)), self.postprocessing,
                                  lambda: probability, self._nnunet)
        self.postprocessing_note = note
        if note:
            log(f"post-processing ({self.postprocessing}): {note}")
        mask = np.zeros(image.shape, np.uint8)
        mask[region] = tumor
        return mask
