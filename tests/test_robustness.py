"""Odd inputs that must still work, inputs that must fail early, and out-of-memory fallbacks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import read_mask

import panther_ensemble.app.predict_run as run
import panther_ensemble.engine.image_resampling as resample
import panther_ensemble.engine.input_grid as input_grid
import panther_ensemble.engine.loading as loading
import panther_ensemble.engine.sliding_window as predict
from panther_ensemble.app.predict_run import predict_folder
from panther_ensemble.core.errors import AlreadyReported, PantherError
from panther_ensemble.engine import host_limits
from panther_ensemble.engine.memory import check_host_memory

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


def test_image_too_large_after_resampling_fails_before_allocating(workspace, tmp_path, capsys):
    # a header with metres where millimetres were meant: 8x24x28 voxels of 0.5 m become ~10^11 at 1 mm
    input_dir = write_input(tmp_path, np.ones((8, 24, 28), np.int16), spacing=(500.0, 500.0, 500.0))
    with pytest.raises(AlreadyReported):  # its line printed as the case's
        predict_folder(input_dir, tmp_path / "out", ensemble=workspace.t1_spec, weights=workspace.weights,
                       device="cpu", budget=0)
    assert re.search(r"would need about .* GiB of memory at the models' spacing", capsys.readouterr().err)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_check_host_memory():
    check_host_memory(__file__, 10, available=(100, "x"))
    with pytest.raises(PantherError, match=r"only 0.0 GiB are available \(the limit\)"):
        check_host_memory(__file__, 10 ** 9, available=(100, "the limit"))


def test_case_too_large_for_the_containers_memory_limit_fails_cleanly(workspace, tmp_path, monkeypatch, capsys):
    """GC's container has 16 GiB on a larger host: the cgroup limit, not MemAvailable, decides (cgroup v2 files)."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{300 * 2 ** 20}\n")
    (cgroup / "memory.current").write_text(f"{290 * 2 ** 20}\n")
    (cgroup / "memory.stat").write_text(f"anon 1\ninactive_file {2 ** 20}\n")
    monkeypatch.setattr(host_limits, "CGROUP_ROOT", cgroup)
    monkeypatch.setattr(host_limits, "PROC_SELF", tmp_path / "no-proc")  # the container's own cgroup: the mount
    input_dir = write_input(tmp_path, np.ones((40, 200, 200), np.int16), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(AlreadyReported):
        predict_folder(input_dir, tmp_path / "out", ensemble=workspace.t1_spec, weights=workspace.weights,
                       device="cpu", budget=0)
    assert re.search(r"would need about .* only 0.0 GiB are available \(the cgroup memory limit \(.*memory.max: "
                     r"0.3 GiB\)\)", capsys.readouterr().err)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


# A stand-in for a GPU, which these tests cannot have: the CPU under another name. The run treats it as a device
# (steps that run out of memory there fall back to the host); its tensors are ordinary CPU tensors.
STAND_IN_DEVICE = torch.device("cpu", 0)


def out_of_memory_once(original, on_device, error=lambda: torch.OutOfMemoryError("injected")):
    """original, except that its first call with on_device(*args) true raises `error()` (torch's OutOfMemoryError)."""
    calls = []

    def injected(*args, **kwargs):
        if on_device(*args, **kwargs) and not calls:
            calls.append(args)
            raise error()
        return original(*args, **kwargs)

    injected.calls = calls
    return injected


STEPS = {  # step: (object, attribute, whether a call is the device's, the warning's words)
    "image resampling": (resample, "resample_image", lambda *a, device, **k: device == STAND_IN_DEVICE,
                         "while resampling the image"),
    "sliding window": (predict, "_predict", lambda *a: a[5] == STAND_IN_DEVICE, "in the sliding window"),
    "export to the input grid": (input_grid.SlabResampler, "slab", lambda self, *a: True,
                                 "while bringing a member to the input grid"),
    "sum allocation": (input_grid.ProbabilitySum, "_zeros", lambda self, *a: self.device == STAND_IN_DEVICE,
                       "while summing the members"),
    "argmax": (input_grid.ProbabilitySum, "_labels", lambda self, *a: self.device == STAND_IN_DEVICE,
               "while taking the argmax"),
    # on the loading thread: the network does not fit the device as it loads; its member runs on the host
    "network load": (loading, "load_network", lambda member, device: device == STAND_IN_DEVICE, "loading "),
}
# what cuDNN says when its workspace cannot be allocated: a plain RuntimeError, handled as torch's OutOfMemoryError
CUDNN_ALLOCATION = lambda: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")  # noqa: E731


@pytest.fixture(scope="module")
def mask_without_faults(workspace, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("no-faults")
    input_dir = write_input(tmp, np.random.default_rng(3).uniform(100, 900, (10, 30, 34)).astype(np.float32))
    written = predict_folder(input_dir, tmp / "out", ensemble=workspace.mixed_spec, weights=workspace.weights,
                             device="cpu", budget=0)
    return input_dir, read_mask(written[0])[0]


@pytest.mark.parametrize("kind", ["OutOfMemoryError", "cuDNN RuntimeError"])
@pytest.mark.parametrize("step", sorted(STEPS))
def test_device_out_of_memory_in_each_step_falls_back_to_the_host(workspace, tmp_path, monkeypatch, capsys,
                                                                  mask_without_faults, step, kind):
    """Out of device memory in any step on the device, that step runs on the host with one warning line, and the
    case completes with the same mask."""
    input_dir, expected = mask_without_faults
    owner, name, on_device, words = STEPS[step]
    injected = out_of_memory_once(getattr(owner, name), on_device,
                                  CUDNN_ALLOCATION if kind != "OutOfMemoryError" else lambda: torch.OutOfMemoryError(
                                      "injected"))
    monkeypatch.setattr(owner, name, injected)
    monkeypatch.setattr(run, "select_device", lambda requested: STAND_IN_DEVICE)
    monkeypatch.setattr(run, "device_free_bytes", lambda device: 2 ** 40)  # everything fits: nothing adapted
    written = predict_folder(input_dir, tmp_path / "out", ensemble=workspace.mixed_spec, weights=workspace.weights,
                             device="auto", budget=0)
    assert injected.calls, f"the {step} never ran on the device"
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: out of device memory {words}"), warnings
    np.testing.assert_array_equal(read_mask(written[0])[0], expected)


def test_out_of_memory_for_a_single_network_on_cpu_is_not_hidden(monkeypatch):
    monkeypatch.setattr(predict, "_predict", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(torch.OutOfMemoryError):
        predict.sliding_window_logits(torch.zeros(1, 8, 8, 8), torch.nn.Identity(), (8, 8, 8), 1,
                                      torch.device("cpu"))


def nan_weights_copy(workspace, tmp_path, member_index: int = 0):
    """A copy of the weights root where one member of the mixed spec has a NaN in its first convolution: its
    network really outputs NaN (nothing patched)."""
    import shutil

    from panther_ensemble.engine.spec import load_spec

    weights = tmp_path / "weights"
    shutil.copytree(workspace.weights, weights)
    (weights / "weights.sha256").unlink(missing_ok=True)
    member = load_spec(workspace.mixed_spec).members[member_index]
    path = member.checkpoint_path(weights)
    checkpoint = torch.load(path, weights_only=True)
    name = next(k for k, v in checkpoint["network_weights"].items() if v.ndim == 5)
    checkpoint["network_weights"][name][0, 0, 0, 0, 0] = float("nan")
    torch.save(checkpoint, path)
    return weights, member


def test_a_member_with_non_finite_logits_is_dropped_and_the_others_decide(workspace, tmp_path, capsys):
    input_dir = write_input(tmp_path, np.random.default_rng(3).uniform(100, 900, (10, 30, 34)).astype(np.float32))
    weights, member = nan_weights_copy(workspace, tmp_path)
    written = predict_folder(input_dir, tmp_path / "out", ensemble=workspace.mixed_spec, weights=weights,
                             device="cpu", budget=0)
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 1 and "NaN or Inf in its output on case.mha: dropped, the other members decide" in \
        warnings[0] and member.name in warnings[0], warnings
    assert read_mask(written[0])[0].shape == (10, 30, 34) and "2/3 members used, 1 dropped" in captured.out


def test_an_empty_mask_is_said_in_the_summary(workspace, tmp_path, capsys):
    """A constant image: the random members find nothing; the summary line says the mask is empty."""
    input_dir = write_input(tmp_path, np.zeros((8, 24, 28), np.float32))
    written = predict_folder(input_dir, tmp_path / "out", ensemble=workspace.t1_spec, weights=workspace.weights,
                             device="cpu", budget=0)
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("summary"))
    assert not read_mask(written[0])[0].any()
    assert "the mask is EMPTY: no member found tumor" in summary, summary


def test_every_member_non_finite_is_the_cases_one_line(workspace, tmp_path, monkeypatch, capsys):
    input_dir = write_input(tmp_path, np.random.default_rng(3).uniform(100, 900, (10, 30, 34)).astype(np.float32))
    monkeypatch.setattr(predict, "_predict", lambda *a: (_ for _ in ()).throw(predict.NonFiniteLogits("x")))
    with pytest.raises(AlreadyReported):
        predict_folder(input_dir, tmp_path / "out", ensemble=workspace.mixed_spec, weights=workspace.weights,
                       device="cpu", budget=0)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "every member's output held NaN or Inf; no mask" in errors[0]


def test_an_int64_image_predicts_as_its_int16_copy_and_is_held_as_float32(workspace, tmp_path):
    """8-byte integers become float32 when read (as nnU-Net's SimpleITKIO makes every image), 2-byte ones stay:
    the same voxel values give the same mask either way."""
    from panther_ensemble.engine.image import read_image

    values = np.random.default_rng(5).integers(1, 900, (10, 30, 34))
    masks = []
    for dtype in (np.int16, np.int64):
        input_dir = write_input(tmp_path / np.dtype(dtype).name, values.astype(dtype))
        image = read_image(next(input_dir.rglob("case.mha")))
        assert image.array.dtype == (np.int16 if dtype == np.int16 else np.float32)
        written = predict_folder(input_dir, tmp_path / np.dtype(dtype).name / "out", ensemble=workspace.t1_spec,
                                 weights=workspace.weights, device="cpu", budget=0, mode="exact")
        masks.append(read_mask(written[0])[0])
    np.testing.assert_array_equal(*masks)
