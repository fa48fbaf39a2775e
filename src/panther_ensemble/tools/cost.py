"""What a spec costs on one case, projected for a target: a T4 by default, this machine (`here`, measured), or a
given effective TFLOP/s.

Per member: the tiles of its sliding window for that case (its preprocessing group's grid), the TFLOP of one tile
forward (counted on the meta device), and its seconds: forwards at the target's effective TFLOP/s (`here`: its own
measured seconds per tile) plus its export to the input grid. Per preprocessing group: its preprocessing. Once:
start-up (imports, CUDA), the first network's load (the rest load while members predict) and the last stage (the
mask, the spec's post-processing, its write: the deadline's projection, engine.deadline.projected_final_seconds).
`here`'s rates are measured once per machine and kept (here_cache), so that select and cost price a spec alike.

The T4 is a projection, not a measurement: its effective rate is the fraction of its fp16 peak that this product's
ResEncL forward reached on an H200 (benchmarks/RESULTS.md), applied to the T4's peak (see T4 below).
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from ..app.forward_choice import seconds_per_tile
from ..app.here_cache import here_cache, machine_key, read_entry, update_entry
from ..core.errors import PantherError, finite_number
from ..core.log import log
from ..engine.activations import tiles_per_forward
from ..engine.deadline import projected_final_seconds
from ..engine.image import Image
from ..engine.input_grid import ProbabilitySum
from ..engine.members import Member, load_network, network_from_plans
from ..engine.preprocess import preprocess, preprocessing_key, resampled_shape
from ..engine.sliding_window import tile_count
from ..engine.spec import MemberId, member_labels


@dataclass(frozen=True)
class Target:
    name: str
    tflops: float | None  # effective fp16 TFLOP/s of a tile forward (None: measured per architecture, `here`)
    preprocess_seconds_per_mvoxel: float  # per million input voxels, per preprocessing group
    export_seconds_per_mvoxel: float  # per million input voxels, per member
    load_bytes_per_second: float  # the first network's checkpoint: read, hashed, copied to the device
    startup_seconds: float  # process start, imports, CUDA initialization
    source: str
    projection: bool = True


# The T4 (GC's GPU): 65 TFLOP/s dense fp16 tensor-core peak (NVIDIA T4 data sheet) at 8.2 %, the share of its
# peak this product's ResEncL 192^3 tile forward reached on an H200 (80 of 989 TFLOP/s, benchmarks/RESULTS.md,
# 2026-11-27). Preprocessing and export: the H200 run's stage times (0.5 s and 0.4 s for 6 M voxels, host-bound
# steps included) doubled for a T4's 4 vCPUs and 320 GB/s; load: disk and PCIe 3 x16 at 1 GB/s; start-up: the
# 30 s GC's budget keeps for the container's start is not counted here, imports and CUDA's start are.
T4 = Target("T4 (projection)", 65.0 * 0.082, 0.17, 0.15, 1.0e9, 8.0,
            "65 TFLOP/s fp16 peak (NVIDIA T4 data sheet) x 8.2 % (this product's ResEncL forward on an H200, "
            "benchmarks/RESULTS.md)")
TARGETS = ("t4", "here")


def target_named(name: str) -> Target:
    """t4, here (measured later, per spec) or a number: an effective TFLOP/s with the T4's other rates."""
    if name == "t4":
        return T4
    if name == "here":
        return Target("here (measured)", None, 0.0, 0.0, 0.0, 0.0, "measured on this machine", False)
    try:
        tflops = float(name)
    except ValueError:
        raise PantherError(f"--target must be t4, here or an effective TFLOP/s, got '{name}'") from None
    finite_number(tflops, "--target (an effective TFLOP/s)")
    return Target(f"{tflops:g} TFLOP/s (given)", tflops, T4.preprocess_seconds_per_mvoxel,
                  T4.export_seconds_per_mvoxel, T4.load_bytes_per_second, T4.startup_seconds,
                  "--target, with the T4's other rates")


def tile_tflop(member: Member) -> float:
    """TFLOP of one tile forward of the member's network, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        network = network_from_plans(member.plans_manager, member.configuration_manager, member.dataset_json)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            network(torch.empty(1, *member.input_shape))
    return counter.get_total_flops() / 1e12


def _architecture(member: Member) -> str:
    """What a tile's seconds belong to: the network, and how predict runs it (its backend; on a CPU its tiles per
    forward where measured, app.forward_choice)."""
    how = () if member.backend == "torch" and member.tiles_per_forward is None else \
        (member.backend, member.tiles_per_forward)
    return repr((member.architecture, *how))


@dataclass
class Measured:
    """This machine's rates (cost target `here`): per architecture its seconds per tile, and the rest once."""

    seconds_per_tile: dict[str, float]
    preprocess_seconds_per_mvoxel: float
    export_seconds_per_mvoxel: float
    load_bytes_per_second: float
    startup_seconds: float
    measured_at: str = ""


def _seconds_per_tile(member: Member, device: torch.device) -> tuple[float, float, int]:
    """(seconds per tile, seconds to load the network, its file's bytes): a tile forward batched as predict
    batches them, after one warm-up."""
    before = time.perf_counter()
    network = load_network(member, device)
    load_seconds = time.perf_counter() - before
    per_tile = seconds_per_tile(network, member.input_shape, tiles_per_forward(member, device), device)
    return per_tile, load_seconds, member.network_file.stat().st_size


def measure_here(members: list[Member], device: torch.device, known: Measured | None = None) -> Measured:
    """A tile forward per architecture not `known` yet; without `known`, also preprocessing and an export on a
    64 x 192 x 192 volume, a network's load, and a fresh process's imports."""
    seconds_per_tile = dict(known.seconds_per_tile) if known else {}
    load_seconds, load_bytes = 0.0, 0
    for member in members:
        key = _architecture(member)
        if key not in seconds_per_tile:
            seconds_per_tile[key], seconds, size = _seconds_per_tile(member, device)
            load_seconds, load_bytes = load_seconds + seconds, load_bytes + size
    if known is not None:
        return Measured(**{**asdict(known), "seconds_per_tile": seconds_per_tile})
    shape = (64, 192, 192)
    array = np.random.default_rng(0).integers(1, 900, shape, dtype=np.int16)
    image = Image(Path("measure.mha"), array, (1.0, 1.0, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    member = members[0]
    before = time.perf_counter()
    prepared = preprocess(image, member, device)
    preprocess_seconds = time.perf_counter() - before
    logits = torch.zeros((member.label_manager.num_segmentation_heads, *prepared.data.shape[1:]),
                         dtype=torch.half, device=prepared.data.device)
    total = ProbabilitySum(shape, member.label_manager.num_segmentation_heads, device)
    before = time.perf_counter()
    total.add(logits, member, prepared.properties, 1.0)
    export_seconds = time.perf_counter() - before
    before = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import panther_ensemble.app.predict_run"], check=True)
    startup = time.perf_counter() - before
    mvoxels = math.prod(shape) / 1e6
    return Measured(seconds_per_tile, preprocess_seconds / mvoxels, export_seconds / mvoxels,
                    load_bytes / max(load_seconds, 1e-3), startup, datetime.now().isoformat(timespec="seconds"))


def measured_here(members: list[Member], device: torch.device, remeasure: bool = False) -> Measured:
    """This machine's rates from the cache (architectures it lacks measured and added), or measured anew."""
    key = machine_key(device)
    entry = read_entry(key)
    rates = {name: entry[name] for name in Measured.__dataclass_fields__ if name in entry}
    known = None if remeasure or len(rates) < len(Measured.__dataclass_fields__) else Measured(**rates)
    measured = measure_here(members, device, known)
    if known is not None:
        log(f"here: rates measured {known.measured_at} on this machine, reused from {here_cache()} (--remeasure to "
            "measure again)")
    if known is None or measured.seconds_per_tile != known.seconds_per_tile:
        update_entry(key, asdict(measured))
    return measured


@dataclass
class PoolCost:
    """A pool of members priced on one case for a target, each by its MemberId: its row, its preprocessing group,
    its first load; per group its preprocessing; the fixed terms. `total` prices any of its members in a given order
    exactly as `cost` prices a spec of them, so that select's path and cost's verdict on the spec it writes are one
    number."""

    target: Target
    measured: Measured | None
    shape_zyx: tuple[int, ...]
    spacing_zyx: tuple[float, ...]
    rows: dict[MemberId, dict]  # {model, fold, checkpoint, label, tiles, tflop (per tile), seconds}
    group_of: dict[MemberId, str]  # its preprocessing group
    groups: dict[str, dict]  # per group: {members, grid, seconds}
    load_seconds: dict[MemberId, float]  # its network's load (the first member's is waited for)
    postprocessing: str = "none"  # the spec's kind (PostProcessing.kind), priced in the last stage

    def final_seconds(self) -> float:
        """The case's last stage: the mask, its post-processing, the write (engine.deadline's projection)."""
        return projected_final_seconds(math.prod(self.shape_zyx), self.postprocessing)

    def fixed_seconds(self, first: MemberId) -> float:
        rates = self.measured or self.target
        return rates.startup_seconds + self.load_seconds[first] + self.final_seconds()

    def total(self, chosen: list[MemberId]) -> float:
        """Projected seconds of a spec of these members in this order (each counted once)."""
        chosen = list(dict.fromkeys(chosen))
        groups = dict.fromkeys(self.group_of[k] for k in chosen)
        return round(self.fixed_seconds(chosen[0]) + sum(self.groups[g]["seconds"] for g in groups)
                     + sum(self.rows[k]["seconds"] for k in chosen), 1)

    def report(self, chosen: list[MemberId] | None = None) -> dict:
        """cost's report of a spec of these members (all of them by default)."""
        chosen = list(dict.fromkeys(self.rows if chosen is None else chosen))
        groups = list(dict.fromkeys(self.group_of[k] for k in chosen))
        return {"target": self.target.name, "source": self.target.source, "projection": self.target.projection,
                "shape_zyx": list(self.shape_zyx), "spacing_zyx": list(self.spacing_zyx),
                "total_seconds": self.total(chosen), "fixed_seconds": round(self.fixed_seconds(chosen[0]), 1),
                "postprocessing": self.postprocessing, "final_seconds": round(self.final_seconds(), 2),
                "groups": [{**self.groups[g], "members": sum(self.group_of[k] == g for k in chosen)} for g in groups],
                "members": [self.rows[k] for k in chosen],
                **({"measured": asdict(self.measured)} if self.measured else {})}


def pool_cost(members: list[Member], shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...], target: Target,
              measured: Measured | None = None, postprocessing: str = "none") -> PoolCost:
    """Every member's row and every group's preprocessing on one case of this geometry (TFLOP per tile counted on
    the meta device once per architecture; `here` takes the measured seconds per tile)."""
    if target.tflops is None and measured is None:
        raise ValueError("the 'here' target needs measured rates")
    rates = measured or target
    mvoxels = math.prod(shape_zyx) / 1e6
    labels = member_labels([m.id for m in members])
    rows, group_of, groups = {}, {}, {}
    tflop_per_tile: dict[str, float] = {}
    for member in members:
        key = preprocessing_key(member)
        grid = resampled_shape(shape_zyx, spacing_zyx, member)
        groups.setdefault(key, {"members": 0, "grid": list(grid),
                                "seconds": round(rates.preprocess_seconds_per_mvoxel * mvoxels, 2)})
        groups[key]["members"] += 1
        group_of[member.id] = key
        tiles = tile_count(grid, member.configuration_manager.patch_size)
        architecture = _architecture(member)
        if architecture not in tflop_per_tile:  # counted once per architecture: folds of a model share it
            tflop_per_tile[architecture] = tile_tflop(member)
        tflop = tflop_per_tile[architecture]
        per_tile = measured.seconds_per_tile[architecture] if measured else tflop / target.tflops
        rows[member.id] = {"model": member.spec.model, "fold": member.spec.fold, "checkpoint": member.spec.checkpoint,
                           "label": labels[member.id], "tiles": tiles, "tflop": round(tflop, 4),
                           "seconds": round(tiles * per_tile + rates.export_seconds_per_mvoxel * mvoxels, 2)}
    load = {m.id: m.network_file.stat().st_size / rates.load_bytes_per_second for m in members}
    return PoolCost(target, measured, tuple(shape_zyx), tuple(spacing_zyx), rows, group_of, groups, load,
                    postprocessing)


def pool_cost_on(members: list[Member], shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...], target: Target,
                 device: torch.device, remeasure: bool = False, postprocessing: str = "none") -> PoolCost:
    """pool_cost on the target; for `here`, this machine's rates (measured once per machine, then reused)."""
    measured = measured_here(members, device, remeasure) if target.tflops is None else None
    return pool_cost(members, shape_zyx, spacing_zyx, target, measured, postprocessing)


def format_cost(cost: dict) -> str:
    lines = [f"{cost['target']}: {cost['total_seconds']:.1f} s for a {' x '.join(map(str, cost['shape_zyx']))} case "
             f"at {' x '.join(f'{s:g}' for s in cost['spacing_zyx'])} mm (z, y, x)"
             + (" — a projection, not a measurement" if cost["projection"] else ""),
             f"  source: {cost['source']}",
             f"  fixed (start-up, first load, the last stage: mask, post-processing {cost['postprocessing']}, write "
             f"{cost['final_seconds']:.1f} s): {cost['fixed_seconds']:.1f} s; preprocessing: "
             + ", ".join(f"{g['seconds']:.1f} s for {g['members']} member(s) on {g['grid']}" for g in cost["groups"]),
             "  | member | tiles | TFLOP/tile | seconds |", "  | --- | --- | --- | --- |"]
    lines += [f"  | {r['label']} | {r['tiles']} | {r['tflop']:.3f} | {r['seconds']:.1f} |" for r in cost["members"]]
    return "\n".join(lines)
