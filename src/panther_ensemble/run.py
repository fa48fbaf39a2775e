"""The predict command end to end: find inputs and spec, check everything, load once, predict each file."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np
import torch

from .budget import DEFAULT_BUDGET_SECONDS, Deadline
from .errors import PantherError
from .io import check_image, check_writable, find_inputs, output_path, read_image, write_mask
from .manifest import MANIFEST_NAME, verify_manifest
from .pipeline import Ensemble
from .spec import (
    BACKENDS,
    EnsembleSpec,
    check_against_weights,
    find_spec,
    load_spec,
    member_files,
    resolve_weights_root,
    spec_dirs,
)
from .timing import StageTimer, log


def select_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise PantherError("--device cuda: no CUDA device is available")
    if name == "cuda":
        torch.backends.cudnn.benchmark = True  # the fastest convolution per shape, as nnU-Net's predictor sets it
    return torch.device(name)


def peak_memory() -> str:
    host = f"host {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GiB"
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return f"{host}, device {torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GiB"
    return host


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux, as on GC); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(file: Path, needed: int, available: int | None = None) -> None:
    available = available_memory_bytes() if available is None else available
    if available is not None and needed > available:
        raise PantherError(f"{file}: predicting it would need about {needed / 1024 ** 3:.1f} GiB of memory after "
                           f"resampling to the models' spacing, but only {available / 1024 ** 3:.1f} GiB are "
                           "available (is the image's size or spacing wrong?)")


def tumor_volume_ml(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    return float(mask.sum()) * float(np.prod(spacing)) / 1000.0


def budget_seconds(cli_budget: float | None, spec_budget: float | None) -> float | None:
    """--budget, else the spec's, else GC's default; 0 means no limit."""
    if cli_budget is not None and cli_budget < 0:
        raise PantherError(f"--budget must not be negative, got {cli_budget}")
    seconds = cli_budget if cli_budget is not None else spec_budget or DEFAULT_BUDGET_SECONDS
    return None if seconds == 0 else seconds


def choose_backend(cli_backend: str | None, spec: EnsembleSpec, mode: str) -> str:
    """--backend, else the spec's, else torch; exact mode is nnU-Net's own torch forward."""
    backend = cli_backend or spec.backend or "torch"
    if backend not in BACKENDS:
        raise PantherError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "onnxruntime" and mode == "exact":
        raise PantherError("--mode exact runs stock nnU-Net's torch forward; the onnxruntime backend needs "
                           "--mode fast")
    return backend


def predict_folder(input_dir: Path, output_dir: Path, ensemble: Path | None = None, weights: Path | None = None,
                   device: str = "auto", budget: float | None = None, mode: str = "fast",
                   backend: str | None = None, timer: StageTimer | None = None) -> list[Path]:
    """Predict every image of the input socket; returns the written mask paths."""
    timer = timer or StageTimer()
    inputs = find_inputs(input_dir)
    spec = load_spec(ensemble) if ensemble is not None else find_spec(inputs.socket, spec_dirs())
    if spec.input_socket != inputs.socket:
        raise PantherError(f"{spec.path}: is for input socket '{spec.input_socket}', but the input is "
                           f"'{inputs.socket}'")
    backend = choose_backend(backend, spec, mode)
    weights_root = resolve_weights_root(spec, weights)
    check_against_weights(spec, weights_root, backend)
    with timer.stage("verify"):
        if verify_manifest(weights_root, member_files(spec, weights_root, backend)):
            log(f"weights match {weights_root / MANIFEST_NAME}")
    headers = {file: check_image(file) for file in inputs.files}
    check_writable(output_path(output_dir, spec.output_socket, inputs.files[0]).parent)
    torch_device = select_device(device)
    seconds = budget_seconds(budget, spec.budget_seconds)
    log(f"ensemble {spec.path} ({len(spec.members)} members) for {inputs.socket}: {len(inputs.files)} image(s)")

    model = Ensemble.load(spec, weights_root, torch_device, timer, mode, backend)
    for file, (shape, spacing) in headers.items():
        check_memory(file, model.peak_bytes(shape, spacing))
    written = []
    for index, file in enumerate(inputs.files):
        # one budget per case; the first one also pays for loading the models
        deadline = Deadline(seconds, start=timer.started if index == 0 else None)
        with timer.stage("read"):
            image = read_image(file)
        if image.non_finite:
            print(f"warning: {file}: {image.non_finite} NaN/Inf voxels were set to 0", file=sys.stderr, flush=True)
        spacing = tuple(round(s, 3) for s in image.spacing)
        log(f"{file.name}: {image.array.shape[::-1]} voxels (x, y, z) at {spacing} mm, read in "
            f"{timer.last['read']:.1f}s")
        mask = model.predict(image, timer, deadline)
        target = output_path(output_dir, spec.output_socket, file)
        with timer.stage("write"):
            write_mask(mask, image, target)
        log(f"wrote {target}: tumor {tumor_volume_ml(mask, image.spacing):.2f} mL ({int(mask.sum())} voxels) "
            f"in {timer.last['write']:.1f}s")
        used = len(spec.members) - len(model.dropped)
        budget_note = "no budget" if seconds is None else f"budget left {deadline.left():.1f}s of {seconds:.0f}s"
        log(f"summary {file.name}: {used}/{len(spec.members)} members used, {len(model.dropped)} dropped"
            f"{' (' + ', '.join(m.spec.name for m in model.dropped) + ')' if model.dropped else ''}; "
            f"{budget_note}; peak memory {peak_memory()}")
        written.append(target)
    log(timer.summary())
    return written
