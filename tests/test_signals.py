"""SIGINT and SIGTERM end a run in moments with one line and nothing half-written; a record says `interrupted`; a
server between tasks ends quietly (GC's shim stops it with SIGTERM at the end of the job)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import gc_input
from test_serve import app_folder, free_port, request, wait_for

REPO = Path(__file__).resolve().parents[1]
T1 = "abdominal-t1-mri"


def start(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, **(env or {})})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return process, lines


def wait_for_line(lines: list[str], text: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not any(text in line for line in lines):
        assert process.poll() is None, f"ended early: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"never printed {text!r}"
        time.sleep(0.02)


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_mid_run_is_one_line_within_two_seconds(workspace, tmp_path, name, code):
    input_dir = gc_input(tmp_path, T1, {f"case-{k}.mha": dict(shape_zyx=(30, 150, 170), spacing_xyz=(0.9, 0.9, 2.0),
                                                              seed=k) for k in range(3)})
    records = tmp_path / "records.jsonl"
    process, lines = start(["-m", "panther_ensemble.cli", "predict", "--input", str(input_dir), "--output",
                            str(tmp_path / "out"), "--ensemble", str(workspace.t1_spec), "--weights",
                            str(workspace.weights), "--device", "cpu", "--budget", "0", "--records", str(records)])
    wait_for_line(lines, "tile", process)  # inside a member's sliding window
    sent = time.monotonic()
    process.send_signal(getattr(signal, name))
    returncode = process.wait(30)
    took = time.monotonic() - sent
    err = process.stderr.read()
    assert returncode == code and took < 2.0, (returncode, took)
    assert err.strip().splitlines() == [f"error: interrupted ({name})"], err
    assert not list((tmp_path / "out").rglob("*partial*")) if (tmp_path / "out").exists() else True
    entries = [json.loads(line) for line in records.read_text().splitlines()]
    assert entries and entries[-1]["status"] == "interrupted" and name in entries[-1]["error"]


def test_a_server_between_tasks_stops_quietly_on_sigterm(workspace, tmp_path):
    app, port = app_folder(workspace, tmp_path), free_port()
    process, lines = start(["inference.py", "--api", "invoke", "--port", str(port), "--input", str(tmp_path / "in"),
                            "--output", str(tmp_path / "out")], {"PANTHER_APP_DIR": str(app)})
    wait_for(port, 200, 120, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert process.stderr.read() == ""
    time.sleep(0.1)
    assert any(line.startswith("stopped (SIGTERM)") for line in lines)
    assert request(port, "GET", "/health", timeout=2)[0] == 0
