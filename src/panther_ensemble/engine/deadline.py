"""The deadline: GC's clock for each task, projections of the finish from measured rates, and which members still fit.

GC stops a job at its time limit, counted from the container's start (core.clock). Members run one after another in
spec order (within preprocessing groups); when the projected finish of the member in flight or about to start, plus
the case's last stage (the mask, its post-processing, the write), would pass the budget, it and the members after it
are dropped and the ensemble of those done is written. At least one member always completes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..core.clock import Origin
from ..core.errors import PantherError
from ..core.log import log

GC_TIME_LIMIT_SECONDS = 300.0  # GC's time limit per task of an algorithm job (a phase may set another)
# Kept back from the time limit: what GC's clock counts after our last write (the upload, the runtime's end) and
# the projections' error
SAFETY_MARGIN_SECONDS = 30.0
# Until measured, what finishing one member (export to the input grid, softmax, sum) costs.
INITIAL_FINISH_SECONDS_PER_MEMBER = 1.0
# The case's last stage after its members, per million input voxels: the argmax into the tumor mask and the
# compressed mask's write (0.40 + 0.49 s on a 512 x 512 x 200 grid), the spec's post-processing steps on top
# (+0.81 s) or nnU-Net's own postprocessing.pkl (+2.86 s), measured on a 2-core CPU (benchmarks/postprocess.py,
# docs/measured.md#post-processing). Reserved at FINAL_HEADROOM times that until the run has measured its own.
FINAL_SECONDS_PER_MVOXEL = {"none": 0.017, "steps": 0.033, "nnunet": 0.072}
FINAL_HEADROOM = 2.0
MIN_FINAL_SECONDS = 0.5


def default_budget(time_limit: float) -> float:
    return time_limit - SAFETY_MARGIN_SECONDS


def resolve_budget(budget: float | None, time_limit: float) -> float | None:
    """A task's budget: `budget` (0: no limit), else the time limit less the safety margin; never past the limit."""
    if budget == 0:
        return None
    seconds = default_budget(time_limit) if budget is None else budget
    if seconds > time_limit:
        raise PantherError(f"a budget of {seconds:g} s is past the time limit of {time_limit:g} s (GC would stop the "
                         "job first: raise the time limit where the phase allows it)")
    return seconds


def projected_final_seconds(voxels: int, postprocessing: str = "none") -> float:
    """The projected seconds of a case's last stage (mask, post-processing of this kind, write) on `voxels` input
    voxels: none, steps or nnunet."""
    return FINAL_SECONDS_PER_MVOXEL[postprocessing] * voxels / 1e6


class FinalStage:
    """What a case's last stage takes, per input voxel: projected, then measured by the run (the slowest case of
    this process wins), so a server's or a cohort's later cases reserve what the earlier ones took."""

    def __init__(self, postprocessing: str = "none") -> None:
        self.postprocessing = postprocessing
        self.measured_per_voxel = 0.0

    def reserve(self, voxels: int) -> float:
        projected = FINAL_HEADROOM * projected_final_seconds(voxels, self.postprocessing)
        return max(MIN_FINAL_SECONDS, projected, self.measured_per_voxel * voxels)

    def record(self, voxels: int, seconds: float) -> None:
        self.measured_per_voxel = max(self.measured_per_voxel, seconds / max(voxels, 1))


@dataclass
class TaskClock:
    """GC's clock over the tasks of one job: task k's budget counts from the earlier of its own start (the
    process's, in exec; its /invoke call, in invoke) and the job's start plus the time limits of the k - 1 tasks
    before it. So the first task's counts from the job's start (the container's, start-up, loading and the wait
    for the call included), a later one's never beyond what the job's limit leaves it."""

    job: Origin
    budget: float | None  # per task; None: no limit
    time_limit: float = GC_TIME_LIMIT_SECONDS
    tasks: int = 0

    def task_start(self, started: float, number: int) -> float:
        return min(started, self.job.at + (number - 1) * self.time_limit)

    def next_task(self, started: float, number: int | None = None) -> Deadline:
        """The deadline of the next task (or task `number`, where the job's runtime counts them: exec), which began
        at `started` (perf_counter)."""
        self.tasks = self.tasks + 1 if number is None else number
        return Deadline(self.budget, start=self.task_start(started, self.tasks))

    def counted_from(self, deadline: Deadline, started: float) -> str:
        """What a task's deadline counts from, for its log line."""
        if deadline.start == started:
            return "the task's own start"
        return self.job.what if self.tasks == 1 else \
            f"{self.job.what} + {self.tasks - 1} x the {self.time_limit:g} s time limit"


class Deadline:
    """A wall-clock budget (None: unlimited) and running estimates of what the rest of the work costs."""

    def __init__(self, seconds: float | None, start: float | None = None) -> None:
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"a budget must be a positive number of seconds, got {seconds}")
        self.seconds = seconds
        self.start = time.perf_counter() if start is None else start
        self.tile_seconds_per_member: float | None = None  # steady rate, from forwards after warm-up
        self.slowest_forward = 0.0
        self.steady_seconds, self.steady_tiles = 0.0, 0
        self.finish_seconds_per_member = INITIAL_FINISH_SECONDS_PER_MEMBER
        self.final_seconds = MIN_FINAL_SECONDS  # the case's last stage: mask, post-processing, write (reserve_final)
        self.preprocess_seconds = 0.0
        self.overrun = False  # set once the first member is projected to end past the budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def record_forward(self, seconds: float, warm_up: bool, tiles: int = 1) -> None:
        """One network's forward on `tiles` tiles took `seconds`. Warm-up forwards (each member's first tiles:
        kernel selection and allocations make them slow on a GPU) bound the next forward but do not set the
        rate projected over the remaining tiles, so they cannot make the run drop members it has time for."""
        self.slowest_forward = max(self.slowest_forward, seconds)
        if not warm_up:  # a running mean: one slow forward on a busy machine must not drop members
            self.steady_seconds += seconds
            self.steady_tiles += tiles
            self.tile_seconds_per_member = self.steady_seconds / self.steady_tiles

    def reserve_final(self, seconds: float) -> None:
        """Keep `seconds` for the case's last stage (FinalStage.reserve): no member is admitted into them."""
        self.final_seconds = seconds

    def record_finish(self, seconds: float) -> None:
        self.finish_seconds_per_member = max(self.finish_seconds_per_member * 0.5, seconds)

    def record_preprocess(self, seconds: float) -> None:
        self.preprocess_seconds = max(self.preprocess_seconds, seconds)

    def member_fits(self, tiles_left: int, completed: int) -> bool:
        """Whether the member in flight (or about to start), with `tiles_left` tiles to go, can still finish within
        the budget. Always True while no member has completed: the first one runs to the end."""
        if self.seconds is None:
            return True
        left = self.left() - self.final_seconds - self.finish_seconds_per_member
        if tiles_left == 0:
            forwards = 0.0
        elif self.tile_seconds_per_member is None:  # still warming up: only stop before a forward that cannot end
            forwards = self.slowest_forward
        else:
            forwards = tiles_left * self.tile_seconds_per_member
        fits = forwards <= left
        if completed == 0:
            if not fits and not self.overrun:
                self.overrun = True
                log("budget: even one member cannot finish within the budget; completing the first one anyway and "
                    "writing its result as soon as it is done")
            return True
        return fits

    def wait_for_loading(self, tiles: int, completed: int) -> float | None:
        """How long the next member may wait for its network and still finish (None: as long as it takes; always
        so for the first member)."""
        if self.seconds is None or completed == 0:
            return None
        forwards = self.slowest_forward if self.tile_seconds_per_member is None else \
            tiles * self.tile_seconds_per_member
        return max(0.0, self.left() - self.final_seconds - self.finish_seconds_per_member - forwards)

    def another_group_fits(self, completed: int) -> bool:
        """Whether a new preprocessing group could still add a member (always, before any completed)."""
        if completed == 0 or self.seconds is None:
            return True
        return self.preprocess_seconds + self.finish_seconds_per_member + self.final_seconds < self.left()
