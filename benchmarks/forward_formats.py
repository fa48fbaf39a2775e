"""One ResEncL tile forward under fp16 autocast (as predict runs it on a GPU), in torch's default memory format
against channels_last_3d (NDHWC, the layout cuDNN's fp16 tensor-core kernels use natively): median seconds,
TFLOP/s and how far the outputs differ. A measurement for the choice of memory format, not part of the product;
gpu.sh runs it before the benchmark.

Usage, from the repo root: python benchmarks/forward_formats.py OUT.json [gpu|cpu|smoke] [REPEATS]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from panther_ensemble.demo.synthetic import ModelConfig, random_network
from panther_ensemble.tools.benchmark import PRESETS, bench_plans


def timed_forwards(network: torch.nn.Module, tile: torch.Tensor, repeats: int) -> tuple[list[float], torch.Tensor]:
    """Seconds of each forward after one untimed one (cuDNN's autotuning), and the last output."""
    times = []
    with torch.inference_mode(), torch.autocast(tile.device.type, enabled=tile.device.type == "cuda"):
        for i in range(repeats + 1):
            if tile.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            output = network(tile)
            if tile.device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - started)
    return times, output.float()


def main(out: Path, preset: str = "gpu", repeats: int = 10) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as work:
        plans = bench_plans(Path(work), PRESETS[preset])
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    network = random_network(plans, ModelConfig(plans=plans), seed=1).eval().to(device)
    tile = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        random_network(plans, ModelConfig(plans=plans), seed=1)(torch.empty(1, 1, *patch))
    flops = counter.get_total_flops()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "patch": patch, "tflop_per_forward": flops / 1e12, "repeats": repeats}
    default_times, default_out = timed_forwards(network, tile, repeats)
    network = network.to(memory_format=torch.channels_last_3d)
    last_times, last_out = timed_forwards(network, tile.to(memory_format=torch.channels_last_3d), repeats)
    for name, times in (("default", default_times), ("channels_last_3d", last_times)):
        median = statistics.median(times)
        report[name] = {"median_s": median, "tflops": flops / median / 1e12, "runs_s": [round(t, 4) for t in times]}
    report["speedup"] = report["default"]["median_s"] / report["channels_last_3d"]["median_s"]
    report["max_abs_difference"] = float((default_out - last_out).abs().max())
    report["argmax_differing_fraction"] = float((default_out.argmax(1) != last_out.argmax(1)).float().mean())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("out", type=Path, help="the JSON to write")
    parser.add_argument("preset", nargs="?", default="gpu", choices=("gpu", "cpu", "smoke"), help="(default: gpu)")
    parser.add_argument("repeats", nargs="?", type=int, default=10, help="timed forwards per format (default: 10)")
    args = parser.parse_args()
    main(args.out, args.preset, args.repeats)
