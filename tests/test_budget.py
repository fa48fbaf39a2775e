"""The deadline: a valid output before the budget ends, members dropped in reverse spec order."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import gc_input, read_mask

import panther_ensemble.engine.loading as loading
from panther_ensemble.app.predict_run import CohortOptions, predict_folder, task_clock
from panther_ensemble.core.clock import now
from panther_ensemble.core.errors import PantherError
from panther_ensemble.demo import synthetic as syn
from panther_ensemble.demo.synthetic import ALL_ROUNDER, BOUNDARY, VOLUME
from panther_ensemble.engine.deadline import Deadline, FinalStage, TaskClock
from panther_ensemble.engine.spec import EnsembleSpec


def deadline_with(seconds, elapsed, rate=None) -> Deadline:
    deadline = Deadline(seconds, start=time.perf_counter() - elapsed)
    if rate is not None:
        deadline.record_forward(rate, warm_up=False)
    return deadline


def test_member_fits():
    assert deadline_with(None, 1000, 1.0).member_fits(100, 1)  # no budget
    assert deadline_with(10, 0).member_fits(100, 1)  # nothing measured yet
    # 20 s left: 0.5 s for the last stage, 1 s to finish the member, 18.5 s (less the test's own time) for tiles at
    # 1 s each
    assert deadline_with(30, 10, 1.0).member_fits(17, 1)
    assert not deadline_with(30, 10, 1.0).member_fits(19, 1)
    first = deadline_with(30, 29, 1.0)
    assert first.member_fits(4, 0) and first.overrun  # it does not fit, but the first member always completes
    assert not deadline_with(30, 29, 1.0).member_fits(4, 2)  # ... unless one already did
    assert not deadline_with(30, 29.5).another_group_fits(completed=1)
    assert deadline_with(30, 29.5).another_group_fits(completed=0)


def test_how_long_a_member_may_wait_for_its_network():
    assert deadline_with(None, 10, 1.0).wait_for_loading(5, 1) is None  # no budget: as long as it takes
    assert deadline_with(30, 10, 1.0).wait_for_loading(5, 0) is None  # the first member always runs
    # 20 s left, less the last stage (0.5 s until a case reserves its own), finishing (1 s) and 5 tiles at 1 s: 13.5 s
    # (less the test's own time)
    assert 13 < deadline_with(30, 10, 1.0).wait_for_loading(5, 1) <= 13.5
    assert deadline_with(30, 10, 1.0).wait_for_loading(50, 1) == 0


def test_slow_warm_up_does_not_drop_members():
    """A GPU's first forwards are slow (kernel selection); they must not set the projected rate."""
    deadline = deadline_with(270, 5)
    deadline.record_forward(8.0, warm_up=True)  # first tile of the first member
    assert deadline.member_fits(99, 0) and not deadline.overrun  # 263 s left: the next forward fits
    deadline.record_forward(0.3, warm_up=False)
    assert deadline.member_fits(98, 1)  # 98 tiles x 0.3 s; at the warm-up's 8 s they would not fit
    # but a forward that cannot end in time is not started, even while warming up
    late = deadline_with(10, 5)
    late.record_forward(6.0, warm_up=True)
    assert not late.member_fits(10, 1)
    assert late.member_fits(0, 1)  # its tiles done: finishing it fits


def clock_for(spec_budget=None, spec_limit=None, budget=None, time_limit=None) -> TaskClock:
    spec = EnsembleSpec(Path("spec.toml"), "a", "b", 1, (), spec_budget, time_limit_seconds=spec_limit)
    return task_clock(now("the test"), spec, budget, time_limit)


def test_budget_resolution():
    assert clock_for().budget == 270 and clock_for().time_limit == 300  # GC's 300 s less the margin
    assert clock_for(120.0).budget == 120
    assert clock_for(120.0, budget=60).budget == 60
    assert clock_for(120.0, budget=0).budget is None  # 0: no limit
    assert clock_for(spec_limit=600).budget == 570  # a phase with a longer limit
    assert clock_for(spec_limit=600, time_limit=120).budget == 90  # the flag wins
    with pytest.raises(PantherError, match="past the time limit of 300 s"):
        clock_for(budget=301)
    with pytest.raises(PantherError, match="past the time limit of 100 s"):
        clock_for(spec_budget=200, time_limit=100)


@pytest.mark.parametrize("budget, time_limit, message", [
    (math.nan, None, "--budget must be a finite number, 0 or more, got nan"),
    (math.inf, None, "--budget must be a finite number, 0 or more, got inf"),
    (-1.0, None, "--budget must be a finite number, 0 or more, got -1.0"),
    (None, math.nan, "--time-limit must be a finite number above 0, got nan"),
    (None, 0.0, "--time-limit must be a finite number above 0, got 0.0"),
    (None, -math.inf, "--time-limit must be a finite number above 0, got -inf"),
])
def test_numbers_that_are_not_numbers_are_refused(budget, time_limit, message):
    with pytest.raises(PantherError) as refused:
        clock_for(budget=budget, time_limit=time_limit)
    assert str(refused.value) == message


def test_the_kth_task_counts_from_its_call_or_the_job_limit_before_it():
    """GC's job limit is the sum of its tasks' limits from the container's start: task k never gets past
    the job's start + (k - 1) limits + the budget, nor past its own call + the budget."""
    job = now("the job's start")
    clock = TaskClock(job, 270.0, 300.0)
    first = clock.next_task(job.at + 12.0)  # loaded and called 12 s after the start
    assert first.start == job.at and first.seconds == 270  # the first task counts from the job's start
    second = clock.next_task(job.at + 100.0)  # called early: its own call
    assert second.start == job.at + 100.0
    third = clock.next_task(job.at + 700.0)  # called late (slow uploads): the job's limit of two tasks before it
    assert third.start == job.at + 600.0 and clock.tasks == 3
    assert clock.counted_from(third, job.at + 700.0) == "the job's start + 2 x the 300 s time limit"
    assert clock.counted_from(second, job.at + 100.0) == "the task's own start"
    exec_task = TaskClock(job, 270.0, 300.0).next_task(job.at + 3.0, number=4)  # exec: the runtime's mark says 4
    assert exec_task.start == job.at + 3.0


def test_the_final_stage_is_reserved_from_the_grid_and_then_from_what_it_took():
    stage = FinalStage("steps")
    voxels = 200 * 512 * 512
    assert stage.reserve(voxels) == pytest.approx(2 * 0.033 * voxels / 1e6)  # 3.5 s, twice the measured rate
    assert FinalStage("none").reserve(voxels) < stage.reserve(voxels) < FinalStage("nnunet").reserve(voxels)
    assert FinalStage().reserve(1000) == 0.5  # never below half a second
    stage.record(voxels, 9.0)  # a slow host: what the run measured wins
    assert stage.reserve(voxels) == pytest.approx(9.0)
    stage.record(voxels, 1.0)  # a faster case does not lower it
    assert stage.reserve(voxels // 2) == pytest.approx(4.5)


class SlowNetwork(torch.nn.Module):
    def __init__(self, network: torch.nn.Module, delay: float) -> None:
        super().__init__()
        self.network, self.delay = network, delay

    def forward(self, x):
        time.sleep(self.delay)
        return self.network(x)


def test_output_before_the_budget_when_the_ensemble_needs_ten_times_more(workspace, tmp_path, monkeypatch,
                                                                         capsys):
    # 12 members (every fold and checkpoint there is); the first is quick, the others slow
    members = [(config, fold, checkpoint, 1.0) for config in (ALL_ROUNDER, VOLUME, BOUNDARY)
               for fold in config.folds for checkpoint in config.checkpoints]
    spec = syn.write_spec(tmp_path / "many.toml", members)
    original = loading.load_network
    loaded = []

    def slow_network(member, device):
        network = SlowNetwork(original(member, device), 0.05 if not loaded else 1.0)
        loaded.append(network)
        return network

    monkeypatch.setattr(loading, "load_network", slow_network)
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": dict(shape_zyx=(16, 60, 70),
                                                                        spacing_xyz=(0.8, 0.8, 3.0), seed=5)})
    budget = 6.0
    start = time.perf_counter()
    written = predict_folder(input_dir, tmp_path / "out", ensemble=spec, weights=workspace.weights, device="cpu",
                             budget=budget)
    took = time.perf_counter() - start
    log = capsys.readouterr().out

    tiles = int(log.split(" tiles in ")[0].split()[-1])  # the first member's line: "member 1/12 ...: N tiles in"
    needed = tiles * (0.05 + 1.0 * 9) + 1.0 * 2 * tiles  # group 1: 10 members, group 2: 2 members
    assert needed >= 9 * budget  # the full ensemble would take about ten budgets
    assert took <= budget + 3, f"took {took:.1f}s"
    assert "budget: dropped" in log and "members used" in log
    mask, _ = read_mask(written[0])
    assert mask.shape == (16, 60, 70)
    used = int(log.split("summary case.mha: ")[1].split("/")[0])
    assert 1 <= used < 12


@pytest.mark.parametrize("budget", [0.01])
def test_first_member_always_completes(workspace, tmp_path, budget, capsys):
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": dict(shape_zyx=(10, 30, 34),
                                                                        spacing_xyz=(1, 1, 3), seed=6)})
    written = predict_folder(input_dir, tmp_path / "out", ensemble=workspace.t1_spec, weights=workspace.weights,
                             device="cpu", budget=budget)
    log = capsys.readouterr().out
    assert written[0].exists()
    assert "summary case.mha: 1/6 members used, 5 dropped" in log
    assert "even one member cannot finish within the budget" in log


def test_the_last_stage_is_reserved_as_the_run_measured_it(workspace, tmp_path, monkeypatch):
    """A spec with post-processing whose last stage is slow (here 3 s): the first case reserves the projection
    (half a second on so small a grid), a later case what the run measured, and ends inside its budget (within 1 s:
    a shared machine's noise; without the measured reserve it would end 2.5 s late) with members dropped."""
    import panther_ensemble.engine.ensemble as ensemble_module

    members = [(config, fold, checkpoint, 1.0) for config in (ALL_ROUNDER, VOLUME, BOUNDARY)
               for fold in config.folds for checkpoint in config.checkpoints]
    spec = syn.write_spec(tmp_path / "many.toml", members)
    spec.write_text(spec.read_text() + "\n[postprocessing]\nkeep_largest = true\nnever_empty_floor = 0.2\n")
    original, loaded, slow_postprocess = loading.load_network, [], ensemble_module.postprocess

    def slow_network(member, device):
        network = SlowNetwork(original(member, device), 0.05 if not loaded else 0.5)
        loaded.append(network)
        return network

    def slow_last_stage(*args, **kwargs):
        time.sleep(3.0)
        return slow_postprocess(*args, **kwargs)

    reserved, reserve_final = [], Deadline.reserve_final

    def recorded_reserve(deadline, seconds):
        reserved.append(seconds)
        reserve_final(deadline, seconds)

    monkeypatch.setattr(loading, "load_network", slow_network)
    monkeypatch.setattr(ensemble_module, "postprocess", slow_last_stage)
    monkeypatch.setattr(Deadline, "reserve_final", recorded_reserve)
    case = dict(shape_zyx=(16, 60, 70), spacing_xyz=(0.8, 0.8, 3.0), seed=5)
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"a.mha": case, "b.mha": case})
    records, budget = tmp_path / "records.jsonl", 8.0
    predict_folder(input_dir, tmp_path / "out", ensemble=spec, weights=workspace.weights, device="cpu",
                   budget=budget, cohort=CohortOptions(records=records))
    cases = [json.loads(line) for line in records.read_text().splitlines()]
    assert reserved[0] == 0.5 and reserved[1] >= 3.0, reserved  # projected for a tiny grid, then as measured
    assert cases[1]["seconds"] <= budget + 1.0, [case["seconds"] for case in cases]  # and kept back
    assert all(1 <= 12 - len(case["members_dropped"]) < 12 for case in cases)
