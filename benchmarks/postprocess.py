"""Post-processing's cost on the input grid of a large case: time and host memory of the ensemble's last stage with
and without it, each in a fresh process (ru_maxrss), alternated, medians.

    python benchmarks/postprocess.py [--shape 200,512,512] [--repeats 3] [--out FILE]

The stage holds the ensemble's probability sum (3 classes, float32, over the whole grid: nnU-Net's crop of a scanner
image keeps it all) with a pancreas, a tumor inside it, islands near and far, and, for never-empty, no tumor at all:
- `mask`: the argmax's tumor mask, slab by slab (what predict does without post-processing);
- `mask-torch-argmax`: the same with torch.argmax in place of input_grid.first_argmax (what it replaced);
- `steps`: the label map, then every component step (largest, minimum volume, within 10 mm of the pancreas) and
  never-empty (not needed here);
- `organ`: the organ step alone (within 10 mm of the pancreas's largest component), every one of 40 scattered
  islands measured;
- `never-empty`: the same as `steps` where no voxel is tumor: the tumor's probability map and the region around its
  maximum;
- `nnunet`: nnU-Net's own steps as determine_postprocessing writes them (all foreground labels as one, then the
  tumor), by nnU-Net's function on the sum's region.
Memory: the process's resident memory sampled every 2 ms during the stage, above what it held when it began. Then
the mask is written as predict writes it (compressed, atomically), timed apart: engine.deadline keeps the stage and
the write back from the budget at twice these rates (FINAL_SECONDS_PER_MVOXEL).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGE = r"""
import json, resource, sys, threading, time
import numpy as np, torch
from panther_ensemble.engine import input_grid
from panther_ensemble.engine.input_grid import ProbabilitySum
from panther_ensemble.engine.postprocess import PostProcessing, postprocess

shape, variant = tuple(json.loads(sys.argv[1])), sys.argv[2]
z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
def ball(c, r):
    return ((z - c[0]) * 3.0) ** 2 + ((y - c[1]) * 0.7) ** 2 + ((x - c[2]) * 0.7) ** 2 <= r ** 2
c = [s // 2 for s in shape]
pancreas = ball(c, 40) | ball((c[0], c[1] // 4, c[2] // 4), 8)  # the organ and a false island of it
tumor = ball(c, 12) | ball((c[0], c[1] + 60, c[2]), 4) | ball((c[0] // 2, c[1] // 3, c[2] // 3), 6)
rng = np.random.default_rng(0)
for _ in range(40):  # scattered islands across the grid: what the organ step must measure one by one
    tumor |= ball([int(rng.integers(0, n)) for n in shape], 2)
if variant == "never-empty":
    tumor[:] = False
probabilities = np.full((3, *shape), 0.05, np.float32)
probabilities[0] = 0.9
probabilities[1][pancreas] = 0.6; probabilities[0][pancreas] = 0.3
probabilities[2][tumor] = 0.7; probabilities[0][tumor] = 0.2; probabilities[1][tumor] = 0.1
probabilities[2][ball(c, 8)] = np.maximum(probabilities[2][ball(c, 8)], 0.3)  # faint where it is empty
total = ProbabilitySum(shape, 3, torch.device("cpu"))
total.total, total.region, total.weight = torch.from_numpy(probabilities), tuple(slice(0, n) for n in shape), 1.0
del probabilities, pancreas, tumor, z, y, x
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
start_rss, peak, running = rss(), [0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
sampler = threading.Thread(target=sample)
sampler.start()
started = time.perf_counter()
if variant == "mask":
    mask = total.mask(2)
elif variant == "mask-torch-argmax":
    input_grid.first_argmax = lambda values: torch.argmax(values, dim=0)
    mask = total.mask(2)
elif variant == "nnunet":
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as largest)
    nnunet = ([largest, largest], [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}])
    mask, note = postprocess(total.region_labels(), 2, (3.0, 0.7, 0.7), PostProcessing(nnunet="pp.pkl"), None, nnunet)
else:
    pp = PostProcessing(keep_largest=variant != "organ", min_volume_mm3=None if variant == "organ" else 100.0,
                        organ_label=1, near_organ_mm=10.0, never_empty_floor=0.2)
    labels = total.region_labels()
    mask, note = postprocess(labels, 2, (3.0, 0.7, 0.7), pp, lambda: total.region_probability(2))
seconds = time.perf_counter() - started
running[0] = False
sampler.join()
import tempfile
from pathlib import Path
from panther_ensemble.engine.image import Image, write_mask
like = Image(Path("case.mha"), np.zeros((1, 1, 1), np.int16), (0.7, 0.7, 3.0), (0.0, 0.0, 0.0),
             (1, 0, 0, 0, 1, 0, 0, 0, 1))
like.shape = tuple(shape)  # the geometry alone: the mask is written as predict writes it (compressed, atomically)
with tempfile.TemporaryDirectory() as scratch:
    started = time.perf_counter()
    write_mask(mask.astype(np.uint8, copy=False), like, Path(scratch) / "case.mha")
    write_seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "write_seconds": write_seconds, "held_gib": start_rss / 2 ** 30,
                  "added_gib": (peak[0] - start_rss) / 2 ** 30, "tumor_voxels": int(mask.sum())}))
"""
VARIANTS = ("mask", "mask-torch-argmax", "steps", "organ", "never-empty", "nnunet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="200,512,512", help="z,y,x voxels (default: 200,512,512)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON report")
    args = parser.parse_args()
    shape = [int(v) for v in args.shape.split(",")]
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:  # alternated
            done = subprocess.run([sys.executable, "-c", STAGE, json.dumps(shape), variant], check=True,
                                  capture_output=True, text=True)
            runs[variant].append(json.loads(done.stdout))
    report = {"shape_zyx": shape, "repeats": args.repeats, "started": time.strftime("%Y-%m-%d %H:%M"),
              "medians": {v: {k: round(statistics.median(r[k] for r in runs[v]), 3)
                              for k in ("seconds", "write_seconds", "held_gib", "added_gib")} for v in VARIANTS},
              "tumor_voxels": {v: runs[v][0]["tumor_voxels"] for v in VARIANTS}}
    for variant, median in report["medians"].items():
        print(f"{variant:17s} {median['seconds']:6.2f} s, the mask's write {median['write_seconds']:.2f} s   held "
              f"before {median['held_gib']:.2f} GiB (the sum)   added by the stage {median['added_gib']:.2f} GiB   "
              f"tumor voxels {report['tumor_voxels'][variant]}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB)", file=sys.stderr)
    main()
