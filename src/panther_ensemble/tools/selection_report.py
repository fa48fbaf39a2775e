"""select's report: the path as a table, a plot of each PANTHER metric against projected seconds (every candidate
alone, the chosen path), and, with held-out cases, the chosen ensemble against the best single candidate."""

from __future__ import annotations

import json
from pathlib import Path

from .member_table import member_label
from .select import METRICS, Selection

COLUMNS = {"mean_volumetric_dice": "Dice", "mean_surface_dice": "Surface Dice", "mean_hausdorff95": "HD95 mm",
           "mean_masd": "MASD mm", "tumor_burden_rmse": "Burden RMSE mm³"}


def path_table(selection: Selection) -> str:
    rows = ["| step | member | weight | " + " | ".join(COLUMNS.values()) + " | projected s |",
            "| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |"]
    for number, step in enumerate(selection.path, start=1):
        values = " | ".join(f"{step.aggregates[key]:.4g}" for key in COLUMNS)
        rows.append(f"| {number} | {member_label(selection.candidates[step.candidate])} | "
                    f"{step.weights[step.candidate]:g} | {values} | {step.seconds:.1f} |")
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
    return "\n".join(rows)


def plot(selection: Selection, target: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6), constrained_layout=True)
    single = [selection.pool.total([k]) for k in range(len(selection.candidates))]
    for axis, (key, higher) in zip(axes, METRICS.values()):
        axis.scatter(single, [a[key] for a in selection.alone], color="0.6", label="each candidate alone")
        axis.plot([s.seconds for s in selection.path], [s.aggregates[key] for s in selection.path], "o-",
                  color="tab:red", label="the chosen path")
        axis.set_title(f"{COLUMNS[key]} ({'higher' if higher else 'lower'} is better)")
        axis.set_xlabel(f"projected seconds per case, {target}")
    axes[0].legend(loc="best", fontsize="small")
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=110)
    plt.close(figure)


def write_report(selection: Selection, target: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text = [f"# Member selection: {selection.spec.name}", "", path_table(selection)]
    if selection.held_out:
        text += ["", held_out_table(selection.held_out)]
    report, png, data = folder / "selection.md", folder / "selection.png", folder / "selection.json"
    report.write_text("\n".join(text) + "\n")
    plot(selection, target, png)
    data.write_text(json.dumps({
        "spec": str(selection.spec), "target": target,
        "path": [{"member": selection.candidates[s.candidate].name, "weights": {
            selection.candidates[k].name: w for k, w in s.weights.items()}, "aggregates": s.aggregates,
            "projected_seconds": s.seconds} for s in selection.path],
        "alone": {c.name: {"aggregates": a, "projected_seconds": selection.pool.total([k])}
                  for k, (c, a) in enumerate(zip(selection.candidates, selection.alone))},
        "held_out": selection.held_out}, indent=2) + "\n")
    return [report, png, data]
