"""The seed's multi-stage fine-tuning makes pools whose members differ only by dataset or plans: one trainer's fold 0
pre-trained in one dataset, fine-tuned in another, with two plans. Through select -> spec -> evaluate --ensemble
(member table and JSON) -> export-model -> predict from the tarball, every member keeps its own identity: every row
and every member present and distinct, the member table's rows the spec's members one for one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import extract_tarball, gc_input, labelled_cases, read_mask
from test_cli import OUTPUT_FOLDER, REPO, T1

from panther_ensemble.cli import main
from panther_ensemble.demo import synthetic as syn
from panther_ensemble.engine.spec import EnsembleSpec, MemberSpec, load_spec, member_labels
from panther_ensemble.engine.spec_writer import write_spec

# the same trainer and fold in two datasets and two plans; the first two differ only by dataset, the last two only
# by plans
PRETRAINED = syn.ModelConfig(dataset="Dataset900_PantherPretrain", plans_name="nnUNetResEncUNetMPlans", seed=21)
FINE_TUNED = syn.ModelConfig(dataset="Dataset901_PantherT1", plans_name="nnUNetResEncUNetMPlans", seed=22)
OTHER_PLANS = syn.ModelConfig(dataset="Dataset901_PantherT1", plans_name="nnUNetResEncUNetLPlans", seed=23,
                              patch_size=(16, 24, 40), features=(4, 8, 16, 24))
POOL = (PRETRAINED, FINE_TUNED, OTHER_PLANS)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("pool")
    for config in POOL:
        syn.make_model_folder(root / "weights", config)
    members = tuple(MemberSpec(config.model, 0, checkpoint) for config in POOL
                    for checkpoint in ("checkpoint_final.pth", "checkpoint_best.pth"))
    candidates = write_spec(EnsembleSpec(root / "candidates.toml", T1, "pancreatic-tumor-segmentation", 1, members),
                            root / "candidates.toml")
    return root, candidates, labelled_cases(root / "cases", [(8, 24, 28), (10, 26, 30)], (0.9, 0.9, 3.0))


def rows_of(table: dict) -> dict[str, str]:
    """The member table's member rows: {label: member path}."""
    return {label: row["member"] for label, row in table.items() if "member" in row}


def test_every_member_of_a_fine_tuning_pool_keeps_its_identity(pool, capsys, tmp_path):
    root, candidates, cases = pool
    spec = load_spec(candidates)
    assert len({m.id for m in spec.members}) == 6 and len(set(member_labels([m.id for m in spec.members])
                                                               .values())) == 6
    weights = ["--weights", str(root / "weights"), "--device", "cpu"]

    # the member table over the whole pool: one row per member, as the spec lists them
    assert main(["evaluate", "--ensemble", str(candidates), "--images", str(cases / "images"), "--labels",
                 str(cases / "labels"), *weights, "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert list(rows_of(table).values()) == [m.name for m in spec.members]
    assert list(rows_of(table)) == [member_labels([m.id for m in spec.members])[m.id] for m in spec.members]
    assert "Dataset900_PantherPretrain nnUNetTrainer nnUNetResEncUNetMPlans fold 0 final" in table

    # select: every candidate alone in the report, the path and the spec by the same identity
    chosen = tmp_path / "chosen.toml"
    assert main(["select", "--candidates", str(candidates), "--images", str(cases / "images"), "--labels",
                 str(cases / "labels"), "--out", str(chosen), "--report", str(tmp_path / "report"), *weights]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "report" / "selection.json").read_text())
    assert list(report["candidates"]) == list(report["alone"]) == [m.name for m in spec.members]
    assert len({c["label"] for c in report["candidates"].values()}) == 6
    assert report["candidates"][spec.members[0].name]["dataset"] == "Dataset900_PantherPretrain"
    assert (tmp_path / "report" / "selection.png").stat().st_size > 0
    written = load_spec(chosen)
    assert [m.name for m in written.members] == list(dict.fromkeys(report["path"][-1]["weights"]))
    assert "--weights" in chosen.read_text().splitlines()[1]  # the cost command reproduces the price here

    # the chosen spec's member table: its members one for one
    assert main(["evaluate", "--ensemble", str(chosen), "--images", str(cases / "images"), "--labels",
                 str(cases / "labels"), *weights, "--json"]) == 0
    assert list(rows_of(json.loads(capsys.readouterr().out)).values()) == [m.name for m in written.members]

    # the model tarball carries every chosen member; predict runs them all from it
    tarball = tmp_path / "model.tar.gz"
    assert main(["export-model", "--ensemble", str(chosen), "--weights", str(root / "weights"), "--out",
                 str(tarball)]) == 0
    capsys.readouterr()
    names = extract_tarball(tarball, tmp_path / "model")
    for member in written.members:
        assert member.name in names
    input_dir = gc_input(tmp_path, T1, {"case.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(1, 1, 3), seed=6)})
    done = subprocess.run([sys.executable, "inference.py", "--input", str(input_dir), "--output",
                           str(tmp_path / "out"), "--budget", "0"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PANTHER_MODEL_DIR=str(tmp_path / "model")), timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"spec {tmp_path / 'model' / 'chosen.toml'} (from {tmp_path / 'model'} ($PANTHER_MODEL_DIR))" in done.stdout
    assert f"{len(written.members)}/{len(written.members)} members used" in done.stdout
    assert read_mask(tmp_path / "out" / OUTPUT_FOLDER / "case.mha")[0].shape == (10, 30, 34)
