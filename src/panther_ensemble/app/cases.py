"""A case's fate, decided in one place: pending -> running -> ok | skipped | error | interrupted.

predict owns one CaseBook for its run, the invoke server one per task; the records (app.cohort), `summarize`, the
server's answer and the progress bar read it, so one rule holds everywhere: a case that goes wrong is one line on
stderr naming it (and its record), the others go on, and the run ends with exit 1 (the task with 422 or 500). While
a book is open, a stop (SIGINT, SIGTERM) at any moment — checking the spec, loading, between cases, mid-write —
records every case not yet ended as interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import AlreadyReported, CaseFailure, PantherError, failure_line, print_failure
from ..core.log import log
from ..core.progress import Progress
from ..core.stop import on_stop
from .cohort import DONE, ERROR, INTERRUPTED, OK, SKIPPED, Records

PENDING, RUNNING = "pending", "running"


class CaseBook:
    """The fate of each of `files`, in order; records (where given) and the progress follow it."""

    def __init__(self, files: list[Path], records: Records | None = None, what: str = "predict") -> None:
        self.files = list(files)
        self.records, self.what = records, what
        self.status: dict[Path, str] = dict.fromkeys(self.files, PENDING)
        self.errors: dict[Path, Exception] = {}
        self._started: dict[Path, float] = {}
        self.progress: Progress | None = None

    @contextmanager
    def open(self) -> Iterator[CaseBook]:
        """The run's lifetime: a stop meanwhile records every case not yet ended; a progress bar on a terminal."""
        with on_stop(self._interrupted), Progress(len(self.files), self.what) as progress:
            self.progress = progress
            try:
                yield self
            finally:
                self.progress = None

    # --- the transitions

    def check(self, file: Path, action: Callable, *arguments) -> tuple[bool, object]:
        """(True, action(*arguments)), or (False, None) where it failed: the case's error (its line, its record).
        A check before the case runs (its header, its memory): it stays pending where it passes."""
        try:
            return True, action(*arguments)
        except Exception as e:  # one line naming the case, whatever went wrong (core.errors)
            self.fail(file, e)
            return False, None

    def attempt(self, file: Path, action: Callable, *arguments) -> tuple[bool, object]:
        """check, with the case running meanwhile (a stop records it interrupted, its seconds counted); the caller
        ends it with ok() where it succeeded."""
        self.status[file] = RUNNING
        self._started[file] = time.perf_counter()
        return self.check(file, action, *arguments)

    def ok(self, file: Path, **fields) -> None:
        self._end(file, OK, **fields)

    def skipped(self, file: Path, **fields) -> None:
        self._end(file, SKIPPED, **fields)

    def fail(self, file: Path, error: Exception) -> None:
        failure = CaseFailure.of(file, error)
        if failure is not error:
            failure.__cause__ = error  # PANTHER_DEBUG's traceback shows where
        print_failure(failure)
        self.errors[file] = failure
        self._end(file, ERROR, error=str(failure))

    def fail_the_rest(self, error: BaseException) -> None:
        """After a failure of the whole run (spec, weights, device): every case not yet ended is an error."""
        for file in self.open_cases():
            self.errors[file] = error if isinstance(error, Exception) else PantherError(failure_line(error))
            self._end(file, ERROR, error=failure_line(error))

    def _interrupted(self, signal_name: str) -> None:
        for file in self.open_cases():
            before = "" if self.status[file] == RUNNING else " before it ran"
            self._end(file, INTERRUPTED, error=f"interrupted ({signal_name}){before}")

    def _end(self, file: Path, status: str, **fields) -> None:
        self.status[file] = status
        seconds = time.perf_counter() - self._started[file] if file in self._started else 0.0
        if self.records is not None:
            self.records.append(file, status, seconds, **fields)
        if self.progress is not None and status != INTERRUPTED:
            self.progress.advance(failed=status == ERROR)

    # --- what the book says

    def open_cases(self) -> list[Path]:
        return [file for file in self.files if self.status[file] in (PENDING, RUNNING)]

    @property
    def failed(self) -> int:
        return sum(status == ERROR for status in self.status.values())

    @property
    def done(self) -> int:
        return sum(status in DONE for status in self.status.values())

    def bad_input_only(self) -> bool:
        """Every failure a problem with the input (not memory, not a bug): the server's 422 rather than 500."""
        return all(isinstance(e, PantherError) and not isinstance(e, CaseFailure) for e in self.errors.values())

    def raise_failures(self) -> None:
        """Exit 1 where any case failed (each had its line); the log says how many and where their records are."""
        if self.failed:
            where = f"; each has its record in {self.records.path}" if self.records else ""
            log(f"{self.failed} of {len(self.files)} case(s) failed: each has its error line on stderr{where}")
            raise AlreadyReported(f"{self.failed} case(s) failed")
