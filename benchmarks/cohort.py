"""A cohort through one ensemble, as whole commands, alternated in one run:

(a) nnU-Net's own CLI workflow: `nnUNetv2_predict_from_modelfolder` per model folder with its folds and
    `--save_probabilities --disable_tta` (the paper runs no test-time augmentation; nnU-Net's defaults otherwise),
    then `nnUNetv2_ensemble` over the folders;
(b) `panther-ensemble predict` on the folder (budget off), the next case read and preprocessed beside each one;
(c) the same with PANTHER_READ_AHEAD=off, each case read when it starts;
(d) `predict` with the members' ONNX models beside their checkpoints (`export-onnx --beside`): each member run the
    way this machine measured fastest (torch, ONNX Runtime or OpenVINO; 1, 2 or 4 tiles per forward), measured once
    before the runs, as a machine's first predict does and then keeps (app.forward_choice).
Members: the benchmark's Task 1 composition (3 + 2 + 1 folds of three models, random weights, ResEnc cut to the
preset's features and patch: tools/benchmark.py), the three models one trainer in three plans (the seed's
fine-tuning pools; nnU-Net's CLI looks a trainer up by importing its trainer modules, and on the CPU torch here the
Primus module's timm/torchvision import fails before it reaches nnUNetTrainerDA5). Cases: phantom T1 volumes of one
shape, seeds apart. Each command's wall time (process start to exit) per run, medians, ratios; the masks of (b) and
(c) must be identical, (d)'s within the parity bound of (b)'s (a's differ: nnUNetv2_ensemble weighs model folders
alike, the spec weighs folds alike). Say what else ran on the machine.

    python benchmarks/cohort.py [--cases 6] [--preset cpu] [--shape 40,200,200] [--repeats 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from panther_ensemble.demo.synthetic import write_gc_input
from panther_ensemble.engine.spec import load_spec
from panther_ensemble.tools.benchmark import (
    PLANS_NAME,
    PRESETS,
    SOCKETS,
    bench_plans,
    measure_choice,
    own_cache,
    parity,
    set_up,
)
from panther_ensemble.tools.onnx_export import export_beside

SPACING_XYZ = (1.19, 1.19, 3.0)  # PANTHER Task 1's
PLANS_NAMES = (f"{PLANS_NAME}", f"{PLANS_NAME}FineTuned", f"{PLANS_NAME}FineTunedTwice")


def nnunet_workflow(folders: list[tuple[Path, tuple, str]], raw: Path, out: Path) -> list[list[str]]:
    """nnU-Net's commands for the cohort: one prediction per model folder, then the ensemble."""
    commands = [["nnUNetv2_predict_from_modelfolder", "-i", str(raw), "-o", str(out / f"model{i}"), "-m", str(folder),
                 "-f", *[str(f) for f in folds], "-chk", checkpoint, "--save_probabilities", "--disable_tta",
                 "-device", "cpu", "--disable_progress_bar"] for i, (folder, folds, checkpoint) in enumerate(folders)]
    ensemble = ["nnUNetv2_ensemble", "-i", *[str(out / f"model{i}") for i in range(len(folders))], "-o",
                str(out / "ensemble"), "-np", str(os.cpu_count())]
    return [*commands, ensemble]


def ours(spec: Path, weights: Path, gc_input: Path, out: Path) -> list[list[str]]:
    return [[str(Path(sys.executable).parent / "panther-ensemble"), "predict", "--input", str(gc_input), "--output",
             str(out), "--ensemble", str(spec), "--weights", str(weights), "--device", "cpu", "--budget", "0"]]


def run(commands: list[list[str]], env: dict) -> float:
    started = time.perf_counter()
    for command in commands:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.rglob("*.mha"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--cases", type=int, default=6, help="cases in the cohort (default: 6)")
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS), help="the members' size (default: cpu)")
    parser.add_argument("--shape", default="40,200,200", help="each case's Z,Y,X voxels (default: 40,200,200)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds (default: 2)")
    parser.add_argument("--out", type=Path, help="JSON report")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    work = Path(tempfile.mkdtemp(prefix="cohort-bench-"))
    try:
        preset = PRESETS[args.preset]
        setup = set_up(work / "members", preset, "t1", bench_plans(work, preset), PLANS_NAMES, "nnUNetTrainer")
        images = {f"case_{i:03d}.mha": dict(shape_zyx=shape, spacing_xyz=SPACING_XYZ, seed=100 + i)
                  for i in range(args.cases)}
        gc_input = write_gc_input(work / "gc-input", SOCKETS["t1"], images)
        raw = work / "imagesTs"  # nnU-Net's naming: one channel, _0000
        raw.mkdir()
        for name in images:
            shutil.copy(gc_input / "images" / SOCKETS["t1"] / name, raw / name.replace(".mha", "_0000.mha"))
        # nnU-Net reads its folders from the environment; prediction from a model folder needs none of them
        env = {**os.environ, **{k: str(work / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
        def predict(out: Path) -> list[list[str]]:
            return ours(setup.spec, setup.weights, gc_input, out)

        beside = work / "members-beside"  # the same weights, each member's ONNX model beside its checkpoint
        shutil.copytree(setup.weights, beside)
        spec = load_spec(setup.spec)
        export_beside(spec, beside, verify=False)
        with own_cache(work):  # the choice measured afresh and untimed, the user's cache left alone
            env["XDG_CACHE_HOME"] = os.environ["XDG_CACHE_HOME"]  # where the predicts find it
            chosen = measure_choice(beside, spec, torch.device("cpu"))
        # (b) and (c) differ only by PANTHER_READ_AHEAD, set per path below
        paths = {"nnunet-cli": lambda out: nnunet_workflow(setup.folders, raw, out), "ours": predict,
                 "ours-read-ahead-off": predict, "ours-chosen": lambda out: ours(setup.spec, beside, gc_input, out)}
        names, seconds = list(paths), {name: [] for name in paths}
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each path first in turn
                out = work / f"out-{name}-{r}"
                run_env = {**env, "PANTHER_READ_AHEAD": "off" if name.endswith("off") else "on"}
                seconds[name].append(run(paths[name](out), run_env))
                print(f"round {r + 1}: {name} {seconds[name][-1]:.1f}s", flush=True)
        ahead, off = masks(work / "out-ours-0"), masks(work / "out-ours-read-ahead-off-0")
        identical = list(ahead) == list(off) and all(np.array_equal(ahead[k], off[k]) for k in ahead)
        by_choice = masks(work / "out-ours-chosen-0")
        chosen_parity = parity(np.concatenate([by_choice[k].ravel() for k in ahead]),
                               np.concatenate([ahead[k].ravel() for k in ahead]))
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cases": args.cases,
                  "shape_zyx": list(shape), "spacing_xyz": list(SPACING_XYZ), "preset": args.preset,
                  "members": "3 + 2 + 1 folds of three models", "cpus": os.cpu_count(),
                  "seconds": seconds, "median_s": medians,
                  "nnunet_cli_over_ours": medians["nnunet-cli"] / medians["ours"],
                  "read_ahead_off_over_on": medians["ours-read-ahead-off"] / medians["ours"],
                  "masks_identical_with_and_without_read_ahead": identical,
                  "forward_choice": chosen, "nnunet_cli_over_chosen": medians["nnunet-cli"] / medians["ours-chosen"],
                  "ours_over_chosen": medians["ours"] / medians["ours-chosen"],
                  "chosen_vs_torch_masks": chosen_parity}
        print(json.dumps(report, indent=2))
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        if not identical:
            raise SystemExit("the masks with and without read-ahead differ")
        if chosen_parity["dice"] < 0.999 or chosen_parity["differing_fraction"] > 0.0005:
            raise SystemExit(f"the chosen forwards' masks are outside the parity bound of torch's: {chosen_parity}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
