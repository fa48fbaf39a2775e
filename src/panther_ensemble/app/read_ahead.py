"""A cohort reads its next case while the current one runs: the image and, where the run preprocesses on the host
(a CPU, or exact mode), every preprocessing group's data. One case ahead at most, and only where it fits the host's
room beside the case running (engine.memory.read_ahead_bytes); its failure stays its own case's error line, raised
when that case is taken.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.log import StageTimer, log
from ..engine.ensemble import Ensemble
from ..engine.host_limits import available_memory
from ..engine.image import Header, Image, read_image
from ..engine.memory import read_ahead_bytes
from ..engine.preprocess import Preprocessed

# "off": every case read when it starts, nothing beside the forwards (a diagnostic switch: benchmarks/cohort.py)
READ_AHEAD_VARIABLE = "PANTHER_READ_AHEAD"


@dataclass
class CaseInput:
    """A case's image and, where preprocessed ahead, its groups' data (engine.ensemble.Ensemble.predict's `ahead`)."""

    image: Image
    ahead: list[Preprocessed] | None
    read_s: float
    preprocess_s: float
    beside: bool  # made while the previous case ran

    def describe(self) -> str:
        made = f"read in {self.read_s:.1f}s"
        if self.ahead is not None:
            made += f" and preprocessed in {self.preprocess_s:.1f}s"
        return f"{made} while the previous case ran" if self.beside else made


class ReadAhead:
    """The cases of one predict run in order, each read when taken; once a case is taken, the next one is read
    beside it where the host's room holds both (`cases`: each file, its header and the host memory its run needs)."""

    def __init__(self, model: Ensemble, cases: list[tuple[Path, Header, int]] = ()) -> None:
        self.model = model
        self._needs = {file: needs for file, _, needs in cases}
        # each case's successor, with its header: what is read once the case is taken
        self._following = {file: (following, header) for (file, _, _), (following, header, _) in zip(cases, cases[1:])}
        self.enabled = os.environ.get(READ_AHEAD_VARIABLE, "on") != "off"
        self.preprocess = model.preprocesses_on_host()
        self._pending: tuple[Path, threading.Thread, dict] | None = None

    def describe(self) -> str:
        if not self.enabled:
            return f"{READ_AHEAD_VARIABLE}=off: each case is read when it starts"
        return "the next case " + ("read and preprocessed" if self.preprocess else "read") + \
            " while one runs, where the host's memory holds both"

    def take(self, file: Path, timer: StageTimer) -> CaseInput:
        """The case's input: read ahead (waited for; its failure raised here, as the case's own), else read now;
        then the next case starts, beside it."""
        pending, self._pending = self._pending, None
        try:
            if pending is None or pending[0] != file:
                with timer.stage("read"):
                    image = read_image(file)
                return CaseInput(image, None, timer.last["read"], 0.0, beside=False)
            _, thread, result = pending
            thread.join()
            if "error" in result:
                raise result["error"]
            case = result["case"]
            # its work counted in its stages (beside another case's: the stages then add up to more than the wall)
            timer.add("preprocess", case.preprocess_s)
            timer.add("read", case.read_s)
            return case
        finally:
            self._start_next(file)

    def _start_next(self, taken: Path) -> None:
        if not self.enabled or taken not in self._following:
            return
        beside_bytes = self._needs[taken]
        file, header = self._following[taken]
        needed = read_ahead_bytes(self.model.members, header.shape_zyx, header.spacing_zyx, header.bytes_per_voxel,
                                  self.preprocess)
        room = available_memory()
        if room is not None and beside_bytes + needed > room.bytes:
            log(f"{file.name}: not read ahead: about {needed / 2 ** 30:.2f} GiB beside the "
                f"{beside_bytes / 2 ** 30:.2f} GiB of the case running, {room.bytes / 2 ** 30:.2f} GiB available "
                f"({room.what})")
            return
        result: dict = {}
        # a daemon: a run that fails as a whole, or is stopped, does not wait for a read nobody will take
        thread = threading.Thread(target=self._read, args=(file, result), name="read-ahead", daemon=True)
        try:
            thread.start()
        except RuntimeError as e:  # no thread under the process's limits: the case is read when it starts
            log(f"{file.name}: not read ahead ({e})")
            return
        self._pending = (file, thread, result)

    def _read(self, file: Path, result: dict) -> None:
        try:
            started = time.perf_counter()
            image = read_image(file)
            read = time.perf_counter()
            ahead = self.model.preprocess_ahead(image) if self.preprocess else None
            result["case"] = CaseInput(image, ahead, read - started, time.perf_counter() - read, beside=True)
        except BaseException as e:  # the case's own error, raised when it is taken
            result["error"] = e
