"""The core acceptance: the product's mask equals stock nnunetv2's per-member weighted softmax mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dice, gc_input, read_mask

from panther_ensemble.app.predict_run import predict_folder
from panther_ensemble.engine.image import read_image
from panther_ensemble.engine.input_grid import member_probabilities
from panther_ensemble.engine.members import load_member
from panther_ensemble.engine.preprocess import preprocess
from panther_ensemble.engine.sliding_window import sliding_window_logits
from panther_ensemble.engine.spec import load_spec
from panther_ensemble.tools.reference import stock_ensemble_mask, stock_member_probabilities

CASES = {
    # T1-like: thick oblique slices, in-plane ~0.8 mm (anisotropic, non-identity direction cosines)
    "t1_oblique": dict(shape_zyx=(22, 60, 70), spacing_xyz=(0.8, 0.75, 3.0), seed=11),
    # T2 MR-Linac-like: thinner slices, coarser in-plane, int16 at another scale
    "t2_oblique": dict(shape_zyx=(40, 44, 40), spacing_xyz=(1.6, 1.5, 1.2), seed=12),
    # smaller than every patch after resampling, identity direction
    "tiny_axis_aligned": dict(shape_zyx=(6, 18, 20), spacing_xyz=(1.3, 1.3, 2.0), seed=13, oblique=False),
}


def assert_parity(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    differing = float((ours != reference).mean())
    assert dice(ours, reference) >= 0.999, f"Dice {dice(ours, reference):.5f}"
    assert differing <= 0.0005, f"{differing:.4%} of voxels differ"


@pytest.mark.parametrize("spec_name", ["t1_spec", "mixed_spec"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_ensemble_mask_equals_stock_nnunet(workspace, tmp_path, spec_name, case):
    """Both modes against one stock reference: the exact one to the voxel, the fast one within the bound."""
    spec_path = getattr(workspace, spec_name)
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {f"{case}.mha": CASES[case]})
    image_file = input_dir / "images" / "abdominal-t1-mri" / f"{case}.mha"
    reference = stock_ensemble_mask(image_file, workspace.weights, load_spec(spec_path))
    # the test means something only if the random members disagree with each other and find tumor
    assert 0.005 < reference.mean() < 0.8, f"reference tumor fraction {reference.mean():.3f}"
    image = read_image(image_file)
    for mode in ("exact", "fast"):
        written = predict_folder(input_dir, tmp_path / mode, ensemble=spec_path, weights=workspace.weights,
                                 device="cpu", mode=mode)
        ours, ours_image = read_mask(written[0])
        assert_parity(ours, reference)
        if mode == "exact":
            assert int((ours != reference).sum()) == 0
        assert ours_image.GetSize() == image.array.shape[::-1]
        assert ours_image.GetSpacing() == image.spacing
        assert ours_image.GetOrigin() == image.origin
        assert ours_image.GetDirection() == image.direction
        assert ours_image.GetPixelIDValue() == 1  # sitkUInt8


def test_each_member_probabilities_match_stock(workspace, tmp_path):
    """Finer than the mask: every member's probabilities on the input grid equal the stock predictor's."""
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": CASES["t1_oblique"]})
    image_file = input_dir / "images" / "abdominal-t1-mri" / "case.mha"
    image = read_image(image_file)
    spec = load_spec(workspace.mixed_spec)
    for member_spec in spec.members:
        member = load_member(workspace.weights, member_spec)
        prepared = preprocess(image, member)
        logits = sliding_window_logits(prepared.data, member.network, member.configuration_manager.patch_size,
                                        3, torch.device("cpu"))
        stock = stock_member_probabilities(image_file, workspace.weights, member_spec)
        exact = member_probabilities(logits, member, prepared.properties, "exact").numpy()
        assert exact.shape == stock.shape == (3, *image.array.shape)
        np.testing.assert_allclose(exact, stock, atol=1e-5, err_msg=member_spec.name)
        # torch's linear resampling of the same logits: close everywhere, not bit-equal
        fast = member_probabilities(logits, member, prepared.properties, "fast").numpy()
        assert np.abs(fast - stock).max() < 0.05, member_spec.name
        assert np.abs(fast - stock).mean() < 1e-3, member_spec.name


def test_members_sharing_preprocessing_run_it_once(workspace, tmp_path, monkeypatch):
    import panther_ensemble.engine.ensemble as pipeline

    calls = []
    original = pipeline.preprocess
    monkeypatch.setattr(pipeline, "preprocess", lambda image, member, device: calls.append(member.spec.name) or
                        original(image, member, device))
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": CASES["tiny_axis_aligned"]})
    predict_folder(input_dir, tmp_path / "out", ensemble=workspace.t1_spec, weights=workspace.weights, device="cpu")
    # 6 members: all-rounder and volume folds share plans (one group), the boundary model has its own
    assert len(calls) == 2
