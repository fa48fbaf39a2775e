"""The CUDA-graph forward gives the eager forward's logits, for each member whose weights it is given. Needs a
GPU: benchmarks/gpu.sh runs it on the lent device; here (no GPU) it is skipped, and predict never takes the path."""

from __future__ import annotations

import pytest
import torch
from test_predict import small_network

from panther_ensemble.engine.cuda_graph import GraphedForward, capture

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_replays_equal_the_eager_forward_for_each_bound_network():
    device = torch.device("cuda")
    networks = [small_network(seed).to(device) for seed in (1, 2)]
    tiles = torch.randn(3, 1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    graphed = capture(networks[0], (1, 1, 16, 32, 32), device)
    assert isinstance(graphed, GraphedForward)
    with torch.inference_mode(), torch.autocast("cuda"):
        for network in networks * 2:  # bound back and forth
            graphed.bind(network)
            for tile in tiles:
                torch.testing.assert_close(graphed(tile).clone(), network(tile), rtol=0, atol=0)
