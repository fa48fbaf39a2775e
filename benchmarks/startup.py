"""Time from a process's start to its first network forward, with ResEncL-sized weights and their manifest.

    python benchmarks/startup.py --work DIR [--repeats 3] [--before SRC_DIR] [--cold] [--out FILE]

Six random-weight members with nnU-Net's ResEncL architecture (the benchmark's gpu preset: 102 M parameters, 410 MB
per checkpoint, the paper's 3 + 2 + 1 folds; made once under --work) and a weights.sha256 manifest; a small input, so
that preprocessing is not what is timed. Each run is `panther-ensemble predict` in a child process that ends at the
first call of a member's network (a hook on torch.nn.Module.__call__), alternating between this checkout and, with
--before, another source tree of the product (a git worktree of an earlier commit, say). --cold evicts the weight
files from the page cache before each run (posix_fadvise DONTNEED), as on a machine that has not read them yet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOK = """
import os, sys, time, torch
original = torch.nn.Module.__call__
def first_forward(self, *args, **kwargs):
    if type(self).__module__.startswith("dynamic_network_architectures"):
        print(f"FIRST_FORWARD {time.time():.6f}", flush=True)
        os._exit(0)
    return original(self, *args, **kwargs)
torch.nn.Module.__call__ = first_forward
from panther_ensemble.cli import main
sys.exit(main(sys.argv[1:]))
"""


def set_up(work: Path) -> tuple[Path, Path, Path]:
    """(spec, weights root with a manifest, GC input folder), made once."""
    from panther_ensemble.app.manifest import MANIFEST_NAME, write_manifest
    from panther_ensemble.demo.synthetic import write_gc_input
    from panther_ensemble.tools.benchmark import PRESETS, bench_plans
    from panther_ensemble.tools.benchmark import set_up as bench_set_up

    preset = PRESETS["gpu"]
    setup = bench_set_up(work, preset, "t1", bench_plans(work, preset))
    if not (setup.weights / MANIFEST_NAME).exists():
        write_manifest(setup.weights)
    input_dir = write_gc_input(work / "input-small", "abdominal-t1-mri", {"small.mha": dict(
        shape_zyx=(24, 64, 64), spacing_xyz=(1.0, 1.0, 2.0), seed=7)})
    return setup.spec, setup.weights, input_dir


def evict(weights: Path) -> None:
    for file in weights.rglob("*.pth"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_to_first_forward(source: Path, spec: Path, weights: Path, input_dir: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source)}
    started = time.time()
    result = subprocess.run([sys.executable, "-c", HOOK, "predict", "--input", str(input_dir), "--output", str(out),
                             "--ensemble", str(spec), "--weights", str(weights), "--device", "cpu", "--budget", "0"],
                            capture_output=True, text=True, env=env)
    line = next((x for x in result.stdout.splitlines() if x.startswith("FIRST_FORWARD")), None)
    if line is None:
        sys.exit(f"{source}: no forward happened:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return float(line.split()[1]) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another source tree's src/ folder to compare with")
    parser.add_argument("--cold", action="store_true", help="evict the weights from the page cache before each run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    spec, weights, input_dir = set_up(args.work)
    sources = {"after": REPO / "src", **({"before": args.before} if args.before else {})}
    seconds: dict[str, list[float]] = {name: [] for name in sources}
    for repeat in range(args.repeats):
        names = list(sources)[repeat % len(sources):] + list(sources)[:repeat % len(sources)]  # alternated
        for name in names:
            if args.cold:
                evict(weights)
            seconds[name].append(time_to_first_forward(sources[name], spec, weights, input_dir, args.work / "out"))
            print(f"{name}: {seconds[name][-1]:.2f} s to the first forward", flush=True)
    size = sum(f.stat().st_size for f in weights.rglob("*.pth"))
    report = {"weights_gb": round(size / 1e9, 2), "cold": args.cold, "repeats": args.repeats,
              "median_seconds": {name: round(statistics.median(v), 2) for name, v in seconds.items()},
              "seconds": seconds}
    print(json.dumps(report["median_seconds"]), f"({report['weights_gb']} GB of checkpoints, "
          f"{'cold' if args.cold else 'warm'} page cache)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
