"""A participant's own folds, from select to the upload: folds trained by nnU-Net's own trainer with PANTHER's label
map (1 pancreas, 2 tumor; tests/fixtures/participant), nnU-Net's file naming (case_0000.nii.gz), the participant's
spec name. select -> the spec (each member once) -> predict -> evaluate and preview with tumor label 2 ->
export-model -> predict from the tarball as GC extracts it."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import extract_tarball, read_mask

from panther_ensemble.cli import main
from panther_ensemble.demo.phantom import make_phantom, panther_label_map
from panther_ensemble.engine.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
FOLDS = REPO / "tests" / "fixtures" / "participant"
MODEL = "Dataset991_Participant/nnUNetTrainer__nnUNetResEncUNetDemoPlans__3d_fullres"
SOCKET = "abdominal-t1-mri"
SEEDS = (3300, 3301, 3302)  # the folds were trained on 3200-3219


@pytest.fixture(scope="module")
def participant(tmp_path_factory) -> Path:
    """nnU-Net's test layout (imagesTs/case_0000.nii.gz, labelsTs/case.nii.gz) and a candidates spec."""
    root = tmp_path_factory.mktemp("participant")
    for seed in SEEDS:
        phantom = make_phantom(seed, "t1")
        for sub, item, suffix in (("imagesTs", phantom.image, "_0000"),
                                  ("labelsTs", panther_label_map(phantom.label), "")):
            (root / sub).mkdir(exist_ok=True)
            sitk.WriteImage(item, str(root / sub / f"case_{seed}{suffix}.nii.gz"))
    members = "".join(f'[[member]]\nmodel = "{MODEL}"\nfold = {fold}\ncheckpoint = "checkpoint_final.pth"\n\n'
                      for fold in (0, 1))
    (root / "candidates.toml").write_text(f'input_socket = "{SOCKET}"\noutput_socket = '
                                          f'"pancreatic-tumor-segmentation"\ntumor_label = 2\n\n{members}')
    return root


def test_a_participants_folds_from_select_to_the_upload(participant, tmp_path, capsys):
    spec_file = tmp_path / "my_task1.toml"
    assert main(["select", "--candidates", str(participant / "candidates.toml"), "--weights", str(FOLDS),
                 "--images", str(participant / "imagesTs"), "--labels", str(participant / "labelsTs"),
                 "--out", str(spec_file), "--device", "cpu"]) == 0
    spec = load_spec(spec_file)
    chosen = [(m.model, m.fold, m.checkpoint) for m in spec.members]
    assert spec.tumor_label == 2 and len(chosen) == len(set(chosen)) == spec_file.read_text().count("[[member]]")

    # predict nnU-Net's files: case_0000.nii.gz -> case.mha
    input_dir = tmp_path / "input" / "images" / SOCKET
    shutil.copytree(participant / "imagesTs", input_dir)
    masks = tmp_path / "output" / "images" / "pancreatic-tumor-segmentation"
    assert main(["predict", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"), "--ensemble",
                 str(spec_file), "--weights", str(FOLDS), "--device", "cpu", "--budget", "0"]) == 0
    assert sorted(p.name for p in masks.iterdir()) == [f"case_{seed}.mha" for seed in SEEDS]
    capsys.readouterr()

    # evaluate and preview against the annotations' label 2 (the masks are 1 = tumor)
    assert main(["evaluate", "--pred", str(masks), "--gt", str(participant / "labelsTs"), "--tumor-label", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["aggregates"]["n_subjects"] == len(SEEDS)
    assert result["aggregates"]["mean_volumetric_dice"] > 0.3, result["aggregates"]  # the tumor, not the pancreas
    assert main(["preview", "--image", str(input_dir / f"case_{SEEDS[0]}_0000.nii.gz"), "--mask",
                 str(masks / f"case_{SEEDS[0]}.mha"), "--gt", str(participant / "labelsTs" / f"case_{SEEDS[0]}.nii.gz"),
                 "--tumor-label", "2", "--out", str(tmp_path / "preview.png")]) == 0
    assert (tmp_path / "preview.png").stat().st_size > 5000

    # the upload: a model tarball of this spec; predicted from it as GC extracts it to /opt/ml/model
    tarball = tmp_path / "export" / "model-my_task1.tar.gz"
    assert main(["export-model", "--ensemble", str(spec_file), "--weights", str(FOLDS), "--out", str(tarball)]) == 0
    extracted = tmp_path / "opt-ml-model"
    names = extract_tarball(tarball, extracted)
    assert "my_task1.toml" in names and "weights.sha256" in names
    for model, fold, checkpoint in chosen:  # stripped of the optimizer state and training log
        relative = f"{model}/fold_{fold}/{checkpoint}"
        assert relative in names
        assert (extracted / relative).stat().st_size < (FOLDS / relative).stat().st_size / 1.5
    assert not any(f"fold_{fold}" in n for fold in (0, 1) if (MODEL, fold, "checkpoint_final.pth") not in chosen
                   for n in names)  # only the chosen folds
    assert main(["predict", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "from-tarball"),
                 "--ensemble", str(extracted / "my_task1.toml"), "--weights", str(extracted), "--device", "cpu",
                 "--budget", "0"]) == 0
    for seed in SEEDS:
        again = read_mask(tmp_path / "from-tarball" / masks.relative_to(tmp_path / "output") / f"case_{seed}.mha")[0]
        np.testing.assert_array_equal(again, read_mask(masks / f"case_{seed}.mha")[0])


def test_export_model_is_reproducible_and_refuses_what_it_cannot_write(tmp_path, capsys):
    spec = REPO / "ensemble" / "task2.toml"
    first, second = tmp_path / "a" / "model.tar.gz", tmp_path / "b" / "model.tar.gz"
    for out in (first, second):
        assert main(["export-model", "--ensemble", str(spec), "--out", str(out)]) == 0
    assert first.read_bytes() == second.read_bytes()  # the same bytes, the same sha256 on every export
    with tarfile.open(first) as tar:
        assert all(m.uid == 0 and m.mtime == 0 for m in tar.getmembers())
    capsys.readouterr()
    assert main(["export-model", "--ensemble", str(spec), "--out", str(tmp_path / "model.zip")]) == 1
    missing = tmp_path / "missing.toml"
    assert main(["export-model", "--ensemble", str(missing), "--out", str(tmp_path / "m.tar.gz")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "a model tarball's name ends in .tar.gz" in errors[0]
    assert "ensemble spec does not exist" in errors[1]
    assert not (tmp_path / "m.tar.gz").exists() and not list(tmp_path.glob(".*partial"))
