"""The ensembles a server holds for Grand Challenge's invoke API, by input socket, and one task's prediction with them.

Which load at start-up, before the server says it is healthy: every spec of the first folder that holds any — GC's
model tarball (/opt/ml/model), else the app's ensemble/ — or only the sockets PANTHER_SOCKETS (or --socket) names,
or the one --ensemble names. A task for a socket that is not loaded loads its spec then (that time counts in the
task's budget) and keeps it. Each ensemble's networks and the run's fixed costs must fit the host's room when it
loads; a case's check then counts only what the case adds (the networks are held already).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.clock import Origin, now
from ..core.errors import PantherError
from ..core.log import StageTimer, log
from ..engine.deadline import Deadline
from ..engine.devices import select_device
from ..engine.ensemble import Ensemble, Placement
from ..engine.members import Member
from ..engine.memory import check_host_memory, check_networks_fit
from ..engine.spec import EnsembleSpec, load_spec
from .cases import CaseBook
from .gc_io import check_writable, find_inputs, input_header, output_path
from .invoke_server import TaskFailed
from .locations import spec_dirs, spec_origin, specs_by_socket
from .predict_run import device_placement, host_needs, log_deadline, log_host_memory, predict_case, prepare, task_clock

SOCKETS_VARIABLE = "PANTHER_SOCKETS"  # comma-separated input sockets to load at start-up
# Before any case is known, the device's placement is planned for a large PANTHER case (memory.plan_device); a
# larger case runs with it, any device step that then runs out of memory continuing on the host.
DESIGN_SHAPE_ZYX, DESIGN_SPACING_ZYX = (200, 512, 512), (1.5, 0.7, 0.7)


@dataclass(frozen=True)
class ServeOptions:
    input_dir: Path = Path("/input")
    output_dir: Path = Path("/output")
    ensemble: Path | None = None
    weights: Path | None = None
    device: str = "auto"
    budget: float | None = None
    mode: str = "fast"
    backend: str | None = None
    sockets: tuple[str, ...] = ()  # empty: PANTHER_SOCKETS, else every spec of the first folder holding any
    time_limit: float | None = None  # GC's limit per task (--time-limit); None: the spec's, else 300 s
    job: Origin | None = None  # when GC's clock for the job began (core.clock.job_start); None: the server's start


def sockets_from_environment() -> tuple[str, ...]:
    return tuple(s.strip() for s in os.environ.get(SOCKETS_VARIABLE, "").split(",") if s.strip())


class LoadedEnsembles:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.device = select_device(options.device)
        self.loaded: dict[str, Ensemble] = {}
        self.job = options.job or now("the server's start")
        self.tasks = 0  # the tasks of this job so far (TaskClock: the k-th counts from at most k - 1 limits in)
        self.ready: float | None = None  # when the ensembles loaded at start-up were ready

    def _specs_at_start(self) -> dict[str, EnsembleSpec]:
        if self.options.ensemble is not None:
            spec = load_spec(self.options.ensemble)
            return {spec.input_socket: spec}
        for folder in spec_dirs():
            specs = specs_by_socket([folder])
            if specs:
                return specs
        raise PantherError(f"no ensemble spec (*.toml) in {' or '.join(map(str, spec_dirs()))}")

    def load_at_start(self) -> None:
        """Load every ensemble the server starts with (a problem with any is the server's one error line)."""
        log_host_memory()
        specs = self._specs_at_start()
        sockets = self.options.sockets or sockets_from_environment() or tuple(specs)
        for socket in sockets:
            if socket not in specs:
                found = ", ".join(f"{s.path.name} ({s.input_socket})" for s in specs.values())
                raise PantherError(f"no ensemble spec for input socket '{socket}' to load at start-up; found {found}")
        for socket in sockets:
            log(f"spec {specs[socket].path} for {socket} ({spec_origin(specs[socket])})")
            self.loaded[socket] = self._load(specs[socket], StageTimer())
        self.ready = time.perf_counter()

    def _load(self, spec: EnsembleSpec, timer: StageTimer) -> Ensemble:
        prepared = prepare(spec, self.options.weights, self.options.backend, self.options.mode, timer)

        def placement(members: list[Member]) -> Placement:
            check_networks_fit(str(spec.path), members, self.device)
            return device_placement(members, self.device, DESIGN_SHAPE_ZYX, DESIGN_SPACING_ZYX)

        model = prepared.load(self.device, timer, self.options.mode, placement)
        try:
            with timer.stage("load"):
                model.wait_until_ready()
        except BaseException:
            model.close()
            raise
        log(f"{spec.input_socket}: {len(spec.members)} member(s) of {spec.path} ready on {self.device} in "
            f"{timer.elapsed():.1f}s")
        return model

    def predict(self, started: float) -> list[Path]:
        """One task, called at `started`: every image of the input folder's socket into the output folder, checked
        first. The first case's budget counts from the task's start on GC's clock (TaskClock: for the first task the
        job's start), each later case's from its own start."""
        options, timer = self.options, StageTimer()
        self.tasks += 1
        inputs = find_inputs(options.input_dir)
        if inputs.socket is None:
            raise PantherError(f"{options.input_dir}: images without inputs.json or images/<socket>/: a task names "
                               "its input socket")
        model = self.loaded.get(inputs.socket)
        if model is None:
            spec = specs_by_socket(spec_dirs()).get(inputs.socket) if options.ensemble is None else None
            if spec is None:
                raise PantherError(f"{options.input_dir}: input socket '{inputs.socket}' has no ensemble here (loaded: "
                                   f"{', '.join(self.loaded) or 'none'})")
            log(f"{inputs.socket}: not loaded at start-up; loading {spec.path} ({spec_origin(spec)}) now, within this "
                "task's budget")
            model = self.loaded[inputs.socket] = self._load(spec, timer)
        spec = model.spec
        check_writable(output_path(options.output_dir, spec.output_socket, inputs.files[0]).parent)
        clock = task_clock(self.job, spec, options.budget, options.time_limit)
        book, written = CaseBook(inputs.files, what="task"), []
        with book.open():  # each image stands alone, as in predict: its one line, the others predicted
            headers = {}
            for file in inputs.files:
                ok, header = book.check(file, input_header, file, inputs.root)
                if ok and book.check(file, check_host_memory, file, host_needs(
                        model.members, header, options.mode, self.device, model.placement, networks_loaded=True))[0]:
                    headers[file] = header
            try:
                for index, file in enumerate(headers):
                    if index == 0:
                        deadline = clock.next_task(started, self.tasks)
                        log_deadline(clock, deadline, started, self.ready)
                    else:
                        deadline = Deadline(clock.budget)
                    ok, done = book.attempt(file, predict_case, model, file, options.output_dir, timer, deadline)
                    if ok:
                        book.ok(file)
                        written.append(done[0])
            finally:
                log(timer.summary())
        if book.failed:
            raise TaskFailed(f"{book.failed} of {len(inputs.files)} image(s) failed", book.bad_input_only())
        return written

