"""What a network's forward holds at once: the peak of its live tensors in a dry run on PyTorch's meta device
(nothing computed), for the device plan (engine.memory: one fp16 tile); and how many fp32 tiles go through a network
at once on a CPU (tiles_per_forward), from a bound of the plans that those dry runs check."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .host_limits import available_memory
from .members import Member, network_from_plans

# On a CPU, torch runs one small 3-D tile through its slow reference convolution and a batch through oneDNN, and
# large tiles go faster in batches too (benchmarks/cpu_batch.py, 2026-12-07, 2 idle cores, seconds per tile alone /
# 2 / 4 at a time: 64^3 0.166 / 0.047 / 0.058, 96^3 0.284 / 0.208 / 0.244; with other runs on the cores 96^3 took
# 1.72 / 1.08 / 1.18); beyond four nothing was gained and the memory grows with every tile.
CPU_MAX_TILES_PER_FORWARD = 4
# The share of the host's room one forward's activations may take: the rest is the case's (engine.memory's plan
# counts the batch's activations in it).
CPU_ACTIVATION_SHARE = 0.25


class _LiveStorage(TorchDispatchMode):
    """Peak bytes of the tensors alive at once during a forward run on the meta device (nothing computed)."""

    def __init__(self) -> None:
        super().__init__()
        self.step, self.spans, self.sizes = 0, {}, {}
        self.storages = []  # held, so that no storage's address is reused for another while counting

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.step += 1
        for tensor in tree_flatten((args, kwargs))[0]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage()._cdata in self.spans:
                self.spans[tensor.untyped_storage()._cdata][1] = self.step
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage()._cdata not in self.spans:
                storage = tensor.untyped_storage()
                self.storages.append(storage)
                self.spans[storage._cdata], self.sizes[storage._cdata] = [self.step, self.step], storage.nbytes()
        return out

    def peak(self) -> int:
        change: dict[int, int] = {}
        for key, (first, last) in self.spans.items():
            change[first] = change.get(first, 0) + self.sizes[key]
            change[last + 1] = change.get(last + 1, 0) - self.sizes[key]
        live = peak = 0
        for step in sorted(change):
            live += change[step]
            peak = max(peak, live)
        return peak


def activation_bytes(network: torch.nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.half,
                     batch: int = 1) -> int:
    """Peak bytes of the tensors alive at once in a forward of `batch` tiles of `input_shape` (channels first) in
    `dtype`; `network` built on the meta device (it is cast to `dtype`)."""
    if any(p.device.type != "meta" for p in network.parameters()):
        raise ValueError("activation_bytes dry-runs a network built on the meta device")
    network = network.to(dtype).eval()
    tracker = _LiveStorage()
    with torch.inference_mode(), tracker:
        network(torch.empty((batch, *input_shape), device="meta", dtype=dtype))
    return tracker.peak()


def _meta_network(member: Member) -> torch.nn.Module:
    with torch.device("meta"):
        return network_from_plans(member.plans_manager, member.configuration_manager, member.dataset_json)


def forward_bytes(member: Member, batch: int = 1, dtype: torch.dtype = torch.half) -> tuple[int, int]:
    """(parameter bytes in fp32, peak activation bytes of one forward of `batch` tiles in `dtype`: fp16 as autocast
    runs convolutions on a GPU, fp32 on a CPU), from a dry run of the member's network on the meta device."""
    network = _meta_network(member)
    # parameters() and buffers(), not state_dict(): the decoder holds the encoder, whose tensors state_dict repeats
    parameters = sum(t.numel() * 4 for t in itertools.chain(network.parameters(), network.buffers()))
    return parameters, activation_bytes(network, member.input_shape, dtype, batch)


# On a CPU the batch follows from a bound of one tile's fp32 activations from the plans alone, never from a dry run:
# a dry run on the meta device imports torch's dynamo and sympy (instance norm's meta decomposition), 70 MB held for
# the process's life, and mid-case, under GC's RLIMIT_DATA, an import that fails is an abort, not an error line. The
# dry runs count 4 first-stage-wide full-resolution tensors at their peak (the demo's ResEnc, ResEncL, a 96^3
# ResEnc, a plain U-Net; tests/test_memory.py holds the bound to them): twice that.
FULL_RESOLUTION_TENSORS_BOUND = 8


def tile_bytes_bound(member: Member, at_least: int = 32) -> int:
    """An upper bound of one tile's fp32 activations on a CPU from the plans alone (no dry run), the first stage
    taken `at_least` this wide (32, nnU-Net's default stem: the torch forward's margin; 0: as the plans say)."""
    kwargs = member.configuration_manager.network_arch_init_kwargs
    features = kwargs.get("features_per_stage") if isinstance(kwargs, dict) else None
    # an architecture whose plans name no features_per_stage is sized as nnU-Net's default stem
    widest = max(features[0] if features else 32, member.label_manager.num_segmentation_heads, at_least)
    return FULL_RESOLUTION_TENSORS_BOUND * widest * math.prod(member.input_shape[1:]) * 4


def tiles_per_forward(member: Member, device: torch.device, room: int | None = None) -> int:
    """Tiles per network forward: one on a GPU, as nnU-Net; on a CPU as many as CPU_ACTIVATION_SHARE of the host's
    room (`room`, or what available_memory finds) holds at the plans' bound of fp32 activations per tile, up to
    CPU_MAX_TILES_PER_FORWARD or the member's measured fastest (app.forward_choice), whichever is fewer."""
    if device.type != "cpu":
        return 1
    if room is None:
        found = available_memory()
        room = found[0] if found is not None else 2 ** 62
    fits = int(room * CPU_ACTIVATION_SHARE) // tile_bytes_bound(member)
    return max(1, min(member.tiles_per_forward or CPU_MAX_TILES_PER_FORWARD, CPU_MAX_TILES_PER_FORWARD, fits))


def batch_activation_bytes(member: Member, device: torch.device) -> int:
    """What one forward's tiles hold on the host at most (engine.memory's plan): nothing on a GPU."""
    return tiles_per_forward(member, device) * tile_bytes_bound(member) if device.type == "cpu" else 0
