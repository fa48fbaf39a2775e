"""The command line as GC and users run it: `python inference.py` and `panther-ensemble predict`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import gc_input, read_mask

from panther_ensemble.engine.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
T1 = "abdominal-t1-mri"
OUTPUT_FOLDER = Path("images") / "pancreatic-tumor-segmentation"


def run(args: list[str], app_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if app_dir is not None:
        env["PANTHER_APP_DIR"] = str(app_dir)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def app_dir(workspace, tmp_path_factory) -> Path:
    """An app folder laid out like the container's /opt/app: ensemble/*.toml and weights/."""
    app = tmp_path_factory.mktemp("app")
    shutil.copytree(workspace.weights, app / "weights")
    (app / "ensemble").mkdir()
    shutil.copy(workspace.t1_spec, app / "ensemble" / "task1.toml")
    return app


def test_inference_help_documents_the_contract():
    result = run(["inference.py", "--help"])
    assert result.returncode == 0
    for words in ("inputs.json", "/input", "/output", "pancreatic-tumor-segmentation", "abdominal-t1-mri",
                  "abdominal-t2-mri", "/opt/ml/model", "--ensemble", "--weights", "--device", "uint8"):
        assert words in result.stdout, words


def test_console_script_help():
    for args in (["-m", "panther_ensemble.cli", "--help"], ["-m", "panther_ensemble.cli", "predict", "--help"]):
        result = run(args)
        assert result.returncode == 0 and "usage:" in result.stdout


def test_gc_run_with_default_spec_and_weights(app_dir, tmp_path):
    input_dir = gc_input(tmp_path, T1, {
        "case-a.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(0.9, 0.9, 3.0), seed=21),
        "case-b.nii.gz": dict(shape_zyx=(12, 26, 30), spacing_xyz=(1.1, 1.0, 2.5), seed=22),
    })
    output = tmp_path / "output"
    result = run(["inference.py", "--input", str(input_dir), "--output", str(output)], app_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # GC shows anything on stderr as a warning
    assert result.stdout.count("loading 6 members") == 1  # models loaded once for both images
    assert "\r" not in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("timing: verify")
    for name in ("case-a", "case-b"):
        mask, image = read_mask(output / OUTPUT_FOLDER / f"{name}.mha")
        assert image.GetPixelID() == sitk.sitkUInt8 and set(mask.ravel()) <= {0, 1}
        assert f"wrote {output / OUTPUT_FOLDER / name}.mha: tumor " in result.stdout
    assert sorted(p.name for p in (output / OUTPUT_FOLDER).iterdir()) == ["case-a.mha", "case-b.mha"]


def assert_fails_cleanly(result: subprocess.CompletedProcess, expected: str, output: Path) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not output.exists() or not any(p.is_file() for p in output.rglob("*"))


def test_one_bad_file_among_several_is_one_line_and_the_others_are_predicted(app_dir, tmp_path):
    """Each case stands alone: the bad one is one error line and no mask, the good one its mask, exit 1."""
    input_dir = gc_input(tmp_path, T1, {"good.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(1, 1, 3), seed=1)})
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(input_dir / "images" / T1 / "zz-flat.mha"))
    output = tmp_path / "output"
    result = run(["inference.py", "--input", str(input_dir), "--output", str(output)], app_dir)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "zz-flat.mha: expected a 3-D image, got 2-D" in lines[0]
    assert sorted(p.name for p in (output / OUTPUT_FOLDER).iterdir()) == ["good.mha"]
    assert "1 of 2 case(s) failed" in result.stdout


def test_unreadable_checkpoint_of_a_later_member_fails_cleanly(app_dir, tmp_path):
    """Networks load in the background while the first members predict: a broken one still ends the run with
    one error line and no output."""
    app = tmp_path / "app"
    shutil.copytree(app_dir, app)
    last = load_spec(app / "ensemble" / "task1.toml").members[-1]
    last.checkpoint_path(app / "weights").write_bytes(b"truncated")
    input_dir = gc_input(tmp_path, T1, {"good.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(1, 1, 3), seed=1)})
    output = tmp_path / "output"
    result = run(["inference.py", "--input", str(input_dir), "--output", str(output)], app)
    assert_fails_cleanly(result, f"{last.checkpoint}: not a readable PyTorch checkpoint", output)
    assert re.search(r"member 1/\d+ .*: \d+ tiles in", result.stdout)  # the first ran before the broken one


def test_unwritable_output_fails_before_predicting(app_dir, tmp_path):
    input_dir = gc_input(tmp_path, T1, {"good.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(1, 1, 3), seed=1)})
    output = tmp_path / "output"
    output.write_text("a file where the output folder should be")
    result = run(["inference.py", "--input", str(input_dir), "--output", str(output)], app_dir)
    assert result.returncode == 1 and "output folder is not writable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "loading" not in result.stdout


def test_unknown_socket(app_dir, tmp_path):
    input_dir = gc_input(tmp_path, "abdominal-ct", {"x.mha": dict(shape_zyx=(6, 20, 20), spacing_xyz=(1, 1, 3),
                                                                  seed=1)})
    output = tmp_path / "output"
    result = run(["inference.py", "--input", str(input_dir), "--output", str(output)], app_dir)
    assert_fails_cleanly(result, "no ensemble spec for input socket 'abdominal-ct'", output)


def test_spec_for_another_socket(app_dir, workspace, tmp_path):
    input_dir = gc_input(tmp_path, "abdominal-t2-mri", {"x.mha": dict(shape_zyx=(6, 20, 20), spacing_xyz=(1, 1, 3),
                                                                      seed=1)})
    output = tmp_path / "output"
    result = run(["-m", "panther_ensemble.cli", "predict", "--input", str(input_dir), "--output", str(output),
                  "--ensemble", str(workspace.t1_spec), "--weights", str(workspace.weights)])
    assert_fails_cleanly(result, "is for input socket 'abdominal-t1-mri', but the input is 'abdominal-t2-mri'",
                         output)


def test_missing_weights(workspace, tmp_path):
    input_dir = gc_input(tmp_path, T1, {"x.mha": dict(shape_zyx=(6, 20, 20), spacing_xyz=(1, 1, 3), seed=1)})
    output = tmp_path / "output"
    result = run(["-m", "panther_ensemble.cli", "predict", "--input", str(input_dir), "--output", str(output),
                  "--ensemble", str(workspace.t1_spec), "--weights", str(tmp_path / "missing")])
    assert_fails_cleanly(result, f"{tmp_path / 'missing'}: weights folder does not exist (--weights)", output)
    (tmp_path / "empty").mkdir()
    result = run(["-m", "panther_ensemble.cli", "predict", "--input", str(input_dir), "--output", str(output),
                  "--ensemble", str(workspace.t1_spec), "--weights", str(tmp_path / "empty")])
    assert_fails_cleanly(result, f"{tmp_path / 'empty'}: weights folder is empty (--weights); it should hold the "
                                 "nnU-Net result folders the spec names, e.g. Dataset901", output)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "Dataset999_Other").mkdir()
    result = run(["-m", "panther_ensemble.cli", "predict", "--input", str(input_dir), "--output", str(output),
                  "--ensemble", str(workspace.t1_spec), "--weights", str(tmp_path / "other")])
    assert_fails_cleanly(result, "not found under", output)  # a root with other models: the spec's member


def test_cuda_requested_without_cuda(workspace, tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    input_dir = gc_input(tmp_path, T1, {"x.mha": dict(shape_zyx=(6, 20, 20), spacing_xyz=(1, 1, 3), seed=1)})
    output = tmp_path / "output"
    result = run(["-m", "panther_ensemble.cli", "predict", "--input", str(input_dir), "--output", str(output),
                  "--ensemble", str(workspace.t1_spec), "--weights", str(workspace.weights), "--device", "cuda"])
    assert_fails_cleanly(result, "--device cuda: CUDA does not start: ", output)


def test_synthetic_demo_folder(tmp_path):
    """The README's no-weights demo: a random ensemble and a GC input, predicted end to end."""
    result = run(["-m", "panther_ensemble.demo.synthetic", str(tmp_path / "demo")])
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "demo"
    result = run(["inference.py", "--input", str(demo / "input"), "--output", str(demo / "output"),
                  "--ensemble", str(demo / "task1.toml"), "--weights", str(demo / "weights")])
    assert result.returncode == 0, result.stderr
    mask, _ = read_mask(demo / "output" / OUTPUT_FOLDER / "demo-case.mha")
    assert mask.shape == (24, 96, 110) and "tumor" in result.stdout


def test_every_python_m_entry_point_has_help():
    """Each module with a __main__ answers --help (and none is a traceback)."""
    package = REPO / "src" / "panther_ensemble"
    modules = [".".join(p.relative_to(REPO / "src").with_suffix("").parts) for p in package.rglob("*.py")
               if "__main__" in p.read_text()]
    assert "panther_ensemble.app.manifest" in modules and "panther_ensemble.app.model_tarball" in modules
    for module in modules:
        result = run(["-m", module, "--help"])
        assert result.returncode == 0 and "usage:" in result.stdout, (module, result.stderr)


def test_predict_takes_nnunets_flat_imagests_folder(workspace, tmp_path, capsys):
    from panther_ensemble.cli import main
    from panther_ensemble.demo import synthetic as syn

    flat = tmp_path / "imagesTs"
    for k in range(2):
        syn.make_image(flat / f"case{k}_0000.nii.gz", (10, 30, 34), (1, 1, 3), seed=k)
    assert main(["predict", "--input", str(flat), "--output", str(tmp_path / "out"), "--ensemble",
                 str(workspace.t1_spec), "--weights", str(workspace.weights), "--device", "cpu", "--budget", "0"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / OUTPUT_FOLDER).iterdir()) == ["case0.mha", "case1.mha"]
    capsys.readouterr()
    two = tmp_path / "app"
    (two / "ensemble").mkdir(parents=True)
    for name, socket in (("task1.toml", "abdominal-t1-mri"), ("task2.toml", "abdominal-t2-mri")):
        (two / "ensemble" / name).write_text(workspace.t1_spec.read_text().replace("abdominal-t1-mri", socket))
    done = run(["inference.py", "--input", str(flat), "--output", str(tmp_path / "out2")], two)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "error: a flat folder of images (nnU-Net's imagesTs) names no input socket, and there is not one spec to "
        "take (found: task1.toml (abdominal-t1-mri), task2.toml (abdominal-t2-mri)): pass --ensemble"]
