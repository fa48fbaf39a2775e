"""select's report: the path as a table, a plot of each PANTHER metric against projected seconds (every candidate
alone, the chosen path), and, with held-out cases, the chosen ensemble against the best single candidate."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.stop import write_text_atomically, written_atomically
from ..engine.spec import member_labels
from .select import METRICS, Selection

COLUMNS = {"mean_volumetric_dice": "Dice", "mean_surface_dice": "Surface Dice", "mean_hausdorff95": "HD95 mm",
           "mean_masd": "MASD mm", "tumor_burden_rmse": "Burden RMSE mm³"}


def path_table(selection: Selection) -> str:
    """The path, the best single candidate it starts from and why it stopped."""
    labels = member_labels(selection.candidates)
    first = selection.path[0].candidate
    rows = [f"The best single candidate (step 1, the one the ensemble is compared with): {labels[first]}; "
            f"stopped: {selection.stopped}.", "",
            "| step | member | weight | " + " | ".join(COLUMNS.values()) + " | projected s |",
            "| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |"]
    for number, step in enumerate(selection.path, start=1):
        values = " | ".join(f"{step.aggregates[key]:.4g}" for key in COLUMNS)
        rows.append(f"| {number} | {labels[step.candidate]} | {step.weights[step.candidate]:g} | {values} | "
                    f"{step.seconds:.1f} |")
    return "\n".join(rows)


def postprocessing_table(selection: Selection) -> str:
    """Each step of the greedy path with its best post-processing (the step written marked), then every
    post-processing candidate on the step written (the chosen one marked)."""
    post = selection.post
    if post is None:
        return ""
    header = " | ".join(COLUMNS.values())
    rows = ["Post-processing per step of the path (selection cases; the best candidate of each step, and that step's "
            "ensemble without it):", "", f"| step | members | post-processing | {header} | without: Dice | HD95 mm |",
            "| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- | --- |"]
    for i, (step, row, j) in enumerate(zip(post.path, post.per_step, post.winners)):
        mark = " **(written)**" if i == post.step else ""
        rows.append(f"| {i + 1}{mark} | {len(step.weights)} | {post.candidates[j]} | "
                    + " | ".join(f"{row[j][key]:.4g}" for key in COLUMNS)
                    + f" | {row[0]['mean_volumetric_dice']:.4g} | {row[0]['mean_hausdorff95']:.4g} |")
    rows += ["", f"Every candidate on the ensemble of step {post.step + 1} (the step written):", "",
             f"| post-processing | {header} |", "| --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for candidate, aggregates in zip(post.candidates, post.per_step[post.step]):
        mark = " **(chosen)**" if candidate == post.chosen else ""
        rows.append(f"| {candidate}{mark} | " + " | ".join(f"{aggregates[key]:.4g}" for key in COLUMNS) + " |")
    return "\n".join(rows)


def held_out_table(comparison: dict) -> str:
    names = {"volumetric_dice": "mean_volumetric_dice", "surface_dice": "mean_surface_dice",
             "hausdorff95": "mean_hausdorff95", "masd": "mean_masd"}
    rows = [f"Held-out: {comparison['cases']} case(s); difference = chosen ensemble - best single candidate, paired "
            "per case, ± its standard error.", "",
            "| metric | chosen ensemble | best single candidate | difference |", "| --- | --- | --- | --- |"]
    for short, key in names.items():
        difference = comparison["difference"][short]
        rows.append(f"| {COLUMNS[key]} | {comparison['ensemble'][key]:.4f} | {comparison['best_single'][key]:.4f} | "
                    f"{difference['mean']:+.4f} ± {difference['standard_error']:.4f} |")
    rows.append(f"| {COLUMNS['tumor_burden_rmse']} | {comparison['ensemble']['tumor_burden_rmse']:.0f} | "
                f"{comparison['best_single']['tumor_burden_rmse']:.0f} | |")
    if comparison.get("postprocessing", "none") != "none":
        rows += ["", f"The chosen ensemble with its post-processing ({comparison['postprocessing']}) against itself "
                 "without it, paired per case:", "", "| metric | with | without | difference |",
                 "| --- | --- | --- | --- |"]
        for short, key in names.items():
            difference = comparison["postprocessing_difference"][short]
            rows.append(f"| {COLUMNS[key]} | {comparison['ensemble'][key]:.4f} | "
                        f"{comparison['without_postprocessing'][key]:.4f} | {difference['mean']:+.4f} ± "
                        f"{difference['standard_error']:.4f} |")
    return "\n".join(rows)


def plot(selection: Selection, target: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6), constrained_layout=True)
    single = [selection.pool.total([k]) for k in selection.candidates]
    for axis, (key, higher) in zip(axes, METRICS.values()):
        axis.scatter(single, [selection.alone[k][key] for k in selection.candidates], color="0.6",
                     label="each candidate alone")
        axis.plot([s.seconds for s in selection.path], [s.aggregates[key] for s in selection.path], "o-",
                  color="tab:red", label="the chosen path")
        axis.set_title(f"{COLUMNS[key]} ({'higher' if higher else 'lower'} is better)")
        axis.set_xlabel(f"projected seconds per case, {target}")
    axes[0].legend(loc="best", fontsize="small")
    png.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(png) as partial:
        figure.savefig(partial, dpi=110, format="png")
    plt.close(figure)


def write_report(selection: Selection, target: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text = [f"# Member selection: {selection.spec.name}", "", path_table(selection)]
    if selection.post is not None:
        text += ["", postprocessing_table(selection)]
    if selection.held_out:
        text += ["", held_out_table(selection.held_out)]
    report, png, data = folder / "selection.md", folder / "selection.png", folder / "selection.json"
    write_text_atomically(report, "\n".join(text) + "\n")
    plot(selection, target, png)
    labels = member_labels(selection.candidates)
    write_text_atomically(data, json.dumps({
        "spec": str(selection.spec), "target": target, "stopped": selection.stopped,
        "best_single": str(selection.path[0].candidate),
        "candidates": {str(k): {**k.as_dict(), "label": labels[k]} for k in selection.candidates},
        "path": [{"member": str(s.candidate), "weights": {str(k): w for k, w in s.weights.items()},
                  "aggregates": s.aggregates, "projected_seconds": s.seconds} for s in selection.path],
        "alone": {str(k): {"aggregates": selection.alone[k], "projected_seconds": selection.pool.total([k])}
                  for k in selection.candidates},
        "postprocessing": None if selection.post is None else {
            "chosen": str(selection.post.chosen), "step": selection.post.step + 1,
            "candidates": {str(c): a for c, a in zip(selection.post.candidates,
                                                     selection.post.per_step[selection.post.step])},
            "per_step": [{"members": {str(k): w for k, w in step.weights.items()},
                          "best": str(selection.post.candidates[j]), "with": row[j], "without": row[0]}
                         for step, row, j in zip(selection.post.path, selection.post.per_step,
                                                 selection.post.winners)]},
        "held_out": selection.held_out}, indent=2) + "\n")
    return [report, png, data]
