"""The predict command end to end: find inputs and spec, check everything, load once, predict each file."""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..core.clock import Origin, TaskOrigin, this_call
from ..core.errors import PantherError, finite_number
from ..core.log import StageTimer, log, warn
from ..engine.deadline import GC_TIME_LIMIT_SECONDS, Deadline, TaskClock, resolve_budget
from ..engine.devices import HOST, select_device
from ..engine.ensemble import Ensemble, Placement
from ..engine.host_limits import available_memory
from ..engine.image import Header, write_mask
from ..engine.loading import Verify
from ..engine.members import Member
from ..engine.memory import check_host_memory, device_free_bytes, estimate_device, host_bytes, plan_device
from ..engine.openvino_network import check_device
from ..engine.spec import BACKENDS, EnsembleSpec, check_against_weights, load_spec, member_files, network_files
from .cases import CaseBook
from .cohort import Records, existing_mask_problem, resolve_shard
from .forward_choice import choose_forwards
from .gc_io import check_writable, find_inputs, input_header, output_path
from .locations import find_spec, resolve_weights_root, spec_dirs
from .manifest import Manifest
from .read_ahead import ReadAhead

CUDA_GRAPHS_VARIABLE = "PANTHER_CUDA_GRAPHS"


def peak_memory() -> str:
    host = f"host {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GiB"
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # reserved: the allocator's cache and graph pools
        return f"{host}, device {torch.cuda.max_memory_reserved() / 1024 ** 3:.2f} GiB reserved"
    return host


def weights_verifier(spec: EnsembleSpec, weights_root: Path, backend: str) -> Verify | None:
    """With a manifest in the weights root: every file the ensemble uses with `backend` must be listed (checked now),
    plans and dataset files match now, and each member's network files (of the backend it runs with) are hashed by
    the loader as it reads them."""
    manifest = Manifest.of(weights_root)
    if manifest is None:
        return None
    manifest.check_listed(member_files(spec, weights_root, backend))
    for member in spec.members:
        for name in ("plans.json", "dataset.json"):
            manifest.verify(weights_root / member.model / name)
    log(f"weights listed in {manifest.path}; each network file is verified as it loads")

    def verify(member: Member) -> None:
        for file in network_files(member.spec, weights_root, member.backend):
            manifest.verify(file)

    return verify


def tumor_volume_ml(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    return float(mask.sum()) * float(np.prod(spacing)) / 1000.0


def log_deadline(clock: TaskClock, deadline: Deadline, started: float, ready: float | None = None) -> None:
    """What a task's deadline counts from, and what of it start-up, loading and the wait for the call took."""
    if deadline.seconds is None:
        log(f"task {clock.tasks}: no budget")
        return
    spent = [] if started - deadline.start < 0.05 else [f"{started - deadline.start:.1f} s before the task"]
    if ready is not None and deadline.start <= ready <= started:
        spent = [f"start-up and loading {ready - deadline.start:.1f} s",
                 f"the wait for the call {started - ready:.1f} s"]
    log(f"task {clock.tasks}: budget {deadline.seconds:g} s of the {clock.time_limit:g} s time limit, counted from "
        f"{clock.counted_from(deadline, started)}{' (' + ', '.join(spent) + ')' if spent else ''}; "
        f"{deadline.left():.1f} s left")


def task_clock(job: Origin, spec: EnsembleSpec, budget: float | None, time_limit: float | None) -> TaskClock:
    """GC's clock for the tasks of a job with this spec: the budget per task is --budget, else the spec's
    budget_seconds, else the time limit (--time-limit, else the spec's time_limit_seconds, else GC's 300 s) less the
    safety margin; 0: no limit (docs/contracts.md, the deadline)."""
    if budget is not None:
        finite_number(budget, "--budget", zero=True)
    if time_limit is not None:
        finite_number(time_limit, "--time-limit")
    limit = time_limit or spec.time_limit_seconds or GC_TIME_LIMIT_SECONDS
    given = budget if budget is not None else spec.budget_seconds
    return TaskClock(job, resolve_budget(given, limit), limit)


def choose_backend(cli_backend: str | None, spec: EnsembleSpec, mode: str) -> str | None:
    """--backend, else the spec's, else None: each member's on a CPU by measurement (app.forward_choice), torch
    elsewhere; exact mode is nnU-Net's own torch forward."""
    backend = cli_backend or spec.backend or (None if mode == "fast" else "torch")
    if backend is None:
        return None
    if backend not in BACKENDS:
        raise PantherError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend != "torch" and mode == "exact":
        raise PantherError(f"--mode exact runs stock nnU-Net's torch forward; the {backend} backend needs "
                           "--mode fast")
    return backend


def check_socket(spec: EnsembleSpec, socket: str | None) -> None:
    """The spec is for the input's socket (a flat folder of images names none: any spec)."""
    if socket is not None and spec.input_socket != socket:
        raise PantherError(f"{spec.path}: is for input socket '{spec.input_socket}', but the input is '{socket}'")


@dataclass(frozen=True)
class Prepared:
    """A spec checked against its weights, ready to load: the backend (None: chosen per member on a CPU,
    app.forward_choice), the weights root, the manifest's check."""

    spec: EnsembleSpec
    backend: str | None
    weights_root: Path
    verify: Verify | None

    def load(self, device: torch.device, timer: StageTimer, mode: str,
             placement: Callable[[list[Member]], Placement]) -> Ensemble:
        """The ensemble loading (Ensemble.load), each member's forward chosen before `placement` plans for it."""
        if self.backend == "openvino":  # refused before anything loads
            check_device(device)

        def chosen_then_placed(members: list[Member]) -> Placement:
            if self.backend is None:
                choose_forwards(members, device, self.verify)
            return placement(members)

        return Ensemble.load(self.spec, self.weights_root, device, timer, mode, self.backend or "torch",
                             chosen_then_placed, self.verify)


def prepare(spec: EnsembleSpec, weights: Path | None, backend: str | None, mode: str, timer: StageTimer) -> Prepared:
    """Everything about the spec that can be checked before loading: backend, weights root, members' folders, the
    manifest's listing."""
    backend = choose_backend(backend, spec, mode)
    weights_root = resolve_weights_root(spec, weights)
    check_against_weights(spec, weights_root, backend or "torch")
    with timer.stage("verify"):
        verify = weights_verifier(spec, weights_root, backend or "torch")
    return Prepared(spec, backend, weights_root, verify)


def log_host_memory() -> None:
    room = available_memory()
    if room is not None:
        log(f"host memory: {room.bytes / 2 ** 30:.2f} GiB available ({room.what})")


def device_placement(members: list[Member], device: torch.device, shape_zyx: tuple[int, ...],
                     spacing_zyx: tuple[float, ...]) -> Placement:
    """On a GPU, what fits its free memory for a case of this geometry (memory.plan_device); on the host, all."""
    if device == HOST:
        return Placement()
    estimate, free = estimate_device(members, shape_zyx, spacing_zyx), device_free_bytes(device)
    chosen = plan_device(estimate, free)
    if estimate.arenas:  # ONNX Runtime's sessions: capped at what the plan counts, or refused where none fits
        if estimate.total(chosen) > free:
            raise PantherError(f"the onnxruntime backend would need about {estimate.total(chosen) / 2 ** 30:.1f} GiB "
                               f"on {device} (each member's session keeps a memory arena of its own), but "
                               f"{free / 2 ** 30:.1f} GiB are free; use --backend torch")
        arenas = iter(estimate.arenas)
        for member in members:
            if member.backend == "onnxruntime":
                member.arena_bytes = next(arenas)
    if os.environ.get(CUDA_GRAPHS_VARIABLE, "on") == "off":  # a diagnostic switch (benchmarks/t4_check.py)
        chosen = replace(chosen, capture_graphs=False)
        log(f"{CUDA_GRAPHS_VARIABLE}=off: no CUDA graph capture")
    return chosen


@dataclass(frozen=True)
class CohortOptions:
    """How a run takes part in a cohort (app.cohort): its shard, resuming, its records."""

    shard: str | None = None  # --shard I/N
    shard_count: int | None = None  # --shard-count, with an index from the engine
    skip_existing: bool = False
    records: Path | None = None  # with records, each case stands alone: a failure is recorded, the rest goes on


def predict_folder(input_dir: Path, output_dir: Path, ensemble: Path | None = None, weights: Path | None = None,
                   device: str = "auto", budget: float | None = None, mode: str = "fast",
                   backend: str | None = None, timer: StageTimer | None = None,
                   cohort: CohortOptions | None = None, time_limit: float | None = None,
                   origin: TaskOrigin | None = None) -> list[Path]:
    """Predict every image of the input socket (of this shard); returns the written mask paths. The first case's
    budget counts from `origin` (core.clock.exec_task for a process GC started; by default this call), each later
    case's from its own start."""
    timer = timer or StageTimer()
    origin = origin or this_call()
    cohort = cohort or CohortOptions()
    inputs = find_inputs(input_dir)
    shard = resolve_shard(cohort.shard, cohort.shard_count)
    files = shard.cases(inputs.files) if shard else inputs.files
    if shard:
        log(f"shard {shard} (from {shard.source}): {len(files)} of {len(inputs.files)} case(s)")
    if not files:
        log(f"nothing to do: shard {shard} has no cases ({len(inputs.files)} in all)")
        return []
    book = CaseBook(files, Records(cohort.records, shard) if cohort.records else None)
    with book.open():  # a stop from here on records every case not yet ended
        try:
            return _predict_cases(inputs.socket, files, inputs.root, output_dir, ensemble, weights, device,
                                  (budget, time_limit, origin), mode, backend, timer, cohort, book)
        except Exception as e:  # a failure of the whole run (spec, weights, device): every open case its record
            book.fail_the_rest(e)
            raise


def _predict_cases(socket: str | None, files: list[Path], root: Path, output_dir: Path, ensemble: Path | None,
                   weights: Path | None,
                   device: str, timing: tuple[float | None, float | None, TaskOrigin], mode: str,
                   backend: str | None, timer: StageTimer, cohort: CohortOptions, book: CaseBook) -> list[Path]:
    spec = load_spec(ensemble) if ensemble is not None else find_spec(socket, spec_dirs())
    check_socket(spec, socket)
    budget, time_limit, origin = timing
    clock = task_clock(origin.job, spec, budget, time_limit)
    prepared = prepare(spec, weights, backend, mode, timer)
    headers = {}
    for file in files:
        ok, header = book.check(file, input_header, file, root)
        if ok:
            headers[file] = header
    if cohort.skip_existing:
        headers = {file: header for file, header in headers.items() if not _finished(file, header, output_dir, spec,
                                                                                    book)}
    if not headers:
        log("nothing to predict: every case's mask is there" if book.failed == 0 else "nothing left to predict")
        book.raise_failures()
        return []
    check_writable(output_path(output_dir, spec.output_socket, next(iter(headers))).parent)
    torch_device = select_device(device)
    log(f"ensemble {spec.path} ({len(spec.members)} members) for {spec.input_socket}: {len(headers)} image(s)")
    log_host_memory()

    needs: dict[Path, int] = {}  # each case's host memory (the placement's check), for reading the next beside it

    def placement(members: list[Member]) -> Placement:
        """On a device, what fits it for the largest image; then every image must fit the host."""
        largest = max(headers.values(), key=lambda h: math.prod(h.shape_zyx))
        chosen = device_placement(members, torch_device, largest.shape_zyx, largest.spacing_zyx)
        for file, header in list(headers.items()):
            needs[file] = host_needs(members, header, mode, torch_device, chosen)
            ok, _ = book.check(file, check_host_memory, file, needs[file])
            if not ok:
                del headers[file]
        return chosen

    model = prepared.load(torch_device, timer, mode, placement)
    written, reader = [], ReadAhead(model, [(file, header, needs[file]) for file, header in headers.items()])
    if len(headers) > 1:
        log(f"read-ahead: {reader.describe()}")
    try:
        for index, file in enumerate(headers):
            # one budget per case; the first one's counts from the task's start on GC's clock (loading included)
            deadline = clock.next_task(origin.task.at, origin.number) if index == 0 else Deadline(clock.budget)
            if index == 0:
                log_deadline(clock, deadline, origin.task.at)
            ok, done = book.attempt(file, predict_case, model, file, output_dir, timer, deadline, reader)
            if ok:
                target, volume = done
                written.append(target)
                book.ok(file, output=str(target), members_used=len(spec.members) - len(model.dropped),
                        members_dropped=[m.spec.name for m in model.dropped], tumor_ml=round(volume, 3))
    finally:
        model.close()
        log(timer.summary())
    book.raise_failures()
    return written


def _finished(file: Path, header: Header, output_dir: Path, spec: EnsembleSpec, book: CaseBook) -> bool:
    """--skip-existing: whether the case's mask is there and valid (then it is skipped, and recorded so)."""
    target = output_path(output_dir, spec.output_socket, file)
    problem = existing_mask_problem(target, header)
    if problem is None:
        log(f"skipping {file.name}: {target} is a finished mask")
        book.skipped(file, output=str(target))
        return True
    if problem != "missing":
        log(f"{target}: {problem}: predicting it again")
    return False


def host_needs(members: list[Member], header: Header, mode: str, device: torch.device, placement: Placement,
               networks_loaded: bool = False) -> int:
    """The host memory a case needs beyond what the process holds; `networks_loaded`: the networks are held already
    (a server's), so the room measured now is what is left beside them."""
    on_host = device.type == "cpu" or not placement.input_grid_on_device
    return host_bytes(members, header.shape_zyx, header.spacing_zyx, header.bytes_per_voxel, mode, device, on_host,
                      networks_loaded)


def predict_case(model: Ensemble, file: Path, output_dir: Path, timer: StageTimer, deadline: Deadline,
                 reader: ReadAhead | None = None) -> tuple[Path, float]:
    """The case's mask written within its deadline (its image read now, or taken from `reader` where it was read
    ahead); returns its path and the tumor volume in mL."""
    spec = model.spec
    case = (reader or ReadAhead(model)).take(file, timer)
    image = case.image
    if image.non_finite:
        warn(f"{file}: {image.non_finite} NaN/Inf voxels were set to 0")
    spacing = tuple(round(s, 3) for s in image.spacing)
    log(f"{file.name}: {image.shape[::-1]} voxels (x, y, z) at {spacing} mm, {case.describe()}")
    mask = model.predict(image, timer, deadline, case.ahead)
    target = output_path(output_dir, spec.output_socket, file)
    with timer.stage("write"):
        write_mask(mask, image, target)
    model.final_stage.record(mask.size, timer.last["combine"] + timer.last["write"])
    volume = tumor_volume_ml(mask, image.spacing)
    log(f"wrote {target}: tumor {volume:.2f} mL ({int(mask.sum())} voxels) in {timer.last['write']:.1f}s")
    used = len(spec.members) - len(model.dropped)
    seconds = deadline.seconds
    budget_note = "no budget" if seconds is None else f"budget left {deadline.left():.1f}s of {seconds:.0f}s"
    removed = "voxels removed" in (model.postprocessing_note or "")
    empty = "" if mask.any() else "; the mask is EMPTY: " + ("post-processing removed every tumor voxel" if removed
                                                             else "no member found tumor") + \
        " (PANTHER scores that as the worst case)"
    if model.postprocessing_note:
        empty = f"; post-processing: {model.postprocessing_note}{empty}"
    log(f"summary {file.name}: {used}/{len(spec.members)} members used, {len(model.dropped)} dropped"
        f"{' (' + ', '.join(model.labels[m.id] for m in model.dropped) + ')' if model.dropped else ''}; "
        f"{budget_note}; peak memory {peak_memory()}{empty}")
    return target, volume
