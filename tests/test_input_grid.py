"""The input-grid stage: nnU-Net's torch resampling computed slab by slab, and the probability sum over the crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet

from panther_ensemble.engine import input_grid
from panther_ensemble.engine.input_grid import ProbabilitySum, SlabResampler, _box_complement, first_argmax

GEOMETRIES = {  # (source grid, target grid, member spacing, image spacing)
    "separate z, upsampled": ((10, 30, 34), (25, 41, 47), [3.0, 1.1, 1.1], [1.2, 0.8, 0.8]),
    "separate z on another axis": ((30, 34, 10), (41, 47, 25), [1.1, 1.1, 3.0], [0.8, 0.8, 1.2]),
    "trilinear, downsampled": ((30, 28, 26), (19, 21, 17), [1.0, 1.0, 1.0], [1.6, 1.3, 1.5]),
    "trilinear, mixed": ((17, 22, 19), (31, 18, 23), [1.0, 1.2, 1.1], [0.55, 1.5, 0.9]),
    "same grid": ((12, 14, 16), (12, 14, 16), [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("rows", [1, 3, 1000])
def test_slabs_reproduce_nnunets_torch_resampling(geometry, rows):
    source, target, current, new = GEOMETRIES[geometry]
    logits = (torch.randn(3, *source, generator=torch.Generator().manual_seed(1)) * 8).half()
    whole = resample_torch_fornnunet(logits, target, current, new, is_seg=False, num_threads=1,
                                     device=torch.device("cpu")).float()
    resampler = SlabResampler(logits, list(target), current, new)
    slabs = [resampler.slab(start, min(resampler.length, start + rows)) for start in
             range(0, resampler.length, rows)]
    pieced = torch.cat(slabs, dim=1 + resampler.axis)
    assert pieced.shape == whole.shape
    if geometry == "same grid":
        assert torch.equal(pieced, whole)
    else:  # the same products in another order (PyTorch's CPU kernels vectorize by how many planes they get)
        torch.testing.assert_close(pieced, whole, rtol=0, atol=2e-5)


def test_box_complement_covers_the_rest_exactly_once():
    region = (6, 7, 8)
    box = (slice(1, 4), slice(2, 7), slice(0, 5))
    cover = np.zeros(region, int)
    cover[box] += 1
    for part in _box_complement(region, box):
        cover[part] += 1
    assert (cover == 1).all()


class Stub:  # what ProbabilitySum reads of a member
    class plans_manager:  # noqa: N801
        transpose_forward, transpose_backward = [0, 1, 2], [0, 1, 2]

    class configuration_manager:  # noqa: N801
        spacing = [1.0, 1.0, 1.0]

    class label_manager:  # noqa: N801
        num_segmentation_heads = 3

        @staticmethod
        def apply_inference_nonlin(logits):
            return torch.softmax(logits.float(), 0)


def properties(bbox, shape=(8, 9, 10)):
    crop = [b[1] - b[0] for b in bbox]
    return {"bbox_used_for_cropping": bbox, "shape_before_cropping": shape, "spacing": [1.0, 1.0, 1.0],
            "shape_after_cropping_and_before_resampling": crop}


def test_members_with_different_crops_sum_as_uncropped_maps_would(monkeypatch):
    """Outside a member's crop it says background with probability 1: the sum over the union of the crops, and the
    mask from it, equal those of the members' whole maps (nnU-Net's revert_cropping)."""
    generator = torch.Generator().manual_seed(3)
    boxes = ([[1, 6], [2, 8], [0, 7]], [[0, 5], [3, 9], [2, 10]])
    weights = (1.0, 2.5)
    total = ProbabilitySum((8, 9, 10), 3, torch.device("cpu"))
    full = torch.zeros(3, 8, 9, 10)
    for bbox, weight in zip(boxes, weights):
        logits = (torch.randn(3, *[b[1] - b[0] for b in bbox], generator=generator) * 4).half()
        total.add(logits, Stub, properties(bbox), weight)
        whole = torch.zeros(3, 8, 9, 10)
        whole[0] = 1
        whole[(slice(None), *(slice(*b) for b in bbox))] = torch.softmax(logits.float(), 0)
        full += weight * whole
    torch.testing.assert_close(total.probabilities(), full / sum(weights), rtol=0, atol=1e-6)
    expected = (torch.argmax(full / sum(weights), 0) == 1).numpy().astype(np.uint8)
    np.testing.assert_array_equal(total.mask(1), expected)
    assert total.region == (slice(0, 6), slice(2, 9), slice(0, 10))  # the union, not the image


def test_the_sum_holds_only_the_crop():
    total = ProbabilitySum((40, 50, 60), 3, torch.device("cpu"))
    logits = torch.zeros(3, 10, 12, 14)
    logits[1] = 5  # tumor everywhere inside the crop
    total.add(logits.half(), Stub, properties([[5, 15], [20, 32], [30, 44]], (40, 50, 60)), 1.0)
    assert total.total.shape == (3, 10, 12, 14)  # not the image's 40 x 50 x 60
    inside = np.zeros((40, 50, 60), bool)
    inside[5:15, 20:32, 30:44] = True
    np.testing.assert_array_equal(total.mask(1), inside)  # outside the crop: background
    np.testing.assert_array_equal(total.mask(0), ~inside)


def test_small_slabs_give_the_same_sum(monkeypatch):
    logits = (torch.randn(3, 12, 14, 16, generator=torch.Generator().manual_seed(5)) * 5).half()
    sums = []
    for slab_bytes in (64, 2 ** 30):
        monkeypatch.setitem(input_grid.SLAB_BYTES, "cpu", slab_bytes)
        total = ProbabilitySum((12, 14, 16), 3, torch.device("cpu"))
        total.add(logits, Stub, properties([[0, 12], [0, 14], [0, 16]], (12, 14, 16)), 1.0)
        sums.append(total.total.clone())
    assert torch.equal(sums[0], sums[1])


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_first_argmax_is_torchs_argmax_ties_included(classes):
    """The class-after-class argmax against torch.argmax: random values quantised so that ties are common (a tie goes
    to the first class), every class equal somewhere, and a slab of one row."""
    generator = torch.Generator().manual_seed(classes)
    values = torch.randint(0, 4, (classes, 6, 7, 8), generator=generator).float() / 3
    values[:, 0, 0, :] = 0.5
    for part in (values, values[:, 2:3]):
        ours = first_argmax(part)
        assert ours.dtype == torch.uint8 and torch.equal(ours.long(), torch.argmax(part, dim=0))
