"""The phantom generator: deterministic, PANTHER-like geometry and labels, two contrasts."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from panther_ensemble.demo.phantom import SPACING, make_phantom


@pytest.mark.parametrize("flavour", ["t1", "t2"])
def test_phantom_geometry_labels_and_determinism(flavour):
    for seed in range(3):
        phantom = make_phantom(seed, flavour)
        image, label = phantom.image, phantom.label
        voxels, labels = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
        (in_lo, in_hi), (slice_lo, slice_hi) = SPACING[flavour]
        x, y, z = image.GetSpacing()
        assert in_lo * 0.95 <= x <= in_hi and in_lo * 0.95 <= y <= in_hi * 1.05 and slice_lo <= z <= slice_hi
        assert not np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.eye(3))
        assert np.allclose(np.array(image.GetDirection()).reshape(3, 3) @ np.array(image.GetDirection()).reshape(
            3, 3).T, np.eye(3))
        assert (label.GetSpacing(), label.GetOrigin(), label.GetDirection()) == \
            (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        assert voxels.dtype in (np.int16, np.uint16) and labels.dtype == np.uint8
        assert set(np.unique(labels)) == {0, 1, 2}
        assert 10 <= phantom.tumor_diameter_mm <= 40
        tumor_ml = (labels == 1).sum() * np.prod(image.GetSpacing()) / 1000
        assert 0.1 < tumor_ml < 40
        assert (labels == 2).sum() > (labels == 1).sum() * 0.5  # the tumor sits in a larger pancreas
    again = make_phantom(0, flavour)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.image),
                                  sitk.GetArrayFromImage(make_phantom(0, flavour).image))


def test_flavours_differ_in_contrast():
    """T1: tumor darker than pancreas; T2: tumor brighter. Same anatomy seed, different contrast."""
    for flavour, sign in (("t1", -1), ("t2", 1)):
        phantom = make_phantom(3, flavour)
        voxels = sitk.GetArrayFromImage(phantom.image).astype(float)
        labels = sitk.GetArrayFromImage(phantom.label)
        assert sign * (voxels[labels == 1].mean() - voxels[labels == 2].mean()) > 0


def test_unknown_flavour():
    with pytest.raises(ValueError, match="flavour"):
        make_phantom(0, "ct")
