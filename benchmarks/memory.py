"""Host memory of one large case, per stage: `predict` in a child process, its resident memory sampled every 10 ms
and attributed to the log line it was printing at the time.

    python benchmarks/memory.py [--shape 200,512,512] [--spacing 1.5,0.7,0.7] [--ensemble ensemble/task1.toml]
                                [--content phantom|noise|noise-float64|noise-int64|ellipsoid-noise] [--mode fast]
                                [--work DIR]
                                [--out FILE]

With PYTHONPATH=<another checkout>/src the child runs that version of the product (an earlier commit's worktree); give
both runs the same --work so that they predict the same file.

The case (--content): `phantom`, a Task 1 phantom (panther_ensemble's own generator, seed 9101) resampled onto the
given (z, y, x) grid, with background noise where it has none (as a scanner's images have: nnU-Net's crop keeps the
whole volume); `noise`, uniform int16 noise in [1, 900) (nothing for the members to recognise, and no image
compression to speak of); or `noise-float64` / `noise-int64`, the same noise stored as float64 or int64 (what numpy
makes by default from floats and from integers); or `ellipsoid-noise`, int16 Gaussian noise (mean 40, sd 15) under
a large bright ellipsoid (+300) holding an inner blob (+250), with a sinusoidal shading along x (issue 32's case: an
image whose content the members answer with large confident regions over most of the grid).
Reported: peak RSS (sampled, and the run's own summary line, which is the kernel's ru_maxrss), bytes per input voxel,
and the RSS peak while each log line was the latest.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]


def write_case(input_dir: Path, shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...], socket: str,
               content: str = "phantom") -> Path:
    """The case, once per --work folder (so that another version of the product can be measured on the same file)."""
    target = input_dir / "images" / socket / f"large-{content}.mha"
    if target.exists():
        return target
    if content == "phantom":
        image = phantom_case(shape_zyx, spacing_zyx)
    else:
        if content == "ellipsoid-noise":
            array = ellipsoid_noise(shape_zyx, spacing_zyx)
        else:  # noise, stored as int16 or in the type numpy makes by default
            stored = {"noise": np.int16, "noise-float64": np.float64, "noise-int64": np.int64}[content]
            array = np.random.default_rng(0).integers(1, 900, shape_zyx, dtype=np.int16).astype(stored, copy=False)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(reversed(spacing_zyx)))
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(target), useCompression=True)
    return target


def phantom_case(shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> sitk.Image:
    """A Task 1 phantom resampled onto the grid, with background noise where it has none."""
    from panther_ensemble.demo.phantom import make_phantom

    phantom = make_phantom(9101, "t1").image
    size, spacing = tuple(reversed(shape_zyx)), tuple(reversed(spacing_zyx))
    centre = phantom.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in phantom.GetSize()])
    direction = phantom.GetDirection()
    half = [(n - 1) / 2 * s for n, s in zip(size, spacing)]
    origin = [c - sum(direction[3 * r + k] * half[k] for k in range(3)) for r, c in enumerate(centre)]
    image = sitk.Resample(phantom, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, direction, 0,
                          sitk.sitkInt16)
    # a scanner's background is noise, never exactly 0: nnU-Net's crop to the nonzero region keeps the whole volume
    array = sitk.GetArrayFromImage(image)
    outside = array == 0
    array[outside] = 1 + np.abs(np.random.default_rng(0).normal(0, 8, int(outside.sum()))).astype(np.int16)
    noisy = sitk.GetImageFromArray(array)
    noisy.CopyInformation(image)
    return noisy


def ellipsoid_noise(shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> np.ndarray:
    """Noise (mean 40, sd 15) + a bright ellipsoid over most of the field of view (+300) + an inner blob (+250),
    times a shading of +-20 % along x; int16, built slice by slice (a float64 volume would be 400 MB)."""
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape_zyx)
    mm = [(axis - (n - 1) / 2) * s for axis, n, s in zip((z, y, x), shape_zyx, spacing_zyx)]
    radii = [0.40 * n * s for n, s in zip(shape_zyx, spacing_zyx)]
    blob_centre, blob_radius = (0.0, 0.1 * radii[1], -0.25 * radii[2]), 0.25 * min(radii)
    shading = 1 + 0.2 * np.sin(2 * np.pi * x / shape_zyx[2] * 3)
    rng = np.random.default_rng(0)
    out = np.empty(shape_zyx, np.int16)
    yy, xx = np.meshgrid(mm[1], mm[2], indexing="ij")
    for k in range(shape_zyx[0]):
        inside = (mm[0][k] / radii[0]) ** 2 + (yy / radii[1]) ** 2 + (xx / radii[2]) ** 2 <= 1
        blob = ((mm[0][k] - blob_centre[0]) ** 2 + (yy - blob_centre[1]) ** 2
                + (xx - blob_centre[2]) ** 2) <= blob_radius ** 2
        value = rng.normal(40, 15, yy.shape).astype(np.float32) + 300 * inside + 250 * blob
        out[k] = np.clip(value * shading, 1, 32767).astype(np.int16)
    return out


def run(command: list[str]) -> tuple[list[tuple[str, int]], list[str], int]:
    """(stage line, peak RSS while it was the latest line) in order; stdout lines; return code."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    stages: list[list] = [["start", 0]]
    lines: list[str] = []

    def sample() -> None:
        while process.poll() is None:
            try:
                rss = int(Path(f"/proc/{process.pid}/statm").read_text().split()[1]) * 4096
            except (OSError, IndexError):
                break
            stages[-1][1] = max(stages[-1][1], rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:
        lines.append(line.rstrip())
        stages.append([line.strip(), 0])
    process.wait()
    sampler.join()
    return [(s, r) for s, r in stages], lines, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="200,512,512", help="z,y,x voxels (default: 200,512,512)")
    parser.add_argument("--spacing", default="1.5,0.7,0.7", help="z,y,x mm (default: 1.5,0.7,0.7)")
    parser.add_argument("--ensemble", type=Path, default=REPO / "ensemble" / "task1.toml")
    parser.add_argument("--mode", default="fast", choices=("fast", "exact"))
    parser.add_argument("--content", default="phantom", choices=("phantom", "noise", "noise-float64",
                                                                      "noise-int64", "ellipsoid-noise"))
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="JSON report")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    spacing = tuple(float(v) for v in args.spacing.split(","))
    with tempfile.TemporaryDirectory(prefix="panther-memory-") as scratch:
        work = args.work or Path(scratch)
        import tomllib

        socket = tomllib.loads(args.ensemble.read_text())["input_socket"]
        shutil.rmtree(work / "input" / "images", ignore_errors=True)  # one socket, one case per run
        image = write_case(work / "input", shape, spacing, socket, args.content)
        image_bytes = image.stat().st_size
        command = [sys.executable, "-m", "panther_ensemble.cli", "predict", "--input", str(work / "input"),
                   "--output", str(work / "output"), "--ensemble", str(args.ensemble), "--device", "cpu",
                   "--budget", "0", "--mode", args.mode]
        started = time.perf_counter()
        stages, lines, code = run(command)
        seconds = time.perf_counter() - started
    if code != 0:
        print("\n".join(lines[-20:]))
        sys.exit(f"predict failed with exit code {code}")
    voxels = shape[0] * shape[1] * shape[2]
    summary = next((line for line in lines if line.startswith("summary")), "")
    reported = re.search(r"host ([\d.]+) GiB", summary)
    peak = max(rss for _, rss in stages)
    report = {"shape_zyx": shape, "spacing_zyx": spacing, "voxels": voxels, "ensemble": str(args.ensemble),
              "content": args.content,
              "mode": args.mode, "seconds": round(seconds, 1), "image_bytes": image_bytes,
              "peak_rss_gib_sampled": round(peak / 2 ** 30, 3),
              "peak_rss_gib_reported": float(reported.group(1)) if reported else None,
              "bytes_per_voxel": round((float(reported.group(1)) * 2 ** 30 if reported else peak) / voxels, 1),
              "stages": [{"line": s, "peak_rss_gib": round(r / 2 ** 30, 3)} for s, r in stages]}
    for stage in report["stages"]:
        print(f"{stage['peak_rss_gib']:6.2f} GiB  {stage['line'][:100]}")
    print(next((line for line in lines if line.startswith("timing")), ""))
    print(f"peak {report['peak_rss_gib_reported']} GiB (ru_maxrss) = {report['bytes_per_voxel']} bytes per input "
          f"voxel of {voxels}; {report['seconds']} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
