"""`panther-ensemble export-onnx`: every member of a spec as an ONNX model, in a weights root of its own or beside
its checkpoints (`--beside`).

The output folder mirrors the weights root (plans.json and dataset.json per model folder) with
`fold_<f>/<checkpoint stem>.onnx` beside where the checkpoint was, the spec with `backend = "onnxruntime"`,
`onnx_manifest.json` (member, fold, checkpoint, files with sha256, opset, the check against torch) and
`weights.sha256`, which predict verifies. So `--weights OUT --ensemble OUT/<spec>` runs the ONNX members, and
the folder is what a GC model tarball of ONNX members holds. It is built in a hidden sibling folder and renamed
into place at the end: a failed export leaves nothing behind.

With `--beside`, each member's `<checkpoint stem>.onnx` goes beside its checkpoint in the weights root itself and the
spec is left as it is: on a CPU, predict then runs each member with whichever of the two this machine runs faster
(app.forward_choice). The files are exported into a hidden folder in the root first and moved beside the checkpoints
once every member has exported (a failed export leaves the root as it was); a weights.sha256 there lists them too.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ..app.manifest import MANIFEST_NAME, add_to_manifest, sha256, write_manifest
from ..core.errors import PantherError
from ..core.log import log
from ..core.stop import written_atomically
from ..engine.members import Member, load_member
from ..engine.onnx_network import INPUT_NAME, ONNX_MANIFEST, OUTPUT_NAME, OnnxNetwork, relative_difference
from ..engine.spec import EnsembleSpec, check_against_weights
from ..engine.spec_writer import SpecComments, write_spec

DEFAULT_OPSET = 18
EXTERNAL_DATA_BYTES = 100 * 2 ** 20  # larger networks keep their weights in <model>.onnx.data (ResEncL: 409 MB)


def export_network(network: torch.nn.Module, input_shape: list[int], target: Path, opset: int,
                   metadata: dict[str, str]) -> None:
    """torch.export-based ONNX export with a dynamic batch axis and the plans' fixed patch, checked by onnx's
    checker (the file path form, which follows external weights)."""
    import onnx

    parameter_bytes = sum(p.numel() * p.element_size() for p in network.parameters())
    example = torch.zeros(2, *input_shape)  # batch 2: an example batch of 1 would fix the axis at 1
    # torch.export (2.7) names its cache folders after getpass.getuser(), which raises for a uid without a passwd
    # entry, as a container run with --user has: the environment's name comes first
    if "USER" not in os.environ and "LOGNAME" not in os.environ:
        os.environ["USER"] = f"uid{os.getuid()}"
    try:  # the exporter narrates its steps on stdout and warns about its own internals: neither is the user's
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(network, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                        verbose=False)
    except Exception as e:  # the exporter raises many types; the first line says what failed
        raise PantherError(f"ONNX export failed ({str(e).strip().splitlines()[0][:200]})") from None
    program.model.metadata_props.update(metadata)
    program.save(target, external_data=parameter_bytes > EXTERNAL_DATA_BYTES)
    onnx.checker.check_model(str(target), full_check=True)


def max_difference(network: torch.nn.Module, exported: OnnxNetwork, input_shape: list[int]) -> float:
    """The largest logit difference between torch and ONNX Runtime on one random tile (CPU, fp32), relative to
    the largest logit's magnitude (at least 1)."""
    tile = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
    return relative_difference(exported, network, tile)


def _export_member(member: Member, weights_root: Path, out: Path, opset: int, verify: bool) -> dict:
    spec = member.spec
    target = spec.onnx_path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(member.folder / name, out / spec.model / name)
    input_shape = member.input_shape
    source = spec.checkpoint_path(weights_root)
    source_sha256 = sha256(source)
    try:  # errors name the member: the files are in a staging folder the user never sees
        export_network(member.network, input_shape, target, opset, {
            "panther_member": spec.name, "trainer_name": member.trainer_name,
            "configuration": member.configuration_name, "source_sha256": source_sha256})
    except PantherError as e:
        raise PantherError(f"{spec.name}: {e}") from None
    entry = {"member": spec.name, "model": spec.model, "fold": spec.fold, "checkpoint": spec.checkpoint,
             "onnx": target.relative_to(out).as_posix(), "source_sha256": source_sha256,
             "input_shape": ["batch", *input_shape], "opset": opset}
    if verify:
        entry["max_relative_difference"] = max_difference(member.network, OnnxNetwork(target, torch.device("cpu")),
                                                          input_shape)
        if entry["max_relative_difference"] > 1e-3:
            raise PantherError(f"{spec.name}: the exported model's logits differ from the checkpoint's by "
                               f"{entry['max_relative_difference']:.2g} (relative), more than 1e-3")
    entry["files"] = {f.relative_to(out).as_posix(): sha256(f) for f in sorted(target.parent.glob(target.name + "*"))}
    return entry


def _check_opset(opset: int) -> None:
    if opset < 17:
        raise PantherError(f"--opset must be at least 17 (LayerNormalization and the exporter's ops), got {opset}")


def _export_members(spec: EnsembleSpec, weights_root: Path, staging: Path, opset: int, verify: bool,
                    where: Callable[[dict], str]) -> list[dict]:
    """Every member exported into `staging`, one log line each (`where` names where its model goes)."""
    entries = []
    for index, member_spec in enumerate(spec.members, start=1):
        started = time.perf_counter()
        member = load_member(weights_root, member_spec)
        entries.append(_export_member(member, weights_root, staging, opset, verify))
        check = f", logits within {entries[-1]['max_relative_difference']:.1e} of torch's" if verify else ""
        log(f"[{index}/{len(spec.members)}] {member_spec.name} -> {where(entries[-1])} in "
            f"{time.perf_counter() - started:.1f}s{check}")
    return entries


def export_ensemble(spec: EnsembleSpec, weights_root: Path, out: Path, opset: int = DEFAULT_OPSET,
                    verify: bool = True) -> Path:
    """Export every member of the spec into `out` (which must not exist or be empty); returns the written
    spec. With `verify`, each model is run by ONNX Runtime on a random tile against the checkpoint's network."""
    import onnx

    _check_opset(opset)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PantherError(f"{out}: exists and is not an empty folder; export-onnx writes a new one")
    check_against_weights(spec, weights_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(out) as staging:  # the folder whole, or none (an empty one given is replaced)
        staging.mkdir()
        entries = _export_members(spec, weights_root, staging, opset, verify, lambda entry: entry["onnx"])
        if spec.postprocessing is not None and spec.postprocessing.nnunet:  # nnU-Net's postprocessing.pkl goes too
            (staging / spec.postprocessing.nnunet).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(weights_root / spec.postprocessing.nnunet, staging / spec.postprocessing.nnunet)
        write_spec(replace(spec, backend="onnxruntime"), staging / spec.path.name,
                   SpecComments.of(spec.path, spec))  # its comments (select's provenance) kept
        (staging / ONNX_MANIFEST).write_text(json.dumps({
            "spec": spec.path.name, "backend": "onnxruntime", "opset": opset, "torch": torch.__version__,
            "onnx": onnx.__version__, "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "members": entries}, indent=2) + "\n")
        write_manifest(staging, known={name: digest for entry in entries for name, digest in entry["files"].items()})
    return out / spec.path.name


def export_beside(spec: EnsembleSpec, weights_root: Path, opset: int = DEFAULT_OPSET, verify: bool = True
                  ) -> list[Path]:
    """Every member of the spec exported beside its checkpoint in `weights_root` (an earlier export there
    replaced); returns the ONNX models written. All are exported, and checked with `verify`, before any is moved
    into place."""
    _check_opset(opset)
    check_against_weights(spec, weights_root)
    weights_root = Path(weights_root)
    with tempfile.TemporaryDirectory(dir=weights_root, prefix=".panther-onnx-export-") as scratch:  # same disk
        staging = Path(scratch)
        entries = _export_members(spec, weights_root, staging, opset, verify, lambda entry: "beside its checkpoint")
        digests = {name: digest for entry in entries for name, digest in entry["files"].items()}
        # external weights first: an .onnx in place never lacks its .onnx.data
        for name in sorted(digests, key=lambda n: not n.endswith(".data")):
            os.replace(staging / name, weights_root / name)
    if (weights_root / MANIFEST_NAME).is_file():
        add_to_manifest(weights_root, digests)
    return [member.onnx_path(weights_root) for member in spec.members]
