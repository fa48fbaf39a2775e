"""A cohort's next case read and preprocessed beside the current one: the same masks as one case at a time, a
failure of the case read ahead its own error line, the host's room respected, the memory estimate an upper bound."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk
import torch
from conftest import gc_input

from panther_ensemble.app import read_ahead
from panther_ensemble.app.cohort import summarize
from panther_ensemble.cli import main
from panther_ensemble.core.log import StageTimer
from panther_ensemble.engine.devices import HOST
from panther_ensemble.engine.ensemble import Ensemble
from panther_ensemble.engine.host_limits import Room
from panther_ensemble.engine.image import check_image, read_image
from panther_ensemble.engine.memory import read_ahead_bytes
from panther_ensemble.engine.spec import load_spec

T1 = "abdominal-t1-mri"


def cohort(tmp_path, n: int = 3):
    return gc_input(tmp_path, T1, {f"case_{i}.mha": dict(shape_zyx=(9 + i, 26, 30), spacing_xyz=(1, 1, 3), seed=30 + i)
                                   for i in range(n)})


def predict(workspace, input_dir, output, *extra: str) -> int:
    return main(["predict", "--input", str(input_dir), "--output", str(output), "--ensemble",
                 str(workspace.mixed_spec), "--weights", str(workspace.weights), "--device", "cpu", "--budget", "0",
                 *extra])


def masks(folder) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.rglob("*.mha"))}


def test_a_cohort_read_ahead_writes_the_masks_of_one_case_at_a_time(workspace, tmp_path, monkeypatch, capsys):
    input_dir = cohort(tmp_path)
    assert predict(workspace, input_dir, tmp_path / "ahead") == 0
    log = capsys.readouterr().out
    assert "read-ahead: the next case read and preprocessed while one runs" in log
    for i in (1, 2):  # three preprocessing groups each, made beside the case before
        assert f"case_{i}.mha: " in log
        line = next(line for line in log.splitlines() if line.startswith(f"case_{i}.mha: "))
        assert "and preprocessed in" in line and line.endswith("while the previous case ran")
    assert log.count("group 3: preprocessed") == 3 and log.count(") ahead") == 6
    monkeypatch.setenv(read_ahead.READ_AHEAD_VARIABLE, "off")
    assert predict(workspace, input_dir, tmp_path / "one-at-a-time") == 0
    log = capsys.readouterr().out
    assert "PANTHER_READ_AHEAD=off: each case is read when it starts" in log and ") ahead" not in log
    ahead, one_at_a_time = masks(tmp_path / "ahead"), masks(tmp_path / "one-at-a-time")
    assert list(ahead) == ["case_0.mha", "case_1.mha", "case_2.mha"]
    assert all(np.array_equal(ahead[name], one_at_a_time[name]) for name in ahead)


def test_the_data_preprocessed_ahead_is_the_data_preprocessed_in_the_run(workspace, tmp_path):
    image_file = next(cohort(tmp_path, 1).rglob("*.mha"))
    model = Ensemble.load(load_spec(workspace.mixed_spec), workspace.weights, HOST, StageTimer())
    try:
        ahead = model.preprocess_ahead(read_image(image_file))
        assert len(ahead) == len(model.groups) == 3
        for g, group in enumerate(model.groups, start=1):
            inline = model._preprocess(read_image(image_file), g, group)
            assert torch.equal(ahead[g - 1].data, inline.data)
    finally:
        model.close()


def test_a_failure_of_the_case_read_ahead_is_its_own_error_line(workspace, tmp_path, capsys):
    input_dir = cohort(tmp_path)
    bad = input_dir / "images" / T1 / "case_1.mha"
    bad.write_bytes(bad.read_bytes()[:-2000])  # its header still reads: the failure comes while it is read ahead
    check_image(bad)
    records = tmp_path / "records.jsonl"
    assert predict(workspace, input_dir, tmp_path / "out", "--records", str(records)) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: image data cannot be read"), errors
    assert sorted(masks(tmp_path / "out")) == ["case_0.mha", "case_2.mha"]
    line = next(line for line in captured.out.splitlines() if line.startswith("case_2.mha: "))
    assert line.endswith("while the previous case ran")  # read beside case_1's failure and case_0's run
    summary, complete = summarize([records])
    assert "2 done, 1 failed, 0 interrupted" in summary and "error: case_1.mha" in summary and not complete


def test_no_case_is_read_ahead_where_the_host_holds_one_case_only(workspace, tmp_path, monkeypatch, capsys):
    input_dir = cohort(tmp_path)
    monkeypatch.setattr(read_ahead, "available_memory", lambda: Room(1, "a test's room of 1 byte"))
    assert predict(workspace, input_dir, tmp_path / "out") == 0
    log = capsys.readouterr().out
    for i in (1, 2):
        assert f"case_{i}.mha: not read ahead: about " in log
        line = next(line for line in log.splitlines() if line.startswith(f"case_{i}.mha: ("))
        assert line.endswith("s") and "while the previous case ran" not in line
    assert ") ahead" not in log and sorted(masks(tmp_path / "out")) == ["case_0.mha", "case_1.mha", "case_2.mha"]


def test_the_memory_read_ahead_holds_is_within_its_estimate(workspace, tmp_path):
    image_file = next(cohort(tmp_path, 1).rglob("*.mha"))
    model = Ensemble.load(load_spec(workspace.mixed_spec), workspace.weights, HOST, StageTimer())
    try:
        header = check_image(image_file)
        image = read_image(image_file)
        image_bytes = image.array.nbytes
        held = image_bytes + sum(p.data.nbytes for p in model.preprocess_ahead(image))
        estimate = read_ahead_bytes(model.members, header.shape_zyx, header.spacing_zyx, header.bytes_per_voxel,
                                    preprocessed=True)
        assert held <= estimate
        assert read_ahead_bytes(model.members, header.shape_zyx, header.spacing_zyx, header.bytes_per_voxel,
                                preprocessed=False) == image_bytes
    finally:
        model.close()


def test_a_thread_that_cannot_start_leaves_the_case_to_be_read_when_it_starts(workspace, tmp_path, monkeypatch,
                                                                              capsys):
    class Refused(threading.Thread):  # as under a process limit too tight for another thread's stack
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(read_ahead, "threading", SimpleNamespace(Thread=Refused))  # the read-ahead's threads only
    assert predict(workspace, cohort(tmp_path), tmp_path / "out") == 0
    log = capsys.readouterr().out
    assert "case_1.mha: not read ahead (can't start new thread)" in log and ") ahead" not in log
    assert sorted(masks(tmp_path / "out")) == ["case_0.mha", "case_1.mha", "case_2.mha"]
