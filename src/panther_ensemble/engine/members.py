"""Load ensemble members from nnU-Net result folders: plans, labels, checkpoint, network.

The network is built from the plans' architecture entry (class name + kwargs), never by importing the
trainer class, so checkpoints of trainers nnunetv2 does not ship load as well. Checkpoints are pickles:
they are read with torch's weights-only unpickler and a small allow-list, so no code in them runs.
"""

from __future__ import annotations

import io
import itertools
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nnunetv2
import numpy as np
import torch
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import LabelManager, determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from ..core.errors import PantherError
from ..core.log import log
from .spec import ONNX_BACKENDS, MemberId, MemberSpec


def _allowed_numpy_globals() -> list:
    """What an nnU-Net checkpoint legitimately holds beyond tensors: numpy scalars (training log, _best_ema), their
    dtypes and, from custom trainers, arrays. numpy 1.x pickles them as numpy.core.multiarray.*, numpy 2.x as
    numpy._core.multiarray.*: both names are allowed, whichever numpy runs here (torch >= 2.6 takes the aliases)."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                          np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)]
    aliased = [(getattr(multiarray, name), f"{module}.multiarray.{name}") for name in ("scalar", "_reconstruct")
               for module in ("numpy.core", "numpy._core")]
    return [np.dtype, np.ndarray, *dtypes, *aliased]


_SAFE_GLOBALS = _allowed_numpy_globals()
# Allowed for the whole process: torch's safe_globals() context swaps one process-wide list in and out, so two
# threads loading at once (see pipeline.load_in_background) could restore each other's list early.
torch.serialization.add_safe_globals(_SAFE_GLOBALS)
_SAFE_NAMES = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in _SAFE_GLOBALS}

# What inference needs of a checkpoint; export strips the rest (optimizer state, training log).
INFERENCE_CHECKPOINT_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes",
                             "current_epoch", "_best_ema")

# Plans may only name network classes and layers from these packages (they are imported by name).
_ARCH_PACKAGES = ("dynamic_network_architectures.",)
_LAYER_PACKAGES = ("torch.nn.",)


class Network(Protocol):
    """What predict runs: a torch module, or an exported member run by ONNX Runtime (onnx_network)."""

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device) -> Network: ...


@dataclass
class Member:
    """One ensemble member: its spec entry, nnU-Net managers and, once loaded, its network in eval mode."""

    spec: MemberSpec
    folder: Path
    trainer_name: str
    configuration_name: str
    plans_manager: PlansManager
    configuration_manager: ConfigurationManager
    dataset_json: dict
    label_manager: LabelManager
    backend: str
    network_file: Path  # the checkpoint, or the exported ONNX model
    network: Network | None = None  # loaded by load_network
    arena_bytes: int | None = None  # ONNX Runtime on CUDA: the session's memory arena is capped at this (the plan)
    tiles_per_forward: int | None = None  # on a CPU, the measured fastest (app.forward_choice); None: memory decides

    @property
    def id(self) -> MemberId:
        return self.spec.id

    @property
    def weights_root(self) -> Path:
        """The root the spec's model path is relative to."""
        return self.folder.parents[len(Path(self.spec.model).parts) - 1]

    @property
    def input_shape(self) -> list[int]:
        return tile_shape(self.plans_manager, self.configuration_manager, self.dataset_json)

    @property
    def architecture(self) -> str:
        """Its network's identity: the plans' class and arguments, its tile and its classes (folds of a model, and
        members that differ only by dataset or training, share it)."""
        manager = self.configuration_manager
        return json.dumps([manager.network_arch_class_name, manager.network_arch_init_kwargs, self.input_shape,
                           self.label_manager.num_segmentation_heads], sort_keys=True, default=str)


def tile_shape(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
               dataset_json: dict) -> list[int]:
    """(channels, *patch) of one tile."""
    channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    return [channels, *configuration_manager.patch_size]


def _unsafe_globals(path: Path) -> list[str]:
    """Names the checkpoint's pickle would import beyond the allow-list (read from its opcodes, not run)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip/pickle at all: nothing to name
        return []
    return [n for n in names if n not in _SAFE_NAMES]


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's content, unpickled without executing anything it carries. Tensors of torch's zip format are
    memory-mapped (copy-on-write), not read: a ResEncL member is 400 MB."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch's unpickler fails on garbage in many ways (IndexError on b"truncated")
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise PantherError(f"{path}: refused to load: the checkpoint holds {', '.join(unsafe[:3])}, which "
                               "is not weights or a training log and could run code") from None
        # torch's own text here is advice to disable weights_only: the wrong advice, so it is not repeated
        reason = "truncated, or not written by torch.save"
        if isinstance(e, (RuntimeError, OSError)):
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PantherError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise PantherError(f"{path}: not an nnU-Net checkpoint (no 'network_weights' table)")
    odd = [k for k, v in checkpoint["network_weights"].items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise PantherError(f"{path}: 'network_weights' holds {type(checkpoint['network_weights'][odd[0]]).__name__} "
                           f"where a tensor belongs ({odd[0]})")
    return checkpoint


def _check_importable_names(plans_path: Path, configuration_manager: ConfigurationManager) -> None:
    class_name = configuration_manager.network_arch_class_name
    if not str(class_name).startswith(_ARCH_PACKAGES):
        raise PantherError(f"{plans_path}: network class '{class_name}' is not from dynamic_network_architectures")
    for key in configuration_manager.network_arch_init_kwargs_req_import:
        name = configuration_manager.network_arch_init_kwargs.get(key)
        if name is not None and not str(name).startswith(_LAYER_PACKAGES):
            raise PantherError(f"{plans_path}: architecture kwarg '{key}' = '{name}' is not a torch.nn class")


def _configuration_manager(plans_manager: PlansManager, name: str, plans_path: Path) -> ConfigurationManager:
    """nnU-Net's manager of the configuration. Plans of nnU-Net before 2.4 describe the network without an
    "architecture" entry; nnU-Net rebuilds it from their UNet_* keys (PlainConvUNet and ResidualEncoderUNet), and
    its warning about that goes to stdout here: stderr is for problems (GC shows it as warnings)."""
    old_class_name = plans_manager.plans["configurations"].get(name, {}).get("UNet_class_name")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            manager = plans_manager.get_configuration(name)
        except (KeyError, RuntimeError) as e:
            raise PantherError(f"{plans_path}: configuration '{name}' cannot be read as nnU-Net plans "
                               f"({type(e).__name__}: {e})") from None
    if any("old nnU-Net plans format" in str(w.message) for w in caught) and plans_path not in _REPORTED_OLD_PLANS:
        _REPORTED_OLD_PLANS.add(plans_path)
        log(f"{plans_path}: plans written before nnU-Net 2.4; network rebuilt by nnU-Net from '{old_class_name}'")
    return manager


_REPORTED_OLD_PLANS: set[Path] = set()


def _configuration_name(member: MemberSpec, plans: dict, plans_path: Path) -> str:
    """The configuration nnU-Net's folder name gives (Trainer__Plans__configuration)."""
    name = Path(member.model).name.split("__")[-1]
    if name not in plans.get("configurations", {}):
        raise PantherError(f"{plans_path}: has no configuration '{name}' (named by {member.name})")
    return name


def network_from_plans(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                       dataset_json: dict) -> torch.nn.Module:
    """The inference network (no deep supervision, no init) that the plans' architecture entry describes."""
    return get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        allow_init=False,
        deep_supervision=False,
    )


def _network_with_weights(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                          dataset_json: dict, weights: dict, misfit: str) -> torch.nn.Module:
    """The network built without memory (meta device) and given the checkpoint's tensors themselves: building
    a ResEncL on the host (torch's layer init included) and copying 400 MB into it took 2.7 s of a member's 3.2 s
    load on this project's 2-core CPU; this way the whole load takes 0.3 s."""
    with torch.device("meta"):
        network = network_from_plans(plans_manager, configuration_manager, dataset_json)
    expected = network.state_dict()
    # the module's dtypes, as load_state_dict's copy would give them (a checkpoint saved in half precision)
    weights = {k: v.to(expected[k].dtype) if k in expected else v for k, v in weights.items()}
    try:
        network.load_state_dict(weights, assign=True)
    except RuntimeError as e:
        raise PantherError(f"{misfit} ({str(e).splitlines()[0]})") from None
    unset = [name for name, t in itertools.chain(network.named_parameters(), network.named_buffers()) if t.is_meta]
    if unset:  # a buffer that is not saved in checkpoints: this loader cannot give it a value
        raise PantherError(f"{misfit} (no value for {', '.join(unset[:3])})")
    return network


def describe_member(weights_root: Path, member: MemberSpec, backend: str = "torch") -> Member:
    """The member from its folder alone (plans, dataset, the configuration its folder name gives), without its
    network: cheap, so a whole ensemble is checked and grouped before any checkpoint is read."""
    folder = weights_root / member.model
    plans_path = folder / "plans.json"
    plans = json.loads(plans_path.read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans_manager = PlansManager(plans)
    configuration_name = _configuration_name(member, plans, plans_path)
    configuration_manager = _configuration_manager(plans_manager, configuration_name, plans_path)
    if configuration_manager.previous_stage_name is not None:
        raise PantherError(f"{plans_path}: configuration '{configuration_name}' is a cascade stage; "
                           "cascades are not supported")
    _check_importable_names(plans_path, configuration_manager)
    return Member(member, folder, member.trainer, configuration_name, plans_manager,
                  configuration_manager, dataset_json, plans_manager.get_label_manager(dataset_json), backend,
                  member.network_file(weights_root, backend))


def import_case_code(members: list[Member]) -> None:
    """Import now what the members' first case would import: nnU-Net finds the preprocessor and normalization
    classes by importing modules, building a network imports its architecture, torch 2.7 imports sympy on the first
    torch._check of a meta-device init and torch.load its serialization config. Mid-case, under the RLIMIT_DATA that
    GC's shim sets, such an import failed as a SystemError and the process then aborted (1 in 6 runs of the
    allocation test in the image)."""
    if any(member.backend == "torch" for member in members):  # torch.load imports its serialization config lazily
        buffer = io.BytesIO()
        torch.save(torch.zeros(1), buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    built: set[str] = set()
    for member in members:
        manager = member.configuration_manager
        manager.preprocessor_class  # noqa: B018 (nnU-Net's lookup imports its modules)
        for scheme in manager.normalization_schemes:
            recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "preprocessing" / "normalization"), scheme,
                                        "nnunetv2.preprocessing.normalization")
        if member.backend == "torch" and member.architecture not in built:
            built.add(member.architecture)
            with torch.device("meta"):  # no memory: only the imports and torch's first checks
                network_from_plans(member.plans_manager, manager, member.dataset_json)


def load_network(member: Member, device: torch.device | None = None) -> Network:
    """The member's network: with the torch backend its checkpoint's weights in the plans' architecture (on the
    host, or copied to a CUDA device on a stream of its own, so that the copy overlaps other members' forwards),
    with onnxruntime its exported model in a session on `device`, with openvino that model compiled for this CPU.
    Checks that the file is the member's."""
    device = device or torch.device("cpu")
    plans_path = member.folder / "plans.json"
    if member.backend in ONNX_BACKENDS:
        if member.backend == "openvino":
            from .openvino_network import OpenVinoNetwork

            network = OpenVinoNetwork(member.network_file, device, member.tiles_per_forward)
        else:
            from .onnx_network import OnnxNetwork

            network = OnnxNetwork(member.network_file, device, member.arena_bytes)
        _check_recorded_configuration(member, network.metadata.get("configuration"))
        _check_onnx_fits(network, member.input_shape, member.label_manager.num_segmentation_heads, plans_path)
        return network
    checkpoint = load_checkpoint(member.network_file)
    _check_recorded_configuration(member, (checkpoint.get("init_args") or {}).get("configuration"))
    network = _network_with_weights(member.plans_manager, member.configuration_manager, member.dataset_json,
                                    checkpoint["network_weights"], f"{member.network_file}: weights do not fit "
                                    f"the architecture in {plans_path}").eval()
    if device.type == "cuda":
        stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            network.to(device)
        stream.synchronize()
    return network


def _check_recorded_configuration(member: Member, recorded: str | None) -> None:
    if recorded is not None and recorded != member.configuration_name:
        raise PantherError(f"{member.network_file}: was trained with configuration '{recorded}', but its folder "
                           f"{member.folder.name} names '{member.configuration_name}'")


def load_member(weights_root: Path, member: MemberSpec, backend: str = "torch",
                device: torch.device | None = None) -> Member:
    """The member ready to predict: described, with its network loaded (see load_network)."""
    described = describe_member(weights_root, member, backend)
    described.network = load_network(described, device)
    return described


def _check_onnx_fits(network, input_shape: list[int], classes: int, plans_path: Path) -> None:
    """The exported model takes the plans' patch and channels and gives one output per label."""
    if list(network.input_shape[1:]) != input_shape or network.num_classes != classes:
        raise PantherError(f"{network.path}: the model takes {list(network.input_shape[1:])} and gives "
                           f"{network.num_classes} classes, but {plans_path} asks for {input_shape} "
                           f"(channels, patch) and {classes} classes: exported from another model?")
