"""A network's tile forward captured once as a CUDA graph and replayed for every member of that architecture.

Eager, a ResEncL forward is about a thousand kernel launches, each a trip through Python: while the next members
load on another thread (pipeline.load_in_background) the two threads share one interpreter lock, the launches
slow down and the GPU waits (on an H200, Task 1's 72 forwards took 4.8 s for 3.85 s of kernels). A replay is
one launch. The graph computes with parameters of its own; each member's weights are copied into them (one
device-to-device copy) before its tiles. Same kernels, same inputs: the same logits as the eager forward.
"""

from __future__ import annotations

import copy
import time

import torch

from ..core.log import log


class GraphedForward:
    """Forwards of tiles of one shape through networks of one architecture, by replaying one captured graph."""

    def __init__(self, network: torch.nn.Module, tile_shape: tuple[int, ...], device: torch.device) -> None:
        self.network = copy.deepcopy(network)
        self.tensors = _weights(self.network)
        self.input = torch.zeros(tile_shape, device=device)
        # one eager forward first, on a side stream as capture needs: cuDNN picks its kernels there, not in capture;
        # no autocast cache: the graph casts the weights it is given at each replay
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.autocast("cuda", cache_enabled=False):
            self.network(self.input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the loading thread may copy the next weights to the device (another stream) meanwhile
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), \
                torch.autocast("cuda", cache_enabled=False):
            self.output = self.network(self.input)

    def bind(self, network: torch.nn.Module) -> GraphedForward:
        """Computes with `network`'s weights from now on."""
        with torch.inference_mode():  # the graph's parameters were made in inference mode (capture)
            torch._foreach_copy_(self.tensors, _weights(network))
        return self

    def to(self, device: torch.device) -> GraphedForward:
        """Already on its device (predict moves networks there)."""
        return self

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """The logits of the tiles, in the graph's output buffer: valid until the next call."""
        self.input.copy_(tiles)
        self.graph.replay()
        return self.output


def _weights(network: torch.nn.Module) -> list[torch.Tensor]:
    """Each parameter and buffer once (state_dict() lists a ResEncL's encoder twice, through its decoder: 3.75x the
    bytes to copy per member)."""
    return [*network.parameters(), *network.buffers()]


def capture(network: torch.nn.Module, tile_shape: tuple[int, ...], device: torch.device) -> GraphedForward | None:
    """The network's graph, or None (logged) where CUDA cannot capture it: predict then runs it eagerly."""
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            graphed = GraphedForward(network, tile_shape, device)
        log(f"  CUDA graph of {type(network).__name__} for tiles {list(tile_shape)} captured in "
            f"{time.perf_counter() - started:.2f}s (warm-up forward included)")
        return graphed
    except (RuntimeError, torch.OutOfMemoryError) as e:
        log(f"CUDA graph capture failed, running the network eagerly: {str(e).splitlines()[0][:200]}")
        torch.cuda.empty_cache()
        return None
