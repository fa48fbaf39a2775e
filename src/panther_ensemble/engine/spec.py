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

TOP_KEYS = {"input_socket", "output_socket", "tumor_label", "tumor_label_name", "budget_seconds", "time_limit_seconds",
            "backend", "member", "postprocessing"}
# What a tumor's label is called in a dataset.json (PANTHER's: "tumor"; others: lesion, PDAC, carcinoma, ...)
TUMOR_WORDS = ("tumor", "tumour", "lesion", "cancer", "carcinoma", "pdac", "neoplasm", "malignan", "metasta")
MEMBER_KEYS = {"model", "fold", "checkpoint", "weight"}
REQUIRED_TOP = ("input_socket", "output_socket", "tumor_label")
REQUIRED_MEMBER = ("model", "fold", "checkpoint")
# torch: the checkpoints, run by PyTorch; onnxruntime and openvino (on a CPU): the members exported by
# `panther-ensemble export-onnx`, run by ONNX Runtime or OpenVINO
BACKENDS = ("torch", "onnxruntime", "openvino")
ONNX_BACKENDS = ("onnxruntime", "openvino")  # what runs export-onnx's models
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class MemberId:
    """Who a member is, and the one key every tool uses for it (the loader, select's candidates and path, the member
    table, the selection report, cost): its nnU-Net result folder's dataset, trainer, plans and configuration, its
    fold and its checkpoint file. Folds of one trainer fine-tuned in several datasets or with several plans (the
    seed's multi-stage fine-tuning) differ here. Two members of one spec never share it (load_spec)."""

    dataset: str  # the model folder's parent under the weights root, e.g. Dataset901_PantherT1 ("" where none)
    trainer: str
    plans: str  # "" where the folder's name is not nnU-Net's Trainer__Plans__configuration
    configuration: str
    fold: int | str
    checkpoint: str

    @classmethod
    def of(cls, model: str, fold: int | str, checkpoint: str) -> MemberId:
        folder = Path(model)
        parts = folder.name.split("__")
        trainer, plans, configuration = parts if len(parts) == 3 else (folder.name, "", "")
        dataset = folder.parent.as_posix()
        return cls("" if dataset == "." else dataset, trainer, plans, configuration, fold, checkpoint)

    @property
    def model(self) -> str:
        folder = "__".join((self.trainer, self.plans, self.configuration)) if self.plans else self.trainer
        return f"{self.dataset}/{folder}" if self.dataset else folder

    def __str__(self) -> str:
        """The member's path under the weights root: unique, and what logs and JSON keys say."""
        return f"{self.model}/fold_{self.fold}/{self.checkpoint}"

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "trainer": self.trainer, "plans": self.plans,
                "configuration": self.configuration, "fold": self.fold, "checkpoint": self.checkpoint}


_LABEL_PARTS = ("dataset", "trainer", "plans", "configuration", "fold", "checkpoint")


def _label_part(member: MemberId, part: str, short: bool) -> str:
    value = getattr(member, part)
    if part == "fold":
        return f"fold {value}"
    if part == "checkpoint" and short:
        return Path(value).stem.removeprefix("checkpoint_")
    return str(value)


def member_labels(members: list[MemberId]) -> dict[MemberId, str]:
    """A short label per member, unique among these: its trainer, fold and checkpoint, and the dataset, plans and
    configuration where they differ between these members, e.g. `Dataset901_X nnUNetTrainer PlansA fold 0 best`
    beside `Dataset902_Y nnUNetTrainer PlansB fold 0 best`. Checkpoints are named in full where their short forms
    would read alike (checkpoint_best.pth beside best.pth); members that would still read alike get their path."""
    members = list(dict.fromkeys(members))
    parts = [part for part in _LABEL_PARTS if part in ("trainer", "fold", "checkpoint")
             or len({getattr(m, part) for m in members}) > 1]
    for short in (True, False):
        labels = {m: " ".join(_label_part(m, part, short) for part in parts) for m in members}
        if len(set(labels.values())) == len(labels):
            return labels
    counts = {label: list(labels.values()).count(label) for label in labels.values()}
    return {m: label if counts[label] == 1 else str(m) for m, label in labels.items()}


@dataclass(frozen=True)
class MemberSpec:
    model: str
    fold: int | str  # an integer fold, or "all" as nnU-Net names the all-data fold
    checkpoint: str
    weight: float = 1.0

    @property
    def id(self) -> MemberId:
        return MemberId.of(self.model, self.fold, self.checkpoint)

    @property
    def name(self) -> str:
        return f"{self.model}/fold_{self.fold}/{self.checkpoint}"

    @property
    def trainer(self) -> str:
        """The trainer nnU-Net's result folder name gives (Trainer__Plans__configuration)."""
        return self.id.trainer

    def checkpoint_path(self, weights_root: Path) -> Path:
        return weights_root / self.model / f"fold_{self.fold}" / self.checkpoint

    def onnx_path(self, weights_root: Path) -> Path:
        """Where export-onnx writes this member: beside its checkpoint, named after it."""
        return self.checkpoint_path(weights_root).with_suffix(".onnx")

    def network_file(self, weights_root: Path, backend: str) -> Path:
        return self.onnx_path(weights_root) if backend in ONNX_BACKENDS else self.checkpoint_path(weights_root)


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
    tumor_label_name: str | None = None  # what dataset.json calls tumor_label, where that is not a tumor's name


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
        text = path.read_text()
    except FileNotFoundError:
        raise PantherError(f"{path}: ensemble spec does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PantherError(f"{path}: not a valid TOML ensemble spec ({e})") from None
    return parse_spec(text, path)


def parse_spec(text: str, path: Path) -> EnsembleSpec:
    """A spec's text, parsed and validated as the spec at `path` (engine.spec_writer writes its inverse)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
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
    tumor_label_name = raw.get("tumor_label_name")
    if tumor_label_name is not None:
        _expect(path, "the top level", "tumor_label_name", tumor_label_name, str, "a label's name in dataset.json")
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
        if Path(model).is_absolute() or ".." in Path(model).parts or Path(model).as_posix() != model \
                or model in ("", "."):
            raise PantherError(f"{path}: 'model' in {where} must be a relative path under the weights root, written "
                               f"with '/' and without '.' or '..' parts, got {model!r}")
        member = MemberSpec(model, fold, checkpoint, float(weight))
        again = next((k for k, other in enumerate(members, start=1) if other.id == member.id), None)
        if again is not None:
            raise PantherError(f"{path}: [[member]] {i} is [[member]] {again} again ({member.name}); list each "
                               "member once and raise its weight instead")
        members.append(member)
    return EnsembleSpec(path, raw["input_socket"], raw["output_socket"], tumor_label, tuple(members),
                        budget, backend, parse_postprocessing(path, raw.get("postprocessing"), tumor_label), time_limit,
                        tumor_label_name)


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
            check_tumor_name(spec, labels, folder / "dataset.json")
            if spec.tumor_label not in labels.values():
                raise PantherError(f"{spec.path}: tumor_label {spec.tumor_label} is not among the labels "
                                   f"{labels} of '{member.model}'")
            if spec.postprocessing is not None and spec.postprocessing.nnunet:
                _inside(spec, weights_root / spec.postprocessing.nnunet, weights_root)
            check_postprocessing(spec.path, spec.postprocessing, labels, weights_root)
        elif labels != first_labels:
            raise PantherError(f"{spec.path}: members have different label maps: '{member.model}' has "
                               f"{labels}, '{spec.members[0].model}' has {first_labels}")


def is_tumor_name(name: str) -> bool:
    return any(word in name.lower() for word in TUMOR_WORDS)


def check_tumor_name(spec: EnsembleSpec, labels: dict[str, int], dataset_json: Path) -> None:
    """tumor_label by its name in the members' dataset.json: a label not named like a tumor (the pancreas, say,
    where the tumor is another label) is refused unless tumor_label_name says the spec means it."""
    names = {value: name for name, value in labels.items()}
    name = names.get(spec.tumor_label)
    if name is None:
        return  # not a label at all: said next, with the labels there are
    if spec.tumor_label_name is not None:
        if spec.tumor_label_name != name:
            raise PantherError(f"{spec.path}: tumor_label {spec.tumor_label} is '{name}' in {dataset_json}, not "
                               f"'{spec.tumor_label_name}' as tumor_label_name says")
        return
    if not is_tumor_name(name):
        tumors = [(other, value) for value, other in names.items() if is_tumor_name(other)]
        hint = f" ('{tumors[0][0]}' is {tumors[0][1]}: tumor_label = {tumors[0][1]}?)" if tumors else ""
        raise PantherError(f"{spec.path}: tumor_label {spec.tumor_label} is '{name}' in {dataset_json}, not a "
                           f"tumor{hint}; where that label is what you mean, say so: tumor_label_name = \"{name}\"")


def _inside(spec: EnsembleSpec, place: Path, weights_root: Path) -> None:
    """A path the spec names, symlinks followed, must stay inside the weights root."""
    if not place.resolve().is_relative_to(Path(weights_root).resolve()):
        raise PantherError(f"{spec.path}: {place} leads outside the weights root {weights_root} (to "
                           f"{place.resolve()})")


def _missing_network_file(spec: EnsembleSpec, member: MemberSpec, weights_root: Path, backend: str) -> str:
    """What is missing, and the command or option that fixes it."""
    network_file = member.network_file(weights_root, backend)
    if backend in ONNX_BACKENDS:
        return (f"{spec.path}: ONNX model '{network_file.name}' not found in {network_file.parent} (the "
                f"{backend} backend runs members written by `panther-ensemble export-onnx`)")
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
