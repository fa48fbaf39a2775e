"""Choose the shipped demo specs (ensemble/task1.toml, task2.toml) with `panther-ensemble select`, and score them.

2026-12-02: members and post-processing chosen together (select's post-processing candidates), on the earlier
selection phantoms plus phantoms made hard on purpose (a faint tumor; a tumor-like distractor in the liver: seeds
5450-5455 "t1", 6450-6455 "t2", the first half faint); scored on fresh held-out phantoms (5600-5623 "t1",
6800-6823 "t2") and fresh hard ones (5630-5641, 6830-6841, half each), with and without the chosen
post-processing, paired per case, and the challenge's rank of the two: on each set and on both together. A finished
choice (<work>/<task>/report/selection.json) and finished tables stand: a rerun only summarizes.

    python scripts/select_demo_ensembles.py --work /tmp/demo-selection [--task task1 --task task2] [--write]

Per task, the candidate pool is the task's demo folds in weights/ and deliberately bad candidates: one fold of the
other task and, for Task 1 (whose dataset it is written into), a random-weight fold with the demo plans. select
chooses on phantoms no earlier step of the project used (seeds 5400-5411 "t1", 6400-6435 "t2", and the hard ones
above), objective rank, for GC's T4 budget. Then `evaluate` on the held-out sets: the ensemble against each of its
members (the paired difference to its best member ± its standard error per metric) and with against without its
post-processing. With --write the chosen specs replace ensemble/<task>.toml (the numbers go into weights/README.md
by hand, from <work>/<task>/summary.md; scripts/make_demo_cases.py then writes the member tables there, on the
demo's HELD_OUT_SEEDS). Earlier choices and their held-out sets: weights/README.md, "History".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from panther_ensemble.demo import synthetic as syn
from panther_ensemble.demo.phantom import make_phantom
from panther_ensemble.engine.spec import EnsembleSpec, MemberSpec, load_spec
from panther_ensemble.engine.spec_writer import write_spec
from panther_ensemble.tools.evaluate import aggregate
from panther_ensemble.tools.member_table import POSTPROCESSED
from panther_ensemble.tools.select import mean_and_standard_error

REPO = Path(__file__).resolve().parents[1]
# (flavour, socket, selection seeds, dataset, the other task's fold)
TASKS = {"task1": ("t1", "abdominal-t1-mri", range(5400, 5412), "Dataset901_PantherT1",
                   "Dataset902_PantherT2/nnUNetTrainerDA5__nnUNetResEncUNetDemoPlans__3d_fullres/fold_0"),
         "task2": ("t2", "abdominal-t2-mri", range(6400, 6436), "Dataset902_PantherT2",
                   "Dataset901_PantherT1/nnUNetTrainer__nnUNetResEncUNetDemoPlans__3d_fullres/fold_0")}
# (hard seeds for choosing, fresh held-out seeds, fresh hard held-out seeds): post-processing's re-selection
POSTPROCESSING_SEEDS = {"task1": (range(5450, 5456), range(5600, 5624), range(5630, 5642)),
                        "task2": (range(6450, 6456), range(6800, 6824), range(6830, 6842))}
RANDOM = "Dataset901_PantherT1/nnUNetTrainerRandomWeights__nnUNetResEncUNetDemoPlans__3d_fullres"
METRICS = ("volumetric_dice", "surface_dice", "hausdorff95", "masd")


def write_phantoms(flavour: str, seeds, folder: Path, hard: bool = False) -> Path:
    """The phantoms as images/ and labels/; `hard`: the first half faint, the rest with a distractor."""
    seeds = list(seeds)
    for index, seed in enumerate(seeds):
        kind = None if not hard else "faint" if index < len(seeds) // 2 else "distractor"
        phantom = make_phantom(seed, flavour, kind)
        for sub, item in (("images", phantom.image), ("labels", phantom.label)):
            target = folder / sub / f"{flavour}_{seed}{'_' + kind if kind else ''}.mha"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(item, str(target), useCompression=True)
    return folder


def candidate_pool(work: Path, socket: str, dataset: str, other_task_fold: str) -> tuple[Path, Path]:
    """weights/ plus a random-weight fold, and a spec listing the task's folds, the random one and one fold of the
    other task."""
    weights = work / "weights"
    if not weights.exists():
        shutil.copytree(REPO / "weights", weights, ignore=shutil.ignore_patterns("README.md"))
        plans_source = weights / "Dataset901_PantherT1" / "nnUNetTrainer__nnUNetResEncUNetDemoPlans__3d_fullres"
        config = syn.ModelConfig(dataset="Dataset901_PantherT1", trainer="nnUNetTrainerRandomWeights",
                                 plans_name="nnUNetResEncUNetDemoPlans", folds=(0,), seed=11,
                                 checkpoints=("checkpoint_final.pth",),
                                 plans=json.loads((plans_source / "plans.json").read_text()))
        syn.make_model_folder(weights, config)
        shutil.copy(plans_source / "dataset.json", weights / RANDOM / "dataset.json")
    pool = [*weights.glob(f"{dataset}/*/fold_*/checkpoint_*.pth"), *weights.glob(f"{other_task_fold}/*.pth")]
    members = tuple(MemberSpec(checkpoint.parent.parent.relative_to(weights).as_posix(),
                               int(checkpoint.parent.name.removeprefix("fold_")), checkpoint.name)
                    for checkpoint in sorted(pool))
    spec = work / f"candidates-{socket}.toml"
    write_spec(EnsembleSpec(spec, socket, "pancreatic-tumor-segmentation", 1, members), spec)
    return spec, weights


def run(*arguments: str) -> None:
    print("$ panther-ensemble " + " ".join(arguments), flush=True)
    subprocess.run([sys.executable, "-m", "panther_ensemble.cli", *arguments], check=True)


def summarize(table: dict, chosen: Path) -> str:
    """The ensemble against its best member (by mean Dice) on the held-out phantoms, paired per case."""
    table.pop(POSTPROCESSED, None)
    ensemble = table.pop("ensemble")
    best_name = max(table, key=lambda name: table[name]["aggregates"]["mean_volumetric_dice"])
    best = table[best_name]
    lines = [f"Chosen: {chosen}", f"Best member on the held-out phantoms (by Dice): {best_name}", "",
             "| metric | ensemble | best member | ensemble - best member (± s.e.) | best of all rows |",
             "| --- | --- | --- | --- | --- |"]
    wins = 0
    for metric in METRICS:
        higher = metric in ("volumetric_dice", "surface_dice")
        differences = [ensemble["per_subject"][c][metric] - best["per_subject"][c][metric]
                       for c in ensemble["per_subject"]]
        mean, se = mean_and_standard_error(differences)
        key = f"mean_{metric}" if metric != "volumetric_dice" else "mean_volumetric_dice"
        rows = {name: row["aggregates"][key] for name, row in {**table, "ensemble": ensemble}.items()}
        top = (max if higher else min)(rows, key=rows.get)
        wins += top == "ensemble"
        lines.append(f"| {metric} | {ensemble['aggregates'][key]:.4f} | {best['aggregates'][key]:.4f} | "
                     f"{mean:+.4f} ± {se:.4f} | {top} |")
    rmse = {name: row["aggregates"]["tumor_burden_rmse"] for name, row in {**table, "ensemble": ensemble}.items()}
    wins += min(rmse, key=rmse.get) == "ensemble"
    lines.append(f"| tumor_burden_rmse | {ensemble['aggregates']['tumor_burden_rmse']:.0f} | "
                 f"{best['aggregates']['tumor_burden_rmse']:.0f} | | {min(rmse, key=rmse.get)} |")
    lines += ["", f"The ensemble is best of all rows on {wins} of 5 metrics."]
    return "\n".join(lines)


def with_and_without(plain: dict, post: dict) -> str:
    """The ensemble with its post-processing against itself without, per case ({case: metrics} each): per metric
    the means and the paired difference ± s.e., and the challenge's rank of the two (per metric 1 the better, ties
    both 1, else 2; the mean over the five)."""
    aggregates = {"with": aggregate(post), "without": aggregate(plain)}
    lines = ["| metric | with post-processing | without | with - without (± s.e.) |", "| --- | --- | --- | --- |"]
    ranks = {"with": 0.0, "without": 0.0}
    for metric in (*METRICS, "tumor_burden_rmse"):
        key = "tumor_burden_rmse" if metric == "tumor_burden_rmse" else f"mean_{metric}"
        higher = metric in ("volumetric_dice", "surface_dice")
        a, b = aggregates["with"][key], aggregates["without"][key]
        better = (a > b) if higher else (a < b)
        worse = (a < b) if higher else (a > b)
        ranks["with"] += 1 if not worse else 2
        ranks["without"] += 1 if not better else 2
        if metric == "tumor_burden_rmse":
            lines.append(f"| {metric} | {a:.0f} | {b:.0f} | |")
            continue
        mean, se = mean_and_standard_error([post[c][metric] - plain[c][metric] for c in plain])
        lines.append(f"| {metric} | {a:.4f} | {b:.4f} | {mean:+.4f} ± {se:.4f} |")
    lines += ["", f"Mean rank of the five metrics (1 the better of the two, ties shared): with "
              f"{ranks['with'] / 5:.1f}, without {ranks['without'] / 5:.1f}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--task", action="append", choices=sorted(TASKS))
    parser.add_argument("--write", action="store_true", help="replace ensemble/<task>.toml with the choice")
    args = parser.parse_args()
    for task in args.task or sorted(TASKS):
        flavour, socket, choose_seeds, dataset, other_task_fold = TASKS[task]
        hard_choose, held_seeds, hard_held = POSTPROCESSING_SEEDS[task]
        folder = args.work / task
        choose = write_phantoms(flavour, choose_seeds, folder / "choose")
        write_phantoms(flavour, hard_choose, folder / "choose", hard=True)
        held = write_phantoms(flavour, held_seeds, folder / "held-out")
        hard = write_phantoms(flavour, hard_held, folder / "held-out-hard", hard=True)
        candidates, weights = candidate_pool(args.work, socket, dataset, other_task_fold)
        chosen = folder / f"{task}.toml"
        if not (folder / "report" / "selection.json").exists():  # resumable: a finished choice stands
            run("select", "--candidates", str(candidates), "--weights", str(weights), "--images",
                str(choose / "images"), "--labels", str(choose / "labels"), "--out", str(chosen), "--budget", "270",
                "--target", "t4", "--report", str(folder / "report"), "--device", "cpu")
        summary = [summarize(json.loads(json.dumps(evaluate_on(chosen, weights, held, folder / "held-out.json"))),
                             chosen)]
        tables = {name: evaluate_on(chosen, weights, data, folder / f"{name.replace(' ', '-')}.json")
                  for name, data in (("held-out", held), ("hard held-out", hard))}
        if all(POSTPROCESSED in table for table in tables.values()):
            both = {kind: {case: metrics for table in tables.values() for case, metrics in
                           table[kind]["per_subject"].items()} for kind in ("ensemble", POSTPROCESSED)}
            for name, plain, post in [(name, t["ensemble"]["per_subject"], t[POSTPROCESSED]["per_subject"])
                                      for name, t in tables.items()] + [("all held-out", *both.values())]:
                summary += ["", f"With and without the post-processing, {name} phantoms ({len(plain)}):", "",
                            with_and_without(plain, post)]
        (folder / "summary.md").write_text("\n".join(summary) + "\n")
        print("\n".join(summary))
        if args.write:
            assert all(m.model != RANDOM for m in load_spec(chosen).members)
            shutil.copy(chosen, REPO / "ensemble" / f"{task}.toml")


def evaluate_on(chosen: Path, weights: Path, data: Path, out: Path) -> dict:
    """The member table of the chosen spec on labelled phantoms (written to `out`, and returned)."""
    if not out.exists():
        run("evaluate", "--ensemble", str(chosen), "--weights", str(weights), "--images", str(data / "images"),
            "--labels", str(data / "labels"), "--device", "cpu", "--out", str(out))
    return json.loads(out.read_text())


if __name__ == "__main__":
    main()
