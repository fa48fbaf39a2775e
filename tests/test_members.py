"""Loading members: networks from the plans, any trainer name, and checkpoints that never run code."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from panther_ensemble.core.errors import PantherError
from panther_ensemble.demo.synthetic import ALL_ROUNDER, BOUNDARY
from panther_ensemble.engine.members import load_checkpoint, load_member
from panther_ensemble.engine.spec import MemberSpec


def member(config, fold=0, checkpoint="checkpoint_final.pth") -> MemberSpec:
    return MemberSpec(config.model, fold, checkpoint)


def test_trainer_nnunet_does_not_ship_loads_from_plans(workspace):
    loaded = load_member(workspace.weights, member(BOUNDARY))
    assert loaded.trainer_name == "nnUNetTrainer_DA5Segord0_150epochs"
    assert type(loaded.network).__name__ == "PlainConvUNet" and not loaded.network.training
    saved = torch.load(workspace.weights / BOUNDARY.model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    for name, tensor in loaded.network.state_dict().items():
        assert torch.equal(tensor, saved["network_weights"][name]), name


def test_best_and_final_checkpoints_differ(workspace):
    best = load_member(workspace.weights, member(ALL_ROUNDER, checkpoint="checkpoint_best.pth"))
    final = load_member(workspace.weights, member(ALL_ROUNDER))
    assert type(best.network).__name__ == "ResidualEncoderUNet"
    first = next(iter(best.network.state_dict()))
    assert not torch.equal(best.network.state_dict()[first], final.network.state_dict()[first])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"network_weights": {}, "trainer_name": _Payload(marker)}, path)
    with pytest.raises(PantherError, match="refused to load") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and not marker.exists()


@pytest.mark.parametrize("content, expected", [
    (b"not a checkpoint", "not a readable PyTorch checkpoint"),
    (b"truncated", "not a readable PyTorch checkpoint"),
    (None, "not an nnU-Net checkpoint"),
])
def test_unreadable_checkpoints(tmp_path, content, expected):
    path = tmp_path / "c.pth"
    if content is None:
        torch.save({"state_dict": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(PantherError, match=expected):
        load_checkpoint(path)


@pytest.fixture()
def copied(workspace, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(workspace.weights / ALL_ROUNDER.model, root / ALL_ROUNDER.model)
    return root


def edit_plans(root, change) -> None:
    path = root / ALL_ROUNDER.model / "plans.json"
    plans = json.loads(path.read_text())
    change(plans["configurations"]["3d_fullres"])
    path.write_text(json.dumps(plans))


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["architecture"].update(network_class_name="os.system"), "is not from dynamic_network_architectures"),
    (lambda c: c["architecture"]["arch_kwargs"].update(nonlin="subprocess.Popen"), "is not a torch.nn class"),
    (lambda c: c["architecture"]["arch_kwargs"].update(features_per_stage=[8, 16, 32]),
     "weights do not fit the architecture"),
    (lambda c: c.update(previous_stage="3d_lowres"), "cascades are not supported"),
])
def test_plans_problems(copied, change, expected):
    edit_plans(copied, change)
    with pytest.raises(PantherError, match=expected):
        load_member(copied, member(ALL_ROUNDER))


def test_checkpoint_of_another_configuration_is_refused(copied):
    path = member(ALL_ROUNDER).checkpoint_path(copied)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["init_args"]["configuration"] = "3d_lowres"
    torch.save(checkpoint, path)
    with pytest.raises(PantherError, match="trained with configuration '3d_lowres', but its folder .* names "
                                           "'3d_fullres'"):
        load_member(copied, member(ALL_ROUNDER))


def test_sha256_manifest_is_verified_when_present(workspace, tmp_path):
    from panther_ensemble.app.manifest import MANIFEST_NAME, verify_manifest, write_manifest
    from panther_ensemble.engine.spec import load_spec, member_files

    root = tmp_path / "weights"
    shutil.copytree(workspace.weights / ALL_ROUNDER.model, root / ALL_ROUNDER.model)
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(f'input_socket = "a"\noutput_socket = "b"\ntumor_label = 1\n[[member]]\n'
                         f'model = "{ALL_ROUNDER.model}"\nfold = 1\ncheckpoint = "checkpoint_best.pth"\n')
    files = member_files(load_spec(spec_path), root)
    assert not verify_manifest(root, files)  # no manifest: nothing to verify
    write_manifest(root)
    assert verify_manifest(root, files)
    assert f"  {ALL_ROUNDER.model}/fold_1/checkpoint_best.pth" in (root / MANIFEST_NAME).read_text()
    # digests the caller already has are written as given, the rest computed
    plans = f"{ALL_ROUNDER.model}/plans.json"
    write_manifest(root, known={plans: "0" * 64})
    assert f"{'0' * 64}  {plans}\n" in (root / MANIFEST_NAME).read_text()
    with pytest.raises(PantherError, match="plans.json: sha256 differs"):
        verify_manifest(root, files)
    write_manifest(root)
    files[-1].write_bytes(files[-1].read_bytes()[:-1] + b"x")
    with pytest.raises(PantherError, match="sha256 differs"):
        verify_manifest(root, files)
    (root / MANIFEST_NAME).write_text("")
    with pytest.raises(PantherError, match="does not list"):
        verify_manifest(root, files)


def rewrite_checkpoint(root, change, **save_kwargs) -> None:
    path = root / ALL_ROUNDER.model / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    change(checkpoint)
    torch.save(checkpoint, path, **save_kwargs)


def test_half_precision_and_legacy_format_checkpoints_load_as_nnunet_loads_them(copied):
    """The network gets fp32 weights as load_state_dict's copy gives them; torch's pre-zip format is read (not
    memory-mapped)."""
    def to_half(checkpoint):
        checkpoint["network_weights"] = {k: v.half() for k, v in checkpoint["network_weights"].items()}

    rewrite_checkpoint(copied, to_half, _use_new_zipfile_serialization=False)
    loaded = load_member(copied, member(ALL_ROUNDER))
    saved = torch.load(copied / ALL_ROUNDER.model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    for name, tensor in loaded.network.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, saved["network_weights"][name].float()), name


def test_network_with_an_unsaved_buffer_is_a_clear_error(copied, monkeypatch):
    import panther_ensemble.engine.members as members

    build = members.network_from_plans

    def with_unsaved_buffer(*args):
        network = build(*args)
        network.register_buffer("scale", torch.ones(1), persistent=False)
        return network

    monkeypatch.setattr(members, "network_from_plans", with_unsaved_buffer)
    with pytest.raises(PantherError, match="weights do not fit .*no value for scale"):
        load_member(copied, member(ALL_ROUNDER))
