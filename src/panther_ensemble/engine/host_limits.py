"""What limits this process on the host. Memory: how much room each limit leaves (the machine's MemAvailable, the
memory limit of the process's own cgroup and of every ancestor (v1 and v2: Docker, Slurm's `--mem`, Apptainer),
and the resource limits RLIMIT_DATA (Grand Challenge's sagemaker-shim sets it to the job's memory) and RLIMIT_AS);
the smallest room decides, and its name goes into the log and into a refusal. CPUs: the cores it may run on and the
smallest CPU quota of its cgroups (Docker's --cpus), which torch does not read.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF = Path("/proc/self")
MEMINFO = Path("/proc/meminfo")
UNLIMITED = 2 ** 60  # cgroup v1 writes "no limit" as a page-rounded 2^63 - 1
GiB = 2 ** 30


class Room(NamedTuple):
    """Bytes this process may still allocate under one limit, and that limit in words (the smallest sorts first)."""

    bytes: int
    what: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return UNLIMITED if text == "max" else int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


# (the controller's mount under the cgroup root, limit file, usage file, memory.stat's reclaimable page cache)
_V2 = ("", "memory.max", "memory.current", "inactive_file")
_V1 = ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def _own_cgroups(proc_self: Path, v1_controller: str) -> list[tuple[bool, str]]:
    """(whether v2, path) of this process's cgroups for one controller, from /proc/self/cgroup ("0::/path" for v2,
    "N:...<controller>...:/path" for v1)."""
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "":
            found.append((True, path))
        elif v1_controller in controllers.split(","):
            found.append((False, path))
    return found


def _cgroup_folders(root: Path, path: str) -> list[Path]:
    """The cgroup's folder and each ancestor's up to the controller's mount, where they exist. In a container
    /proc/self/cgroup may name the host's path while the mount is the container's own cgroup: the mount is always a
    candidate."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    folders = [root.joinpath(*parts[:depth]) for depth in range(len(parts), 0, -1)]
    return [f for f in folders if f.is_dir()] + [root]


def cgroup_rooms(root: Path | None = None, proc_self: Path | None = None) -> list[Room]:
    """The room under every cgroup memory limit on the way from this process's cgroup to the root. Reclaimable page
    cache (inactive files) counts as free, as the kernel's OOM logic sees it."""
    root, proc_self = root or CGROUP_ROOT, proc_self or PROC_SELF
    own = _own_cgroups(proc_self, "memory") or [(True, "/"), (False, "/")]
    rooms, seen = [], set()
    for v2, path in own:
        mount, limit_name, usage_name, reclaimable = _V2 if v2 else _V1
        for folder in _cgroup_folders(root / mount if mount else root, path):
            limit = _read_int(folder / limit_name)
            if folder in seen or limit is None or limit >= UNLIMITED:
                continue
            seen.add(folder)
            usage = (_read_int(folder / usage_name) or 0) - _stat(folder / "memory.stat", reclaimable)
            rooms.append(Room(max(0, limit - max(0, usage)),
                              f"the cgroup memory limit ({folder / limit_name}: {limit / GiB:.1f} GiB)"))
    return rooms


def _cpu_quota(folder: Path, v2: bool) -> float | None:
    """CPUs' worth of time per period one cgroup may use (v2 cpu.max "quota period", v1 cpu.cfs_quota_us over
    cpu.cfs_period_us); None: no quota."""
    try:
        if v2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota, period = ((folder / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        return int(quota) / int(period) if int(quota) > 0 and int(period) > 0 else None
    except (OSError, ValueError):  # "max", "-1" or no file: no quota
        return None


def usable_cpus(root: Path | None = None, proc_self: Path | None = None, affinity: set[int] | None = None) -> int:
    """The CPUs this process can keep busy: the cores it may run on, capped by the smallest CPU quota of its cgroup
    and every ancestor (rounded up). A container started with --cpus 4 on a 64-core host sees 64 cores."""
    root, proc_self = root or CGROUP_ROOT, proc_self or PROC_SELF
    cpus = len(affinity if affinity is not None else os.sched_getaffinity(0))
    for v2, path in _own_cgroups(proc_self, "cpu") or [(True, "/"), (False, "/")]:
        for folder in _cgroup_folders(root if v2 else root / "cpu", path):
            quota = _cpu_quota(folder, v2)
            if quota is not None:
                cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _status_kib(proc_self: Path, key: str) -> int | None:
    try:
        for line in (proc_self / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# (resource, what it counts in /proc/self/status, how the log names it)
_RLIMITS = ((resource.RLIMIT_DATA, "VmData", "the process's data limit (RLIMIT_DATA: {limit}; Grand Challenge's "
                                              "sagemaker-shim sets it to the job's memory)"),
            (resource.RLIMIT_AS, "VmSize", "the process's address-space limit (RLIMIT_AS: {limit})"))


def rlimit_rooms(proc_self: Path | None = None,
                 getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit) -> list[Room]:
    """The room under RLIMIT_DATA (private writable mappings: the heap, anonymous and privately mapped files) and
    RLIMIT_AS (all mappings), each limit less what the process already uses of it."""
    proc_self = proc_self or PROC_SELF
    rooms = []
    for which, used_key, what in _RLIMITS:
        soft, _ = getrlimit(which)
        if soft == resource.RLIM_INFINITY or soft < 0:
            continue
        used = _status_kib(proc_self, used_key) or 0
        rooms.append(Room(max(0, soft - used), what.format(limit=f"{soft / GiB:.1f} GiB")))
    return rooms


def meminfo_room(meminfo: Path | None = None) -> Room | None:
    try:
        for line in (meminfo or MEMINFO).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Room(int(line.split()[1]) * 1024, "the machine's available memory")
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory(meminfo: Path | None = None, cgroup_root: Path | None = None, proc_self: Path | None = None,
                     getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit) -> Room | None:
    """The smallest room of all the limits on this process (None where none can be read)."""
    rooms = [r for r in (meminfo_room(meminfo),) if r is not None]
    rooms += cgroup_rooms(cgroup_root, proc_self) + rlimit_rooms(proc_self, getrlimit)
    return min(rooms) if rooms else None
