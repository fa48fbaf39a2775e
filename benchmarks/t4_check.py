"""The T4 check, ready for a lent GPU (under 8 minutes there): six ResEncL members on a 512 x 512 x 200 case and a
PANTHER-sized one, CUDA graph capture on and off.

    python benchmarks/t4_check.py --out DIR [--preset gpu|smoke] [--max-minutes 7] [--device auto|cuda|cpu]

Members: random weights in nnU-Net's ResEncL architecture from its own planner (the benchmark's gpu preset, 1 mm,
patch 192^3, the paper's 3 + 2 + 1 folds) with a weights.sha256 manifest. Cases: 512 x 512 x 200 voxels at
0.7 x 0.7 x 1.5 mm and the benchmark's PANTHER Task 1 geometry (320 x 260 x 72 at 1.19 x 1.19 x 3 mm). Each run is
`panther-ensemble predict --budget 0` in a child process (its device statistics its own), graphs on and off
(PANTHER_CUDA_GRAPHS=off). From each run's log: the device estimate and placement, reserved device memory
(torch.cuda.max_memory_reserved: the allocator's cache and graph pools), capture time, start to first forward,
warm-up (first tile) and steady per-tile time, verify time, whole case. Last, each case's mask against the
per-member reference (stock nnU-Net, one predictor per member), while time is left. Writes DIR/t4_check.json and
prints a table. `--preset smoke` runs the same on small networks and cases (tests/test_t4_check.py, on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from panther_ensemble.app.manifest import MANIFEST_NAME, write_manifest
from panther_ensemble.demo.synthetic import write_gc_input
from panther_ensemble.engine.ensemble import Placement
from panther_ensemble.engine.members import describe_member
from panther_ensemble.engine.memory import estimate_device, plan_device
from panther_ensemble.engine.spec import load_spec
from panther_ensemble.tools.benchmark import PRESETS, T1_GEOMETRY, bench_plans, parity, set_up
from panther_ensemble.tools.reference import stock_ensemble_mask

SOCKET = "abdominal-t1-mri"
T4_FREE_BYTES = 15 * 2 ** 30  # a T4's 16 GB (15.1 GiB to CUDA) less its context: what the estimate is planned against
CASES = {
    "gpu": {"512x512x200": dict(shape_zyx=(200, 512, 512), spacing_xyz=(0.7, 0.7, 1.5), seed=51),
            "panther_t1": dict(**T1_GEOMETRY, seed=41)},
    "smoke": {"large": dict(shape_zyx=(40, 96, 96), spacing_xyz=(0.7, 0.7, 1.5), seed=51),
              "panther_t1": dict(shape_zyx=(20, 72, 88), spacing_xyz=(1.19, 1.19, 3.0), seed=41)},
}


def number(pattern: str, text: str, default: float | None = None) -> float | None:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else default


def read_log(log: str) -> dict:
    """The figures of one run, from its log."""
    members = re.findall(r"member \d+/\d+ .*: (\d+) tiles in ([\d.]+)s", log)  # one line per member
    tiles, forwards = [int(t) for t, _ in members], [float(f) for _, f in members]
    per_tile = [f / t for f, t in zip(forwards, tiles) if t]
    return {
        "estimate_gib": number(r"estimate ([\d.]+) GiB", log),
        "free_gib": number(r"device memory: ([\d.]+) GiB free", log),
        "adaptations": (re.search(r"to fit: ([^—\n]+)", log) or [None, ""])[1].strip(),
        "device_reserved_gib": number(r"device ([\d.]+) GiB reserved", log),
        "host_peak_gib": number(r"peak memory host ([\d.]+) GiB", log),
        "capture_seconds": [float(x) for x in re.findall(r"captured in ([\d.]+)s", log)],
        "first_network_ready_seconds": number(r"network ready ([\d.]+)s after start", log),
        "verify_seconds": number(r"verify ([\d.]+)s", log),
        "forward_seconds": forwards,
        "tiles_per_member": tiles,
        "first_member_seconds_per_tile": round(per_tile[0], 4) if per_tile else None,
        "steady_seconds_per_tile": round(statistics.median(per_tile[1:]), 4) if len(per_tile) > 1 else None,
        "total_seconds": number(r"total ([\d.]+)s", log),
    }


def run_case(spec: Path, weights: Path, input_dir: Path, out: Path, device: str, graphs: bool) -> tuple[dict, Path]:
    env = {**os.environ, "PANTHER_CUDA_GRAPHS": "on" if graphs else "off"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "panther_ensemble.cli", "predict", "--input", str(input_dir),
                             "--output", str(out), "--ensemble", str(spec), "--weights", str(weights), "--device",
                             device, "--budget", "0"], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"predict failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    figures = read_log(result.stdout)
    figures["wall_seconds"] = round(time.perf_counter() - started, 2)
    figures["stderr"] = result.stderr.strip()
    return figures, next((out / "images").rglob("*.mha"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", choices=("gpu", "smoke"), default="gpu")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--max-minutes", type=float, default=7.0, help="no reference run starts after this")
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.out / "work"
    preset = PRESETS[args.preset]
    setup = set_up(work, preset, "t1", bench_plans(work, preset))
    if not (setup.weights / MANIFEST_NAME).exists():
        write_manifest(setup.weights)
    report = {"preset": args.preset, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "members": len(load_spec(setup.spec).members), "setup_seconds": round(time.perf_counter() - started, 1),
              "cases": {}}
    masks = {}
    members = [describe_member(setup.weights, m) for m in load_spec(setup.spec).members]
    for case, geometry in CASES[args.preset].items():
        input_dir = write_gc_input(work / f"input-{case}", SOCKET, {f"{case}.mha": geometry})
        shape, spacing = geometry["shape_zyx"], tuple(reversed(geometry["spacing_xyz"]))
        estimate = estimate_device(members, shape, spacing)
        report["cases"][case] = {
            "shape_zyx": shape, "spacing_xyz": geometry["spacing_xyz"],
            "device_estimate_gib": {k: round((sum(v) if isinstance(v, tuple) else v) / 2 ** 30, 3)  # arenas: a tuple
                                    for k, v in asdict(estimate).items()},
            "device_estimate_total_gib": round(estimate.total(Placement()) / 2 ** 30, 2),
            "input_grid_bytes_per_voxel": round(estimate.input_grid / np.prod(shape), 1),
            "t4_placement": asdict(plan_device(estimate, T4_FREE_BYTES))}
        for graphs in (True, False):
            name = "graphs on" if graphs else "graphs off"
            figures, mask = run_case(setup.spec, setup.weights, input_dir, work / f"out-{case}-{name[-3:]}",
                                     args.device, graphs)
            report["cases"][case][name] = figures
            masks[case, graphs] = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
            print(f"{case}, {name}: {json.dumps(figures)}", flush=True)
        report["cases"][case]["graphs on vs off: voxels differing"] = int((masks[case, True] !=
                                                                          masks[case, False]).sum())
        write(args.out, report)
    for case in CASES[args.preset]:
        if time.perf_counter() - started > args.max_minutes * 60:
            report["cases"][case]["parity"] = "not run: --max-minutes reached"
            continue
        image = next((work / f"input-{case}" / "images" / SOCKET).iterdir())
        device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
        reference = stock_ensemble_mask(image, setup.weights, load_spec(setup.spec), device)
        report["cases"][case]["parity"] = {name: parity(masks[case, graphs], reference) for name, graphs in
                                           (("graphs on", True), ("graphs off", False))}
        report["cases"][case]["reference_tumor_fraction"] = round(float(np.mean(reference)), 4)
        write(args.out, report)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write(args.out, report)
    print(json.dumps(report, indent=1))


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "t4_check.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
