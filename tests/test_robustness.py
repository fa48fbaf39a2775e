"""Odd inputs that must still work, inputs that must fail early, and out-of-memory fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import read_mask

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


def test_device_out_of_memory_accumulates_on_the_host(monkeypatch, capsys):
    """Out of device memory, the network runs again with its logits accumulated on the host (the same result);
    the CPU stands in for the device, which this test cannot have, through the arguments _predict gets."""
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    data = torch.randn(1, 12, 20, 20)
    expected = predict.sliding_window_logits(data, network, (8, 16, 16), 3, torch.device("cpu"))
    original, calls = predict._predict, []

    def out_of_device_memory(data, network, patch, classes, device, results_device, *args):
        calls.append((device.type, results_device.type))
        if results_device.type != "cpu":
            raise torch.OutOfMemoryError("injected")
        return original(data, network, patch, classes, torch.device("cpu"), results_device, *args)

    monkeypatch.setattr(predict, "_predict", out_of_device_memory)
    logits = predict.sliding_window_logits(data, network, (8, 16, 16), 3, torch.device("cuda"))
    assert calls == [("cuda", "cuda"), ("cuda", "cpu")]
    assert "out of device memory: accumulating on the host" in capsys.readouterr().out
    assert logits.device.type == "cpu"
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_out_of_memory_for_a_single_network_on_cpu_is_not_hidden(monkeypatch):
    monkeypatch.setattr(predict, "_predict", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(torch.OutOfMemoryError):
        predict.sliding_window_logits(torch.zeros(1, 8, 8, 8), torch.nn.Identity(), (8, 8, 8), 1,
                                      torch.device("cpu"))
