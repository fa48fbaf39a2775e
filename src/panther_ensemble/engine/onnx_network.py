"""A member exported to ONNX, run by ONNX Runtime where predict runs a torch network: tiles in, logits out.

The session is bound to its device when it is made: the CPU provider on a CPU; on CUDA, TensorRT where its
libraries are installed (fp16, engines cached under $PANTHER_TRT_CACHE), then the CUDA provider. On CUDA
the tiles and logits stay on the device (I/O binding to torch's memory), so the sliding window is unchanged.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np
import torch

from ..core.errors import PantherError

INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_MANIFEST = "onnx_manifest.json"  # export-onnx's record of its members, at the weights root
TRT_CACHE_DEFAULT = "/tmp/panther-trt-cache"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise PantherError("the onnxruntime backend needs ONNX Runtime: pip install 'panther-ensemble[onnx]' "
                           "(onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def _tensorrt_installed() -> bool:
    """onnxruntime-gpu lists the TensorRT provider whether or not TensorRT itself is there to load."""
    for name in ("libnvinfer.so.10", "libnvinfer.so.8"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def providers(device: torch.device, arena_bytes: int | None = None) -> list:
    """Execution providers for the device, fastest first. On CUDA each session keeps a memory arena of its own,
    which grows as it likes unless capped: `arena_bytes` caps it (the device plan counts it), grown only by what a
    run asks for."""
    ort = import_onnxruntime()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise PantherError(f"the onnxruntime backend on {device}: this ONNX Runtime has no CUDA provider (it has "
                           f"{', '.join(available)}); install onnxruntime-gpu, or use --device cpu")
    # the CUDA provider's CUDA and cuDNN libraries, from the nvidia-*-cu12 packages torch came with (no-op where
    # torch loaded them already); the image's build checks that they load (docker/image_check.py)
    ort.preload_dlls(msvc=False)
    index = device.index or 0
    chosen: list = []
    if "TensorrtExecutionProvider" in available and _tensorrt_installed():
        cache = os.environ.get("PANTHER_TRT_CACHE", TRT_CACHE_DEFAULT)
        os.makedirs(cache, exist_ok=True)
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache, "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}))
    cuda = {"device_id": index, "arena_extend_strategy": "kSameAsRequested"}
    if arena_bytes:
        cuda["gpu_mem_limit"] = int(arena_bytes)
    return [*chosen, ("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]


def relative_difference(network, reference: torch.nn.Module, tiles: torch.Tensor) -> float:
    """The largest difference of `network`'s logits from `reference`'s on these tiles, relative to the largest logit
    (at least 1): export-onnx's check of an export, and the forward choice's of a backend."""
    with torch.inference_mode():
        expected = reference(tiles)
        return float((network(tiles) - expected).abs().max()) / max(1.0, float(expected.abs().max()))


_shared_cpu_arena = threading.Lock()
_shared_cpu_arena_registered = False


def share_one_cpu_arena(ort) -> None:
    """One memory arena for every CPU session of the process. Each session's own arena keeps what its largest run
    allocated: six 96^3 members held 1477 MiB after their forwards, one shared arena 269 MiB, at the same speed
    (2026-12-07); predict runs one member at a time, so one arena is enough."""
    global _shared_cpu_arena_registered
    with _shared_cpu_arena:
        if not _shared_cpu_arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ONNX Runtime's defaults
            _shared_cpu_arena_registered = True


class OnnxNetwork:
    """Called like the member's torch network on a (tiles, channels, *patch) float tensor."""

    def __init__(self, path: Path, device: torch.device, arena_bytes: int | None = None) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only: GC shows anything on stderr as a warning
        if device.type == "cpu":
            share_one_cpu_arena(ort)
            options.add_session_config_entry("session.use_env_allocators", "1")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers(device, arena_bytes))
        except PantherError:
            raise
        except Exception as e:  # ONNX Runtime raises its own exception types for unreadable models
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise PantherError(f"{path}: not a loadable ONNX model ({reason})") from None
        self.path, self.device = path, device
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise PantherError(f"{path}: not a member written by export-onnx (inputs {[i.name for i in inputs]}, "
                               f"outputs {[o.name for o in outputs]}; expected ['{INPUT_NAME}'] and "
                               f"['{OUTPUT_NAME}'])")
        self.input_shape = inputs[0].shape  # (batch, channels, *patch); batch is symbolic
        self.num_classes = outputs[0].shape[1]

    def to(self, device: torch.device) -> OnnxNetwork:
        """The session's device is fixed when it is made; tiles arrive there already."""
        return self

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        try:
            return self._run(tiles.float().contiguous())
        except Exception as e:  # ONNX Runtime's own exception types derive from Exception only
            if "Failed to allocate memory" in str(e) or "out of memory" in str(e).lower():
                # as torch's: predict's fallback (fewer networks at once, host accumulation) takes it from here
                raise torch.OutOfMemoryError(f"ONNX Runtime: {str(e).splitlines()[0][:200]}") from e
            raise

    def _run(self, tiles: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: tiles.numpy()})[0])
        logits = torch.empty((tiles.shape[0], self.num_classes, *tiles.shape[2:]), device=tiles.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(tiles.shape), tiles.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, np.float32, tuple(logits.shape), logits.data_ptr())
        torch.cuda.current_stream(tiles.device).synchronize()  # the tile is written before ONNX Runtime reads it
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the logits are written before torch's stream reads them
        return logits
