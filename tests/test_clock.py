"""GC's clock: it starts with GC's runtime (sagemaker-shim, found among this process's ancestors) or, without it,
with this process (read from /proc: the interpreter's start and the imports count); exec tasks are counted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from panther_ensemble.core import clock

REPORT = ("import json, time\nfrom panther_ensemble.core.clock import exec_task, process_start\n"
          "task = exec_task()\nnow = time.perf_counter()\n"
          "print(json.dumps({'process_age': now - process_start().at, 'job_age': now - task.job.at, "
          "'job': task.job.what, 'number': task.number}))")


def test_the_clock_counts_from_this_processs_start_before_its_imports():
    """A process that spends 1.5 s before its imports (a slow container start, say) has those in its clock."""
    code = "import time\ntime.sleep(1.5)\n" + REPORT
    report = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert 1.5 <= report["process_age"] < 10 and report["job"] == "this process's start"
    assert abs(report["job_age"] - report["process_age"]) < 0.05 and report["number"] == 1


def test_under_gcs_runtime_the_clock_counts_from_its_start_and_exec_tasks_are_numbered(tmp_path):
    """A stand-in sagemaker-shim (by its name) that spends 1.5 s (the model's download, say) before it starts the
    task's process, twice as the exec API does: the job's clock counts from the runtime's start, and the second
    process knows it is task 2."""
    shim = tmp_path / "sagemaker-shim"
    shim.write_text(f"#!/bin/bash\nsleep 1.5\n'{sys.executable}' -c \"$1\"\n'{sys.executable}' -c \"$1\"\n")
    shim.chmod(0o755)
    done = subprocess.run([str(shim), REPORT], capture_output=True, text=True, check=True)
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    try:
        assert first["process_age"] < 1.5 <= first["job_age"] < 10
        assert first["job"].startswith("GC's runtime's start (sagemaker-shim, pid ") and "s before this process" \
            in first["job"]
        assert (first["number"], second["number"]) == (1, 2)
        assert second["job_age"] - second["process_age"] >= 1.5
    finally:
        for mark in Path("/tmp").glob(".panther-ensemble-tasks-*"):
            if mark.stat().st_mtime >= time.time() - 60:
                mark.unlink(missing_ok=True)


def test_without_proc_the_clock_counts_from_when_it_is_first_asked(monkeypatch):
    monkeypatch.setattr(clock, "_stat", lambda pid: None)
    before = time.perf_counter()
    origin = clock.process_start()
    assert before <= origin.at <= time.perf_counter() and clock.job_start().what.startswith("this process's start")
    assert clock.exec_task_number() == 1
