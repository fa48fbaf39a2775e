"""The benchmark runs the stock chain and this product (torch, onnxruntime and the measured choice) alternated and
reports what issues 5, 8 and 35 ask; a smoke preset keeps it quick."""

from __future__ import annotations

import json

import pytest
import torch

from panther_ensemble import cli
from panther_ensemble.tools.benchmark import STAGES, format_report, run_benchmark


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    result = run_benchmark("smoke", work, torch.device("cpu"), repeats=2, out=work / "report.json")
    # written after each case, so a run stopped from outside keeps the cases it finished
    assert json.loads((work / "report.json").read_text()) == json.loads(json.dumps(result))
    return result


def test_both_paths_timed_alternated_with_stage_times(report):
    result = report["cases"]["t1"]
    assert report["features"] == [4, 8, 16]  # the planner's ResEnc, cut to the smoke preset
    assert result["case"]["members"] == 6  # the paper's 3 + 2 + 1
    for path in ("stock", "ours", "onnxruntime", "chosen"):
        assert len(result[path]["runs_wall_s"]) == 2
        stages = result[path]["stages_s"]
        assert set(stages) == set(STAGES)
        assert stages["forward"] > 0 and stages["load"] > 0 and stages["preprocess"] > 0
        assert sum(stages.values()) <= result[path]["wall_s"] * 1.01
        assert result[path]["peak_host_gib"] > 0.1
    assert result["ratio"] == pytest.approx(result["stock"]["wall_s"] / result["ours"]["wall_s"])
    onnx = result["onnxruntime"]
    assert onnx["ratio"] == pytest.approx(result["stock"]["wall_s"] / onnx["wall_s"])
    assert onnx["export_s"] > 0 and 0 < onnx["forward_share"] < 1
    assert result["forwards"] % 6 == 0 and result["flops_per_forward"] > 1e6
    chosen = result["chosen"]  # predict's default on a CPU: the exports beside, each member's forward measured
    assert chosen["ratio"] == pytest.approx(result["stock"]["wall_s"] / chosen["wall_s"])
    assert chosen["choice_s"] > 0 and len(chosen["forwards"]) == 6
    assert all(f["backend"] in ("torch", "onnxruntime", "openvino") and f["tiles_per_forward"] in (1, 2, 4)
               for f in chosen["forwards"])


def test_ours_is_within_the_parity_bound(report):
    for parity in (report["cases"]["t1"]["parity_vs_reference"],
                   report["cases"]["t1"]["onnxruntime"]["parity_vs_reference"],
                   report["cases"]["t1"]["chosen"]["parity_vs_reference"]):
        assert parity["dice"] >= 0.999 and parity["differing_fraction"] <= 0.0005


def test_report_table_and_cli(report, tmp_path, monkeypatch, capsys):
    table = format_report(report)
    assert "| t1 | stock |" in table and "| t1 | ours |" in table and "| t1 | onnxruntime |" in table
    assert "| t1 | chosen |" in table
    assert "stock/ours" in table and "stock/onnxruntime" in table and "stock/chosen" in table
    import panther_ensemble.tools.benchmark as benchmark

    # the CLI's whole run with the measured case standing in for a new measurement
    plans = {"configurations": {"3d_fullres": {"patch_size": report["patch_size"],
                                               "architecture": {"arch_kwargs": {"features_per_stage": [4]}}}}}
    monkeypatch.setattr(benchmark, "bench_plans", lambda *args: plans)
    monkeypatch.setattr(benchmark, "benchmark_case", lambda *args: report["cases"]["t1"])
    out = tmp_path / "bench.json"
    assert cli.main(["benchmark", "--preset", "smoke", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["cases"]["t1"]["ratio"] == report["cases"]["t1"]["ratio"]
    assert "stock/ours" in capsys.readouterr().out


def test_bad_repeats_is_one_line_error(capsys):
    assert cli.main(["benchmark", "--repeats", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: --repeats must be at least 1, got 0"


def test_the_cpu_presets_96_case_has_its_own_patch_and_a_case_a_preset_lacks_is_one_line(tmp_path, capsys):
    from panther_ensemble.tools.benchmark import PRESETS, base_case, bench_plans

    cpu = PRESETS["cpu"]
    assert cpu.patch("t1") == (64, 64, 64) and cpu.patch("t1-96") == (96, 96, 96) and base_case("t1-96") == "t1"
    configuration = bench_plans(tmp_path, cpu, cpu.patch("t1-96"))["configurations"]["3d_fullres"]
    assert configuration["patch_size"] == [96, 96, 96]
    assert configuration["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16, 32]
    assert cli.main(["benchmark", "--preset", "smoke", "--case", "t1-96", "--work", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "error: the smoke preset has no case t1-96 (it has t1)"
