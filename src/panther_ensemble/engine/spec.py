"""The ensemble spec (TOML): parse, validate against the weights, and locate specs and weights.

Everything here is checked before any heavy work, and every problem is one line naming the file.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PantherError, finite_number
from .postprocess import PostProcessing
from .postprocess import check_labels as check_postprocessing
from .postprocess import parse as parse_postprocessing

TOP_KEYS = {"input_socket", "output_socket", "tumor_label", "budget_seconds", "time_limit_seconds", "backend", "member",
            "postprocessing"}
MEMBER_KEYS = {"model", "fold", "checkpoint", "weight"}
REQUIRED_TOP = ("input_socket", "output_socket", "tumor_label")
REQUIRED_MEMBER = ("model", "fold", "checkpoint")
# torch: the checkpoints, run by PyTorch; onnxruntime: the members exported by `panther-ensemble export-onnx`
BACKENDS = ("torch", "onnxruntime")
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class MemberSpec:
    model: str
    fold: int | str  # an integer fold, or "all" as nnU-Net names the all-data fold
    checkpoint: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.model}/fold_{self.fold}/{self.checkpoint}"

    @property
    def trainer(self) -> str:
        """The trainer nnU-Net's result folder name gives (Trainer__Plans__configuration)."""
        return Path(self.model).name.split("__")[0]

    def checkpoint_path(self, weights_root: Path) -> Path:
        return weights_root / self.model / f"fold_{self.fold}" / self.checkpoint

    def onnx_path(self, weights_root: Path) -> Path:
        """Where export-onnx writes this member: beside its checkpoint, named after it."""
        return self.checkpoint_path(weights_root).with_suffix(".onnx")

    def network_file(self, weights_root: Path, backend: str) -> Path:
        return self.onnx_path(weights_root) if backend == "onnxruntime" else self.checkpoint_path(weights_root)


@dataclass(frozen=True)
class EnsembleSpec:
    path: Path
    input_socket: str
    output_socket: str
    tumor_label: int
    members: tuple[MemberSpec, ...]
    budget_seconds: float | None = None  # per task; None: the time limit less the safety margin
    backend: str | None = None  # None: the command line's choice, else torch
    postprocessing: PostProcessing | None = None  # the [postprocessing] table
    time_limit_seconds: float | None = None  # the phase's time limit per task on GC; None: GC's default, 300 s


def _unknown_key_error(path: Path, where: str, key: str, known: set[str]) -> PantherError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"
    return PantherError(f"{path}: unknown key '{key}' in {where}{hint}")


def _expect(path: Path, where: str, key: str, value: object, kind: type | tuple[type, ...], what: str):
    if isinstance(value, bool) or not isinstance(value, kind):  # TOML booleans are never a valid value here
        raise PantherError(f"{path}: '{key}' in {where} must be {what}, got {value!r}")
    return value


def _seconds(path: Path, raw: dict, key: str) -> float | None:
    """An optional positive, finite number of seconds at the top level."""
    value = raw.get(key)
    if value is None:
        return None
    _expect(path, "the top level", key, value, (int, float), "a number of seconds")
    return float(finite_number(value, f"{path}: '{key}'"))


def load_spec(path: Path) -> EnsembleSpec:
    """Parse and validate a spec file's own content (not yet the weights it names)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PantherError(f"{path}: ensemble spec does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PantherError(f"{path}: not a valid TOML ensemble spec ({e})") from None
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown_key_error(path, "the top level", key, TOP_KEYS)
    for key in REQUIRED_TOP:
        if key not in raw:
            raise PantherError(f"{path}: missing required key '{key}'")
    for key in ("input_socket", "output_socket"):  # the output socket names a folder under /output
        slug = _expect(path, "the top level", key, raw[key], str, "a socket slug")
        if not SLUG.fullmatch(slug):
            raise PantherError(f"{path}: '{key}' must be a socket slug (letters, digits, '-', '_'), got {slug!r}")
    tumor_label = _expect(path, "the top level", "tumor_label", raw["tumor_label"], int, "an integer label")
    budget, time_limit = _seconds(path, raw, "budget_seconds"), _seconds(path, raw, "time_limit_seconds")
    if budget is not None and time_limit is not None and budget > time_limit:
        raise PantherError(f"{path}: 'budget_seconds' ({budget:g}) is past 'time_limit_seconds' ({time_limit:g}): GC "
                           "would stop the job first")
    backend = raw.get("backend")
    if backend is not None and _expect(path, "the top level", "backend", backend, str, "a backend name") \
            not in BACKENDS:
        raise PantherError(f"{path}: 'backend' must be one of {', '.join(BACKENDS)}, got '{backend}'")
    entries = raw.get("member", [])
    if not isinstance(entries, list) or not entries:
        raise PantherError(f"{path}: needs at least one [[member]] table")
    members = []
    for i, entry in enumerate(entries, start=1):
        where = f"[[member]] {i}"
        for key in entry:
            if key not in MEMBER_KEYS:
                raise _unknown_key_error(path, where, key, MEMBER_KEYS)
        for key in REQUIRED_MEMBER:
            if key not in entry:
                raise PantherError(f"{path}: missing required key '{key}' in {where}")
        model = _expect(path, where, "model", entry["model"], str, "a model folder under the weights root")
        fold = entry["fold"]
        if fold != "all":
            _expect(path, where, "fold", fold, int, "an integer or \"all\"")
            if fold < 0:
                raise PantherError(f"{path}: 'fold' in {where} must not be negative, got {fold}")
        checkpoint = _expect(path, where, "checkpoint", entry["checkpoint"], str, "a checkpoint file name")
        if Path(checkpoint).name != checkpoint or checkpoint in ("", ".", ".."):
            raise PantherError(f"{path}: 'checkpoint' in {where} must be a file name in fold_{fold}/, got "
                               f"{checkpoint!r}")
        weight = _expect(path, where, "weight", entry.get("weight", 1.0), (int, float), "a positive number")
        finite_number(weight, f"{path}: 'weight' in {where}")
        if Path(model).is_absolute() or ".." in Path(model).parts:
            raise PantherError(f"{path}: 'model' in {where} must be a relative path under the weights root")
        members.append(MemberSpec(model, fold, checkpoint, float(weight)))
    return EnsembleSpec(path, raw["input_socket"], raw["output_socket"], tumor_label, tuple(members),
                        budget, backend, parse_postprocessing(path, raw.get("postprocessing"), tumor_label), time_limit)


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PantherError(f"{path}: missing (an nnU-Net result folder holds plans.json and dataset.json)") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PantherError(f"{path}: not valid JSON ({e})") from None


def check_against_weights(spec: EnsembleSpec, weights_root: Path, backend: str = "torch") -> None:
    """Every member's folder, fold and network file (checkpoint, or ONNX model for the onnxruntime backend) exist;
    all members share one label map holding tumor_label."""
    first_labels: dict | None = None
    for member in spec.members:
        folder = weights_root / member.model
        for place in (folder, folder / "plans.json", folder / "dataset.json", member.network_file(weights_root,
                                                                                                 backend)):
            _inside(spec, place, weights_root)
        if not folder.is_dir():
            raise PantherError(f"{spec.path}: model folder '{member.model}' not found under {weights_root}")
        network_file = member.network_file(weights_root, backend)
        if not network_file.parent.is_dir():
            raise PantherError(f"{spec.path}: fold {member.fold} of '{member.model}' not found "
                               f"({network_file.parent} is missing)")
        if not network_file.is_file():
            raise PantherError(_missing_network_file(spec, member, weights_root, backend))
        dataset = _load_json(folder / "dataset.json")
        plans = _load_json(folder / "plans.json")
        labels = dataset.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise PantherError(f"{folder / 'dataset.json'}: has no 'labels' map")
        if any(not isinstance(v, int) for v in labels.values()) or "regions_class_order" in dataset:
            raise PantherError(f"{folder / 'dataset.json'}: region-based labels (nnU-Net 'regions') are not "
                               "supported; expected one integer per label")
        configuration = _configuration_from_folder_name(member.model)
        if configuration is not None and configuration not in plans.get("configurations", {}):
            raise PantherError(f"{folder / 'plans.json'}: has no configuration '{configuration}'")
        if first_labels is None:
            first_labels = labels
            if spec.tumor_label not in labels.values():
                raise PantherError(f"{spec.path}: tumor_label {spec.tumor_label} is not among the labels "
                                   f"{labels} of '{member.model}'")
            if spec.postprocessing is not None and spec.postprocessing.nnunet:
                _inside(spec, weights_root / spec.postprocessing.nnunet, weights_root)
            check_postprocessing(spec.path, spec.postprocessing, labels, weights_root)
        elif labels != first_labels:
            raise PantherError(f"{spec.path}: members have different label maps: '{member.model}' has "
                               f"{labels}, '{spec.members[0].model}' has {first_labels}")


def _inside(spec: EnsembleSpec, place: Path, weights_root: Path) -> None:
    """A path the spec names, symlinks followed, must stay inside the weights root."""
    if not place.resolve().is_relative_to(Path(weights_root).resolve()):
        raise PantherError(f"{spec.path}: {place} leads outside the weights root {weights_root} (to "
                           f"{place.resolve()})")


def _missing_network_file(spec: EnsembleSpec, member: MemberSpec, weights_root: Path, backend: str) -> str:
    """What is missing, and the command or option that fixes it."""
    network_file = member.network_file(weights_root, backend)
    if backend == "onnxruntime":
        return (f"{spec.path}: ONNX model '{network_file.name}' not found in {network_file.parent} (the "
                "onnxruntime backend runs members written by `panther-ensemble export-onnx`)")
    hint = " (this folder holds ONNX models: use --backend onnxruntime)" if member.onnx_path(weights_root).is_file() \
        else ""
    return f"{spec.path}: checkpoint '{member.checkpoint}' not found in {network_file.parent}{hint}"


def network_files(member: MemberSpec, weights_root: Path, backend: str = "torch") -> list[Path]:
    """The member's network file and, for an ONNX model, its external weights where export-onnx wrote them."""
    network_file = member.network_file(weights_root, backend)
    external = network_file.with_name(network_file.name + ".data")  # export-onnx's name for large weights
    return [network_file, *([external] if external.is_file() else [])]


def member_files(spec: EnsembleSpec, weights_root: Path, backend: str = "torch") -> list[Path]:
    """Every file the ensemble reads from the weights root (an ONNX model's external weights included)."""
    files = []
    for member in spec.members:
        folder = weights_root / member.model
        files += [folder / "plans.json", folder / "dataset.json", *network_files(member, weights_root, backend)]
    if spec.postprocessing is not None and spec.postprocessing.nnunet:
        files.append(weights_root / spec.postprocessing.nnunet)
    return list(dict.fromkeys(files))


def _configuration_from_folder_name(model: str) -> str | None:
    """nnU-Net names result folders Trainer__Plans__configuration."""
    parts = Path(model).name.split("__")
    return parts[2] if len(parts) == 3 else None
