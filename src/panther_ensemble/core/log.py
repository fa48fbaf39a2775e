"""Per-stage wall-clock times and progress lines on stdout (on stderr while a command's stdout is its JSON);
warnings on stderr (GC shows stderr as warnings)."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

_progress_on_stderr = False  # process-wide, not per thread: networks load and log in threads of their own
_writer = None  # while a progress bar is shown (core.progress): writes a line above it


def log(message: str) -> None:
    if _writer is not None and not _progress_on_stderr:
        _writer(message)
    else:
        print(message, file=sys.stderr if _progress_on_stderr else sys.stdout, flush=True)


def write_above(writer) -> None:
    """While a progress bar is shown, log lines go through `writer` (the bar's), so the bar stays below them."""
    global _writer
    _writer = writer


@contextmanager
def progress_on_stderr(active: bool = True) -> Iterator[None]:
    """While it holds (and `active`), progress lines go to stderr: stdout is then what the command prints itself,
    e.g. `--json`'s JSON, whole for jq and json.loads."""
    global _progress_on_stderr
    before = _progress_on_stderr
    _progress_on_stderr = before or active
    try:
        yield
    finally:
        _progress_on_stderr = before


def warn(message: str) -> None:
    """One line on stderr: something the user should know that did not stop the run."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


class StageTimer:
    """Accumulates seconds per named stage, in first-use order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.last: dict[str, float] = {}  # the latest run of each stage, for its log line
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            torch = sys.modules.get("torch")  # not imported by this module: the invoke server binds before torch
            if torch is not None and torch.cuda.is_initialized():  # a stage's time includes the GPU work it queued
                torch.cuda.synchronize()
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """A stage's run timed elsewhere (another thread's work, e.g. a case read ahead)."""
        self.last[name] = seconds
        self.seconds[name] += seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> str:
        stages = " | ".join(f"{name} {seconds:.2f}s" for name, seconds in self.seconds.items())
        return f"timing: {stages} | total {self.elapsed():.2f}s"
