"""A member exported to ONNX, run on a CPU by OpenVINO where predict runs a torch network: tiles in, logits out.

OpenVINO reads export-onnx's model itself (external weights included) and compiles it for this CPU in fp32 — its
CPU plugin would otherwise run bf16 where the CPU has it, which stock nnU-Net's fp32 forward on a CPU does not. One
compiled model per batch size, compiled when first asked for (the member's tiles per forward, and its last, smaller
forward's: padding that one to the full batch cost a third more arithmetic where six tiles went four at a time).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import PantherError
from .onnx_network import INPUT_NAME

# fp32 as stock nnU-Net on a CPU; threads as torch's; no pinning of threads to cores (a shared node's scheduler
# places them)
COMPILE_OPTIONS = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}


def check_device(device: torch.device) -> None:
    if device.type != "cpu":
        raise PantherError(f"the openvino backend runs on a CPU, not on {device}: use --device cpu, or the torch or "
                           "onnxruntime backend")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise PantherError("the openvino backend needs OpenVINO: pip install 'panther-ensemble[openvino]'") from None
    return openvino


class OpenVinoNetwork:
    """Called like the member's torch network on a (tiles, channels, *patch) float tensor, on the host."""

    def __init__(self, path: Path, device: torch.device, tiles: int | None = None) -> None:
        """`tiles`: compile for this batch size now (in the loader's thread, while another member runs), not at the
        first forward."""
        check_device(device)
        openvino = import_openvino()
        self.core = openvino.Core()
        try:
            self.model = self.core.read_model(str(path))
        except Exception as e:  # OpenVINO raises its own exception types for unreadable models
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise PantherError(f"{path}: not a loadable ONNX model ({reason})") from None
        self.path, self.device = path, device
        self.metadata = _metadata(self.model)
        inputs, outputs = self.model.inputs, self.model.outputs
        if len(inputs) != 1 or len(outputs) != 1 or INPUT_NAME not in inputs[0].get_names():
            raise PantherError(f"{path}: not a member written by export-onnx (inputs "
                               f"{[sorted(i.get_names()) for i in inputs]}, {len(outputs)} output(s))")
        shape = inputs[0].get_partial_shape()
        self.input_shape = ["batch", *(d.get_length() for d in list(shape)[1:])]
        self.num_classes = outputs[0].get_partial_shape()[1].get_length()
        self._compiled: dict[int, object] = {}
        if tiles:
            self._request(tiles)

    def to(self, device: torch.device) -> OpenVinoNetwork:
        return self

    def _request(self, tiles: int):
        """The infer request of the model compiled for batches of `tiles` tiles."""
        if tiles not in self._compiled:
            model = self.model.clone()
            model.reshape({INPUT_NAME: [tiles, *self.input_shape[1:]]})
            options = {**COMPILE_OPTIONS, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
            self._compiled[tiles] = self.core.compile_model(model, "CPU", options).create_infer_request()
        return self._compiled[tiles]

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        request = self._request(tiles.shape[0])
        try:
            request.infer({0: tiles.float().contiguous().numpy()})
        except RuntimeError as e:
            if "allocate" in str(e).lower():  # as torch's: predict's fallback takes it from here
                raise torch.OutOfMemoryError(f"OpenVINO: {str(e).splitlines()[0][:200]}") from e
            raise
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


def _metadata(model) -> dict[str, str]:
    """export-onnx's metadata_props, where OpenVINO's ONNX reader keeps them (its rt_info)."""
    try:
        info = model.get_rt_info()
        props = info["framework"] if "framework" in info else info  # noqa: SIM401 (an RTMap has no get)
        return {key: props[key].astype(str) for key in ("configuration", "panther_member") if key in props}
    except Exception:  # rt_info's layout differs between OpenVINO releases: the check is skipped, not the model
        return {}
