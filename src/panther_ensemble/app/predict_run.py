"""The predict command end to end: find inputs and spec, check everything, load once, predict each file."""

from __future__ import annotations

import math
import os
import resource
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..core.errors import PantherError
from ..core.log import StageTimer, log, warn
from ..engine.deadline import DEFAULT_BUDGET_SECONDS, Deadline
from ..engine.devices import HOST, select_device
from ..engine.ensemble import Ensemble, Placement
from ..engine.image import Header, check_image, read_image, write_mask
from ..engine.loading import Verify
from ..engine.members import Member
from ..engine.memory import check_host_memory, device_free_bytes, estimate_device, host_bytes, plan_device
from ..engine.spec import BACKENDS, EnsembleSpec, check_against_weights, load_spec, member_files, network_files
from .gc_io import check_writable, find_inputs, output_path
from .locations import find_spec, resolve_weights_root, spec_dirs
from .manifest import Manifest

CUDA_GRAPHS_VARIABLE = "PANTHER_CUDA_GRAPHS"


def peak_memory() -> str:
    host = f"host {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GiB"
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # reserved: the allocator's cache and graph pools
        return f"{host}, device {torch.cuda.max_memory_reserved() / 1024 ** 3:.2f} GiB reserved"
    return host


def weights_verifier(spec: EnsembleSpec, weights_root: Path, backend: str) -> Verify | None:
    """With a manifest in the weights root: every file the ensemble uses must be listed (checked now), plans and
    dataset files match now, and each member's network files are hashed by the loader as it reads them."""
    manifest = Manifest.of(weights_root)
    if manifest is None:
        return None
    manifest.check_listed(member_files(spec, weights_root, backend))
    for member in spec.members:
        for name in ("plans.json", "dataset.json"):
            manifest.verify(weights_root / member.model / name)
    log(f"weights listed in {manifest.path}; each network file is verified as it loads")

    def verify(member: Member) -> None:
        for file in network_files(member.spec, weights_root, backend):
            manifest.verify(file)

    return verify


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
        verify = weights_verifier(spec, weights_root, backend)
    headers = {file: check_image(file) for file in inputs.files}
    check_writable(output_path(output_dir, spec.output_socket, inputs.files[0]).parent)
    torch_device = select_device(device)
    seconds = budget_seconds(budget, spec.budget_seconds)
    log(f"ensemble {spec.path} ({len(spec.members)} members) for {inputs.socket}: {len(inputs.files)} image(s)")

    def placement(members: list[Member]) -> Placement:
        """On a device, what fits it for the largest image; then every image must fit the host."""
        chosen = Placement()
        if torch_device != HOST:
            largest = max(headers.values(), key=lambda h: math.prod(h.shape_zyx))
            chosen = plan_device(estimate_device(members, largest.shape_zyx, largest.spacing_zyx),
                                 device_free_bytes(torch_device))
            if os.environ.get(CUDA_GRAPHS_VARIABLE, "on") == "off":  # a diagnostic switch (benchmarks/t4_check.py)
                chosen = replace(chosen, capture_graphs=False)
                log(f"{CUDA_GRAPHS_VARIABLE}=off: no CUDA graph capture")
        for file, header in headers.items():
            check_host_memory(file, host_needs(members, header, mode, torch_device, chosen))
        return chosen

    model = Ensemble.load(spec, weights_root, torch_device, timer, mode, backend, placement, verify)
    try:
        return [_predict_file(model, file, output_dir, spec, timer, seconds, index) for index, file in
                enumerate(inputs.files)]
    finally:
        model.close()
        log(timer.summary())


def host_needs(members: list[Member], header: Header, mode: str, device: torch.device, placement: Placement) -> int:
    on_host = device.type == "cpu" or not placement.input_grid_on_device
    return host_bytes(members, header.shape_zyx, header.spacing_zyx, header.bytes_per_voxel, mode, device, on_host)


def _predict_file(model: Ensemble, file: Path, output_dir: Path, spec: EnsembleSpec, timer: StageTimer,
                  seconds: float | None, index: int) -> Path:
    # one budget per case; the first one also pays for loading the models
    deadline = Deadline(seconds, start=timer.started if index == 0 else None)
    with timer.stage("read"):
        image = read_image(file)
    if image.non_finite:
        warn(f"{file}: {image.non_finite} NaN/Inf voxels were set to 0")
    spacing = tuple(round(s, 3) for s in image.spacing)
    log(f"{file.name}: {image.shape[::-1]} voxels (x, y, z) at {spacing} mm, read in "
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
    return target
