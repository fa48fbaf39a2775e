"""Cohorts on the schedulers people already run: shards of the input list, resuming, and one record per case.

- A shard is every N-th case of the sorted input list starting at I (stable across machines, whatever the listing
  order). It comes from --shard I/N, else from the engine running the process: a Slurm job array, a Kubernetes
  Indexed Job (the count from --shard-count or PANTHER_SHARD_COUNT) or an LSF job array (indices from 1).
- A mask is kept by --skip-existing only when it reads as a valid mask on its input's grid: uint8, values 0 and 1,
  the input's size, spacing, origin and direction. Anything else is predicted again (writes are atomic, so a killed
  task never leaves a file that looks finished).
- Records: one JSON line per case, appended under an exclusive lock, so shards writing to one file concurrently
  never interleave; `summarize` reads them back.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import PantherError
from ..engine.image import Header

SHARD_COUNT_VARIABLE = "PANTHER_SHARD_COUNT"
# A case's record says how it ended (app.cases decides it): done means ok or skipped (its mask is there)
OK, SKIPPED, ERROR, INTERRUPTED = "ok", "skipped", "error", "interrupted"
DONE = (OK, SKIPPED)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    source: str

    def cases(self, files: list[Path]) -> list[Path]:
        return sorted(files, key=lambda p: p.name)[self.index::self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _shard(index: int, count: int, source: str) -> Shard:
    if count < 1 or not 0 <= index < count:
        raise PantherError(f"shard {index}/{count} (from {source}): needs 0 <= index < count")
    return Shard(index, count, source)


def _integer(env: dict, name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise PantherError(f"{name} is {env.get(name)!r}: not a whole number") from None


def resolve_shard(option: str | None, count: int | None, env: dict | None = None) -> Shard | None:
    """--shard I/N, else the engine's array index and count (Slurm, Kubernetes, LSF), else None: every case."""
    env = os.environ if env is None else env
    if option is not None:
        index, _, total = option.partition("/")
        try:
            return _shard(int(index), int(total), "--shard")
        except ValueError:
            raise PantherError(f"--shard takes I/N (this task's index from 0, the number of tasks), got "
                               f"'{option}'") from None
    if "SLURM_ARRAY_TASK_ID" in env:
        first, step = _integer(env, "SLURM_ARRAY_TASK_MIN"), int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
        task = _integer(env, "SLURM_ARRAY_TASK_ID")
        return _shard((task - first) // step, count or _integer(env, "SLURM_ARRAY_TASK_COUNT"),
                      "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    if "JOB_COMPLETION_INDEX" in env:
        if count is None and SHARD_COUNT_VARIABLE not in env:
            raise PantherError(f"JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give the Job's completions "
                               f"as --shard-count or {SHARD_COUNT_VARIABLE}")
        return _shard(_integer(env, "JOB_COMPLETION_INDEX"), count or _integer(env, SHARD_COUNT_VARIABLE),
                      f"JOB_COMPLETION_INDEX/{'--shard-count' if count else SHARD_COUNT_VARIABLE}")
    if env.get("LSB_JOBINDEX", "0") not in ("", "0"):  # 0: not an array job
        step = int(env.get("LSB_JOBINDEX_STEP", "1") or 1)
        last = _integer(env, "LSB_JOBINDEX_END")
        return _shard((_integer(env, "LSB_JOBINDEX") - 1) // step, count or (last - 1) // step + 1,
                      "LSB_JOBINDEX/LSB_JOBINDEX_END")
    if count is not None:
        raise PantherError("--shard-count needs --shard or an engine's array index (JOB_COMPLETION_INDEX, ...)")
    return None


def existing_mask_problem(path: Path, header: Header) -> str | None:
    """Why `path` is not a finished mask for an input with this header (None: it is one)."""
    if not path.is_file():
        return "missing"
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError:
        return "unreadable (truncated?)"
    if mask.GetPixelID() != sitk.sitkUInt8:
        return f"pixel type {mask.GetPixelIDTypeAsString()}, not uint8"
    if tuple(reversed(mask.GetSize())) != tuple(header.shape_zyx):
        return f"size {mask.GetSize()} is not the input's"
    if not np.allclose(tuple(reversed(mask.GetSpacing())), header.spacing_zyx, rtol=0, atol=1e-6):
        return "spacing differs from the input's"
    if not np.allclose(mask.GetOrigin(), header.origin, rtol=0, atol=1e-4) or \
            not np.allclose(mask.GetDirection(), header.direction, rtol=0, atol=1e-6):
        return "origin or direction differs from the input's"
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    if not set(values.tolist()) <= {0, 1}:
        return f"values {values.tolist()[:5]} are not 0 and 1"
    return None


class Records:
    """A JSON-lines file that concurrent shards append to, one whole line per case under an exclusive lock."""

    def __init__(self, path: Path, shard: Shard | None) -> None:
        self.path, self.shard = Path(path), shard
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
        except OSError as e:
            raise PantherError(f"{self.path}: records file cannot be written ({e.strerror})") from None

    def append(self, case: Path, status: str, seconds: float, **fields) -> None:
        entry = {"case": case.name, "input": str(case), "shard": str(self.shard) if self.shard else None,
                 "status": status, "seconds": round(seconds, 3), "host": socket.gethostname(),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        line = (json.dumps(entry) + "\n").encode()
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def read_records(files: list[Path]) -> tuple[list[dict], int]:
    """Every record in the files, and how many lines were not JSON (a line cut by a full disk, say)."""
    entries, broken = [], 0
    for file in files:
        try:
            lines = Path(file).read_text().splitlines()
        except OSError as e:
            raise PantherError(f"{file}: cannot be read ({e.strerror})") from None
        for line in filter(None, lines):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                broken += 1
    return entries, broken


def summarize(files: list[Path], slowest: int = 5) -> tuple[str, bool]:
    """A cohort's totals from its records, and whether it is complete: a case's latest record decides, and a case is
    done when it is ok or skipped (its mask is there); failed and interrupted cases are not, and are listed to
    resubmit (with their shards). Also the seconds and the slowest cases, members dropped, cases per shard."""
    entries, broken = read_records(files)
    if not entries:
        raise PantherError(f"{', '.join(map(str, files))}: no records")
    latest = {e["input"]: e for e in entries}  # in file order: a rerun's record replaces the earlier one
    predicted = {e["input"]: e for e in entries if e["status"] == OK}  # each case's latest prediction
    twice = [case for case, n in Counter(e["input"] for e in entries if e["status"] == OK).items() if n > 1]
    undone = sorted((e for e in latest.values() if e["status"] not in DONE), key=lambda e: e["case"])
    failed = [e for e in undone if e["status"] == ERROR]
    skips = sum(e["status"] == SKIPPED for e in entries)
    lines = [f"{len(latest)} case(s) in {len(entries)} record(s) from {len(files)} file(s): "
             f"{len(latest) - len(undone)} done, {len(failed)} failed, {len(undone) - len(failed)} interrupted; "
             f"{len(predicted)} predicted" + (f" ({len(twice)} more than once)" if twice else "")
             + f", {skips} skip(s) of a finished mask" + (f"; {broken} unreadable line(s)" if broken else "")]
    if predicted:
        done = list(predicted.values())
        seconds = [e["seconds"] for e in done]
        lines.append(f"seconds per predicted case: median {statistics.median(seconds):.1f}, max {max(seconds):.1f},"
                     f" total {sum(seconds):.0f}")
        dropped = [e for e in done if e.get("members_dropped")]
        lines.append(f"members dropped by the deadline in {len(dropped)} case(s)"
                     + (f": {', '.join(e['case'] for e in dropped[:10])}" if dropped else ""))
        lines.append("slowest: " + ", ".join(f"{e['case']} {e['seconds']:.1f}s" for e in
                                             sorted(done, key=lambda e: -e["seconds"])[:slowest]))
    shards = Counter(e.get("shard") for e in latest.values())
    if any(shards):
        lines.append("cases per shard: " + ", ".join(f"{s}: {n}" for s, n in sorted(shards.items(), key=str)))
    if not undone:
        lines.append(f"complete: all {len(latest)} case(s) done")
        return "\n".join(lines), True
    lines += [f"{e['status']}: {e['case']} (shard {e.get('shard')}): {e.get('error')}" for e in undone]
    redo = sorted({str(e.get("shard")) for e in undone if e.get("shard")})
    lines.append(f"incomplete: resubmit {len(undone)} case(s)" + (f" (shards {', '.join(redo)})" if redo else "")
                 + " with the same command and --skip-existing (finished masks are kept): "
                 + ", ".join(e["input"] for e in undone))
    return "\n".join(lines), False
