"""export-onnx and the onnxruntime backend: exported members predict as the torch backend does, and every
failure is one line with nothing half-written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import dice, extract_tarball, gc_input, labelled_cases, read_mask

from panther_ensemble.app.manifest import MANIFEST_NAME, sha256
from panther_ensemble.cli import main
from panther_ensemble.core.errors import PantherError
from panther_ensemble.demo.sample_cases import SAMPLE_CASES
from panther_ensemble.engine.members import load_member
from panther_ensemble.engine.onnx_network import OnnxNetwork, providers
from panther_ensemble.engine.spec import check_against_weights, load_spec, member_files
from panther_ensemble.engine.spec_writer import SpecComments
from panther_ensemble.tools import onnx_export

REPO = Path(__file__).resolve().parents[1]
OUTPUT = Path("images") / "pancreatic-tumor-segmentation"


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> dict[str, Path]:
    """The shipped demo ensembles, exported the way a user would (the CLI), one folder per task."""
    root = tmp_path_factory.mktemp("onnx")
    for task in ("task1", "task2"):
        assert main(["export-onnx", "--ensemble", str(REPO / "ensemble" / f"{task}.toml"),
                     "--weights", str(REPO / "weights"), "--out", str(root / task)]) == 0
    return {task: root / task for task in ("task1", "task2")}


@pytest.fixture(scope="module")
def synthetic_onnx(workspace, tmp_path_factory) -> Path:
    """The random-weight mixed ensemble (two preprocessing groups, transposed axes, fold "all", member weights),
    exported with external weights, as a ResEncL would be."""
    out = tmp_path_factory.mktemp("synthetic-onnx") / "onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
        onnx_export.export_ensemble(load_spec(workspace.mixed_spec), workspace.weights, out)
    return out


def errors_of(capsys) -> str:
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=lambda c: c.task)
def test_onnxruntime_backend_matches_the_torch_backend_on_the_test_cases(case, demo_onnx, tmp_path, capsys):
    """test/expected_output is the torch backend's output (test_demo regenerates and compares it)."""
    out = demo_onnx[case.task]
    assert main(["predict", "--input", str(REPO / "test" / "input" / case.task), "--output", str(tmp_path),
                 "--ensemble", str(out / f"{case.task}.toml"), "--weights", str(out), "--budget", "0"]) == 0
    assert f"weights listed in {out / MANIFEST_NAME}" in capsys.readouterr().out
    ours, ours_image = read_mask(tmp_path / OUTPUT / f"{case.uuid}.mha")
    torch_mask, torch_image = read_mask(REPO / "test" / "expected_output" / case.task / OUTPUT / f"{case.uuid}.mha")
    assert torch_mask.sum() > 0
    assert dice(ours, torch_mask) >= 0.999 and np.mean(ours != torch_mask) <= 0.0005
    assert (ours_image.GetSpacing(), ours_image.GetOrigin(), ours_image.GetDirection()) == \
        (torch_image.GetSpacing(), torch_image.GetOrigin(), torch_image.GetDirection())


def test_export_writes_checked_models_spec_and_manifests(demo_onnx):
    out = demo_onnx["task1"]
    spec = load_spec(out / "task1.toml")
    original = load_spec(REPO / "ensemble" / "task1.toml")
    assert spec.backend == "onnxruntime" and spec.members == original.members
    manifest = json.loads((out / onnx_export.ONNX_MANIFEST).read_text())
    assert manifest["opset"] == 18 and manifest["backend"] == "onnxruntime"
    assert [e["member"] for e in manifest["members"]] == [m.name for m in spec.members]
    for entry, member in zip(manifest["members"], spec.members):
        assert (entry["model"], entry["fold"], entry["checkpoint"]) == (member.model, member.fold, member.checkpoint)
        assert entry["source_sha256"] == sha256(member.checkpoint_path(REPO / "weights"))
        assert entry["max_relative_difference"] < 1e-4
        assert set(entry["files"]) == {entry["onnx"]}  # small: the weights are inside the model
        for name, digest in entry["files"].items():
            assert sha256(out / name) == digest
        model = onnx.load(str(out / entry["onnx"]), load_external_data=False)
        onnx.checker.check_model(model)
        assert model.opset_import[0].version == 18
        assert {p.key: p.value for p in model.metadata_props}["panther_member"] == member.name
        inputs = model.graph.input[0].type.tensor_type.shape.dim
        assert inputs[0].dim_param and [d.dim_value for d in inputs[1:]] == entry["input_shape"][1:]
    assert not list(out.rglob("*.pth"))  # the ONNX root stands alone
    listed = {line.split("  ")[1] for line in (out / MANIFEST_NAME).read_text().splitlines()}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME} \
        == listed


def test_large_networks_keep_their_weights_beside_the_model(synthetic_onnx, workspace, tmp_path):
    spec = load_spec(synthetic_onnx / "mixed.toml")
    files = member_files(spec, synthetic_onnx, "onnxruntime")
    data = [f for f in files if f.name.endswith(".onnx.data")]
    assert len(data) == len(spec.members) and all(f.stat().st_size > 0 for f in data)
    # the batch axis is dynamic: one tile and four give the torch network's logits
    torch_member = load_member(workspace.weights, spec.members[0])
    onnx_member = load_member(synthetic_onnx, spec.members[0], "onnxruntime")
    assert onnx_member.configuration_name == torch_member.configuration_name
    assert onnx_member.trainer_name == torch_member.trainer_name
    tiles = torch.randn(4, *torch_member.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = torch_member.network(tiles)
    for batch in (tiles[:1], tiles):
        np.testing.assert_allclose(onnx_member.network(batch), expected[:len(batch)], atol=1e-4, rtol=1e-4)


def test_synthetic_ensemble_predicts_the_same_mask_with_either_backend(synthetic_onnx, workspace, tmp_path):
    input_dir = gc_input(tmp_path, "abdominal-t1-mri",
                         {"case.mha": dict(shape_zyx=(20, 60, 70), spacing_xyz=(1.2, 1.2, 3.0), seed=3)})
    masks = []
    for backend, spec, weights in (("torch", workspace.mixed_spec, workspace.weights),
                                   ("onnxruntime", synthetic_onnx / "mixed.toml", synthetic_onnx)):
        output = tmp_path / backend
        assert main(["predict", "--input", str(input_dir), "--output", str(output), "--ensemble", str(spec),
                     "--weights", str(weights), "--backend", backend, "--budget", "0", "--device", "cpu"]) == 0
        masks.append(read_mask(output / OUTPUT / "case.mha")[0])
    assert masks[0].sum() > 0
    assert dice(*masks) >= 0.999 and np.mean(masks[0] != masks[1]) <= 0.0005


def test_the_exported_spec_keeps_selects_comments(demo_onnx):
    """export-onnx rewrites the spec with backend = "onnxruntime" through the one spec writer: select's header and
    per-member provenance stay."""
    original, exported = REPO / "ensemble" / "task1.toml", demo_onnx["task1"] / "task1.toml"
    assert load_spec(exported).backend == "onnxruntime"
    assert load_spec(exported).members == load_spec(original).members
    assert SpecComments.of(exported, load_spec(exported)) == SpecComments.of(original, load_spec(original))


def test_every_tool_honours_the_specs_onnxruntime_backend(demo_onnx, tmp_path, capsys):
    """cost, evaluate --ensemble and export-model on an export-onnx root (ONNX models, no checkpoint): the spec's
    backend, not a search for .pth files."""
    root, spec = demo_onnx["task2"], demo_onnx["task2"] / "task2.toml"
    assert not list(root.rglob("*.pth"))
    assert main(["cost", "--ensemble", str(spec), "--weights", str(root), "--shape", "30,120,140", "--spacing",
                 "3,1.2,1.2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["members"]) == len(load_spec(spec).members)
    cases = labelled_cases(tmp_path / "cases", [(8, 24, 28)], (1.2, 1.2, 3.0))
    assert main(["evaluate", "--ensemble", str(spec), "--weights", str(root), "--images", str(cases / "images"),
                 "--labels", str(cases / "labels"), "--device", "cpu", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [row["member"] for row in table.values() if "member" in row] == \
        [m.name for m in load_spec(spec).members]
    assert main(["export-model", "--ensemble", str(spec), "--weights", str(root), "--out",
                 str(tmp_path / "model.tar.gz")]) == 0
    names = extract_tarball(tmp_path / "model.tar.gz", tmp_path / "model")
    assert all(str(m.onnx_path(Path("."))) in names for m in load_spec(spec).members)
    assert "onnx_manifest.json" in names and not any(name.endswith(".pth") for name in names)


# --- failure paths: one line on stderr, exit 1, nothing written


def test_export_into_a_non_empty_folder_is_refused(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export-onnx", "--ensemble", str(workspace.t1_spec), "--weights", str(workspace.weights),
                 "--out", str(out)]) == 1
    assert errors_of(capsys) == f"error: {out}: exists and is not an empty folder; export-onnx writes a new one"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failed_export_leaves_nothing_behind(workspace, tmp_path, monkeypatch, capsys):
    def fail(network, input_shape, target, opset, metadata):
        assert target.parent.is_dir()  # the model folder's plans.json and dataset.json are already copied
        raise PantherError("ONNX export failed (unsupported operator)")

    monkeypatch.setattr(onnx_export, "export_network", fail)
    out = tmp_path / "out"
    assert main(["export-onnx", "--ensemble", str(workspace.t1_spec), "--weights", str(workspace.weights),
                 "--out", str(out)]) == 1
    member = load_spec(workspace.t1_spec).members[0]
    assert errors_of(capsys) == f"error: {member.name}: ONNX export failed (unsupported operator)"
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_an_old_opset(workspace, tmp_path, capsys):
    assert main(["export-onnx", "--ensemble", str(workspace.t1_spec), "--weights", str(workspace.weights),
                 "--out", str(tmp_path / "out"), "--opset", "13"]) == 1
    assert "--opset must be at least 17" in errors_of(capsys)
    assert not (tmp_path / "out").exists()


def predict_error(capsys, tmp_path, *arguments: str) -> str:
    input_dir = REPO / "test" / "input" / "task1"
    output = tmp_path / "output"
    assert main(["predict", "--input", str(input_dir), "--output", str(output), *arguments]) == 1
    assert not output.exists() or not any(output.rglob("*.mha"))
    error = errors_of(capsys)
    assert error.startswith("error: ") and "\n" not in error
    return error


def test_onnxruntime_backend_without_exported_members(capsys, tmp_path):
    error = predict_error(capsys, tmp_path, "--backend", "onnxruntime")
    assert "ONNX model 'checkpoint_best.onnx' not found" in error and "panther-ensemble export-onnx" in error


def test_torch_backend_on_an_onnx_root_names_the_right_backend(demo_onnx, capsys, tmp_path):
    out = demo_onnx["task1"]
    error = predict_error(capsys, tmp_path, "--ensemble", str(out / "task1.toml"), "--weights", str(out),
                          "--backend", "torch")
    assert "checkpoint 'checkpoint_best.pth' not found" in error and "use --backend onnxruntime" in error


def test_exact_mode_needs_the_torch_backend(capsys, tmp_path):
    error = predict_error(capsys, tmp_path, "--backend", "onnxruntime", "--mode", "exact")
    assert error == "error: --mode exact runs stock nnU-Net's torch forward; the onnxruntime backend needs --mode fast"


def copy_without_manifest(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / MANIFEST_NAME).unlink()
    return target


def test_corrupt_onnx_model_is_one_line(demo_onnx, capsys, tmp_path):
    root = copy_without_manifest(demo_onnx["task1"], tmp_path / "root")
    member = load_spec(root / "task1.toml").members[2]
    member.onnx_path(root).write_bytes(b"\x08\x07 not a protobuf")
    error = predict_error(capsys, tmp_path, "--ensemble", str(root / "task1.toml"), "--weights", str(root))
    assert error.startswith(f"error: {member.onnx_path(root)}: not a loadable ONNX model (")


def test_tampered_onnx_model_fails_the_manifest(demo_onnx, capsys, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(demo_onnx["task1"], root)
    model = load_spec(root / "task1.toml").members[0].onnx_path(root)
    model.write_bytes(model.read_bytes() + b"\0")
    error = predict_error(capsys, tmp_path, "--ensemble", str(root / "task1.toml"), "--weights", str(root))
    assert error == f"error: {model}: sha256 differs from {root / MANIFEST_NAME} (corrupt or replaced weights)"


def test_onnx_model_that_does_not_fit_the_plans(demo_onnx, capsys, tmp_path):
    root = copy_without_manifest(demo_onnx["task1"], tmp_path / "root")
    member = load_spec(root / "task1.toml").members[0]
    plans_path = root / member.model / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [32, 32, 32]
    plans_path.write_text(json.dumps(plans))
    error = predict_error(capsys, tmp_path, "--ensemble", str(root / "task1.toml"), "--weights", str(root))
    assert f"{member.onnx_path(root)}: the model takes [1, 32, 64, 64]" in error
    assert f"{plans_path} asks for [1, 32, 32, 32]" in error and "exported from another model?" in error


def test_spec_with_an_unknown_backend(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text((REPO / "ensemble" / "task1.toml").read_text().replace(
        'tumor_label   = 1', 'tumor_label   = 1\nbackend = "tensorrt"'))
    with pytest.raises(PantherError, match="'backend' must be one of torch, onnxruntime, openvino, got 'tensorrt'"):
        load_spec(spec)


def test_missing_onnxruntime_is_one_line(demo_onnx, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    out = demo_onnx["task1"]
    error = predict_error(capsys, tmp_path, "--ensemble", str(out / "task1.toml"), "--weights", str(out))
    assert error == ("error: the onnxruntime backend needs ONNX Runtime: pip install 'panther-ensemble[onnx]' "
                     "(onnxruntime-gpu for CUDA)")


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="onnxruntime-gpu is installed")
def test_cuda_needs_onnxruntime_gpu():
    """The CPU build of ONNX Runtime (the one dev and CI installs take) has no CUDA provider."""
    with pytest.raises(PantherError, match="this ONNX Runtime has no CUDA provider .*install onnxruntime-gpu"):
        providers(torch.device("cuda"))


def test_onnx_network_rejects_models_not_written_by_export(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(PantherError, match="not a member written by export-onnx"):
        OnnxNetwork(path, torch.device("cpu"))


def test_check_against_weights_looks_for_the_backends_file(demo_onnx):
    spec = load_spec(demo_onnx["task2"] / "task2.toml")
    check_against_weights(spec, demo_onnx["task2"], "onnxruntime")
    with pytest.raises(PantherError, match="use --backend onnxruntime"):
        check_against_weights(spec, demo_onnx["task2"], "torch")


def test_onnx_runtime_out_of_memory_takes_predicts_fallback(synthetic_onnx):
    """ONNX Runtime reports a failed allocation as its own error; the network raises torch's, so that
    predict's out-of-memory fallback applies to both backends."""
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    member = load_member(synthetic_onnx, load_spec(synthetic_onnx / "mixed.toml").members[1], "onnxruntime")

    class FullDevice:
        def run(self, *args):
            raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for "
                                   "requested buffer of size 1073741824")

    member.network.session = FullDevice()
    with pytest.raises(torch.OutOfMemoryError, match="ONNX Runtime: .*Failed to allocate memory"):
        member.network(torch.zeros(1, *member.input_shape))
