"""Every script a user may run answers --help: its usage, exit 0, no traceback, nothing done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCED = {"test/base_image.sh", "benchmarks/device_env.sh"}  # read by other scripts with `source`, never run
SCRIPTS = sorted(str(p.relative_to(REPO)) for pattern in ("*.py", "*.sh", "scripts/*.py", "benchmarks/*.py",
                                                          "benchmarks/*.sh", "test/*.py", "test/*.sh", "deploy/*.sh",
                                                          "deploy/*.sbatch")
                 for p in REPO.glob(pattern) if str(p.relative_to(REPO)) not in SOURCED)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script, tmp_path):
    command = [sys.executable, script] if script.endswith(".py") else ["bash", script]
    done = subprocess.run([*command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.strip().splitlines()) >= 2 and "Traceback" not in done.stderr + done.stdout
    made = [p.name for p in tmp_path.iterdir() if not p.name.startswith("torchinductor_")]  # torch's, on import
    assert made == []  # nothing done: not even a scratch folder
