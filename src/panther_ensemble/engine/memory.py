"""How much memory a case needs and how much there is, on the host and on the device, before any heavy work.

Host: what is available is the smallest room of the process's limits (engine.host_limits: MemAvailable, the cgroup
limits, RLIMIT_DATA and RLIMIT_AS; GC runs a 16 GiB job on a bigger host and its shim sets RLIMIT_DATA). A case
that would not fit is refused with one error line instead of being killed or failing an allocation halfway.
Device: the free memory at start against an estimate of networks, captured graphs, window buffers and the
input-grid stage; where it does not fit, the run gives up, in this order, the graph capture, the input-grid stage
on the device and keeping every network loaded (ensemble.Placement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..core.errors import PantherError
from ..core.log import log
from .activations import batch_activation_bytes, forward_bytes, tile_bytes_bound, tiles_per_forward
from .ensemble import Placement, group_members
from .host_limits import available_memory
from .input_grid import SLAB_BYTES
from .members import Member
from .preprocess import resampled_shape

# Host bytes per input voxel beyond the image itself, measured with benchmarks/memory.py (README: "Memory"):
# nnU-Net's preprocessing (a float32 copy, its normalization's temporary, the crop mask) and the image resampling's
# float64 stages, and, on the input grid, what the sum needs besides its classes (the mask being written).
PREPROCESS_BYTES_PER_VOXEL = 18
MASK_BYTES_PER_VOXEL = 1
# Model-grid bytes per voxel: the preprocessed data and its padded copy (float32) and the fp16 window sums (the
# logits per class and the weights); "exact" exports a member's whole crop three times at fp32 per class.
WINDOW_BYTES_PER_VOXEL = 4 + 4 + 2
EXACT_EXPORT_COPIES = 3
SLAB_TEMPORARIES = 4  # a slab's planes, its in-plane and along-axis results and its probabilities
# What a run adds whatever the image: the loading thread, torch's and oneDNN's thread pools and buffers (measured:
# 150-180 MiB on the test ensembles, tests/test_memory.py)
FIXED_BYTES = 256 * 2 ** 20
DEVICE_MARGIN = 1.15  # the allocator's fragmentation and cuDNN's workspaces over the counted tensors


def check_host_memory(file: Path, needed: int, available: tuple[int, str] | None = None) -> None:
    """A case that would not fit the smallest of the process's memory limits is refused before any heavy work."""
    available = available if available is not None else available_memory()
    if available is not None and needed > available[0]:
        raise PantherError(f"{file}: predicting it would need about {needed / 2 ** 30:.1f} GiB of memory at the "
                           f"models' spacing, but only {available[0] / 2 ** 30:.1f} GiB are available "
                           f"({available[1]}); is the image's size or spacing wrong?")


def check_networks_fit(what: str, members: list[Member], device: torch.device,
                       available: tuple[int, str] | None = None) -> None:
    """A server holds its networks for every case: they and the run's fixed costs must fit the host's room now."""
    available = available if available is not None else available_memory()
    needed = FIXED_BYTES + network_host_bytes(members, device)
    if available is not None and needed > available[0]:
        raise PantherError(f"{what}: its networks would need about {needed / 2 ** 30:.2f} GiB of memory before any "
                           f"case, but only {available[0] / 2 ** 30:.2f} GiB are available ({available[1]})")


# ONNX Runtime and OpenVINO keep, after a forward, what their largest forward allocated: the CPU sessions' one shared
# arena (onnx_network) 269 MiB after six 96^3 members' forwards of two tiles, each OpenVINO compiled model about
# 160 MiB (4 stages, 4-32 features, 2026-12-07), where the plans' bound of two such tiles at the first stage's own
# width (activations.tile_bytes_bound, at_least=0) is 216 MiB. Counted at this multiple of that bound: once for ONNX
# Runtime (the largest member's), per member for OpenVINO.
ONNX_CPU_BUFFER_FACTOR = 1.5


def kept_buffer_bytes(member: Member, device: torch.device) -> int:
    """What an ONNX Runtime or OpenVINO network keeps on the host after its forwards (ONNX_CPU_BUFFER_FACTOR)."""
    return int(ONNX_CPU_BUFFER_FACTOR * tiles_per_forward(member, device) * tile_bytes_bound(member, at_least=0))


def network_host_bytes(members: list[Member], device: torch.device) -> int:
    """What the members' networks hold in host memory: on a CPU their files' size and the buffers ONNX Runtime (one
    arena) and OpenVINO (per member) keep; nothing once on a GPU."""
    if device.type != "cpu":
        return 0
    onnxruntime = max((kept_buffer_bytes(m, device) for m in members if m.backend == "onnxruntime"), default=0)
    openvino = sum(kept_buffer_bytes(m, device) for m in members if m.backend == "openvino")
    return sum(m.network_file.stat().st_size for m in members) + onnxruntime + openvino


def _model_grid_voxels(group: list[Member], shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> int:
    return math.prod(resampled_shape(shape_zyx, spacing_zyx, group[0]))


def host_bytes(members: list[Member], shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...],
               image_bytes_per_voxel: int, mode: str, device: torch.device, input_grid_on_host: bool,
               networks_loaded: bool = False) -> int:
    """An upper estimate of the host memory one image needs beyond what the process holds already (its imports, and
    its networks where `networks_loaded`), from its header alone: the networks on a CPU, fixed costs and the largest
    of the preprocessing, the sliding window and the export."""
    voxels = math.prod(shape_zyx)
    classes = members[0].label_manager.num_segmentation_heads
    model_grid = max(_model_grid_voxels(group, shape_zyx, spacing_zyx) for group in group_members(members))
    image = voxels * image_bytes_per_voxel
    grid = voxels * 4 * classes if input_grid_on_host else 0  # the probability sum
    on_host = device.type == "cpu"
    preprocess = voxels * PREPROCESS_BYTES_PER_VOXEL + (model_grid * 4 if on_host else 0)
    # the sliding window's sums, and on a CPU one forward's activations (its tiles batched: engine.activations)
    activations = max(batch_activation_bytes(m, device) for m in members) if on_host else 0
    window = model_grid * (WINDOW_BYTES_PER_VOXEL + 2 * classes) + activations if on_host else 0
    export = SLAB_TEMPORARIES * SLAB_BYTES["cpu"] if input_grid_on_host else 0
    if mode == "exact":
        export += voxels * 4 * classes * EXACT_EXPORT_COPIES
    networks = network_host_bytes(members, device) if not networks_loaded else 0
    return FIXED_BYTES + networks + image + grid + max(preprocess, window + export) + voxels * MASK_BYTES_PER_VOXEL


def read_ahead_bytes(members: list[Member], shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...],
                     image_bytes_per_voxel: int, preprocessed: bool) -> int:
    """What a case read ahead (app.read_ahead) holds beside the case running: its voxels and, where it is
    preprocessed ahead too, the preprocessing's working set and every group's data on its grid (float32)."""
    voxels = math.prod(shape_zyx)
    image = voxels * image_bytes_per_voxel
    if not preprocessed:
        return image
    grids = [_model_grid_voxels(group, shape_zyx, spacing_zyx) * 4 for group in group_members(members)]
    return image + voxels * PREPROCESS_BYTES_PER_VOXEL + max(grids) + sum(grids)


@dataclass(frozen=True)
class DeviceEstimate:
    networks: int  # every member's weights
    graphs: int  # per captured architecture: its activation pool and its own copy of the weights
    forward: int  # the activations of one eager forward (the allocator keeps them cached)
    window: int  # the largest group's model-grid buffers
    input_grid: int  # the probability sum and a slab's temporaries
    one_network: int  # the largest member's weights
    arenas: tuple[int, ...] = ()  # ONNX Runtime members: each session's arena (its own activations), capped at this

    def total(self, placement: Placement) -> int:
        networks = self.networks if placement.keep_networks else 2 * self.one_network
        graphs = self.graphs if placement.capture_graphs else 0
        grid = self.input_grid if placement.input_grid_on_device else 0
        arenas = sum(self.arenas) if placement.keep_networks else 2 * max(self.arenas, default=0)
        return int(DEVICE_MARGIN * (networks + graphs + self.forward + self.window + grid) + arenas)


def estimate_device(members: list[Member], shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...]
                    ) -> DeviceEstimate:
    voxels = math.prod(shape_zyx)
    classes = members[0].label_manager.num_segmentation_heads
    sizes = [forward_bytes(m) for m in members]
    architectures = {}
    for member, (parameters, activations) in zip(members, sizes):
        architectures[member.architecture] = parameters + activations
    window = max(_model_grid_voxels(group, shape_zyx, spacing_zyx) for group in group_members(members)) * \
        (WINDOW_BYTES_PER_VOXEL + 2 * classes)
    grid = voxels * 4 * classes + SLAB_TEMPORARIES * SLAB_BYTES["device"]
    torch_sizes = [size for m, size in zip(members, sizes) if m.backend != "onnxruntime"]
    return DeviceEstimate(networks=sum(p for p, _ in torch_sizes), graphs=sum(architectures.values()) if torch_sizes
                          else 0, forward=max((a for _, a in torch_sizes), default=0), window=window, input_grid=grid,
                          one_network=max((p for p, _ in torch_sizes), default=0),
                          arenas=tuple(onnx_arena_bytes(p, a) for m, (p, a) in zip(members, sizes)
                                       if m.backend == "onnxruntime"))


def onnx_arena_bytes(parameters: int, activations: int) -> int:
    """An ONNX Runtime CUDA session's arena: its weights and one tile forward's activations in fp32 (twice the fp16
    ones the dry run counted), with the margin; the session is capped at it (onnx_network)."""
    return int(DEVICE_MARGIN * (parameters + 2 * activations))


ADAPTATIONS = (("no CUDA graph capture", dict(capture_graphs=False)),
               ("the input-grid stage on the host", dict(input_grid_on_device=False)),
               ("networks loaded when needed, not all kept", dict(keep_networks=False)))


def plan_device(estimate: DeviceEstimate, free_bytes: int) -> Placement:
    """The placement whose estimate fits the free device memory, giving things up in ADAPTATIONS' order; logged."""
    placement, given_up = Placement(), []
    for name, change in ADAPTATIONS:
        if estimate.total(placement) <= free_bytes:
            break
        placement = replace(placement, **change)
        given_up.append(name)
    fits = estimate.total(placement) <= free_bytes
    log(f"device memory: {free_bytes / 2 ** 30:.2f} GiB free; estimate {estimate.total(Placement()) / 2 ** 30:.2f} "
        f"GiB (networks {estimate.networks / 2 ** 30:.2f}, graphs {estimate.graphs / 2 ** 30:.2f}, forward "
        f"{estimate.forward / 2 ** 30:.2f}, window {estimate.window / 2 ** 30:.2f}, input grid "
        f"{estimate.input_grid / 2 ** 30:.2f})" + (f"; to fit: {', '.join(given_up)}" if given_up else "")
        + ("" if fits else f" — still {estimate.total(placement) / 2 ** 30:.2f} GiB: steps that run out of device "
           "memory fall back to the host"))
    return placement


def device_free_bytes(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0]
