"""Cohorts: shards that partition the cases exactly, resuming that trusts only finished masks, records that
concurrent shards can share, and summarize."""

from __future__ import annotations

import json
import multiprocessing
import random
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import gc_input

from panther_ensemble.app.cohort import Records, Shard, existing_mask_problem, resolve_shard, summarize
from panther_ensemble.app.predict_run import CohortOptions, predict_folder
from panther_ensemble.cli import main
from panther_ensemble.core.errors import PantherError
from panther_ensemble.engine.image import check_image

T1 = "abdominal-t1-mri"


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("inputs", range(12))
def test_shards_partition_the_cases_exactly_whatever_the_listing_order(count, inputs):
    files = [Path(f"/in/case_{i:03d}.mha") for i in range(inputs)]
    listings = [files, list(reversed(files)), random.Random(inputs * 7 + count).sample(files, len(files))]
    shards = [[Shard(i, count, "test").cases(listing) for i in range(count)] for listing in listings]
    assert shards[0] == shards[1] == shards[2]  # the same split on every machine
    taken = [f for shard in shards[0] for f in shard]
    assert sorted(taken) == files and len(taken) == len(set(taken))  # every case exactly once
    assert max(map(len, shards[0])) - min(map(len, shards[0])) <= 1


@pytest.mark.parametrize("env, option, count, expected", [
    ({}, "2/5", None, (2, 5, "--shard")),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}, None, None,
     (3, 4, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_STEP": "2"}, None, None, (2, 3, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")),  # 1,3,5
    ({"JOB_COMPLETION_INDEX": "1"}, None, 3, (1, 3, "JOB_COMPLETION_INDEX/--shard-count")),
    ({"JOB_COMPLETION_INDEX": "0", "PANTHER_SHARD_COUNT": "2"}, None, None,
     (0, 2, "JOB_COMPLETION_INDEX/PANTHER_SHARD_COUNT")),
    ({"LSB_JOBINDEX": "4", "LSB_JOBINDEX_END": "6"}, None, None, (3, 6, "LSB_JOBINDEX/LSB_JOBINDEX_END")),
    ({"LSB_JOBINDEX": "0"}, None, None, None),  # an LSF job that is not an array
    ({}, None, None, None),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}, "0/2", None,
     (0, 2, "--shard")),  # the option wins
])
def test_shard_sources(env, option, count, expected):
    shard = resolve_shard(option, count, env)
    assert (shard.index, shard.count, shard.source) == expected if expected else shard is None


@pytest.mark.parametrize("env, option, count, message", [
    ({}, "3/3", None, "needs 0 <= index < count"),
    ({}, "a/b", None, "--shard takes I/N"),
    ({"JOB_COMPLETION_INDEX": "1"}, None, None, "give the Job's completions as --shard-count or PANTHER_SHARD_COUNT"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_MIN": "0"}, None, None, "SLURM_ARRAY_TASK_ID is 'x'"),
    ({}, None, 4, "--shard-count needs --shard or an engine's array index"),
])
def test_shard_errors(env, option, count, message):
    with pytest.raises(PantherError, match=message):
        resolve_shard(option, count, env)


def cases(tmp_path, n=4):
    return gc_input(tmp_path, T1, {f"case_{i}.mha": dict(shape_zyx=(8, 24, 28), spacing_xyz=(1, 1, 3), seed=20 + i)
                                   for i in range(n)})


def run(workspace, input_dir, output, **cohort):
    return predict_folder(input_dir, output, ensemble=workspace.mixed_spec, weights=workspace.weights, device="cpu",
                          budget=0, cohort=CohortOptions(**cohort))


def test_sharded_runs_write_each_mask_once_equal_to_one_run(workspace, tmp_path):
    input_dir = cases(tmp_path, 5)
    whole = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in run(workspace, input_dir,
                                                                                   tmp_path / "one")}
    records = tmp_path / "records.jsonl"
    written = [p for i in range(3) for p in run(workspace, input_dir, tmp_path / "sharded", shard=f"{i}/3",
                                                records=records)]
    assert sorted(p.name for p in written) == sorted(whole)
    for path in written:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), whole[path.name])
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert sorted(e["case"] for e in lines) == sorted(whole) and {e["status"] for e in lines} == {"ok"}
    assert {e["shard"] for e in lines} == {"0/3", "1/3", "2/3"}
    assert all(e["members_used"] == 3 and e["members_dropped"] == [] and e["tumor_ml"] >= 0 for e in lines)


def test_resume_skips_only_finished_masks(workspace, tmp_path, capsys):
    input_dir = cases(tmp_path, 4)
    output = tmp_path / "out"
    masks = run(workspace, input_dir, output)
    expected = {p.name: p.read_bytes() for p in masks}
    first, second, third, fourth = masks
    first.write_bytes(first.read_bytes()[: len(first.read_bytes()) // 2])  # cut by a killed task: redone
    grid = sitk.ReadImage(str(second))  # the right grid, the wrong values (a probability map, say): redone
    wrong = sitk.GetImageFromArray(sitk.GetArrayFromImage(grid) * 2)
    wrong.CopyInformation(grid)
    sitk.WriteImage(wrong, str(second))
    third.unlink()  # missing: predicted
    capsys.readouterr()
    records = tmp_path / "records.jsonl"
    redone = run(workspace, input_dir, output, skip_existing=True, records=records)
    assert sorted(p.name for p in redone) == sorted([first.name, second.name, third.name])
    log = capsys.readouterr().out
    assert f"skipping {fourth.name}" in log and "unreadable (truncated?): predicting it again" in log
    assert "values [0, 2] are not 0 and 1: predicting it again" in log
    status = {json.loads(line)["case"]: json.loads(line)["status"] for line in records.read_text().splitlines()}
    assert status == {first.name: "ok", second.name: "ok", third.name: "ok", fourth.name: "skipped"}
    assert {p.name: p.read_bytes() for p in masks} == expected


def test_existing_mask_problems(tmp_path):
    image = tmp_path / "image.mha"
    source = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    source.SetSpacing((0.5, 0.6, 2.0))
    source.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(source, str(image))
    header = check_image(image)
    mask = tmp_path / "mask.mha"

    def write(array, spacing=(0.5, 0.6, 2.0)):
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(spacing)
        out.SetOrigin((1.0, 2.0, 3.0))
        sitk.WriteImage(out, str(mask))
        return existing_mask_problem(mask, header)

    assert write(np.ones((4, 5, 6), np.uint8)) is None
    assert write(np.ones((4, 5, 6), np.float32)) == "pixel type 32-bit float, not uint8"
    assert write(np.ones((4, 5, 7), np.uint8)).startswith("size (7, 5, 4)")
    assert write(np.ones((4, 5, 6), np.uint8), spacing=(0.5, 0.6, 3.0)) == "spacing differs from the input's"
    assert existing_mask_problem(tmp_path / "none.mha", header) == "missing"


def _append_many(path: str, worker: int) -> None:
    records = Records(Path(path), Shard(worker, 8, "test"))
    for i in range(150):
        records.append(Path(f"/in/w{worker}_{i}.mha"), "ok", 1.0, members_dropped=[], note="x" * (i * 37 % 5000))


def test_records_of_concurrent_shards_parse_line_by_line(tmp_path):
    path = tmp_path / "records.jsonl"
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        pool.starmap(_append_many, [(str(path), w) for w in range(8)])
    lines = path.read_text().splitlines()
    assert len(lines) == 8 * 150
    entries = [json.loads(line) for line in lines]  # every line whole
    assert len({e["case"] for e in entries}) == 8 * 150


def test_with_records_a_bad_case_is_recorded_and_the_others_go_on(workspace, tmp_path, capsys):
    input_dir = cases(tmp_path, 3)
    bad = input_dir / "images" / T1 / "case_1.mha"
    bad.write_text("not an image")
    records = tmp_path / "records.jsonl"
    assert main(["predict", "--input", str(input_dir), "--output", str(tmp_path / "out"), "--ensemble",
                 str(workspace.mixed_spec), "--weights", str(workspace.weights), "--device", "cpu", "--budget", "0",
                 "--records", str(records)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: cannot be read as an image")
    assert f"1 of 3 case(s) failed: each has its error line on stderr; each has its record in {records}" \
        in captured.out
    written = sorted(p.name for p in (tmp_path / "out").rglob("*.mha"))
    assert written == ["case_0.mha", "case_2.mha"]
    summary, complete = summarize([records])
    assert summary.startswith("3 case(s) in 3 record(s) from 1 file(s): 2 done, 1 failed, 0 interrupted; "
                              "2 predicted, 0 skip(s) of a finished mask")
    assert "error: case_1.mha (shard None): " in summary and "slowest: " in summary and not complete


def test_a_shard_without_cases_exits_0_and_says_so(workspace, tmp_path, capsys):
    input_dir = cases(tmp_path, 2)
    assert main(["predict", "--input", str(input_dir), "--output", str(tmp_path / "out"), "--ensemble",
                 str(workspace.mixed_spec), "--weights", str(workspace.weights), "--device", "cpu",
                 "--shard", "3/4"]) == 0
    assert "nothing to do: shard 3/4 has no cases (2 in all)" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_summarize_counts_reruns_once_and_survives_a_cut_line(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    records = Records(path, Shard(0, 2, "test"))
    records.append(Path("/in/a.mha"), "error", 2.0, error="boom")
    records.append(Path("/in/a.mha"), "ok", 12.0, members_dropped=["m5"])  # the rerun succeeded
    records.append(Path("/in/b.mha"), "skipped", 0.0)
    with open(path, "a") as f:
        f.write('{"case": "c.mha", "sta')  # a line cut short
    assert main(["summarize", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 case(s) in 3 record(s) from 1 file(s): 2 done, 0 failed, 0 interrupted; 1 predicted, "
                          "1 skip(s) of a finished mask; 1 unreadable line(s)")
    assert "members dropped by the deadline in 1 case(s): a.mha" in out and "error:" not in out
    assert out.strip().endswith("complete: all 2 case(s) done")


def test_summarize_done_means_ok_or_skipped_and_says_what_to_resubmit(tmp_path, capsys):
    """Interrupted and failed cases are not done: exit 1 and the cases to resubmit, with their shards; a case's
    latest record decides (an interrupted case that a rerun finished is done)."""
    first, second = Records(tmp_path / "a.jsonl", Shard(0, 2, "test")), Records(tmp_path / "b.jsonl", Shard(1, 2,
                                                                                                         "test"))
    first.append(Path("/in/ok.mha"), "ok", 10.0)
    first.append(Path("/in/redone.mha"), "interrupted", 3.0, error="interrupted (SIGTERM)")
    second.append(Path("/in/skip.mha"), "skipped", 0.0)
    second.append(Path("/in/bad.mha"), "error", 1.0, error="bad.mha: cannot be read as an image")
    second.append(Path("/in/cut.mha"), "interrupted", 0.0, error="interrupted (SIGTERM) before it ran")
    first.append(Path("/in/redone.mha"), "ok", 9.0)  # the resubmission
    assert main(["summarize", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""  # the summary says it all
    lines = captured.out.strip().splitlines()
    assert lines[0] == ("5 case(s) in 6 record(s) from 2 file(s): 3 done, 1 failed, 1 interrupted; 2 predicted, "
                        "1 skip(s) of a finished mask")
    assert "error: bad.mha (shard 1/2): bad.mha: cannot be read as an image" in lines
    assert "interrupted: cut.mha (shard 1/2): interrupted (SIGTERM) before it ran" in lines
    assert lines[-1] == ("incomplete: resubmit 2 case(s) (shards 1/2) with the same command and --skip-existing "
                         "(finished masks are kept): /in/bad.mha, /in/cut.mha")
    assert main(["summarize", str(tmp_path / "a.jsonl")]) == 0  # shard 0 alone is complete
