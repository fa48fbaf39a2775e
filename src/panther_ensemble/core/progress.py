"""Progress where a person looks: a bar with the cases done and failed, the rate and the time left, on a terminal
only (tqdm). In GC's log, a file or a pipe nothing changes: the plain lines stay, without carriage returns."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

from . import log


class Progress:
    """`total` things to do, counted as each ends; a bar while `stream` (stdout) is a terminal, else nothing."""

    def __init__(self, total: int, what: str, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        self.failed = 0
        self.bar = None
        if total > 1 and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="case", file=stream, leave=True, mininterval=0,
                            ncols=shutil.get_terminal_size().columns,  # COLUMNS, else the terminal's, else 80
                            bar_format="{desc}: {n}/{total} {unit}s{postfix} |{bar}| {rate_fmt}, {remaining} left")
            self.bar.set_postfix_str("0 failed", refresh=False)
            log.write_above(self.bar.write)

    def advance(self, failed: bool = False) -> None:
        if self.bar is None:
            return
        self.failed += failed
        self.bar.set_postfix_str(f"{self.failed} failed", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            log.write_above(None)
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
