"""The failure contract beyond bad input files (tests/test_hostile.py): whatever goes wrong in one case is one line
naming it, the other cases run, every case has its record; a run-level failure records every case; the traceback
only with PANTHER_DEBUG; a stopped run leaves nothing half-written and records every case it did not finish."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import gc_input
from test_signals import start, wait_for_line

import panther_ensemble.app.read_ahead as reading
from panther_ensemble.cli import main

T1 = "abdominal-t1-mri"
MASKS = Path("images") / "pancreatic-tumor-segmentation"


def three_cases(tmp_path: Path) -> Path:
    return gc_input(tmp_path, T1, {f"case-{k}.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(1, 1, 3), seed=k)
                                   for k in range(3)})


def predict(workspace, tmp_path: Path, *extra: str, weights: Path | None = None) -> int:
    return main(["predict", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "out"), "--ensemble",
                 str(workspace.t1_spec), "--weights", str(weights or workspace.weights), "--device", "cpu",
                 "--budget", "0", *extra])


def fail_on(name: str, error: Exception, monkeypatch) -> None:
    """A bug of ours or a library's (not a PantherError) while reading one case (read ahead, in a thread of its own,
    where it is not the first)."""
    original = reading.read_image

    def read_image(path):
        if Path(path).name == name:
            raise error
        return original(path)

    monkeypatch.setattr(reading, "read_image", read_image)


def test_an_unexpected_error_in_one_case_is_its_line_and_record_and_the_others_run(workspace, tmp_path, capsys,
                                                                                     monkeypatch):
    three_cases(tmp_path)
    fail_on("case-1.mha", IndexError("index 0 is out of bounds for axis 0 with size 0"), monkeypatch)
    records = tmp_path / "records.jsonl"
    assert predict(workspace, tmp_path, "--records", str(records)) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: ") and "case-1.mha: unexpected IndexError: index 0 is out of bounds" in \
        errors[0] and "PANTHER_DEBUG=1" in errors[0], errors[0]
    assert sorted(p.name for p in (tmp_path / "out" / MASKS).iterdir()) == ["case-0.mha", "case-2.mha"]
    status = {Path(e["case"]).name: e["status"] for e in map(json.loads, records.read_text().splitlines())}
    assert status == {"case-0.mha": "ok", "case-1.mha": "error", "case-2.mha": "ok"}


def test_panther_debug_adds_the_traceback(workspace, tmp_path, capsys, monkeypatch):
    three_cases(tmp_path)
    fail_on("case-1.mha", IndexError("boom"), monkeypatch)
    monkeypatch.setenv("PANTHER_DEBUG", "1")
    assert predict(workspace, tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "case-1.mha: unexpected IndexError: boom" in err.splitlines()[0]
    assert "Traceback (most recent call last)" in err and "raise error" in err


def test_a_failure_of_the_whole_run_records_every_case(workspace, tmp_path, capsys):
    three_cases(tmp_path)
    records = tmp_path / "records.jsonl"
    assert predict(workspace, tmp_path, "--records", str(records), weights=tmp_path / "no-weights") == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    entries = [json.loads(line) for line in records.read_text().splitlines()]
    assert sorted(Path(e["case"]).name for e in entries) == ["case-0.mha", "case-1.mha", "case-2.mha"]
    assert {e["status"] for e in entries} == {"error"} and all(e["error"] == errors[0][len("error: "):]
                                                               for e in entries)


@pytest.mark.parametrize("name, code", [("SIGTERM", 143)])
def test_a_signal_while_a_mask_is_written_leaves_neither_it_nor_its_partial(workspace, tmp_path, name, code):
    """The partial mask is on disk when the signal comes (its writer made slow): removed, no mask, every case of
    the run recorded (the one being written and those not yet run: interrupted)."""
    three_cases(tmp_path)
    records = tmp_path / "records.jsonl"
    slow_writer = ("import sys, time\nfrom panther_ensemble.core import stop\nstop.install()  # as console_main\n"
                   "import SimpleITK as sitk\nimport panther_ensemble.engine.image as image\n"
                   "from panther_ensemble.cli import exit_now, main\nwrite = sitk.WriteImage\n"
                   "def slow(*args, **kwargs):\n    write(*args, **kwargs)\n    print('partial written', flush=True)\n"
                   "    time.sleep(60)\nimage.sitk = type('S', (), {**{k: getattr(sitk, k) for k in dir(sitk) "
                   "if not k.startswith('__')}, 'WriteImage': staticmethod(slow)})\nexit_now(main(sys.argv[1:]))\n")
    process, lines = start(["-c", slow_writer, "predict", "--input", str(tmp_path / "input"), "--output",
                            str(tmp_path / "out"), "--ensemble", str(workspace.t1_spec), "--weights",
                            str(workspace.weights), "--device", "cpu", "--budget", "0", "--records", str(records)])
    wait_for_line(lines, "partial written", process)
    assert list((tmp_path / "out").rglob("*partial*")), "the partial mask should be on disk now"
    sent = time.monotonic()
    process.send_signal(getattr(signal, name))
    assert process.wait(30) == code and time.monotonic() - sent < 2.0
    assert process.stderr.read().strip().splitlines() == [f"error: interrupted ({name}); nothing half-written is left"]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    entries = [json.loads(line) for line in records.read_text().splitlines()]
    assert sorted(Path(e["case"]).name for e in entries) == ["case-0.mha", "case-1.mha", "case-2.mha"]
    assert {e["status"] for e in entries} == {"interrupted"}


def test_written_atomically_leaves_nothing_when_stopped(tmp_path):
    """The writers of select's spec, model tarballs, reports, caches and manifests write through this: a signal
    meanwhile removes the partial file (or folder) and never leaves the target half-written."""
    target = tmp_path / "spec.toml"
    code = ("import sys, time\nfrom pathlib import Path\nfrom panther_ensemble.core import stop\nstop.install()\n"
            "with stop.written_atomically(Path(sys.argv[1])) as partial:\n"
            "    partial.write_text('half')\n    print('writing', flush=True)\n    time.sleep(60)\n")
    process, lines = start(["-c", code, str(target)])
    wait_for_line(lines, "writing", process)
    assert (tmp_path / ".spec.toml.partial").exists()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 143
    assert list(tmp_path.iterdir()) == []
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom pathlib import Path\n"
                           "from panther_ensemble.core.stop import written_atomically\n"
                           "with written_atomically(Path(sys.argv[1])) as partial:\n    partial.mkdir()\n"
                           "    (partial / 'a').write_text('x')\n    raise SystemExit(3)\n", str(target)],
                          capture_output=True, text=True)
    assert done.returncode == 3 and list(tmp_path.iterdir()) == []  # a failure removes a partial folder too
    from panther_ensemble.core.stop import written_atomically

    with written_atomically(target) as partial:
        partial.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


REPLACE_FOLDER = """import os, sys, time
from pathlib import Path
from panther_ensemble.core import stop
stop.install()
target, moment = Path(sys.argv[1]), sys.argv[2]
replace = os.replace
def slow_replace(source, destination):
    if moment == "swapping" and Path(destination).name == ".out.old":
        print("swapping", flush=True)
        time.sleep(2)  # the stop comes now: it waits for the swap
    replace(source, destination)
stop.os.replace = slow_replace
with stop.written_atomically(target) as partial:
    partial.mkdir()
    (partial / "new").write_text("whole")
    if moment == "writing":
        print("writing", flush=True)
        time.sleep(60)
time.sleep(60)
"""


@pytest.mark.parametrize("moment, kept", [("writing", "old"), ("swapping", "new")])
def test_a_folder_replaced_under_a_stop_is_the_old_or_the_new_never_neither(tmp_path, moment, kept):
    """A stop while the new folder is written leaves the old one in place (the partial removed); a stop while the
    two are swapped waits for the swap: the new one, the old one removed. Never neither, never both."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("whole")
    process, lines = start(["-c", REPLACE_FOLDER, str(target), moment])
    wait_for_line(lines, moment, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 143
    assert [p.name for p in target.iterdir()] == [kept] and (target / kept).read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial, no old copy left


def test_evaluate_with_an_ensemble_names_the_case_that_fails(workspace, tmp_path, capsys, monkeypatch):
    """The member table needs every labelled case: the first that fails is one line naming it, no table."""
    from panther_ensemble.demo import synthetic as syn
    from panther_ensemble.tools import member_table

    for name in ("images", "labels"):
        for k in range(2):
            syn.make_image(tmp_path / name / f"case{k}.mha", (8, 24, 28), (1, 1, 3), seed=k)
    original = member_table.tumor_metrics
    monkeypatch.setattr(member_table, "tumor_metrics", lambda mask, *a: original(mask, *a) if mask.shape != (8, 24, 28)
                        else (_ for _ in ()).throw(ZeroDivisionError("float division by zero")))
    out = tmp_path / "table.json"
    assert main(["evaluate", "--ensemble", str(workspace.t1_spec), "--weights", str(workspace.weights), "--images",
                 str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--device", "cpu", "--out",
                 str(out)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [f"error: {tmp_path / 'images' / 'case0.mha'}: unexpected ZeroDivisionError: float division by "
                      "zero (set PANTHER_DEBUG=1 for the traceback)"], errors
    assert not out.exists()
