"""When the time Grand Challenge counts began, and which task of the job this is.

GC runs an algorithm job as one SageMaker training job whose limit (the phase's time limit; the sum of the tasks'
limits when a job carries several) counts from the container's start: GC's runtime (sagemaker-shim, the container's
entrypoint) downloads the model and the inputs, starts this process, waits for its health check, runs each task and
uploads the results, all inside that one limit. So the clock starts with the shim, not with this process and not
with an /invoke call. The shim is found among this process's ancestors; without it (a local run, a cohort) the
clock starts with this process. Both are read from /proc, so the interpreter's start and the imports count too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

GC_RUNTIME = "sagemaker-shim"  # GC's runtime's executable, the container's entrypoint (GC's _mutate_container_image)
TASKS_FOLDER = Path("/tmp")  # writable on GC, empty at the job's start, kept between the tasks of one job


@dataclass(frozen=True)
class Origin:
    """A moment on this process's time.perf_counter() clock, and what it was."""

    at: float
    what: str


@dataclass(frozen=True)
class TaskOrigin:
    """Where a task stands on GC's clock: when the job began, when the task began, and its number in the job."""

    job: Origin
    task: Origin
    number: int = 1


def _stat(pid: int | str) -> tuple[int, float] | None:
    """(parent pid, start in seconds since boot) of a process, from /proc; None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19]) / os.sysconf("SC_CLK_TCK")  # ppid and starttime (man 5 proc)
    except (OSError, IndexError, ValueError):
        return None


def _command(pid: int) -> list[str]:
    try:
        return [part.decode(errors="replace") for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return []


def _origin(started_since_boot: float, what: str) -> Origin:
    """`what`, which started at `started_since_boot` (/proc's clock: CLOCK_BOOTTIME), on the perf_counter clock."""
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_since_boot
    return Origin(time.perf_counter() - max(0.0, age), what)


def process_start() -> Origin:
    """This process's start (the interpreter's start and the imports included); now where /proc cannot tell."""
    own = _stat("self")
    return _origin(own[1], "this process's start") if own else now("this process's start (as first seen)")


def now(what: str) -> Origin:
    return Origin(time.perf_counter(), what)


def gc_runtime() -> tuple[int, float] | None:
    """(pid, start since boot) of the earliest ancestor that is GC's runtime (sagemaker-shim), if any."""
    found, pid = None, os.getppid()
    for _ in range(64):  # the chain ends at pid 1 (or 0 outside this PID namespace)
        if pid <= 0:
            break
        stat = _stat(pid)
        if stat is None:
            break
        if any(Path(part).name == GC_RUNTIME for part in _command(pid)[:2]):
            found = (pid, stat[1])
        if pid == 1:
            break
        pid = stat[0]
    return found


def job_start() -> Origin:
    """When GC's clock for this job began: GC's runtime's start where it started this process, else this process's
    start."""
    runtime = gc_runtime()
    if runtime is None:
        return process_start()
    own = _stat("self")
    before = f", {own[1] - runtime[1]:.1f} s before this process" if own else ""
    return _origin(runtime[1], f"GC's runtime's start ({GC_RUNTIME}, pid {runtime[0]}{before})")


def exec_task_number() -> int:
    """Which task of its job this process is (1 for the first), where GC's runtime runs each task as a process of
    its own (the exec API): every task's process leaves a mark in /tmp, named after the runtime's pid and start.
    Outside GC's runtime, or where the mark cannot be written, 1."""
    runtime = gc_runtime()
    if runtime is None:
        return 1
    marks = TASKS_FOLDER / f".panther-ensemble-tasks-{runtime[0]}-{runtime[1]:.2f}"
    try:
        with marks.open("a+") as file:
            file.seek(0)
            number = len(file.read().splitlines()) + 1
            file.write(f"{os.getpid()}\n")
        return number
    except OSError:
        return 1


def exec_task() -> TaskOrigin:
    """This process as a task of GC's exec API: the job's start, this process's start, its number in the job."""
    return TaskOrigin(job_start(), process_start(), exec_task_number())


def this_call(what: str = "this call") -> TaskOrigin:
    """A task that is its own job, beginning now (a library call: no process start to count from)."""
    origin = now(what)
    return TaskOrigin(origin, origin)
