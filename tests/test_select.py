"""select and cost: the greedy path on hand-made probabilities, the whole command on the demo folds with bad
candidates among them, and its failures (one line, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from panther_ensemble.cli import main
from panther_ensemble.core.errors import PantherError
from panther_ensemble.demo import synthetic as syn
from panther_ensemble.demo.phantom import make_phantom
from panther_ensemble.engine.members import describe_member
from panther_ensemble.engine.spec import EnsembleSpec, MemberId, MemberSpec, load_spec
from panther_ensemble.engine.spec_writer import write_spec as write_spec_file
from panther_ensemble.tools import cost as cost_module
from panther_ensemble.tools.cost import T4, Measured, pool_cost
from panther_ensemble.tools.select import Case, Step, best_option, check_tumor_predicted, select, write_spec

REPO = Path(__file__).resolve().parents[1]
T1 = "Dataset901_PantherT1"
GOOD = [f"{T1}/{trainer}__nnUNetResEncUNetDemoPlans__3d_fullres"
        for trainer in ("nnUNetTrainer", "nnUNetTrainerDA5", "nnUNetTrainerDA5ord0")]
OTHER_TASK = "Dataset902_PantherT2/nnUNetTrainerDA5__nnUNetResEncUNetDemoPlans__3d_fullres"
RANDOM = f"{T1}/nnUNetTrainerRandomWeights__nnUNetResEncUNetDemoPlans__3d_fullres"


def ids(count: int) -> list[MemberId]:
    """Candidates m0, m1, ... (their identity is all select needs)."""
    return [MemberId.of(f"D/m{k}__p__3d_fullres", 0, "checkpoint_final.pth") for k in range(count)]


def hand_made_case(rng, truth, good_noise):
    """Three classes on a 1-D 'image' reshaped to 3-D: candidates whose tumor probability follows the truth with
    the given noise (a large noise: a bad candidate)."""
    probabilities = {}
    for member, noise in zip(ids(len(good_noise)), good_noise):
        tumor = np.clip(truth.ravel() * 0.8 + rng.normal(0, noise, truth.size), 0, 1)
        probabilities[member] = np.stack([1 - tumor, tumor * 0, tumor]).astype(np.float32)
    return Case("c", truth.shape, (1.0, 1.0, 1.0), truth, np.arange(truth.size), probabilities)


def price(costs: list[float], fixed: float):
    """A stand-in for PoolCost.total: the fixed seconds and each distinct member's."""
    by_id = dict(zip(ids(len(costs)), costs))
    return lambda chosen: fixed + sum(by_id[k] for k in set(chosen))


def test_greedy_path_picks_good_candidates_stops_and_respects_the_budget():
    rng = np.random.default_rng(0)
    truth = np.zeros((4, 16, 16), bool)
    truth[1:3, 4:12, 5:11] = True
    cases = [hand_made_case(rng, truth, (0.25, 0.3, 2.0, 3.0)) for _ in range(3)]
    names = ids(4)
    for objective in ("rank", "dice", "hd95"):
        path, alone, _ = select(cases, names, price([1.0] * 4, 2.0), None, objective, 2)
        chosen = {k for step in path for k in step.weights}
        assert chosen <= set(names[:2]), (objective, chosen)  # never a noisy candidate
        assert path[0].candidate == names[int(np.argmax([alone[k]["mean_volumetric_dice"] for k in names[:2]]))] \
            or objective != "dice"
        assert sum(path[-1].weights.values()) == len(path)  # each step added one pick (repeats raise a weight)
    # a budget that fits the first member only: no second member, and the path's cost stays within it
    path, _, stopped = select(cases, names, price([1.0, 1.5, 0.5, 0.5], 2.0), 3.2, "rank", 2)
    assert set(path[-1].weights) == {path[0].candidate} and path[-1].seconds <= 3.2
    assert "would not fit the 3.2 s budget" in stopped  # select says why it stopped


def test_rank_objective_ranks_as_the_challenge_does():
    options = [dict(mean_volumetric_dice=0.8, mean_surface_dice=0.9, mean_hausdorff95=10, mean_masd=2,
                    tumor_burden_rmse=100),
               dict(mean_volumetric_dice=0.82, mean_surface_dice=0.88, mean_hausdorff95=9, mean_masd=2.5,
                    tumor_burden_rmse=90),
               dict(mean_volumetric_dice=0.7, mean_surface_dice=0.7, mean_hausdorff95=30, mean_masd=9,
                    tumor_burden_rmse=500)]
    # ranks: option 0: 2,1,2,1,2 = 1.6; option 1: 1,2,1,2,1 = 1.4; option 2: 3 everywhere
    assert best_option(options, "rank") == 1
    assert best_option(options, "surface-dice") == 0 and best_option(options, "masd") == 0
    assert best_option([options[0], options[0]], "rank") == 0  # a tie keeps the current ensemble: stop


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """The demo's Task 1 folds, a random-weight fold with the same plans and a Task 2 fold (the other task), as one
    candidate pool; three labelled Task 1 phantoms to choose on and two held out."""
    root = tmp_path_factory.mktemp("select")
    weights = root / "weights"
    for model in (*GOOD, OTHER_TASK):
        shutil.copytree(REPO / "weights" / model, weights / model)
    plans = json.loads((REPO / "weights" / GOOD[0] / "plans.json").read_text())
    config = syn.ModelConfig(dataset=T1, trainer="nnUNetTrainerRandomWeights", plans_name="nnUNetResEncUNetDemoPlans",
                             folds=(0,), checkpoints=("checkpoint_final.pth",), seed=3, plans=plans)
    syn.make_model_folder(weights, config)
    shutil.copy(REPO / "weights" / GOOD[0] / "dataset.json", weights / RANDOM / "dataset.json")
    members = [(GOOD[0], 0, "checkpoint_best.pth"), (GOOD[1], 0, "checkpoint_final.pth"),
               (GOOD[2], 0, "checkpoint_best.pth"), (RANDOM, 0, "checkpoint_final.pth"),
               (OTHER_TASK, 0, "checkpoint_best.pth")]
    text = 'input_socket = "abdominal-t1-mri"\noutput_socket = "pancreatic-tumor-segmentation"\ntumor_label = 1\n'
    text += "".join(f'[[member]]\nmodel = "{m}"\nfold = {f}\ncheckpoint = "{c}"\n' for m, f, c in members)
    (root / "candidates.toml").write_text(text)
    for folder, seeds in (("choose", (7001, 7002, 7003)), ("held", (7101, 7102))):
        for seed in seeds:
            phantom = make_phantom(seed, "t1")
            for sub, item in (("images", phantom.image), ("labels", phantom.label)):
                (root / folder / sub).mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(item, str(root / folder / sub / f"t1_{seed}.mha"), useCompression=True)
    return root


def test_select_on_the_demo_folds_never_picks_a_bad_candidate(pool, tmp_path, capsys):
    out = tmp_path / "chosen.toml"
    # with a T4 budget that leaves room for two of the members
    assert main(["select", "--candidates", str(pool / "candidates.toml"), "--weights", str(pool / "weights"),
                 "--images", str(pool / "choose" / "images"), "--labels", str(pool / "choose" / "labels"),
                 "--out", str(out), "--budget", "9.3", "--held-out-images", str(pool / "held" / "images"),
                 "--held-out-labels", str(pool / "held" / "labels"), "--report", str(tmp_path / "report"),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    spec = load_spec(out)
    assert {m.model for m in spec.members} <= set(GOOD) and 1 <= len(spec.members) <= 2
    assert "# step 1: the best single candidate" in out.read_text()
    report = json.loads((tmp_path / "report" / "selection.json").read_text())
    assert report["path"][-1]["projected_seconds"] <= 9.3
    assert len(report["postprocessing"]["candidates"]) == 8  # the pancreas is the organ: every candidate tried
    assert "Post-processing per step of the path" in (tmp_path / "report" / "selection.md").read_text()
    assert len(report["postprocessing"]["per_step"]) >= report["postprocessing"]["step"]
    assert report["held_out"]["postprocessing"] == report["postprocessing"]["chosen"]
    assert (tmp_path / "report" / "selection.png").stat().st_size > 10_000
    assert "| step | member | weight |" in (tmp_path / "report" / "selection.md").read_text()
    assert report["best_single"] == report["path"][0]["member"] and report["stopped"]
    assert f"stopped: {report['stopped']}" in printed and "The best single candidate (step 1" in printed
    held = report["held_out"]
    assert held["cases"] == 2 and set(held["difference"]) == {"volumetric_dice", "surface_dice", "hausdorff95",
                                                              "masd"}
    assert "Held-out: 2 case(s)" in printed
    # the written spec runs unchanged
    gc = tmp_path / "input" / "images" / "abdominal-t1-mri"
    gc.mkdir(parents=True)
    shutil.copy(next((pool / "held" / "images").iterdir()), gc / "case.mha")
    assert main(["predict", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "out"), "--ensemble",
                 str(out), "--weights", str(pool / "weights"), "--device", "cpu", "--budget", "0"]) == 0


@pytest.mark.parametrize("problem", ["label maps", "missing label", "budget", "objective"])
def test_bad_input_is_one_line_and_writes_nothing(pool, tmp_path, capsys, problem):
    candidates, labels = pool / "candidates.toml", pool / "choose" / "labels"
    arguments = []
    if problem == "label maps":
        weights = tmp_path / "weights"
        shutil.copytree(pool / "weights", weights)
        dataset = weights / RANDOM / "dataset.json"
        dataset.write_text(dataset.read_text().replace('"tumor": 1', '"lesion": 1'))
        arguments = ["--weights", str(weights)]
        expected = "members have different label maps"
    elif problem == "missing label":
        labels = tmp_path / "labels"
        shutil.copytree(pool / "choose" / "labels", labels)
        next(labels.iterdir()).unlink()
        expected = "no label for"
    elif problem == "budget":
        arguments = ["--budget", "1"]
        expected = "--budget 1 s: even the cheapest candidate needs"
    else:
        arguments = ["--objective", "speed"]
        expected = None
    arguments = arguments or ["--weights", str(pool / "weights")]
    if "--weights" not in arguments:
        arguments += ["--weights", str(pool / "weights")]
    out = tmp_path / "chosen.toml"
    call = ["select", "--candidates", str(candidates), "--images", str(pool / "choose" / "images"), "--labels",
            str(labels), "--out", str(out), "--device", "cpu", *arguments]
    if expected is None:  # argparse: a usage error, exit 2
        with pytest.raises(SystemExit):
            main(call)
        assert "invalid choice: 'speed'" in capsys.readouterr().err
    else:
        assert main(call) == 1
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: ") and expected in errors[0], errors
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_cost_json_and_its_errors(capsys):
    spec = REPO / "ensemble" / "task2.toml"
    assert main(["cost", "--ensemble", str(spec), "--shape", "40,300,300", "--spacing", "3,1.2,1.2", "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)
    assert cost["target"] == "T4 (projection)" and cost["projection"] and "data sheet" in cost["source"]
    members = load_spec(spec).members
    assert [(m["model"], m["fold"]) for m in cost["members"]] == [(m.model, m.fold) for m in members]
    assert all(set(m) == {"model", "fold", "checkpoint", "label", "tiles", "tflop", "seconds"}
               for m in cost["members"])
    assert cost["total_seconds"] == pytest.approx(cost["fixed_seconds"] + sum(g["seconds"] for g in cost["groups"])
                                                  + sum(m["seconds"] for m in cost["members"]), abs=0.3)
    # the last stage priced as the deadline keeps it back: the spec's post-processing, on this grid
    assert cost["postprocessing"] == load_spec(spec).postprocessing.kind == "steps"
    assert cost["final_seconds"] == pytest.approx(0.033 * 40 * 300 * 300 / 1e6, abs=0.01)
    assert main(["cost", "--ensemble", str(spec), "--shape", "40,300"]) == 1
    assert main(["cost", "--ensemble", str(spec), "--shape", "40,300,300", "--spacing", "3,1,1", "--target", "x"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["error: --shape and --spacing take Z,Y,X numbers together, got '40,300' and None",
                      "error: --target must be t4, here or an effective TFLOP/s, got 'x'"]


# --- the spec select writes: one block per distinct member, priced by cost as select priced it

def random_case(rng, candidates: list[MemberId], name: str) -> Case:
    """A small case whose candidates' tumor probabilities are the truth plus noise of random strength."""
    truth = np.zeros((4, 12, 12), bool)
    truth[1:3, rng.integers(2, 5):rng.integers(7, 11), rng.integers(2, 5):rng.integers(7, 11)] = True
    probabilities = {}
    for member in candidates:
        tumor = np.clip(truth.ravel() * rng.uniform(0.4, 0.9) + rng.normal(0, rng.uniform(0.1, 0.6), truth.size), 0, 1)
        probabilities[member] = np.stack([1 - tumor, tumor]).astype(np.float32)
    return Case(name, truth.shape, (2.0, 1.0, 1.0), truth, np.arange(truth.size), probabilities)


@pytest.fixture(scope="module")
def candidate_pool(workspace):
    """Every fold and checkpoint of the synthetic ensemble's models as one candidate pool (3 preprocessing
    groups, several architectures), described once."""
    from conftest import TRANSPOSED

    from panther_ensemble.demo.synthetic import ALL_ROUNDER, BOUNDARY, VOLUME

    specs = [MemberSpec(config.model, fold, checkpoint) for config in (ALL_ROUNDER, VOLUME, BOUNDARY, TRANSPOSED)
             for fold in config.folds for checkpoint in ("checkpoint_best.pth", "checkpoint_final.pth")]
    members = [describe_member(workspace.weights, spec) for spec in specs]
    return specs, members


def read_back(path, workspace, candidates_spec):
    spec = load_spec(path)
    return spec, [describe_member(workspace.weights, m) for m in spec.members]


@pytest.mark.parametrize("seed", range(40))
def test_the_written_spec_is_the_scored_ensemble_and_costs_what_the_path_said(workspace, candidate_pool, tmp_path,
                                                                                seed):
    """Random selection problems (random cases, pools, budgets, objectives; repeats happen): the spec holds each
    chosen member once with weight = times chosen, and `cost`'s model prices it at the path's last seconds."""
    specs, members = candidate_pool
    rng = np.random.default_rng(seed)
    chosen_pool = sorted(rng.choice(len(specs), size=rng.integers(2, len(specs) + 1), replace=False).tolist())
    pool_specs, pool_members = [specs[k] for k in chosen_pool], [members[k] for k in chosen_pool]
    shape, spacing = (int(rng.integers(20, 80)), 160, 180), (float(rng.uniform(1.0, 4.0)), 0.9, 0.9)
    target = T4 if seed % 2 else cost_module.target_named("here")
    measured = None if seed % 2 else Measured({repr_key: float(rng.uniform(0.01, 0.2)) for repr_key in {
        cost_module._architecture(m) for m in pool_members}}, 0.3, 0.2, 1e8, 2.0, "2026-12-02T00:00:00")
    pool = pool_cost(pool_members, shape, spacing, target, measured)
    pool_ids = [m.id for m in pool_specs]
    cases = [random_case(rng, pool_ids, f"c{i}") for i in range(3)]
    budget = None if seed % 3 == 0 else float(max(pool.total([k]) for k in pool_ids) * rng.uniform(1, 3))
    objective = ["rank", "dice", "hd95", "masd"][seed % 4]
    path, _, _ = select(cases, pool_ids, pool.total, budget, objective, 1)
    candidates = syn_spec(tmp_path / "candidates.toml", pool_specs)
    written = write_spec(tmp_path / "chosen.toml", candidates, path, pool, objective, budget, workspace.weights)
    spec, written_members = read_back(written, workspace, candidates)
    counts = {}
    for step in path:
        counts[step.candidate] = counts.get(step.candidate, 0) + 1
    assert len(spec.members) == len(counts) == len(path[-1].weights)  # each distinct member once
    assert [m.id for m in spec.members] == list(dict.fromkeys(step.candidate for step in path))
    assert [m.weight for m in spec.members] == [float(counts[k]) for k in dict.fromkeys(s.candidate for s in path)]
    priced = pool_cost(written_members, shape, spacing, target, measured).report()
    assert priced["total_seconds"] == path[-1].seconds
    assert budget is None or priced["total_seconds"] <= budget


def syn_spec(path, members: list[MemberSpec]):
    write_spec_file(EnsembleSpec(path, "abdominal-t1-mri", "pancreatic-tumor-segmentation", 1, tuple(members)), path)
    return load_spec(path)


def test_a_member_chosen_again_is_one_block_with_a_higher_weight(workspace, candidate_pool, tmp_path):
    """The bug that made predict run 5 forwards for 2 folds at weights 9:4: the path 0, 1, 0, 0, 1."""
    specs, members = candidate_pool
    pool = pool_cost(members[:2], (40, 160, 180), (2.0, 0.9, 0.9), T4)
    aggregates = dict(mean_volumetric_dice=0.5)
    a, b = specs[0].id, specs[1].id
    path = [Step(a, {a: 1.0}, aggregates, pool.total([a])), Step(b, {a: 1.0, b: 1.0}, aggregates, pool.total([a, b]))]
    path += [Step(a, {a: 2.0, b: 1.0}, aggregates, pool.total([a, b])),
             Step(a, {a: 3.0, b: 1.0}, aggregates, pool.total([a, b])),
             Step(b, {a: 3.0, b: 2.0}, aggregates, pool.total([a, b]))]
    spec = load_spec(write_spec(tmp_path / "chosen.toml", syn_spec(tmp_path / "c.toml", specs[:2]), path, pool,
                                "rank", None, workspace.weights))
    assert [(m.model, m.fold, m.checkpoint, m.weight) for m in spec.members] == [
        (specs[0].model, specs[0].fold, specs[0].checkpoint, 3.0), (specs[1].model, specs[1].fold, specs[1].checkpoint,
                                                                    2.0)]
    assert f"--weights {workspace.weights} --shape 40,160,180 --spacing 2,0.9,0.9 --target t4" in \
        (tmp_path / "chosen.toml").read_text()


def test_here_is_measured_once_and_reused_by_cost(workspace, candidate_pool, tmp_path, monkeypatch):
    """select and cost price with one measurement of this machine: kept per machine, missing architectures
    measured and added, --remeasure measures again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured_architectures = []
    general = []

    def seconds_per_tile(member, device):
        measured_architectures.append(cost_module._architecture(member))
        return 0.05, 0.01, 1000

    real_measure = cost_module.measure_here

    def measure(members, device, known=None):
        if known is None:
            general.append(1)
        return real_measure(members, device, known)

    monkeypatch.setattr(cost_module, "_seconds_per_tile", seconds_per_tile)
    monkeypatch.setattr(cost_module, "measure_here", measure)
    _, members = candidate_pool
    import torch

    first = cost_module.measured_here(members[:2], torch.device("cpu"))
    assert len(general) == 1 and cost_module.here_cache().is_file()
    again = cost_module.measured_here(members[:2], torch.device("cpu"))
    assert len(general) == 1 and again == first  # reused, nothing measured
    count = len(measured_architectures)
    cost_module.measured_here(members, torch.device("cpu"))  # a new architecture: only it is measured
    assert len(general) == 1 and len(measured_architectures) > count
    cost_module.measured_here(members[:2], torch.device("cpu"), remeasure=True)
    assert len(general) == 2


def test_no_candidate_predicting_tumor_is_a_warning_and_no_spec(capsys):
    rng = np.random.default_rng(3)
    truth = np.zeros((4, 16, 16), bool)
    truth[1:3, 4:12, 5:11] = True
    background = np.stack([np.full(truth.size, 0.9), np.full(truth.size, 0.1)]).astype(np.float32)
    names = ids(2)
    cases = [Case("c", truth.shape, (1.0, 1.0, 1.0), truth, np.arange(truth.size), dict.fromkeys(names, background))]
    path, _, _ = select(cases, names, price([1.0, 1.0], 1.0), None, "rank", 1)
    with pytest.raises(PantherError, match="does not beat an empty mask"):
        check_tumor_predicted(cases, names, path[-1], "rank", 1)
    assert capsys.readouterr().err.startswith("warning: no candidate predicts a single voxel of tumor_label 1")
    good = hand_made_case(rng, truth, (0.2, 0.3))
    path, _, _ = select([good], names, price([1.0, 1.0], 1.0), None, "rank", 2)
    check_tumor_predicted([good], names, path[-1], "rank", 2)  # a real ensemble passes, silently
    assert capsys.readouterr().err == ""


def test_the_path_is_bounded_where_the_objective_always_improves(monkeypatch):
    """A member chosen again costs nothing and rank is not transitive: a path that always finds a 'better' option
    would never end. Here every heavier ensemble scores better; select stops at its bound."""
    import panther_ensemble.tools.select as selection

    def score(cases, weights, tumor_label):
        picks = sum(weights.values())
        return dict(mean_volumetric_dice=1 - 1 / (picks + 1), mean_surface_dice=1 - 1 / (picks + 1),
                    mean_hausdorff95=1 / picks, mean_masd=1 / picks, tumor_burden_rmse=1 / picks), {}

    steps = []

    def log(message):  # without a bound the path would go on for ever: fail, don't hang
        steps.append(message)
        assert len(steps) < 200, "select never stops"

    monkeypatch.setattr(selection, "score", score)
    monkeypatch.setattr(selection, "log", log)
    names = ids(3)
    path, _, stopped = select([], names, price([1.0] * 3, 1.0), None, "rank", 1)
    assert len(path) == selection.STEPS_PER_CANDIDATE * len(names) and stopped.startswith("the bound of 12 steps")


def island_case(name: str, rng) -> Case:
    """A tumor inside a pancreas, and a candidate that also calls a far island tumor: what keep_largest and the
    organ step remove."""
    shape = (8, 40, 40)
    z, y, x = np.ogrid[:8, :40, :40]
    truth = ((z - 4) ** 2 + (y - 12) ** 2 + (x - 12) ** 2) <= 9
    pancreas = ((z - 4) ** 2 + (y - 12) ** 2 + (x - 14) ** 2) <= 36
    island = ((z - 4) ** 2 + (y - 32) ** 2 + (x - 32) ** 2) <= 4
    probabilities = {}
    for member in ids(2):
        p = np.full((3, *shape), 0.02, np.float32)
        p[0] = 0.9
        p[0][pancreas | island] = 0.1
        p[2][pancreas] = 0.7
        p[1][truth | island] = 0.8
        p[1] += rng.uniform(0, 0.02, shape)
        p /= p.sum(0, keepdims=True)
        probabilities[member] = p.reshape(3, -1)
    return Case(name, shape, (3.0, 1.0, 1.0), truth, np.arange(truth.size), probabilities)


def test_postprocessing_is_chosen_with_the_members_and_written(tmp_path, capsys):
    from panther_ensemble.tools.select import choose_postprocessing, postprocessing_candidates

    rng = np.random.default_rng(0)
    cases = [island_case(f"c{i}", rng) for i in range(3)]
    names = ids(2)
    path, _, _ = select(cases, names, price([1.0, 1.0], 1.0), None, "rank", 1)
    post = choose_postprocessing(cases, path, postprocessing_candidates(2), "rank", 1)
    plain, chosen = post.per_step[post.step][0], post.per_step[post.step][post.candidates.index(post.chosen)]
    assert post.chosen.active and (post.chosen.keep_largest or post.chosen.near_organ_mm is not None)
    assert chosen["mean_hausdorff95"] < plain["mean_hausdorff95"]  # the far island gone
    pool = type("Pool", (), {"shape_zyx": (8, 40, 40), "spacing_zyx": (3.0, 1.0, 1.0), "target": T4,
                             "rows": dict.fromkeys(names, {"seconds": 1.0})})()
    members = [MemberSpec(k.model, k.fold, k.checkpoint) for k in names]
    spec = write_spec(tmp_path / "chosen.toml", syn_spec(tmp_path / "c.toml", members), path[:post.step + 1], pool,
                      "rank", None, tmp_path / "weights", post)
    written = load_spec(spec)
    assert written.postprocessing == post.chosen
    assert "# post-processing chosen with the members" in spec.read_text()


def aggregates(dice: float, hd95: float) -> dict:
    return {"mean_volumetric_dice": dice, "mean_surface_dice": dice, "mean_hausdorff95": hd95, "mean_masd": hd95 / 5,
            "tumor_burden_rmse": 1000.0}


def test_post_processing_may_change_the_step_written_but_ties_keep_the_last(monkeypatch):
    """Per step the best candidate; an earlier step is written only where its best is a post-processing that beats
    the last step's best (ties keep the last). A table of (step, candidate) -> aggregates stands in for scoring."""
    from panther_ensemble.engine.postprocess import PostProcessing
    from panther_ensemble.tools import select as selection

    candidates = [PostProcessing(), PostProcessing(keep_largest=True)]
    path = [Step(0, {0: 1.0}, {}, 1.0), Step(1, {0: 1.0, 1: 1.0}, {}, 2.0), Step(2, {0: 1.0, 1: 1.0, 2: 1.0}, {}, 3.0)]
    table = {(0, 0): aggregates(0.70, 30.0), (0, 1): aggregates(0.74, 10.0),   # step 1: largest wins, and overall
             (1, 0): aggregates(0.72, 25.0), (1, 1): aggregates(0.73, 12.0),
             (2, 0): aggregates(0.73, 20.0), (2, 1): aggregates(0.73, 20.0)}  # step 3: a tie, none first
    calls = iter(table[i, j] for i in range(3) for j in range(2))
    monkeypatch.setattr(selection, "score", lambda *args: (next(calls), {}))
    post = selection.choose_postprocessing([], path, candidates, "rank", 1)
    assert post.winners == [1, 1, 0] and post.step == 0 and post.chosen == candidates[1]
    table[0, 1] = aggregates(0.73, 20.0)  # now step 1's winner ties step 3's: the last step is kept
    table[1, 1] = aggregates(0.72, 25.0)
    calls = iter(table[i, j] for i in range(3) for j in range(2))
    monkeypatch.setattr(selection, "score", lambda *args: (next(calls), {}))
    post = selection.choose_postprocessing([], path, candidates, "rank", 1)
    assert post.step == 2 and post.chosen == candidates[0]
    table[0, 0] = table[0, 1] = aggregates(0.90, 5.0)  # step 1 better as it was, nothing post-processed there:
    calls = iter(table[i, j] for i in range(3) for j in range(2))  # the greedy path's choice stands
    monkeypatch.setattr(selection, "score", lambda *args: (next(calls), {}))
    post = selection.choose_postprocessing([], path, candidates, "rank", 1)
    assert post.winners[0] == 0 and post.step == 2
