"""Which device runs the ensemble, and saying loudly why CUDA does not start where a GPU is expected; the host's
CPU threads.

On GC a silent fall back to the CPU is a timeout: when the container was given GPUs (NVIDIA_VISIBLE_DEVICES, set by
the NVIDIA runtime and by PyTorch's images) or --device cuda asks for one and CUDA does not start, one line on
stderr says why; --device cuda then stops the run.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

from ..core.errors import PantherError, is_allocation_failure
from ..core.log import warn
from .host_limits import rlimit_rooms, usable_cpus

HOST = torch.device("cpu")
NVIDIA_DRIVER_VERSION = Path("/proc/driver/nvidia/version")


def gpu_expected(requested: str) -> str | None:
    """What says a GPU should be here (None: nothing does)."""
    if requested == "cuda":
        return "--device cuda"
    visible = os.environ.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if visible and visible.lower() not in ("void", "none"):
        return f"NVIDIA_VISIBLE_DEVICES={visible}"
    return None


def cuda_failure() -> str:
    """Why CUDA does not start, with the driver and CUDA versions where they are known, in one line."""
    driver_file = NVIDIA_DRIVER_VERSION
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    try:
        torch.cuda.init()
        reason = f"{torch.cuda.device_count()} CUDA devices visible"
    except Exception as e:  # torch raises RuntimeError or AssertionError with the driver's own words
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    try:
        driver = driver_file.read_text().split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        driver = f"none found ({driver_file} is missing: was the container started with GPUs?)"
    return f"{reason} (torch {torch.__version__} for CUDA {torch.version.cuda}; NVIDIA driver {driver})"


def _threads_whose_stacks_fit(threads: int) -> int:
    """At most as many threads as a quarter of the room under RLIMIT_DATA and RLIMIT_AS holds stacks for (each
    thread's stack, RLIMIT_STACK's size or 32 MiB where unlimited, counts in full): the rest is the cases'."""
    room = min(rlimit_rooms(), default=None)
    if room is None:
        return threads
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    stack = 32 * 2 ** 20 if stack == resource.RLIM_INFINITY or stack <= 0 else stack
    return max(1, min(threads, room.bytes // (4 * stack)))


def settle_cpu_threads() -> int:
    """torch's CPU threads: no more than the CPUs this process can keep busy (torch does not read the cgroup's quota: in
    a container given 4 CPUs of a 64-core host it would run 64) and than the memory limits hold stacks for, unless
    OMP_NUM_THREADS says how many; then the thread pool started at once, while memory is free. Under RLIMIT_DATA (GC's
    shim sets it) a thread that cannot get its stack ends the process inside libgomp, with no error of ours."""
    if "OMP_NUM_THREADS" not in os.environ:
        wanted = _threads_whose_stacks_fit(min(torch.get_num_threads(), usable_cpus()))
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
    threads = torch.get_num_threads()
    torch.zeros(threads * 2 ** 16).add_(1)  # twice as many chunks as threads of torch's grain (32768): all of them run
    return threads


def select_device(requested: str) -> torch.device:
    """auto: CUDA when it starts, else the CPU (loudly where a GPU is expected); cuda: CUDA or a PantherError. The
    CPU threads are settled first, whichever it is (the host preprocesses and writes)."""
    settle_cpu_threads()
    if requested == "cpu":
        return HOST
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # the fastest convolution per shape, as nnU-Net's predictor sets it
        return torch.device("cuda")
    if requested == "cuda":
        raise PantherError(f"--device cuda: CUDA does not start: {cuda_failure()}")
    expected = gpu_expected(requested)
    if expected:
        warn(f"a GPU is expected ({expected}) but CUDA does not start, running on the CPU: {cuda_failure()}")
    return HOST


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed (torch's OutOfMemoryError, or a RuntimeError that says so: cuDNN
    and oneDNN report theirs that way); a device step that raises it continues on the host."""
    return is_allocation_failure(error)


def release_device_memory() -> None:
    """Give the allocator's cached blocks back, after an out-of-memory on the device."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
