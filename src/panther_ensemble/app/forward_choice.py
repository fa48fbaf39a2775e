"""On a CPU, how each member's tiles go through its network fastest: torch, or ONNX Runtime or OpenVINO (those that
are installed, where the member has an ONNX export beside its checkpoint: `export-onnx --beside`), and how many tiles
per forward.

Chosen by one measurement per architecture on this machine (each option's seconds per tile, after a warm-up), kept
in the per-host cache that cost's `here` target uses (app.here_cache) and reused. Members of a measured architecture
without an export take its fastest torch option. A backend that --backend or the spec names wins; on a GPU torch
runs, one tile per forward, as before. $PANTHER_FORWARD_CHOICE: `on` (default), `off` (torch, tiles by memory
alone), `remeasure` (measure again, e.g. after the machine's load changed).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import metadata

import torch

from ..core.errors import PantherError
from ..core.log import log
from ..engine.activations import tiles_per_forward
from ..engine.loading import Verify
from ..engine.members import Member, Network, load_network, network_from_plans
from ..engine.onnx_network import relative_difference
from ..engine.spec import ONNX_BACKENDS, member_labels, network_files
from .here_cache import here_cache, machine_key, read_entry, update_entry
from .manifest import Manifest

VARIABLE = "PANTHER_FORWARD_CHOICE"
SETTINGS = ("on", "off", "remeasure")
BATCHES = (1, 2, 4)  # tiles per forward tried, as many as memory allows (engine.activations)
REPEATS = 3  # timed forwards per option, after one warm-up: their median
# An ONNX backend's way is taken only where its logits on random tiles stay this close to torch's (relative to the
# largest logit): on the benchmark's t1-96 case (six random-weight 96^3 members, near ties everywhere) ONNX Runtime's
# 8e-6 gave Dice 0.99957 against the stock reference, OpenVINO one tile at a time 7e-5 gave 0.99940, OpenVINO two at a
# time 1.9e-4 gave 0.99897, outside the parity bound (docs/contracts.md) (2026-12-07).
DIFFERENCE_LIMIT = 1e-4
# the packages that install each backend's module (the image has onnxruntime as onnxruntime-gpu)
DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",)}


@dataclass(frozen=True)
class Option:
    backend: str
    tiles: int
    version: str  # the backend's version: a measurement of another version is not this one's

    @property
    def name(self) -> str:
        return f"{self.backend} {self.version} x{self.tiles}"


def seconds_per_tile(network: Network, input_shape: list[int], tiles: int, device: torch.device,
                     repeats: int = REPEATS) -> float:
    """Seconds per tile of a forward of `tiles` tiles through the network: the median of `repeats` forwards after
    one warm-up forward (autocast on a GPU, as predict runs it)."""
    batch = torch.zeros((tiles, *input_shape), device=device)
    seconds = []
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        network(batch)
        for _ in range(repeats):
            started = time.perf_counter()
            network(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) / tiles


def onnx_export_usable(member: Member, manifest: Manifest | None) -> bool:
    """Whether the member has an ONNX export beside its checkpoint that this run may use: its files there and,
    where the weights root has a manifest, listed in it (an unlisted file is never read)."""
    files = network_files(member.spec, member.weights_root, "onnxruntime")
    if not files[0].is_file():
        return False
    if manifest is not None and any(f.relative_to(manifest.root).as_posix() not in manifest.listed for f in files):
        log(f"{files[0]}: not listed in {manifest.path}: the member's ONNX export is not considered")
        return False
    return True


def onnx_runners() -> dict[str, str]:
    """The installed backends that run export-onnx's models on a CPU, with their versions (from the packages'
    metadata: nothing is imported that the chosen forwards do not use)."""
    versions = {}
    for backend in ONNX_BACKENDS:
        for distribution in DISTRIBUTIONS[backend]:
            try:
                versions[backend] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def _torch_network(member: Member, own_weights: bool, verify: Verify | None) -> torch.nn.Module:
    """The member's torch network: with its checkpoint's weights (verified first) where the ONNX backends' logits
    are checked against it, else random weights (what a forward costs does not depend on them)."""
    if not own_weights:
        return network_from_plans(member.plans_manager, member.configuration_manager, member.dataset_json).eval()
    checkpoint = replace(member, backend="torch", network_file=member.spec.network_file(member.weights_root, "torch"))
    if verify is not None:
        verify(checkpoint)
    return load_network(checkpoint, torch.device("cpu"))


def _measure(member: Member, options: list[Option], verify: Verify | None, exported: bool
             ) -> tuple[dict[str, float], dict[str, float]]:
    """Each option's seconds per tile for the member's architecture on this CPU and, for the ONNX backends (the
    member's own export, verified first), its logits' relative difference from torch's on random tiles."""
    cpu, networks = torch.device("cpu"), {"torch": _torch_network(member, exported, verify)}
    seconds, differences, verified = {}, {}, False
    for option in options:
        if option.backend not in networks:
            onnx_member = replace(member, backend=option.backend,
                                  network_file=member.spec.network_file(member.weights_root, option.backend))
            if verify is not None and not verified:
                verify(onnx_member)
                verified = True
            networks[option.backend] = load_network(onnx_member, cpu)
        seconds[option.name] = seconds_per_tile(networks[option.backend], member.input_shape, option.tiles, cpu)
        if option.backend != "torch":
            tiles = torch.randn((option.tiles, *member.input_shape), generator=torch.Generator().manual_seed(0))
            differences[option.name] = relative_difference(networks[option.backend], networks["torch"], tiles)
    return seconds, differences


def _setting() -> str:
    setting = os.environ.get(VARIABLE, "on")
    if setting not in SETTINGS:
        raise PantherError(f"${VARIABLE} must be one of {', '.join(SETTINGS)}, got '{setting}'")
    return setting


def choose_forwards(members: list[Member], device: torch.device, verify: Verify | None = None) -> None:
    """Set each member's backend and tiles per forward to the fastest measured on this machine (see the module);
    nothing changes on a GPU, with the setting off, or where no member has a usable ONNX export and none of their
    architectures was measured before."""
    setting = _setting()
    if device.type != "cpu" or setting == "off" or not members:
        return
    manifest = Manifest.of(members[0].weights_root)
    exported = {m.id for m in members if onnx_export_usable(m, manifest)}
    runners = onnx_runners()
    if exported and not runners:
        log(f"{len(exported)} member(s) have ONNX exports beside their checkpoints, but neither ONNX Runtime nor "
            "OpenVINO is installed (pip install 'panther-ensemble[onnx]' or '[openvino]'): torch runs them")
        exported = set()
    key = machine_key(device)
    kept = {} if setting == "remeasure" else dict(read_entry(key).get("forwards", {}))
    by_architecture: dict[str, list[Member]] = {}
    for member in members:
        by_architecture.setdefault(member.architecture, []).append(member)
    labels = member_labels([m.id for m in members])
    changed = False
    for architecture, group in by_architecture.items():
        with_export = [m for m in group if m.id in exported]
        if not with_export and architecture not in kept:
            continue  # nothing to choose between that memory does not already decide
        batches = [b for b in BATCHES if b <= tiles_per_forward(group[0], device)]
        options = [Option("torch", b, torch.__version__) for b in batches]
        if with_export:
            options += [Option(backend, b, version) for backend, version in runners.items() for b in batches]
        record = dict(kept.get(architecture, {}))
        seconds = dict(record.get("seconds_per_tile", {}))
        differences = dict(record.get("max_relative_difference", {}))
        missing = [o for o in options if o.name not in seconds or (o.backend != "torch" and o.name not in differences)]
        if missing:
            measured, checked = _measure((with_export or group)[0], missing, verify, bool(with_export))
            seconds, differences = {**seconds, **measured}, {**differences, **checked}
            record = {"seconds_per_tile": seconds, "max_relative_difference": differences,
                      "measured_at": datetime.now().isoformat(timespec="seconds")}
            kept[architecture], changed = record, True
        for member in group:
            usable = [o for o in options if o.name in seconds and (o.backend == "torch" or member.id in exported
                                                                   and differences[o.name] <= DIFFERENCE_LIMIT)]
            best = min(usable, key=lambda o: seconds[o.name])
            if best.backend != member.backend:
                member.backend = best.backend
                member.network_file = member.spec.network_file(member.weights_root, best.backend)
            member.tiles_per_forward = best.tiles
        _log_choice(group, labels, options, seconds, differences, "measured now" if missing else
                    f"measured {record.get('measured_at', '?')}, kept in {here_cache()}")
    if changed:
        update_entry(key, {"forwards": kept})


def _log_choice(group: list[Member], labels: dict, options: list[Option], seconds: dict[str, float],
                differences: dict[str, float], how: str) -> None:
    """One line per architecture: what runs its members, at what measured speed, against torch's best, and the
    faster ways not taken for their logits."""
    torch_best = min((o for o in options if o.backend == "torch"), key=lambda o: seconds[o.name])
    chosen: dict[Option, list[str]] = {}
    for member in group:
        option = next(o for o in options if (o.backend, o.tiles) == (member.backend, member.tiles_per_forward))
        chosen.setdefault(option, []).append(labels[member.id])
    ways = "; ".join(f"{', '.join(names)}: {o.backend}, {o.tiles} tile(s) per forward, {seconds[o.name]:.3f} s a tile"
                     for o, names in chosen.items())
    inexact = [f"{o.backend} x{o.tiles} ({seconds[o.name]:.3f} s, {differences[o.name]:.1e})" for o in options
               if differences.get(o.name, 0.0) > DIFFERENCE_LIMIT and seconds[o.name] < seconds[torch_best.name]]
    refused = f"; not taken, logits further than {DIFFERENCE_LIMIT:.0e} from torch's: {', '.join(inexact)}" \
        if inexact else ""
    log(f"forwards on this CPU: {ways} (torch at best {seconds[torch_best.name]:.3f} s, {torch_best.tiles} at a time; "
        f"{how}{refused})")
