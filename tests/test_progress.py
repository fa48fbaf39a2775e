"""Progress where a person looks: on a terminal a bar (cases done and failed, rate, time left) below the plain
lines; on a pipe (GC's log, a file) the plain lines alone, no carriage return."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from conftest import gc_input

REPO = Path(__file__).resolve().parents[1]
T1 = "abdominal-t1-mri"


def predict_command(workspace, tmp_path) -> list[str]:
    input_dir = gc_input(tmp_path, T1, {f"case-{k}.mha": dict(shape_zyx=(8, 24, 28), spacing_xyz=(1, 1, 3), seed=k)
                                        for k in range(3)})
    (input_dir / "images" / T1 / "case-1.mha").write_text("not an image")
    return [sys.executable, "-m", "panther_ensemble.cli", "predict", "--input", str(input_dir), "--output",
            str(tmp_path / "out"), "--ensemble", str(workspace.t1_spec), "--weights", str(workspace.weights),
            "--device", "cpu", "--budget", "0"]


def test_a_terminal_gets_a_progress_bar(workspace, tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal 160 wide
    process = subprocess.Popen(predict_command(workspace, tmp_path), cwd=REPO, stdout=follower,
                               stderr=subprocess.PIPE)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(120) == 1  # one case failed
    text = output.decode(errors="replace")
    assert "\r" in text and "predict: 3/3 cases, 1 failed" in text and "left" in text, text[-2000:]
    assert "wrote " in text  # the plain lines are there too, above the bar
    assert process.stderr.read().decode().count("error: ") == 1


def test_a_pipe_gets_the_plain_lines_alone(workspace, tmp_path):
    done = subprocess.run(predict_command(workspace, tmp_path), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert "\r" not in done.stdout and "cases," not in done.stdout and "wrote " in done.stdout
