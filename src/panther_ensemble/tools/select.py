"""Build the ensemble for the budget: metric-driven member selection, as the paper chose its "mix of experts".

Every candidate (a spec listing every fold you have) predicts each labelled case once, through the product's own
pipeline (each preprocessing group once). Its probabilities are kept where they can matter: a voxel can only come
out as tumor in some weighted mean if some candidate gives the tumor at least 1/classes there, so only those voxels
are kept (in memory as float32, on disk as float16 where they would not fit). Then greedy forward selection with
replacement (Caruana et al., 2004): start from the best single candidate and add, step by step, the candidate that
most improves the objective of the softmax-averaged ensemble; picking a member again raises its weight and costs
no time. It stops when nothing improves or when the next new member would not fit the budget on the target
(tools/cost.py). The objective `rank` is the mean of the five PANTHER metrics' ranks among the options of each
step (the current ensemble among them), as the challenge ranks; the others optimise one metric.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.errors import PantherError, finite_number, naming_the_case
from ..core.log import StageTimer, log, warn
from ..core.progress import Progress
from ..engine.host_limits import available_memory
from ..engine.image import check_image
from ..engine.postprocess import PostProcessing, postprocess
from ..engine.spec import EnsembleSpec, MemberId, member_labels
from ..engine.spec_writer import SpecComments
from ..engine.spec_writer import write_spec as write_spec_file
from .cost import T4, PoolCost, Target, pool_cost_on
from .evaluate import aggregate, tumor_metrics
from .member_table import each_member_alone, labelled_cases, load_for_cases, read_labelled_case

# objective: (aggregate key, higher is better); the five PANTHER ranking metrics
METRICS = {"dice": ("mean_volumetric_dice", True), "surface-dice": ("mean_surface_dice", True),
           "hd95": ("mean_hausdorff95", False), "masd": ("mean_masd", False), "rmse": ("tumor_burden_rmse", False)}
OBJECTIVES = ("rank", *METRICS)
MEMORY_SHARE = 0.25  # of the available memory, for the kept probabilities; beyond it they go to disk


# Post-processing candidates select tries on the probabilities it holds (no forwards): never-empty's floor is
# NEVER_EMPTY_FLOOR; `organ` is the label map's other foreground label (the pancreas) where there is one.
NEVER_EMPTY_FLOOR = 0.15
# Voxels where every candidate gives every foreground label less than this are dropped: background in any weighted
# mean (each foreground label below 1/classes leaves background above it), and below never-empty's floor.
KEPT_BELOW = NEVER_EMPTY_FLOOR


def postprocessing_candidates(organ: int | None) -> list[PostProcessing]:
    floor = NEVER_EMPTY_FLOOR
    candidates = [PostProcessing(), PostProcessing(never_empty_floor=floor), PostProcessing(keep_largest=True),
                  PostProcessing(keep_largest=True, never_empty_floor=floor),
                  PostProcessing(min_volume_mm3=100.0, never_empty_floor=floor)]
    if organ is not None:
        candidates += [PostProcessing(organ_label=organ, near_organ_mm=0.0, never_empty_floor=floor),
                       PostProcessing(organ_label=organ, near_organ_mm=10.0, never_empty_floor=floor),
                       PostProcessing(keep_largest=True, organ_label=organ, near_organ_mm=10.0,
                                      never_empty_floor=floor)]
    return candidates


@dataclass
class Case:
    """One labelled case: its truth and, per candidate, the probabilities at the voxels that can be foreground
    (where some candidate gives some foreground label at least min(KEPT_BELOW, 1 / classes))."""

    name: str
    shape: tuple[int, ...]
    spacing_zyx: tuple[float, ...]
    truth: np.ndarray  # bool, the whole grid
    voxels: np.ndarray  # flat indices into the grid
    probabilities: dict[MemberId, np.ndarray]  # per candidate: (classes, len(voxels)), float32 or a float16 memmap
    _metrics: dict = field(default_factory=dict, repr=False)  # by mask: many ensembles give this case one mask
    _last_labels: tuple = field(default=(None, None), repr=False)  # (weights, their label map)

    def metrics(self, mask: np.ndarray) -> dict:
        """The PANTHER metrics of a mask of this case, computed once per distinct mask (post-processing candidates
        and near-identical ensembles often leave it as it was; the surface distances are select's slow part)."""
        key = hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest()
        if key not in self._metrics:
            self._metrics[key] = tumor_metrics(mask, self.truth, self.spacing_zyx)
        return self._metrics[key]

    def _mean(self, weights: dict[MemberId, float]) -> np.ndarray:
        total = sum(w * self.probabilities[k].astype(np.float32) for k, w in weights.items())
        return total / sum(weights.values())

    def labels(self, weights: dict[MemberId, float]) -> np.ndarray:
        """The weighted ensemble's label map (uint8, the whole grid; the last one kept: every post-processing
        candidate asks for the same)."""
        key = tuple(weights.items())
        if self._last_labels[0] != key:
            labels = np.zeros(math.prod(self.shape), np.uint8)
            if self.voxels.size:
                labels[self.voxels] = np.argmax(self._mean(weights), axis=0)
            self._last_labels = (key, labels.reshape(self.shape))
        return self._last_labels[1]

    def probability(self, weights: dict[MemberId, float], label: int) -> np.ndarray:
        probability = np.zeros(math.prod(self.shape), np.float32)
        if self.voxels.size:
            probability[self.voxels] = self._mean(weights)[label]
        return probability.reshape(self.shape)

    def mask(self, weights: dict[MemberId, float], tumor_label: int,
             postprocessing: PostProcessing | None = None) -> np.ndarray:
        """The weighted ensemble's tumor mask, post-processed where asked."""
        labels = self.labels(weights)
        if postprocessing is None or not postprocessing.active:
            return labels == tumor_label
        return postprocess(labels, tumor_label, self.spacing_zyx, postprocessing,
                           lambda: self.probability(weights, tumor_label))[0]


def predict_candidates(spec: EnsembleSpec, weights_root: Path, cases: list[tuple[str, Path, Path]],
                       device: torch.device, work: Path, backend: str = "torch") -> list[Case]:
    """Every candidate's probabilities on every case, kept where tumor is possible (see the module's docstring)."""
    timer = StageTimer()
    ensemble = load_for_cases(spec, weights_root, device, timer, cases, backend)
    budget = (available_memory() or (8 * 2 ** 30, ""))[0] * MEMORY_SHARE
    kept_bytes, result = 0, []
    try:
        with Progress(len(cases), "select: every candidate on each case") as progress:
            for name, image_file, label_file in cases:
                with naming_the_case(image_file):
                    result.append(_predict_case(ensemble, name, image_file, label_file, spec.tumor_label, work,
                                                timer, budget - kept_bytes))
                kept_bytes += sum(p.nbytes for p in result[-1].probabilities.values()
                                  if not isinstance(p, np.memmap))
                log(f"{name}: {len(ensemble.members)} candidates predicted; {result[-1].voxels.size} of "
                    f"{result[-1].truth.size} voxels can be foreground in some ensemble")
                progress.advance()
    finally:
        ensemble.close()
    return result


def _predict_case(ensemble, name: str, image_file: Path, label_file: Path, tumor_label: int, work: Path,
                  timer: StageTimer, room: float) -> Case:
    """One labelled case: every candidate's probabilities at the voxels some candidate calls foreground, in memory
    while they fit `room` bytes, beyond it float16 on disk."""
    classes = ensemble.classes
    image, truth = read_labelled_case(image_file, label_file, tumor_label)
    scratch = Path(tempfile.mkdtemp(dir=work))
    foreground_max = np.zeros(image.shape, np.float32)
    files = {member.id: f"{k}.npy" for k, member in enumerate(ensemble.members)}  # names fit for a file system
    for member, alone in each_member_alone(ensemble, image, timer):
        probabilities = alone.probabilities().cpu().numpy()
        np.maximum(foreground_max, probabilities[1:].max(axis=0), out=foreground_max)
        np.save(scratch / files[member.id], probabilities)
    voxels = np.flatnonzero(foreground_max >= min(KEPT_BELOW, 1.0 / classes))
    kept = {}
    for member, file in files.items():
        full = np.load(scratch / file, mmap_mode="r").reshape(classes, -1)
        values = np.ascontiguousarray(full[:, voxels])
        if values.nbytes <= room:
            kept[member] = values
            room -= values.nbytes
        else:  # beyond the memory share: float16 on disk
            stored = np.lib.format.open_memmap(work / f"{name}-{file}", "w+", np.float16, values.shape)
            stored[:] = values
            kept[member] = stored
    shutil.rmtree(scratch)
    return Case(name, image.shape, tuple(reversed(image.spacing)), truth, voxels, kept)


def score(cases: list[Case], weights: dict[MemberId, float], tumor_label: int,
          postprocessing: PostProcessing | None = None) -> tuple[dict, dict]:
    """(aggregates, per-case metrics) of the weighted ensemble, post-processed where asked."""
    per_case = {c.name: c.metrics(c.mask(weights, tumor_label, postprocessing)) for c in cases}
    return aggregate(per_case), per_case


@dataclass
class PostChoice:
    """Post-processing chosen with the members: per step of the path each candidate's aggregates and the winner;
    the step written and its winner."""

    path: list[Step]  # the whole greedy path (the spec gets its steps up to `step`)
    candidates: list[PostProcessing]
    per_step: list[list[dict]]  # [step][candidate]: aggregates
    winners: list[int]  # per step: the index of its best candidate
    step: int  # index into the path: the step written
    chosen: PostProcessing


def choose_postprocessing(cases: list[Case], path: list[Step], candidates: list[PostProcessing], objective: str,
                          tumor_label: int) -> PostChoice:
    """Every post-processing candidate on every step's ensemble (the probabilities held: no forward). Per step, the
    candidate the objective ranks first among them (none first among equals). The path's last step is written
    unless post-processing changes that: an earlier step whose winner is a post-processing (not none) and beats the
    last step's winner, the two ranked alone; among several such, the one the objective ranks first (the later
    first among equals). Small rankings, as the greedy steps rank their options (rank is not transitive: one
    ranking over every step could pick an earlier step where nothing was post-processed)."""
    per_step = [[score(cases, step.weights, tumor_label, pp)[0] for pp in candidates] for step in path]
    winners = [best_option(row, objective) for row in per_step]
    for i, j in enumerate(winners):
        if j:
            log(f"step {i + 1}: post-processing {candidates[j]} ranks first among {len(candidates)}")
    last = len(path) - 1
    best = [per_step[i][winners[i]] for i in range(len(path))]
    better = [i for i in reversed(range(last)) if candidates[winners[i]].active
              and best_option([best[last], best[i]], objective) == 1]
    step = last if not better else better[best_option([best[i] for i in better], objective)]
    return PostChoice(path, candidates, per_step, winners, step, candidates[winners[step]])


def best_option(options: list[dict], objective: str) -> int:
    """The index of the best option's aggregates; ties go to the earliest (the current ensemble comes first)."""
    if objective != "rank":
        key, higher = METRICS[objective]
        values = [o[key] if higher else -o[key] for o in options]
        return int(np.argmax(values))
    ranks = np.zeros(len(options))
    for key, higher in METRICS.values():
        values = np.array([o[key] for o in options])
        order = -values if higher else values
        ranks += np.array([1 + np.sum(order < v) for v in order])  # competition ranking, ties share a rank
    return int(np.argmin(ranks / len(METRICS)))


@dataclass
class Step:
    candidate: MemberId
    weights: dict[MemberId, float]
    aggregates: dict
    seconds: float


Price = Callable[[list[MemberId]], float]  # projected seconds of a spec of these candidates, in order (PoolCost)


# Greedy selection with replacement need not end by itself: ranks among each step's options are not transitive, and
# a member chosen again costs no time. Caruana's runs are bounded too; no more picks than this per candidate.
STEPS_PER_CANDIDATE = 4


def select(cases: list[Case], candidates: list[MemberId], price: Price, budget: float | None, objective: str,
           tumor_label: int) -> tuple[list[Step], dict[MemberId, dict], str]:
    """The greedy path (first step: the best single candidate that fits), every candidate alone, and why the path
    stopped (said in the log too); at most STEPS_PER_CANDIDATE steps per candidate."""
    alone = {k: score(cases, {k: 1.0}, tumor_label)[0] for k in candidates}
    fits = [k for k in candidates if budget is None or price([k]) <= budget]
    if not fits:
        raise ValueError("no candidate fits the budget (run_selection checks this before predicting)")
    first = fits[best_option([alone[k] for k in fits], objective)]
    labels = member_labels(candidates)
    log(f"step 1: the best single candidate{' that fits the budget' if len(fits) < len(candidates) else ''}: "
        f"{labels[first]} -> Dice {alone[first]['mean_volumetric_dice']:.4f}, {price([first]):.1f} s projected")
    path = [Step(first, {first: 1.0}, alone[first], price([first]))]
    while True:
        if len(path) >= STEPS_PER_CANDIDATE * len(candidates):
            stopped = f"the bound of {len(path)} steps ({STEPS_PER_CANDIDATE} per candidate)"
            break
        current = path[-1]
        options, too_dear = [(None, current.weights, current.aggregates, current.seconds)], []
        for k in candidates:
            seconds = price([*current.weights, k])  # a member chosen again costs nothing more
            if budget is not None and seconds > budget:
                too_dear.append(labels[k])
                continue
            weights = {**current.weights, k: current.weights.get(k, 0.0) + 1.0}
            options.append((k, weights, score(cases, weights, tumor_label)[0], seconds))
        chosen = best_option([o[2] for o in options], objective)
        if chosen == 0:
            stopped = f"no candidate that fits improves the ensemble of step {len(path)} on {objective}"
            if too_dear:
                stopped += f"; {len(too_dear)} would not fit the {budget:g} s budget ({', '.join(too_dear)})"
            break
        k, weights, aggregates, seconds = options[chosen]
        path.append(Step(k, weights, aggregates, seconds))
        log(f"step {len(path)}: + {labels[k]} -> Dice {aggregates['mean_volumetric_dice']:.4f}, "
            f"{seconds:.1f} s projected")
    log(f"stopped: {stopped}")
    return path, alone, stopped


def empty_aggregates(cases: list[Case]) -> dict:
    """The metrics of predicting no tumor anywhere: what an ensemble must beat to be worth writing."""
    return aggregate({c.name: tumor_metrics(np.zeros(c.shape, bool), c.truth, c.spacing_zyx) for c in cases})


def check_tumor_predicted(cases: list[Case], candidates: list[MemberId], final: Step, objective: str,
                          tumor_label: int) -> None:
    """A warning line where no candidate predicts a tumor voxel on any case; an error (nothing written) where the
    chosen ensemble does not beat an empty mask on the objective."""
    if not any(c.mask({k: 1.0}, tumor_label).any() for c in cases for k in candidates):
        warn(f"no candidate predicts a single voxel of tumor_label {tumor_label} on the {len(cases)} selection "
             "case(s): is tumor_label right, and are these the right folds?")
    if best_option([empty_aggregates(cases), final.aggregates], objective) == 0:
        raise PantherError(f"the chosen ensemble does not beat an empty mask on the {len(cases)} selection case(s) "
                           f"(objective {objective}, tumor_label {tumor_label}): no spec written")


def write_spec(path: Path, candidates: EnsembleSpec, path_steps: list[Step], pool: PoolCost, objective: str,
               budget: float | None, weights_root: Path, post: PostChoice | None = None) -> Path:
    """One [[member]] per distinct member, in the order first chosen (most valuable first: the deadline drops the
    last), each with its weight (times chosen) and a comment: the gain of the step that first chose it and its
    projected cost. The header gives the `cost` command that prices the spec as select did (engine.spec_writer
    writes it)."""
    shape, spacing = (",".join(repr(float(v)).removesuffix(".0") for v in values)  # exact: the grid cost prices
                      for values in (pool.shape_zyx, pool.spacing_zyx))
    target = "here" if pool.target.tflops is None else "t4" if pool.target is T4 else f"{pool.target.tflops:g}"
    cost = shlex.join(["panther-ensemble", "cost", "--ensemble", path.name, "--weights", str(weights_root),
                       "--shape", shape, "--spacing", spacing, "--target", target])
    header = (f"chosen by `panther-ensemble select` from {candidates.path.name}: objective {objective}, target "
              f"{pool.target.name}{f', budget {budget:g} s' if budget else ''};",
              f"projected {path_steps[-1].seconds:.1f} s per case of {shape.replace(',', ' x ')} voxels at "
              f"{spacing.replace(',', ' x ')} mm (z, y, x): {cost}")
    by_id = {member.id: member for member in candidates.members}
    final = path_steps[-1].weights
    members, comments = [], {}
    previous: dict | None = None
    for number, step in enumerate(path_steps, start=1):
        if step.candidate not in comments:
            gain = "the best single candidate" if previous is None else \
                f"Dice {step.aggregates['mean_volumetric_dice'] - previous['mean_volumetric_dice']:+.4f}"
            comments[step.candidate] = (f"step {number}: {gain}; {pool.rows[step.candidate]['seconds']:.1f} s "
                                        f"projected on {pool.target.name}",)
            members.append(replace(by_id[step.candidate], weight=final[step.candidate]))
        previous = step.aggregates
    chosen, post_comment = None, ()
    if post is not None and post.chosen.active:
        chosen = post.chosen
        before, after = post.per_step[post.step][0], post.per_step[post.step][post.candidates.index(post.chosen)]
        post_comment = (f"post-processing chosen with the members ({objective}; {len(post.candidates)} candidates): "
                        f"HD95 {before['mean_hausdorff95']:.1f} -> {after['mean_hausdorff95']:.1f} mm, Dice "
                        f"{before['mean_volumetric_dice']:.4f} -> {after['mean_volumetric_dice']:.4f} on the "
                        "selection cases",)
    spec = EnsembleSpec(path, candidates.input_socket, candidates.output_socket, candidates.tumor_label,
                        tuple(members), backend=candidates.backend, postprocessing=chosen,
                        time_limit_seconds=candidates.time_limit_seconds,
                        tumor_label_name=candidates.tumor_label_name)
    return write_spec_file(spec, path, SpecComments(header, comments, post_comment))


def organ_label(members, tumor_label: int) -> int | None:
    """The label map's one other foreground label (PANTHER's: the pancreas), where there is exactly one."""
    others = [v for v in members[0].label_manager.all_labels if v not in (0, tumor_label)]
    return int(others[0]) if len(others) == 1 else None  # numpy's int in the label manager


def largest_case(cases: list[tuple[str, Path, Path]]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    headers = [check_image(image) for _, image, _ in cases]
    largest = max(headers, key=lambda h: math.prod(h.shape_zyx))
    return largest.shape_zyx, largest.spacing_zyx


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """The mean of paired differences and its standard error (0 for a single case)."""
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def held_out_comparison(cases: list[Case], ensemble: dict[MemberId, float], single: MemberId, tumor_label: int,
                        postprocessing: PostProcessing | None = None) -> dict:
    """The chosen ensemble (with its post-processing) and the best single candidate on held-out cases: means and the
    paired difference ± its standard error per metric (RMSE: values only); the ensemble without its
    post-processing beside them, and its difference to it."""
    chosen_aggregates, chosen = score(cases, ensemble, tumor_label, postprocessing)
    single_aggregates, alone = score(cases, {single: 1.0}, tumor_label)
    result = {"cases": len(cases), "ensemble": chosen_aggregates, "best_single": single_aggregates, "difference": {},
              "postprocessing": str(postprocessing or PostProcessing())}
    plain_aggregates, plain = score(cases, ensemble, tumor_label) if postprocessing and postprocessing.active \
        else (chosen_aggregates, chosen)
    result["without_postprocessing"] = plain_aggregates
    result["postprocessing_difference"] = {}
    for key in ("volumetric_dice", "surface_dice", "hausdorff95", "masd"):
        mean, se = mean_and_standard_error([chosen[c][key] - alone[c][key] for c in chosen])
        result["difference"][key] = {"mean": mean, "standard_error": se}
        mean, se = mean_and_standard_error([chosen[c][key] - plain[c][key] for c in chosen])
        result["postprocessing_difference"][key] = {"mean": mean, "standard_error": se}
    return result


@dataclass
class Selection:
    spec: Path
    path: list[Step]
    alone: dict[MemberId, dict]  # every candidate alone, in the candidates' order
    candidates: list[MemberId]
    pool: PoolCost  # prices any of the candidates as `cost` prices a spec
    held_out: dict | None
    post: PostChoice | None = None  # post-processing chosen with the members
    objective: str = "rank"
    stopped: str = ""  # why the greedy path ended


def run_selection(candidates: EnsembleSpec, weights_root: Path, images: Path, labels: Path, out: Path,
                  device: torch.device, target: Target, objective: str = "rank", budget: float | None = None,
                  geometry: tuple[tuple[int, ...], tuple[float, ...]] | None = None,
                  held_out: tuple[Path, Path] | None = None, remeasure: bool = False,
                  postprocessing: bool = True, backend: str = "torch") -> Selection:
    """Everything is checked (labels, budget against the cheapest candidate) before any candidate predicts; the
    spec is written last, whole, or not at all."""
    from ..engine.members import describe_member

    if objective not in OBJECTIVES:
        raise PantherError(f"--objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
    if budget is not None:
        finite_number(budget, "--budget")
    cases = labelled_cases(images, labels)
    held = labelled_cases(*held_out) if held_out else None
    members = [describe_member(weights_root, m, backend) for m in candidates.members]
    ids = [m.id for m in members]
    shape, spacing = geometry or largest_case(cases)
    # priced with post-processing's steps while they may be chosen; the written path at what was chosen
    pool = pool_cost_on(members, shape, spacing, target, device, remeasure, "steps" if postprocessing else "none")
    cheapest = min(pool.total([k]) for k in ids)
    if budget is not None and cheapest > budget:
        raise PantherError(f"--budget {budget:g} s: even the cheapest candidate needs {cheapest:.1f} s on "
                           f"{target.name} for a {' x '.join(map(str, shape))} case")
    with tempfile.TemporaryDirectory(prefix="panther-select-") as work:
        scored = predict_candidates(candidates, weights_root, cases, device, Path(work), backend)
        path, alone, stopped = select(scored, ids, pool.total, budget, objective, candidates.tumor_label)
        post = None
        if postprocessing:
            post = choose_postprocessing(scored, path, postprocessing_candidates(organ_label(members,
                                                                                              candidates.tumor_label)),
                                         objective, candidates.tumor_label)
            if post.step < len(path) - 1:
                log(f"with post-processing, step {post.step + 1} of the path ranks first: its members are written")
            path = path[:post.step + 1]
            pool = replace(pool, postprocessing=post.chosen.kind)
            path = [replace(step, seconds=pool.total(list(step.weights))) for step in path]
        final = path[-1] if post is None else replace(path[-1], aggregates=post.per_step[post.step][
            post.candidates.index(post.chosen)])
        check_tumor_predicted(scored, ids, final, objective, candidates.tumor_label)
        comparison = None
        if held:  # only the chosen members and the best single candidate predict these
            needed = {*path[-1].weights, path[0].candidate}
            log(f"held-out: {len(held)} case(s), {len(needed)} member(s)")
            subset = replace(candidates, members=tuple(m for m in candidates.members if m.id in needed))
            comparison = held_out_comparison(predict_candidates(subset, weights_root, held, device, Path(work),
                                                                backend),
                                             path[-1].weights, path[0].candidate, candidates.tumor_label,
                                             post.chosen if post else None)
    written = write_spec(out, candidates, path, pool, objective, budget, weights_root, post)
    return Selection(written, path, alone, ids, pool, comparison, post, objective, stopped)
