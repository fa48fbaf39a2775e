"""benchmarks/t4_check.sh (and t4_check.py), what a session with a GPU runs, exercised end to end on the CPU (smoke
preset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_t4_check_runs_and_reports_on_the_cpu(tmp_path):
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "t4_check.sh"), str(tmp_path), "smoke"],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "t4_check.json").read_text())
    assert report["members"] == 6 and set(report["cases"]) == {"large", "panther_t1"}
    for case in report["cases"].values():
        assert case["device_estimate_total_gib"] > 0 and case["input_grid_bytes_per_voxel"] > 0
        assert set(case["t4_placement"]) == {"capture_graphs", "input_grid_on_device", "keep_networks"}
        for name in ("graphs on", "graphs off"):
            run = case[name]
            assert run["total_seconds"] > 0 and run["verify_seconds"] is not None and run["stderr"] == ""
            assert run["first_network_ready_seconds"] > 0 and run["tiles_per_member"]
            assert run["first_member_seconds_per_tile"] is not None and run["steady_seconds_per_tile"] is not None
        assert case["graphs on vs off: voxels differing"] == 0  # no graphs on a CPU: the same run twice
        for name in ("graphs on", "graphs off"):
            assert case["parity"][name]["dice"] >= 0.999 and case["parity"][name]["differing_fraction"] <= 0.0005
        assert case["reference_tumor_fraction"] > 0.001
