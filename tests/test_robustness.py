"""Odd inputs that must still work, inputs that must fail early, and out-of-memory fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import gc_input, read_mask

import panther_ensemble.predict as predict
from panther_ensemble.errors import PantherError
from panther_ensemble.run import check_memory, predict_folder

T1 = "abdominal-t1-mri"


def write_input(tmp_path, array: np.ndarray, spacing=(1.0, 1.0, 3.0)):
    folder = tmp_path / "input" / "images" / T1
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(folder / "case.mha"))
    return tmp_path / "input"


@pytest.mark.parametrize("value", [0.0, 250.0])
def test_constant_images_work(workspace, tmp_path, value):
    input_dir = write_input(tmp_path, np.full((8, 24, 28), value, np.float32))
    written = predict_folder(input_dir, tmp_path / "out", ensemble=workspace.t1_spec, weights=workspace.weights,
                             device="cpu", budget=0)
    mask, _ = read_mask(written[0])
    assert mask.shape == (8, 24, 28) and mask.dtype == np.uint8


def test_non_finite_voxels_become_zero_with_a_warning(workspace, tmp_path, capsys):
    rng = np.random.default_rng(0)
    clean = rng.uniform(100, 900, (8, 24, 28)).astype(np.float32)
    clean[0] = 0
    dirty = clean.copy()
    dirty[0, 0, :3] = [np.nan, np.inf, -np.inf]
    masks = []
    for name, array in (("clean", clean), ("dirty", dirty)):
        input_dir = write_input(tmp_path / name, array)
        written = predict_folder(input_dir, tmp_path / name / "out", ensemble=workspace.t1_spec,
                                 weights=workspace.weights, device="cpu", budget=0)
        masks.append(read_mask(written[0])[0])
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"warning: {tmp_path / 'dirty' / 'input' / 'images' / T1 / 'case.mha'}: "
                                        "3 NaN/Inf voxels were set to 0"]
    np.testing.assert_array_equal(masks[0], masks[1])


def test_image_too_large_after_resampling_fails_before_allocating(workspace, tmp_path):
    # a header with metres where millimetres were meant: 8x24x28 voxels of 0.5 m become ~10^11 at 1 mm
    input_dir = write_input(tmp_path, np.ones((8, 24, 28), np.int16), spacing=(500.0, 500.0, 500.0))
    with pytest.raises(PantherError, match=r"would need about .* GiB of memory after resampling"):
        predict_folder(input_dir, tmp_path / "out", ensemble=workspace.t1_spec, weights=workspace.weights,
                       device="cpu", budget=0)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_check_memory():
    check_memory(__file__, 10, available=100)
    with pytest.raises(PantherError, match="only 0.0 GiB are available"):
        check_memory(__file__, 10 ** 9, available=100)


def test_out_of_memory_falls_back_to_one_network_at_a_time(workspace, tmp_path, monkeypatch, capsys):
    input_dir = gc_input(tmp_path, T1, {"case.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(1, 1, 3), seed=8)})
    normal = predict_folder(input_dir, tmp_path / "normal", ensemble=workspace.t1_spec, weights=workspace.weights,
                            device="cpu", budget=0)
    original = predict._predict

    def no_room_for_two(data, networks, *args):
        if len(networks) > 1:
            raise torch.OutOfMemoryError("injected")
        return original(data, networks, *args)

    monkeypatch.setattr(predict, "_predict", no_room_for_two)
    capsys.readouterr()
    fallback = predict_folder(input_dir, tmp_path / "fallback", ensemble=workspace.t1_spec,
                              weights=workspace.weights, device="cpu", budget=0)
    assert "running them one at a time" in capsys.readouterr().out
    np.testing.assert_array_equal(read_mask(normal[0])[0], read_mask(fallback[0])[0])


def test_out_of_memory_for_a_single_network_on_cpu_is_not_hidden(monkeypatch):
    monkeypatch.setattr(predict, "_predict", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(torch.OutOfMemoryError):
        predict.sliding_window_logits(torch.zeros(1, 8, 8, 8), [torch.nn.Identity()], (8, 8, 8), 1,
                                      torch.device("cpu"))
