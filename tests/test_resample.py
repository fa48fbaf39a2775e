"""The device resampling of images against nnU-Net's own resample_data_or_seg_to_shape (the plans' default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

from panther_ensemble.engine.image_resampling import resample_image, supports

KWARGS = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
CASES = {
    # (input shape (c, z, y, x), new shape, current spacing, new spacing)
    "T1 to 1 mm iso (3-D spline, upsampling)": ((1, 12, 40, 46), (36, 48, 55), (3.0, 1.19, 1.19), (1.0, 1.0, 1.0)),
    "thick slices (separate z, nearest along z)": ((1, 9, 30, 34), (36, 36, 41), (4.0, 1.2, 1.2), (1.0, 1.0, 1.0)),
    "downsampling, two channels": ((2, 30, 33, 28), (15, 20, 14), (1.0, 1.2, 1.0), (2.0, 2.0, 2.0)),
    "separate axis is x (transposed plans)": ((1, 30, 28, 8), (33, 31, 24), (1.1, 1.1, 4.5), (1.0, 1.0, 1.5)),
    "same shape": ((1, 10, 12, 14), (10, 12, 14), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_nnunet_default_resampling(case):
    shape, new_shape, spacing, new_spacing = CASES[case]
    rng = np.random.default_rng(0)
    # z-scored MRI-like data: smooth structure, noise, a zero background block (as after normalization)
    data = (np.cumsum(rng.normal(size=shape), axis=-1) / 4 + rng.normal(size=shape)).astype(np.float32)
    data[:, :2] = 0
    stock = resample_data_or_seg_to_shape(data, new_shape, spacing, new_spacing, **KWARGS)
    ours = resample_image(data, new_shape, spacing, new_spacing, torch.device("cpu"), **KWARGS)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (shape[0], *new_shape)
    np.testing.assert_allclose(ours.numpy(), stock, rtol=0, atol=2e-6)
    assert np.abs(stock).max() > 1  # values of the data's own scale, so the tolerance is tight


def test_only_the_reproduced_resampling_is_claimed():
    assert supports(KWARGS)
    assert not supports({**KWARGS, "is_seg": True})
    assert not supports({**KWARGS, "order_z": 1})
    assert not supports({**KWARGS, "something_new": 1})
    with pytest.raises(ValueError):
        resample_image(np.zeros((1, 4, 4, 4), np.float32), (8, 8, 8), (1, 1, 1), (.5, .5, .5),
                       torch.device("cpu"), order_z=1)
