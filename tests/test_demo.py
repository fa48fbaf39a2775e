"""The shipped demo: trained weights in weights/, GC-layout samples in test/, reproducible from seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import dice

from panther_ensemble.app.locations import APP_DIR, find_spec
from panther_ensemble.cli import inference_main
from panther_ensemble.demo import sample_cases as demo_cases
from panther_ensemble.demo.sample_cases import SAMPLE_CASES, write_held_out, write_sample_input
from panther_ensemble.engine.members import load_checkpoint
from panther_ensemble.engine.spec import check_against_weights

REPO = Path(__file__).resolve().parents[1]
WEIGHTS, TEST = REPO / "weights", REPO / "test"
OUTPUT = Path("images") / "pancreatic-tumor-segmentation"


def test_weights_are_small_and_stripped():
    checkpoints = list(WEIGHTS.rglob("*.pth"))
    assert len(checkpoints) == 15  # the candidate pool the specs were chosen from: 6 Task 1 folds, 9 Task 2 folds
    assert sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file()) <= 25 * 1024 * 1024
    for path in checkpoints:
        checkpoint = load_checkpoint(path)  # the safe loader takes them as they are
        assert "optimizer_state" not in checkpoint and "logging" not in checkpoint


def test_held_out_folder_holds_exactly_its_seeds(tmp_path, monkeypatch):
    """The member table scores every file in the folder: phantoms of an earlier seed set must not stay there."""
    monkeypatch.setattr(demo_cases, "HELD_OUT_SEEDS", {"t2": range(6200, 6201)})
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "t2_6000.mha").write_bytes(b"left from an earlier run")
    folder = write_held_out("t2", tmp_path)
    for sub in ("images", "labels"):
        assert sorted(p.name for p in (folder / sub).iterdir()) == ["t2_6200.mha"]
    image, label = (sitk.ReadImage(str(folder / sub / "t2_6200.mha")) for sub in ("images", "labels"))
    assert image.GetSize() == label.GetSize() and 1 in sitk.GetArrayViewFromImage(label)


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=lambda c: c.task)
def test_sample_input_regenerates_from_its_seed(case, tmp_path):
    committed = TEST / "input" / case.task
    fresh = write_sample_input(case, tmp_path)
    assert (fresh / "inputs.json").read_text() == (committed / "inputs.json").read_text()
    name = Path("images") / case.socket / f"{case.uuid}.mha"
    a, b = sitk.ReadImage(str(committed / name)), sitk.ReadImage(str(fresh / name))
    assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (b.GetSpacing(), b.GetOrigin(), b.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=lambda c: c.task)
def test_readme_main_command_reproduces_expected_output(case, tmp_path, capsys):
    """`python inference.py --input test/input/<task> --output DIR`: the spec and the weights are the app's own."""
    spec = find_spec(case.socket, [APP_DIR / "ensemble"])
    check_against_weights(spec, WEIGHTS)
    # no deadline, as the expected masks were made: a slow CI machine must not drop members
    assert inference_main(["--input", str(TEST / "input" / case.task), "--output", str(tmp_path), "--budget", "0"]) == 0
    written = tmp_path / OUTPUT / f"{case.uuid}.mha"
    expected = sitk.ReadImage(str(TEST / "expected_output" / case.task / OUTPUT / f"{case.uuid}.mha"))
    ours = sitk.ReadImage(str(written))
    assert (ours.GetSize(), ours.GetSpacing(), ours.GetOrigin(), ours.GetDirection()) == \
        (expected.GetSize(), expected.GetSpacing(), expected.GetOrigin(), expected.GetDirection())
    ours_mask, expected_mask = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(expected)
    assert expected_mask.sum() > 0, "the sample case should show a tumor"
    assert dice(ours_mask, expected_mask) >= 0.999
    out = capsys.readouterr().out
    assert f"wrote {written}: tumor " in out and " mL " in out
    assert f"{spec.path}" in out and f"{WEIGHTS}" in out  # the app's spec and weights were found on their own
