"""Checkpoints as participants bring them: written by nnU-Net's own trainer in other processes, under numpy 1.x and
older nnU-Net releases (tests/fixtures/field, made by scripts/make_field_checkpoints.py), not by this project."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_mask
from test_parity import assert_parity

from panther_ensemble.app.model_tarball import strip_checkpoint
from panther_ensemble.app.predict_run import predict_folder
from panther_ensemble.cli import main
from panther_ensemble.core.errors import PantherError
from panther_ensemble.engine.members import INFERENCE_CHECKPOINT_KEYS, load_checkpoint, load_member
from panther_ensemble.engine.spec import MemberSpec, load_spec
from panther_ensemble.tools.reference import stock_ensemble_mask

FIELD = Path(__file__).parent / "fixtures" / "field"
PROVENANCE = json.loads((FIELD / "provenance.json").read_text())
MODEL = "Dataset990_Field/nnUNetTrainerFieldFixture__nnUNetPlans__3d_fullres"
ERAS = ("nnunetv2-2.1", "nnunetv2-2.5.1")
NUMPY1, NUMPY2 = "checkpoint_final.pth", "checkpoint_final_numpy2.pth"
PAYLOADS = ("checkpoint_payload_os_system.pth", "checkpoint_payload_numpy_runstring.pth")
SOCKET = "abdominal-t1-mri"


def fold(era: str) -> Path:
    return FIELD / era / MODEL / "fold_0"


def test_fixtures_are_what_their_provenance_says():
    """Each file is the one the script wrote (sha256), numpy-1 files name numpy 1's modules in their pickles."""
    for name, entry in PROVENANCE.items():
        assert hashlib.sha256((FIELD / name).read_bytes()).hexdigest() == entry["sha256"], name
        numpy_major = entry["written_by"]["numpy"].split(".")[0]
        scalar = "numpy.core.multiarray.scalar" if numpy_major == "1" else "numpy._core.multiarray.scalar"
        assert scalar in entry["pickle_globals"], name
        if not entry.get("carries_code"):
            assert set(entry["keys"]) == {"network_weights", "optimizer_state", "grad_scaler_state", "logging",
                                          "_best_ema", "current_epoch", "init_args", "trainer_name",
                                          "inference_allowed_mirroring_axes"}, name
    assert {PROVENANCE[f"{era}/{MODEL}/fold_0/{NUMPY1}"]["written_by"]["nnunetv2"] for era in ERAS} == {"2.1", "2.5.1"}
    assert PROVENANCE[f"nnunetv2-2.5.1/{MODEL}/fold_0/{NUMPY2}"]["written_by"]["numpy"].startswith("2.")


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("checkpoint", ["checkpoint_best.pth", NUMPY1])
def test_numpy1_checkpoints_of_each_release_load(era, checkpoint):
    loaded = load_checkpoint(fold(era) / checkpoint)
    assert type(loaded["_best_ema"]).__module__ == "numpy" and loaded["init_args"]["device"] == torch.device("cpu")
    assert loaded["grad_scaler_state"]["scale"] > 0 and loaded["optimizer_state"]["state"]
    member = load_member(FIELD / era, MemberSpec(MODEL, 0, checkpoint))
    for name, tensor in member.network.state_dict().items():
        assert torch.equal(tensor, loaded["network_weights"][name]), name


def test_numpy1_and_numpy2_copies_hold_the_same_weights_and_give_the_same_mask(tmp_path):
    one, two = (load_member(FIELD / "nnunetv2-2.5.1", MemberSpec(MODEL, 0, c)) for c in (NUMPY1, NUMPY2))
    assert one.network.state_dict().keys() == two.network.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(one.network.state_dict().values(), two.network.state_dict().values()))
    input_dir = field_case(tmp_path)
    masks = []
    for checkpoint in (NUMPY1, NUMPY2):
        spec = field_spec(tmp_path / f"{checkpoint}.toml", [checkpoint])
        written = predict_folder(input_dir, tmp_path / checkpoint, ensemble=spec, weights=FIELD / "nnunetv2-2.5.1",
                                 device="cpu", budget=0)
        masks.append(read_mask(written[0])[0])
    np.testing.assert_array_equal(masks[0], masks[1])


@pytest.mark.parametrize("era", ERAS)
def test_field_folds_predict_as_stock_nnunet_does(era, tmp_path):
    """Old-format plans (nnU-Net 2.1: no "architecture" entry) and numpy-1 checkpoints, against nnunetv2's predictor.
    The folds are barely trained: the masks compare probabilities' argmax, tumor or not."""
    input_dir = field_case(tmp_path)
    # the pancreas (label 2), meant: the barely trained folds find it, not the tumor
    spec_path = field_spec(tmp_path / "field.toml", [NUMPY1, "checkpoint_best.pth"], tumor_label=2, name="pancreas")
    image = next((input_dir / "images" / SOCKET).iterdir())
    reference = stock_ensemble_mask(image, FIELD / era, load_spec(spec_path))
    assert reference.any(), "the comparison needs voxels of the label"
    for mode in ("exact", "fast"):
        written = predict_folder(input_dir, tmp_path / mode, ensemble=spec_path, weights=FIELD / era, device="cpu",
                                 budget=0, mode=mode)
        assert_parity(read_mask(written[0])[0], reference)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_code_in_a_numpy1_checkpoint_is_refused_and_never_runs(payload, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("PANTHER_PAYLOAD_MARKER", str(marker))
    with pytest.raises(PantherError, match="refused to load: the checkpoint holds .*could run code"):
        load_checkpoint(fold("nnunetv2-2.5.1") / payload)
    spec = field_spec(tmp_path / "evil.toml", [NUMPY1, payload])
    output = tmp_path / "out"
    assert main(["predict", "--input", str(field_case(tmp_path)), "--output", str(output), "--ensemble", str(spec),
                 "--weights", str(FIELD / "nnunetv2-2.5.1"), "--device", "cpu", "--budget", "0"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and "refused to load" in errors[0]
    assert not marker.exists() and not [p for p in output.rglob("*") if p.is_file()]


@pytest.mark.parametrize("era", ERAS)
def test_export_strips_numpy1_checkpoints_to_what_inference_needs(era, tmp_path):
    target = tmp_path / "stripped.pth"
    assert strip_checkpoint(fold(era) / NUMPY1, target)
    stripped = torch.load(target, weights_only=True)  # no allow-list needed: tensors and plain Python only
    assert set(stripped) <= set(INFERENCE_CHECKPOINT_KEYS) and isinstance(stripped["_best_ema"], float)
    original = load_checkpoint(fold(era) / NUMPY1)
    assert all(torch.equal(stripped["network_weights"][k], v) for k, v in original["network_weights"].items())
    # stripped again: nothing left to strip, copied byte for byte
    assert not strip_checkpoint(target, tmp_path / "again.pth")
    assert (tmp_path / "again.pth").read_bytes() == target.read_bytes()
    marker = tmp_path / "payload-ran"
    os.environ["PANTHER_PAYLOAD_MARKER"] = str(marker)
    try:
        with pytest.raises(PantherError, match="refused to load"):
            strip_checkpoint(fold("nnunetv2-2.5.1") / PAYLOADS[0], tmp_path / "evil.pth")
    finally:
        del os.environ["PANTHER_PAYLOAD_MARKER"]
    assert not marker.exists() and not (tmp_path / "evil.pth").exists()


def field_case(tmp_path: Path) -> Path:
    """A T1 phantom at the fixtures' 5 mm, in the GC layout (seed 3100: not one the folds were trained on)."""
    return FIELD / "input"


def field_spec(path: Path, checkpoints: list[str], tumor_label: int = 1, name: str | None = None) -> Path:
    members = "".join(f'[[member]]\nmodel = "{MODEL}"\nfold = 0\ncheckpoint = "{c}"\n' for c in checkpoints)
    named = f'tumor_label_name = "{name}"\n' if name else ""
    path.write_text(f'input_socket = "{SOCKET}"\noutput_socket = "pancreatic-tumor-segmentation"\n'
                    f"tumor_label = {tumor_label}\n{named}{members}")
    return path
