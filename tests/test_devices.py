"""CUDA that does not start where a GPU is expected: one line that says why, never a silent CPU run."""

from __future__ import annotations

import pytest
import torch

from panther_ensemble.core.errors import PantherError
from panther_ensemble.engine import devices

DRIVER = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"


@pytest.fixture()
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture()
def cuda_build_without_driver(monkeypatch, tmp_path, no_cuda):
    """What torch's CUDA build says in a container started without GPUs."""
    def init():
        raise RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
                           "installed a driver from http://www.nvidia.com/Download/index.aspx")

    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_VERSION", tmp_path / "no-driver")


@pytest.mark.parametrize("visible, warned", [(None, False), ("void", False), ("none", False), ("all", True),
                                             ("GPU-3b1f", True)])
def test_auto_warns_only_where_a_gpu_is_expected(monkeypatch, capsys, cuda_build_without_driver, visible, warned):
    if visible is None:
        monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", visible)
    assert devices.select_device("auto") == devices.HOST
    err = capsys.readouterr().err.strip().splitlines()
    if not warned:
        assert err == []
        return
    assert len(err) == 1
    assert err[0].startswith(f"warning: a GPU is expected (NVIDIA_VISIBLE_DEVICES={visible}) but CUDA does not "
                             "start, running on the CPU: Found no NVIDIA driver on your system.")
    assert "torch" in err[0] and "for CUDA 12.6" in err[0] and "NVIDIA driver none found" in err[0]


def test_device_cuda_without_cuda_is_an_error(cuda_build_without_driver, monkeypatch, tmp_path):
    driver = tmp_path / "version"
    driver.write_text(DRIVER)
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_VERSION", driver)
    with pytest.raises(PantherError, match=r"^--device cuda: CUDA does not start: Found no NVIDIA driver .*for CUDA "
                                           r"12.6; NVIDIA driver 535.104.05\)$"):
        devices.select_device("cuda")


def test_cpu_build(monkeypatch, no_cuda):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert devices.cuda_failure() == f"this torch ({torch.__version__}) is a CPU-only build"


def test_cpu_is_never_questioned(monkeypatch, capsys, cuda_build_without_driver):
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")
    assert devices.select_device("cpu") == devices.HOST
    assert capsys.readouterr().err == ""
