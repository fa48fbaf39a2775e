"""The deadline: project the finish from measured rates and decide how many members still fit.

GC stops a case at 5 minutes. Members run one after another in spec order (within preprocessing groups); when
the projected finish of the member in flight or about to start would pass the budget, it and the members after
it are dropped and the ensemble of those done is written. At least one member always completes.
"""

from __future__ import annotations

import math
import time

from ..core.log import log

GC_LIMIT_SECONDS = 300.0
SAFETY_MARGIN_SECONDS = 30.0  # container start, imports and the GC harness run before our clock starts
DEFAULT_BUDGET_SECONDS = GC_LIMIT_SECONDS - SAFETY_MARGIN_SECONDS
# GC's invoke API times only the /invoke call (the server loaded before it): the clock starts with the call, and
# the margin is for the HTTP round trip and the projections' error
INVOKE_SAFETY_MARGIN_SECONDS = 10.0
DEFAULT_INVOKE_BUDGET_SECONDS = GC_LIMIT_SECONDS - INVOKE_SAFETY_MARGIN_SECONDS
# Until measured, what finishing one member (export to the input grid, softmax, sum) and writing cost.
INITIAL_FINISH_SECONDS_PER_MEMBER = 1.0
INITIAL_WRITE_SECONDS = 1.0


class Deadline:
    """A wall-clock budget (None: unlimited) and running estimates of what the rest of the work costs."""

    def __init__(self, seconds: float | None, start: float | None = None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter() if start is None else start
        self.tile_seconds_per_member: float | None = None  # steady rate, from forwards after warm-up
        self.slowest_forward = 0.0
        self.steady_seconds, self.steady_tiles = 0.0, 0
        self.finish_seconds_per_member = INITIAL_FINISH_SECONDS_PER_MEMBER
        self.write_seconds = INITIAL_WRITE_SECONDS
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

    def record_finish(self, seconds: float) -> None:
        self.finish_seconds_per_member = max(self.finish_seconds_per_member * 0.5, seconds)

    def record_preprocess(self, seconds: float) -> None:
        self.preprocess_seconds = max(self.preprocess_seconds, seconds)

    def member_fits(self, tiles_left: int, completed: int) -> bool:
        """Whether the member in flight (or about to start), with `tiles_left` tiles to go, can still finish within
        the budget. Always True while no member has completed: the first one runs to the end."""
        if self.seconds is None:
            return True
        left = self.left() - self.write_seconds - self.finish_seconds_per_member
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
        return max(0.0, self.left() - self.write_seconds - self.finish_seconds_per_member - forwards)

    def another_group_fits(self, completed: int) -> bool:
        """Whether a new preprocessing group could still add a member (always, before any completed)."""
        if completed == 0 or self.seconds is None:
            return True
        return self.preprocess_seconds + self.finish_seconds_per_member + self.write_seconds < self.left()
