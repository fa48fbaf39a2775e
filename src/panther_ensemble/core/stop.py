"""SIGINT and SIGTERM end a run within moments, in one line, with nothing half-written.

The signals are blocked in every thread but one that waits for them: a forward that runs for seconds in C does not
delay the end (a Python signal handler would wait for it). That thread removes the partial files being written,
runs what the run registered (its records say `interrupted`) and ends the process: exit 130 (SIGINT) or 143
(SIGTERM), one `error:` line. A server between tasks ends quietly (GC's shim stops it with SIGTERM when the job is
done). Installed by the console entry points only, never in a library user's process.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_lock = threading.Lock()
_partials: set[Path] = set()
_on_stop: list[Callable[[str], None]] = []
_quiet_when_idle = False
_busy = 0
_streams = (1, 2)  # stdout's and stderr's descriptors, as install() found them


@contextmanager
def partial_file(path: Path) -> Iterator[Path]:
    """A file or folder being written (then renamed): removed should the run be stopped meanwhile."""
    with _lock:
        _partials.add(Path(path))
    try:
        yield Path(path)
    finally:
        with _lock:
            _partials.discard(Path(path))


@contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A partial path beside `path` (`.name.partial`) to write a file or a folder into: it becomes `path` when the
    block ends, and is removed where the block fails or the run is stopped meanwhile, so that `path` is whole or
    absent, never half-written."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    _remove(partial)  # a leftover of a run killed outright
    with partial_file(partial):
        try:
            yield partial
            _put_in_place(partial, path)
        except BaseException:
            _remove(partial)
            raise


def _put_in_place(partial: Path, path: Path) -> None:
    """`partial` becomes `path`. A folder replaced is swapped under the stop lock (the old one aside, the new one
    in): a stop sees the old one in place with the partial beside it (removed), or the new one in place, never
    neither; the old one goes last."""
    if not (path.is_dir() and partial.is_dir() and not path.is_symlink()):
        os.replace(partial, path)
        return
    old = path.with_name(f".{path.name}.old")
    _remove(old)  # a leftover of a run killed outright
    with partial_file(old):  # a stop once the new one is in place removes the old one
        with _lock:  # the stop thread removes partials under it too
            if not partial.exists():
                raise InterruptedError(f"{partial}: removed by a stop")
            os.replace(path, old)
            os.replace(partial, path)
        _remove(old)


def write_text_atomically(path: Path, text: str) -> Path:
    """`path` holds `text` whole, or is as it was (written_atomically)."""
    with written_atomically(path) as partial:
        partial.write_text(text)
    return Path(path)


def _remove(path: Path) -> None:
    with suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def on_stop(callback: Callable[[str], None]) -> Iterator[None]:
    """Call `callback(signal name)` should the run be stopped while this block runs (a record of the case, say);
    a server is busy meanwhile."""
    global _busy
    with _lock:
        _on_stop.append(callback)
        _busy += 1
    try:
        yield
    finally:
        with _lock:
            _on_stop.remove(callback)
            _busy -= 1


def install(quiet_when_idle: bool = False) -> None:
    """Block SIGINT and SIGTERM here (the main thread, before any other thread exists) and wait for them on a
    thread of their own."""
    global _quiet_when_idle, _streams
    _quiet_when_idle = quiet_when_idle
    # the last line goes to the streams as they are now, even should the stop come while a reader's output is
    # being caught (engine.image.itk_output_captured points the descriptors elsewhere for a moment)
    _streams = os.dup(1), os.dup(2)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    threading.Thread(target=_wait, name="stop", daemon=True).start()


def _wait() -> None:
    number = signal.sigwait(SIGNALS)
    name = signal.Signals(number).name
    with _lock:  # under the lock: never while a folder is being swapped into place (_put_in_place)
        busy, callbacks, partials = _busy, list(_on_stop), list(_partials)
        for path in partials:
            _remove(path)
    for callback in callbacks:
        with suppress(Exception):  # a record that cannot be written must not keep the process alive
            callback(name)
    sys.stdout.flush()
    if _quiet_when_idle and not busy:
        os.write(_streams[0], f"stopped ({name})\n".encode())
        os._exit(0)
    line = f"error: interrupted ({name}){'; nothing half-written is left' if partials else ''}\n"
    os.write(_streams[1], line.encode())
    os._exit(128 + number)
