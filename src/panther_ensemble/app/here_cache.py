"""This machine's measurements, kept per machine in one file: cost's `here` rates (tools.cost) and, on a CPU, how
each architecture's tiles go fastest through its network (app.forward_choice). Measured once, then reused by
predict, select and cost alike."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from ..core.log import log
from ..core.stop import write_text_atomically


def here_cache() -> Path:
    """The file: $XDG_CACHE_HOME (else ~/.cache)/panther-ensemble/here.json."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "panther-ensemble" / "here.json"


def machine_key(device: torch.device) -> str:
    """What the measurements belong to: the host, its CPU and threads, torch, the device."""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return (f"{platform.node()} | {cpu} x {os.cpu_count()}, {torch.get_num_threads()} threads | torch "
            f"{torch.__version__} | {device.type}: {gpu}")


def _entries() -> dict:
    try:
        entries = json.loads(here_cache().read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def read_entry(key: str) -> dict:
    """What is kept for this machine (empty where nothing is, or the file is unreadable)."""
    entry = _entries().get(key)
    return entry if isinstance(entry, dict) else {}


def update_entry(key: str, fields: dict) -> None:
    """Set these fields of this machine's entry, the rest of the file kept (read again just before the write, so
    that cost's rates and the forward choices do not overwrite each other). A cache that cannot be written is a log
    line: measured again next time."""
    cache = here_cache()
    try:
        entries = _entries()
        entry = entries.get(key) if isinstance(entries.get(key), dict) else {}
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(cache, json.dumps({**entries, key: {**entry, **fields}}, indent=2))
    except OSError as e:  # a read-only home
        log(f"here: the measurements could not be kept in {cache} ({e.strerror})")
