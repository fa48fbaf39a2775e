"""Gaussian sliding-window prediction of one network, as nnU-Net does it.

On a CPU, tiles go through the network a few at a time (engine.activations.tiles_per_forward). Per tile, the arithmetic
is nnU-Net's: zero padding to the patch size, tile step 0.5, gaussian importance (sigma 1/8, scaled to 10),
fp16 accumulation, autocast on CUDA only, no mirroring.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

from ..core.log import warn
from .devices import HOST, out_of_memory, release_device_memory
from .members import Network

TILE_STEP_SIZE = 0.5

# Called after each forward with (the batch's tile indices, tiles in all, seconds the forward took); returns whether
# to go on: False stops the network (its partial sum is of no use).
OnForward = Callable[[range, int, float], bool]


class NonFiniteLogits(RuntimeError):
    """The network gave NaN or Inf somewhere: its member's output cannot be trusted (the ensemble drops it)."""


def tile_slicers(image_size: Sequence[int], patch_size: Sequence[int], step: float = TILE_STEP_SIZE) -> list[tuple]:
    """The tiles in nnU-Net's order; a 2-D patch on a 3-D image tiles every slice of the first axis."""
    image_size, patch_size = tuple(image_size), tuple(patch_size)
    if len(patch_size) == len(image_size):
        steps = compute_steps_for_sliding_window(image_size, patch_size, step)
        return [(slice(None), *(slice(s, s + p) for s, p in zip(starts, patch_size)))
                for starts in itertools.product(*steps)]
    steps = compute_steps_for_sliding_window(image_size[1:], patch_size, step)
    return [(slice(None), d, *(slice(s, s + p) for s, p in zip(starts, patch_size)))
            for d in range(image_size[0]) for starts in itertools.product(*steps)]


def tile_count(image_size: Sequence[int], patch_size: Sequence[int]) -> int:
    """Tiles of one network's sliding window over an image of this (spatial) size, padded to the patch first."""
    leading = len(image_size) - len(patch_size)
    padded = [*image_size[:leading], *(max(s, p) for s, p in zip(image_size[leading:], patch_size))]
    return len(tile_slicers(padded, patch_size))


@torch.inference_mode()
def sliding_window_logits(data: torch.Tensor, network: Network, patch_size: Sequence[int], num_classes: int,
                          device: torch.device, on_forward: OnForward | None = None, batch: int = 1,
                          ) -> torch.Tensor | None:
    """fp16 logits (num_classes, *data.shape[1:]), or None where `on_forward` stopped the network. They stay where
    they were accumulated: on the device, or on the host after a device out-of-memory. `batch`: tiles per
    forward."""
    try:
        return _predict(data, network, patch_size, num_classes, device, device, on_forward, batch)
    except RuntimeError as e:  # torch's OutOfMemoryError, and cuDNN's allocation failures
        if device == HOST or isinstance(e, NonFiniteLogits) or not out_of_memory(e):
            raise
        warn("out of device memory in the sliding window: its sums are kept on the host (the network stays on the "
             "device)")
        release_device_memory()
    return _predict(data, network, patch_size, num_classes, device, HOST, on_forward, batch)


def _predict(data: torch.Tensor, network: Network, patch_size: Sequence[int], num_classes: int,
             device: torch.device, results_device: torch.device, on_forward: OnForward | None, batch: int,
             ) -> torch.Tensor | None:
    # padded where the sums are: after an out-of-memory on the device, the padded copy is the host's
    padded, revert_padding = pad_nd_image(data.to(results_device), patch_size, "constant", {"value": 0}, True, None)
    slicers = tile_slicers(padded.shape[1:], patch_size)
    logits = torch.zeros((num_classes, *padded.shape[1:]), dtype=torch.half, device=results_device)
    n_predictions = torch.zeros(padded.shape[1:], dtype=torch.half, device=results_device)
    gaussian = compute_gaussian(tuple(patch_size), sigma_scale=1. / 8, value_scaling_factor=10,
                                device=results_device)
    network.to(device)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        for start in range(0, len(slicers), batch):
            tiles = range(start, min(start + batch, len(slicers)))
            started = time.perf_counter()
            predictions = network(torch.stack([padded[slicers[i]] for i in tiles]).to(device)).to(results_device)
            for prediction, i in zip(predictions, tiles):
                prediction *= gaussian
                logits[slicers[i]] += prediction
                n_predictions[slicers[i][1:]] += gaussian
            if on_forward is not None:
                if device.type == "cuda":  # the forward's time, not its launch's: the deadline projects from it
                    torch.cuda.current_stream(device).synchronize()
                if not on_forward(tiles, len(slicers), time.perf_counter() - started):
                    return None
    torch.div(logits, n_predictions, out=logits)
    if not torch.isfinite(logits).all():
        raise NonFiniteLogits("NaN or Inf in its logits")
    return logits[(slice(None), *revert_padding[1:])]
