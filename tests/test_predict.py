"""The sliding window: several tiles per forward on a CPU give nnU-Net's logits, one tile per forward on a GPU."""

from __future__ import annotations

import time

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from panther_ensemble.engine.sliding_window import sliding_window_logits, tile_count, tile_slicers


def small_network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), 1, 3, 1,
                            norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                            nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    return network.eval()


@pytest.mark.parametrize("batch", [2, 4])
def test_batched_tiles_equal_one_tile_at_a_time(batch):
    data = torch.randn(1, 30, 40, 45, generator=torch.Generator().manual_seed(3))
    network = small_network(1)
    calls = []

    def on_forward(tiles, total, seconds):
        calls.append((tiles, total))
        return True

    one = sliding_window_logits(data, network, (16, 32, 32), 3, torch.device("cpu"))
    batched = sliding_window_logits(data, network, (16, 32, 32), 3, torch.device("cpu"), on_forward, batch)
    assert one.dtype == batched.dtype == torch.half and one.shape == (3, 30, 40, 45)
    # oneDNN's float sums differ from the reference loop's in the last bits, which the fp16 accumulation of
    # overlapping tiles rounds to a few fp16 steps at most (0.002 each near 2.0)
    difference = (one.float() - batched.float()).abs()
    assert difference.max() < 0.02 and difference.mean() < 1e-4
    assert (one.argmax(0) != batched.argmax(0)).float().mean() <= 0.0005  # the parity bound's voxel share
    tiles = tile_count(data.shape[1:], (16, 32, 32))
    assert tiles == len(tile_slicers(data.shape[1:], (16, 32, 32))) > batch  # several batches, the last partial
    assert [t for r, _ in calls for t in r] == list(range(tiles)) and all(len(r) <= batch for r, _ in calls)
    assert {total for _, total in calls} == {tiles}


def test_on_forward_stops_the_network():
    data = torch.randn(1, 30, 40, 45, generator=torch.Generator().manual_seed(4))
    calls = []

    def stop_after_two(tiles, total, seconds):
        calls.append(tiles)
        return len(calls) < 2

    assert sliding_window_logits(data, small_network(1), (16, 32, 32), 3, torch.device("cpu"), stop_after_two) is None
    assert calls == [range(0, 1), range(1, 2)]


def test_tile_count_pads_small_images_to_the_patch():
    assert tile_count((10, 20, 30), (16, 32, 32)) == 1
    assert tile_count((16, 48, 32), (16, 32, 32)) == 2  # steps of half a patch: 0 and 16 along the second axis
    assert tile_count((5, 20, 30), (32, 32)) == 5  # a 2-D patch tiles every slice


class SlowOnTheDevice(torch.nn.Module):
    """A forward of many queued kernels: launched in microseconds, run in milliseconds."""

    def forward(self, x):
        y = torch.ones(4096, 4096, device=x.device)
        for _ in range(20):
            y = y @ y / 4096
        return torch.zeros(len(x), 3, *x.shape[2:], device=x.device) + y[0, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu.sh runs it there)")
def test_on_a_gpu_each_forward_is_timed_to_its_end():
    """The deadline projects from these seconds: they must be the device's time, not the launch's."""
    seconds = []
    data = torch.zeros(1, 16, 64, 64, device="cuda")
    started = time.perf_counter()
    sliding_window_logits(data, SlowOnTheDevice(), (16, 32, 32), 3, torch.device("cuda"),
                          lambda tiles, total, s: seconds.append(s) or True)
    assert sum(seconds) >= 0.8 * (time.perf_counter() - started)
