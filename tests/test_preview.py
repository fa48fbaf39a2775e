"""The PNG montage through the tumor."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from panther_ensemble.core.errors import PantherError
from panther_ensemble.tools.preview import display_window, tumor_slices, write_preview


def test_slices_span_the_tumor():
    mask = np.zeros((30, 8, 8), bool)
    mask[10:25, 3:5, 3:5] = True
    slices = tumor_slices([mask], 4)
    assert slices[0] == 10 and slices[-1] == 24 and len(slices) == 4
    assert tumor_slices([np.zeros((30, 8, 8), bool)], 4) == [15]  # nothing found: the middle slice


def test_display_window_ignores_background():
    image = np.zeros((4, 10, 10))
    image[1:3] = np.linspace(100, 5000, 200).reshape(2, 10, 10)
    low, high = display_window(image)
    assert 100 <= low < 200 and 4900 < high <= 5000


def write(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(image, str(path))
    return path


def test_cli_writes_png(tmp_path):
    write(tmp_path / "img.mha", np.random.default_rng(0).integers(0, 900, (12, 40, 50)).astype(np.int16))
    mask = np.zeros((12, 40, 50), np.uint8)
    mask[4:8, 10:20, 10:25] = 1
    write(tmp_path / "pred.mha", mask)
    write(tmp_path / "gt.mha", np.roll(mask, 2, axis=2))
    out = tmp_path / "review" / "case.png"
    run = subprocess.run([sys.executable, "-m", "panther_ensemble.cli", "preview", "--image", str(tmp_path / "img.mha"),
                          "--mask", str(tmp_path / "pred.mha"), "--gt", str(tmp_path / "gt.mha"), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_mask_of_another_size(tmp_path):
    write(tmp_path / "img.mha", np.zeros((12, 40, 50), np.int16))
    write(tmp_path / "pred.mha", np.zeros((12, 40, 51), np.uint8))
    with pytest.raises(PantherError, match="differs from the image's"):
        write_preview(tmp_path / "img.mha", tmp_path / "pred.mha", tmp_path / "x.png")


def test_the_ground_truths_tumor_label(tmp_path, monkeypatch):
    """PANTHER's annotations (1 pancreas, 2 tumor): with --tumor-label 2 the green contour is the tumor, not the
    pancreas; the mask is this product's (1 = tumor)."""
    import panther_ensemble.tools.preview as preview

    write(tmp_path / "img.mha", np.random.default_rng(0).integers(0, 900, (12, 40, 50)).astype(np.int16))
    tumor = np.zeros((12, 40, 50), bool)
    tumor[4:8, 10:20, 10:25] = True
    truth = np.where(tumor, 2, 1).astype(np.uint8)  # pancreas everywhere else
    write(tmp_path / "gt.mha", truth)
    write(tmp_path / "pred.mha", tumor.astype(np.uint8))
    drawn = []
    real = preview.tumor_slices
    monkeypatch.setattr(preview, "tumor_slices", lambda masks, count: drawn.append(masks) or real(masks, count))
    preview.write_preview(tmp_path / "img.mha", tmp_path / "pred.mha", tmp_path / "a.png", tmp_path / "gt.mha",
                          tumor_label=2)
    prediction, truth_drawn = drawn[0]
    assert np.array_equal(prediction, tumor) and np.array_equal(truth_drawn, tumor)
    run = subprocess.run([sys.executable, "-m", "panther_ensemble.cli", "preview", "--image", str(tmp_path / "img.mha"),
                          "--mask", str(tmp_path / "pred.mha"), "--gt", str(tmp_path / "gt.mha"), "--tumor-label", "2",
                          "--out", str(tmp_path / "b.png")], capture_output=True, text=True)
    assert run.returncode == 0 and (tmp_path / "b.png").is_file(), run.stderr
