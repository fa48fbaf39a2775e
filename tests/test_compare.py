"""The member table: each member alone and the ensemble, scored with the organizers' metrics."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import labelled_cases

from panther_ensemble.app.predict_run import predict_folder
from panther_ensemble.engine.spec import load_spec
from panther_ensemble.tools.evaluate import evaluate_folders
from panther_ensemble.tools.member_table import ENSEMBLE, compare_members, format_table


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Two images (nnU-Net raw naming) with label maps whose 'tumor' is the bright part of the body."""
    return labelled_cases(tmp_path_factory.mktemp("labelled"), [(10, 30, 34), (12, 26, 30)], (1.0, 0.9, 3.0))


def test_member_table_rows_and_ensemble_consistency(workspace, labelled, tmp_path):
    spec = load_spec(workspace.t1_spec)
    result = compare_members(spec, workspace.weights, labelled / "images", labelled / "labels", torch.device("cpu"))
    assert len(result) == len(spec.members) + 1 and ENSEMBLE in result
    assert all(set(row["per_subject"]) == {"case0", "case1"} for row in result.values())

    # the ensemble row scores exactly the masks `predict` writes
    input_dir = tmp_path / "input"
    for image in (labelled / "images").iterdir():
        target = input_dir / "images" / "abdominal-t1-mri" / image.name.replace("_0000", "")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    written = predict_folder(input_dir, tmp_path / "out", ensemble=workspace.t1_spec, weights=workspace.weights,
                             device="cpu")
    scored = evaluate_folders(written[0].parent, labelled / "labels")
    assert result[ENSEMBLE]["aggregates"] == pytest.approx(scored["aggregates"])

    table = format_table(result).splitlines()
    assert len(table) == 2 + len(result) and table[-1].startswith("| **ensemble** |")
    assert sum(line.count("**") for line in table[2:]) >= 2 * 5  # a bold best in every column
    assert "| nnUNetTrainer_DA5Segord0_150epochs nnUNetPlans fold 0 best |" in "\n".join(table)  # plans differ here
    assert [row["member"] for row in result.values() if "member" in row] == [m.name for m in spec.members]


def test_cli_member_table(workspace, labelled, tmp_path):
    out = tmp_path / "table.json"
    run = subprocess.run([sys.executable, "-m", "panther_ensemble.cli", "evaluate", "--ensemble",
                          str(workspace.mixed_spec), "--weights", str(workspace.weights), "--images",
                          str(labelled / "images"), "--labels", str(labelled / "labels"), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "| **ensemble** |" in run.stdout and out.exists()


def test_cli_evaluate_needs_one_mode(tmp_path):
    run = subprocess.run([sys.executable, "-m", "panther_ensemble.cli", "evaluate", "--pred", str(tmp_path),
                          "--images", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1 and "either --pred and --gt, or --ensemble, --images and --labels" in run.stderr
