"""The deadline: a valid output before the budget ends, members dropped in reverse spec order."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import gc_input, read_mask

import panther_ensemble.engine.loading as loading
from panther_ensemble.app.predict_run import budget_seconds, predict_folder
from panther_ensemble.demo import synthetic as syn
from panther_ensemble.demo.synthetic import ALL_ROUNDER, BOUNDARY, VOLUME
from panther_ensemble.engine.deadline import Deadline


def deadline_with(seconds, elapsed, rate=None) -> Deadline:
    deadline = Deadline(seconds, start=time.perf_counter() - elapsed)
    if rate is not None:
        deadline.record_forward(rate, warm_up=False)
    return deadline


def test_member_fits():
    assert deadline_with(None, 1000, 1.0).member_fits(100, 1)  # no budget
    assert deadline_with(10, 0).member_fits(100, 1)  # nothing measured yet
    # 20 s left: 1 s for writing, 1 s to finish the member, 18 s (less the test's own time) for tiles at 1 s each
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
    # 20 s left, less writing (1 s), finishing (1 s) and 5 tiles at 1 s: 13 s (less the test's own time)
    assert 12.5 < deadline_with(30, 10, 1.0).wait_for_loading(5, 1) <= 13
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


def test_budget_resolution():
    assert budget_seconds(None, None) == 270
    assert budget_seconds(None, 120.0) == 120
    assert budget_seconds(60, 120.0) == 60
    assert budget_seconds(0, 120.0) is None


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

    tiles = int(log.split("tile ")[1].split("/")[1].split()[0])
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
