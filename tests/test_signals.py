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
    wait_for_line(lines, "group 1: preprocessed", process)  # the first member's sliding window begins
    time.sleep(0.5)
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


# predict, with one step made slow so that a stop can come exactly then (the rest as the console script runs it)
STOPPED_AT = """import sys, time
from panther_ensemble import cli
cli.stop.install()  # first, as the console script does: before torch's threads exist
import panther_ensemble.app.predict_run as run
import panther_ensemble.engine.loading as loading

moment, arguments = sys.argv[1], sys.argv[2:]

def pause(what):
    print(what, flush=True)
    time.sleep(60)

if moment == "checking":  # the spec and its weights checked, before any case
    prepare = run.prepare
    run.prepare = lambda *a: (pause("checking"), prepare(*a))[1]
elif moment == "loading":  # a network read from disk
    load = loading.load_network
    loading.load_network = lambda *a: (pause("loading"), load(*a))[1]
elif moment == "between":  # the first case done, the next one not begun
    predict_case, calls = run.predict_case, []
    def second_waits(*a):
        calls.append(1)
        if len(calls) == 2:
            pause("between")
        return predict_case(*a)
    run.predict_case = second_waits
cli.exit_now(cli.main(arguments))
"""


@pytest.mark.parametrize("moment, statuses", [
    ("checking", ["interrupted", "interrupted", "interrupted"]),
    ("loading", ["interrupted", "interrupted", "interrupted"]),
    ("between", ["ok", "interrupted", "interrupted"]),
])
def test_a_stop_at_any_moment_records_every_case(workspace, tmp_path, moment, statuses):
    """SIGTERM before the first case (checking the spec), while a network loads, between two cases: exit 143, one
    line, every case recorded (the done one ok, the others interrupted), only whole masks on disk."""
    input_dir = gc_input(tmp_path, T1, {f"case-{k}.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(1, 1, 3), seed=k)
                                        for k in range(3)})
    records, output = tmp_path / "records.jsonl", tmp_path / "out"
    process, lines = start(["-c", STOPPED_AT, moment, "predict", "--input", str(input_dir), "--output", str(output),
                            "--ensemble", str(workspace.t1_spec), "--weights", str(workspace.weights), "--device",
                            "cpu", "--budget", "0", "--records", str(records)])
    wait_for_line(lines, moment, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 143
    assert process.stderr.read().strip().splitlines() == ["error: interrupted (SIGTERM)"]
    entries = {e["case"]: e for e in map(json.loads, records.read_text().splitlines())}
    assert [entries[f"case-{k}.mha"]["status"] for k in range(3)] == statuses
    assert all("before it ran" in entries[f"case-{k}.mha"]["error"] for k in range(3) if moment == "checking")
    written = sorted(p.name for p in output.rglob("*") if p.is_file()) if output.exists() else []
    assert written == [f"case-{k}.mha" for k, status in enumerate(statuses) if status == "ok"]
