"""Hostile and broken inputs, each ending in a mask or in one `error:` line (never a traceback), and a cohort over all
of the per-case ones beside two good cases: both good cases predicted, a record for every case.

Input side: files that are empty, truncated, 2-D, vectors, garbage, of no scan's spacing, of metres for
millimetres, of voxels that overflow the normalization, links out of the input folder; inputs.json pointing out of
it; two files for one mask. Spec and weights side: paths out of the weights root (checkpoint, model, a linked model
folder), an output socket that is a path, pickles that run code or hold no tensors, empty checkpoints, manifests
that omit, point outside or mismatch, a broken dataset.json, a tumor label the folds do not have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from panther_ensemble.app.cohort import read_records
from panther_ensemble.app.manifest import write_manifest
from panther_ensemble.cli import main
from panther_ensemble.demo import synthetic as syn
from panther_ensemble.engine.spec import load_spec

T1 = "abdominal-t1-mri"
MASKS = Path("images") / "pancreatic-tumor-segmentation"
FIELD = Path(__file__).resolve().parent / "fixtures" / "field" / "nnunetv2-2.5.1" / "Dataset990_Field" / \
    "nnUNetTrainerFieldFixture__nnUNetPlans__3d_fullres" / "fold_0"


def good(path: Path, seed: int = 1) -> Path:
    return syn.make_image(path, (10, 30, 34), (0.9, 0.9, 3.0), seed=seed)


def write(path: Path, array: np.ndarray, spacing=(0.9, 0.9, 3.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


# --- input files: each one case (the cohort below runs them all together)

def zero_bytes(folder: Path) -> str:
    (folder / "empty.mha").write_bytes(b"")
    return "cannot be read as an image"


def truncated(folder: Path) -> str:
    path = write(folder / "truncated.mha", np.ones((10, 30, 34), np.int16))
    path.write_bytes(path.read_bytes()[:-3000])
    return "image data cannot be read"


def flat(folder: Path) -> str:
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(folder / "flat.mha"))
    return "expected a 3-D image, got 2-D"


def vector(folder: Path) -> str:
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3), str(folder / "rgb.mha"))
    return "expected a scalar image"


def garbage_nifti(folder: Path) -> str:
    (folder / "garbage.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return "cannot be read as an image"


def degenerate_spacing(folder: Path) -> str:
    write(folder / "thin.mha", np.ones((10, 30, 34), np.int16), spacing=(0.9, 0.9, 1e-9))
    return "is not a voxel size of a scan"


def metres_for_millimetres(folder: Path) -> str:
    write(folder / "metres.mha", np.ones((8, 24, 28), np.int16), spacing=(500.0, 500.0, 500.0))
    return "would need about"


def overflowing_voxels(folder: Path) -> str:
    array = np.full((10, 30, 34), 3.0e38, np.float32)
    array[::2] = -3.0e38
    write(folder / "huge.mha", array)
    return "NaN or Inf after nnU-Net's normalization"


def link_out_of_the_input(folder: Path) -> str:
    outside = good(folder.parents[3] / "elsewhere" / "secret.mha", seed=5)
    (folder / "link.mha").symlink_to(outside)
    return "leads outside the input folder"


def link_inside_the_input(folder: Path) -> None:
    target = good(folder.parents[1] / "stash" / "inside.mha", seed=6)
    (folder / "linked-inside.mha").symlink_to(target)


def non_finite_voxels(folder: Path) -> None:
    array = np.random.default_rng(0).uniform(100, 900, (10, 30, 34)).astype(np.float32)
    array[0, 0, :3] = [np.nan, np.inf, -np.inf]
    write(folder / "nan.mha", array)


def constant(folder: Path) -> None:
    write(folder / "constant.mha", np.zeros((10, 30, 34), np.int16))


def one_voxel(folder: Path) -> None:
    write(folder / "one-voxel.mha", np.full((1, 1, 1), 300, np.int16))


PER_CASE = [zero_bytes, truncated, flat, vector, garbage_nifti, degenerate_spacing, metres_for_millimetres,
            overflowing_voxels, link_out_of_the_input, link_inside_the_input, non_finite_voxels, constant, one_voxel]


def gc_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "input" / "images" / T1
    folder.mkdir(parents=True)
    return folder


def predict(tmp_path: Path, workspace, input_dir: Path | None = None, spec: Path | None = None,
            weights: Path | None = None, *more: str) -> int:
    return main(["predict", "--input", str(input_dir or tmp_path / "input"), "--output", str(tmp_path / "out"),
                 "--ensemble", str(spec or workspace.t1_spec), "--weights", str(weights or workspace.weights),
                 "--device", "cpu", "--budget", "0", *more])


def one_error_line(capsys, expected: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", PER_CASE, ids=[c.__name__ for c in PER_CASE])
def test_each_input_file_ends_in_a_mask_or_one_line(workspace, tmp_path, capsys, case):
    folder = gc_folder(tmp_path)
    expected = case(folder)
    code = predict(tmp_path, workspace)
    written = list((tmp_path / "out").rglob("*.mha")) if (tmp_path / "out").exists() else []
    if expected is None:
        assert code == 0, capsys.readouterr().err
        assert len(written) == 1
        mask = sitk.ReadImage(str(written[0]))
        assert mask.GetPixelID() == sitk.sitkUInt8
    else:
        assert code == 1
        one_error_line(capsys, expected)
        assert written == [] and not list((tmp_path / "out").rglob(".*partial*"))


# --- the input folder as a whole

def input_json(tmp_path: Path, relative_path: str) -> Path:
    input_dir = tmp_path / "input"
    good(input_dir / "images" / T1 / "case.mha")
    value = syn.gc_image_value(T1, "case.mha")
    for key in ("socket", "interface"):
        value[key]["relative_path"] = relative_path
    (input_dir / "inputs.json").write_text(json.dumps([value]))
    return input_dir


@pytest.mark.parametrize("relative_path", ["../outside", "/tmp"], ids=["dot-dot", "absolute"])
def test_inputs_json_cannot_point_out_of_the_input_folder(workspace, tmp_path, capsys, relative_path):
    (tmp_path / "outside").mkdir()
    good(tmp_path / "outside" / "secret.mha")
    input_dir = input_json(tmp_path, relative_path)
    assert predict(tmp_path, workspace, input_dir) == 1
    one_error_line(capsys, "leads outside the input folder")


def test_two_files_for_one_mask_are_refused_before_any_work(workspace, tmp_path, capsys):
    folder = gc_folder(tmp_path)
    good(folder / "case.mha")
    good(folder / "case_0000.nii.gz", seed=2)
    assert predict(tmp_path, workspace) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "would write the same mask, case.mha" in errors[0], errors
    assert "loading" not in captured.out and not (tmp_path / "out").exists()  # refused before any work


def test_the_input_folder_a_symlink_as_on_gc(workspace, tmp_path, capsys):
    """GC's shim makes /input a symlink to /opt/ml/input/data/<pk>-input: that must work."""
    good(tmp_path / "opt-ml" / "task-input" / "images" / T1 / "case.mha")
    (tmp_path / "input").symlink_to(tmp_path / "opt-ml" / "task-input", target_is_directory=True)
    assert predict(tmp_path, workspace) == 0
    assert (tmp_path / "out" / MASKS / "case.mha").is_file()


def test_inputs_json_that_is_not_json(workspace, tmp_path, capsys):
    folder = gc_folder(tmp_path)
    good(folder / "case.mha")
    (tmp_path / "input" / "inputs.json").write_text("[{")
    assert predict(tmp_path, workspace) == 1
    one_error_line(capsys, "inputs.json: not valid JSON")


# --- the spec and the weights

MEMBER = 'model = "{model}"\nfold = {fold}\ncheckpoint = "{checkpoint}"\n'


def spec_text(model: str, fold: int, checkpoint: str, output_socket: str = "pancreatic-tumor-segmentation",
              tumor_label: int = 1) -> str:
    return (f'input_socket = "{T1}"\noutput_socket = "{output_socket}"\ntumor_label = {tumor_label}\n\n[[member]]\n'
            + MEMBER.format(model=model, fold=fold, checkpoint=checkpoint))


def own_weights(workspace, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the synthetic weights root and the first member's model folder."""
    weights = tmp_path / "weights"
    shutil.copytree(workspace.weights, weights)
    return weights, load_spec(workspace.t1_spec).members[0].model


def case_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostile.toml"
    path.write_text(text)
    return path


def checkpoint_up(weights, model, tmp_path):
    return spec_text(model, 0, "../../x.pth"), "'checkpoint' in [[member]] 1 must be a file name in fold_0/"


def checkpoint_absolute(weights, model, tmp_path):
    return spec_text(model, 0, "/etc/passwd"), "'checkpoint' in [[member]] 1 must be a file name"


def model_up(weights, model, tmp_path):
    return spec_text("../elsewhere", 0, "checkpoint_best.pth"), "must be a relative path under the weights root"


def output_socket_path(weights, model, tmp_path):
    return spec_text(model, 0, "checkpoint_best.pth", output_socket="../../x"), "'output_socket' must be a socket slug"


def model_folder_linked_out(weights, model, tmp_path):
    shutil.move(weights / model, tmp_path / "stolen")
    (weights / model).symlink_to(tmp_path / "stolen", target_is_directory=True)
    return spec_text(model, 0, "checkpoint_best.pth"), "leads outside the weights root"


def plans_linked_out(weights, model, tmp_path):
    shutil.move(weights / model / "plans.json", tmp_path / "plans.json")
    (weights / model / "plans.json").symlink_to(tmp_path / "plans.json")
    return spec_text(model, 0, "checkpoint_best.pth"), "plans.json leads outside the weights root"


def pickle_that_runs_code(weights, model, tmp_path):
    shutil.copy(FIELD / "checkpoint_payload_os_system.pth", weights / model / "fold_0" / "payload.pth")
    return spec_text(model, 0, "payload.pth"), "refused to load"


def weights_that_are_not_tensors(weights, model, tmp_path):
    import torch

    path = weights / model / "fold_0" / "checkpoint_best.pth"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["network_weights"][next(iter(checkpoint["network_weights"]))] = "not a tensor"
    torch.save(checkpoint, path)
    return spec_text(model, 0, "checkpoint_best.pth"), "where a tensor belongs"


def empty_checkpoint(weights, model, tmp_path):
    (weights / model / "fold_0" / "checkpoint_best.pth").write_bytes(b"")
    return spec_text(model, 0, "checkpoint_best.pth"), "not a readable PyTorch checkpoint"


def manifest_without_an_entry(weights, model, tmp_path):
    manifest = write_manifest(weights)
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                                if "fold_0/checkpoint_best.pth" not in line or model not in line))
    return spec_text(model, 0, "checkpoint_best.pth"), "does not list"


def manifest_with_an_absolute_path(weights, model, tmp_path):
    manifest = write_manifest(weights)
    manifest.write_text(manifest.read_text() + f"{'0' * 64}  /etc/passwd\n")
    return spec_text(model, 0, "checkpoint_best.pth"), "is not '<sha256>  <path inside the weights root>'"


def manifest_that_mismatches(weights, model, tmp_path):
    write_manifest(weights)
    path = weights / model / "fold_0" / "checkpoint_best.pth"
    path.write_bytes(path.read_bytes() + b"\0")
    return spec_text(model, 0, "checkpoint_best.pth"), "sha256 differs"


def broken_dataset_json(weights, model, tmp_path):
    (weights / model / "dataset.json").write_text("{")
    return spec_text(model, 0, "checkpoint_best.pth"), "dataset.json: not valid JSON"


def tumor_label_not_there(weights, model, tmp_path):
    return spec_text(model, 0, "checkpoint_best.pth", tumor_label=7), "tumor_label 7 is not among the labels"


SPEC_CASES = [checkpoint_up, checkpoint_absolute, model_up, output_socket_path, model_folder_linked_out,
              plans_linked_out, pickle_that_runs_code, weights_that_are_not_tensors, empty_checkpoint,
              manifest_without_an_entry, manifest_with_an_absolute_path, manifest_that_mismatches, broken_dataset_json,
              tumor_label_not_there]


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c.__name__ for c in SPEC_CASES])
def test_each_spec_or_weights_problem_is_one_line(workspace, tmp_path, capsys, case):
    weights, model = own_weights(workspace, tmp_path)
    text, expected = case(weights, model, tmp_path)
    good(gc_folder(tmp_path) / "case.mha")
    assert predict(tmp_path, workspace, spec=case_spec(tmp_path, text), weights=weights) == 1
    one_error_line(capsys, expected)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.mha"))
    assert not (tmp_path.parent / "x").exists()  # nothing written outside the output folder


# --- a cohort over every per-case input, and two good cases

def test_a_cohort_of_hostile_cases_predicts_the_good_ones_and_records_every_case(workspace, tmp_path, capsys):
    folder = gc_folder(tmp_path)
    expected = {case.__name__: case(folder) for case in PER_CASE}
    good(folder / "good-a.mha", seed=11)
    good(folder / "good-b.mha", seed=12)
    records = tmp_path / "records.jsonl"
    assert predict(tmp_path, workspace, None, None, None, "--records", str(records)) == 1
    err = capsys.readouterr().err
    failures = sum(e is not None for e in expected.values())
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == failures and "Traceback" not in err
    written = {p.name for p in (tmp_path / "out" / MASKS).iterdir()}
    assert {"good-a.mha", "good-b.mha"} <= written
    entries, _ = read_records([records])
    inputs = sorted(p.name for p in folder.iterdir())
    assert sorted(Path(e["case"]).name for e in entries) == inputs  # every case has its record
    assert sum(e["status"] == "error" for e in entries) == failures
