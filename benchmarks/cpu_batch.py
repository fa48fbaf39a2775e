"""A tile's forward on the CPU alone against batched, per patch size: what decides how many tiles go through a
network at once (engine.activations.tiles_per_forward). ResEnc networks of nnU-Net's planner cut to 4 stages of
4-32 features (the cpu benchmark preset's), patches 64^3, 96^3 and 128^3; batches of 1, 2, 4 and 8 tiles run
alternated, each timed as a whole forward, medians of the seconds per tile; the batched outputs against the
single-tile ones (largest difference), and each tile's fp32 activations from a dry run on the meta device.

    python benchmarks/cpu_batch.py [--patches 64,96,128] [--batches 1,2,4,8] [--repeats 3] [--out FILE]
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


def per_tile_seconds(network: torch.nn.Module, tiles: torch.Tensor) -> float:
    started = time.perf_counter()
    network(tiles)
    return (time.perf_counter() - started) / len(tiles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--patches", default="64,96,128", help="cube edges (default: 64,96,128)")
    parser.add_argument("--batches", default="1,2,4,8", help="tiles per forward (default: 1,2,4,8)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds (default: 3)")
    parser.add_argument("--out", type=Path, help="JSON report")
    args = parser.parse_args()
    from panther_ensemble.engine.activations import activation_bytes

    preset, batches = PRESETS["cpu"], [int(b) for b in args.batches.split(",")]
    report = {"threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%d %H:%M"), "patches": {}}
    with tempfile.TemporaryDirectory() as work, torch.inference_mode():
        for edge in (int(p) for p in args.patches.split(",")):
            plans = bench_plans(Path(work) / str(edge), preset.__class__(**{**preset.__dict__,
                                                                             "patch_size": (edge,) * 3}))
            network = random_network(plans, ModelConfig(plans=plans), seed=1).eval()
            with torch.device("meta"):
                meta = random_network(plans, ModelConfig(plans=plans), seed=1)
            patch = plans["configurations"]["3d_fullres"]["patch_size"]
            tiles = torch.randn((max(batches), 1, *patch))
            single = torch.cat([network(tiles[i:i + 1]) for i in range(len(tiles))])
            runs: dict[int, list[float]] = {b: [] for b in batches}
            difference = {}
            for _ in range(args.repeats):
                for batch in batches:  # alternated
                    runs[batch].append(per_tile_seconds(network, tiles[:batch]))
            for batch in batches:
                batched = torch.cat([network(tiles[i:i + batch]) for i in range(0, len(tiles), batch)])
                difference[batch] = float((batched - single).abs().max())
            medians = {b: statistics.median(r) for b, r in runs.items()}
            report["patches"][str(patch)] = {
                "activation_bytes_fp32_per_tile": activation_bytes(meta, (1, *patch), torch.float32),
                "seconds_per_tile": medians, "speedup_over_one": {b: medians[1] / medians[b] for b in batches},
                "max_abs_difference_to_single": difference}
            print(f"patch {patch}: " + ", ".join(f"{b} at a time {medians[b]:.3f} s/tile ("
                                                 f"{medians[1] / medians[b]:.2f}x, max diff {difference[b]:.1e})"
                                                 for b in batches)
                  + f"; activations {report['patches'][str(patch)]['activation_bytes_fp32_per_tile'] / 2 ** 20:.0f}"
                  " MiB per tile (fp32)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
