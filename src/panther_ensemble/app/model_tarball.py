"""Your ensemble for Grand Challenge: its specs and only the member folds they name, checkpoints stripped to what
inference needs, and the weights manifest the product verifies at start-up — as a model tarball (GC extracts it to
/opt/ml/model: the specs beside the folds) or as the app's own folders (`build.sh --ensemble`: ensemble/ and
weights/ baked into the image). `panther-ensemble export-model` writes the tarball; export.sh and build.sh run this
in the image, with the image's torch.

    python -m panther_ensemble.app.model_tarball --weights ROOT --out DIR [--layout tarball|app] SPEC [SPEC ...]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tarfile
from pathlib import Path

import torch

from ..core.errors import PantherError, print_failure
from ..core.stop import written_atomically
from ..engine.members import INFERENCE_CHECKPOINT_KEYS, load_checkpoint
from ..engine.onnx_network import ONNX_MANIFEST
from ..engine.spec import ONNX_BACKENDS, check_against_weights, load_spec, network_files
from .manifest import write_manifest


def strip_checkpoint(source: Path, target: Path) -> bool:
    """Write `source` without what inference does not need (optimizer state, training log); a checkpoint with
    nothing to strip is copied byte for byte. Loaded with the safe loader: a checkpoint carrying code is refused.
    Returns whether anything was stripped."""
    checkpoint = load_checkpoint(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    if set(checkpoint) <= set(INFERENCE_CHECKPOINT_KEYS):
        shutil.copy(source, target)
        return False
    kept = {k: v for k, v in checkpoint.items() if k in INFERENCE_CHECKPOINT_KEYS}
    if "_best_ema" in kept and kept["_best_ema"] is not None:  # a numpy scalar: stored as a plain float
        kept["_best_ema"] = float(kept["_best_ema"])
    torch.save(kept, target)
    return True


def stage_models(spec_files: list[Path], weights_root: Path, weights_stage: Path, spec_stage: Path | None = None,
                 backend: str = "torch") -> Path:
    """Copy the specs (into spec_stage, default: beside the folds) and the folds they name from weights_root into
    weights_stage (checkpoints stripped; for the onnxruntime backend the ONNX models export-onnx wrote, and its
    onnx_manifest.json); write the manifest of weights_stage. Every spec is checked first; two specs for one socket
    are refused (the image could not choose)."""
    specs = [load_spec(Path(f)) for f in spec_files]
    sockets: dict[str, Path] = {}
    for spec in specs:
        check_against_weights(spec, weights_root, backend)
        if spec.input_socket in sockets:
            raise PantherError(f"{spec.path} and {sockets[spec.input_socket]}: two specs for input socket "
                               f"'{spec.input_socket}'; one model or image serves one spec per socket")
        sockets[spec.input_socket] = spec.path
    spec_stage = spec_stage or weights_stage
    for folder in (weights_stage, spec_stage):
        folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        shutil.copy(spec.path, spec_stage / spec.path.name)
        if spec.postprocessing is not None and spec.postprocessing.nnunet:  # nnU-Net's postprocessing.pkl
            (weights_stage / spec.postprocessing.nnunet).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(weights_root / spec.postprocessing.nnunet, weights_stage / spec.postprocessing.nnunet)
        for member in spec.members:
            source, target = member.network_file(weights_root, backend), member.network_file(weights_stage, backend)
            if target.exists():  # a fold two specs share
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            for name in ("plans.json", "dataset.json"):
                shutil.copy(weights_root / member.model / name, weights_stage / member.model / name)
            if backend in ONNX_BACKENDS:
                for file in network_files(member, weights_root, backend):
                    shutil.copy(file, target.parent / file.name)
                print(f"   {member.name}: {target.stat().st_size / 1e6:.1f} MB (ONNX)")
            elif strip_checkpoint(source, target):
                print(f"   {member.name}: {source.stat().st_size / 1e6:.1f} MB, stripped to "
                      f"{target.stat().st_size / 1e6:.1f} MB")
            else:
                print(f"   {member.name}: {target.stat().st_size / 1e6:.1f} MB")
    if backend in ONNX_BACKENDS and (weights_root / ONNX_MANIFEST).is_file():  # what export-onnx recorded
        shutil.copy(weights_root / ONNX_MANIFEST, weights_stage / ONNX_MANIFEST)
    manifest = write_manifest(weights_stage)
    print(f"   {manifest.name}: sha256 of every file")
    return manifest


def write_tarball(folder: Path, out: Path) -> Path:
    """`folder`'s content as a gzip tarball, reproducible: sorted, owner 0, mtime 0, no name or time in the gzip
    header; never half-written (core.stop.written_atomically)."""
    with written_atomically(Path(out)) as partial, open(partial, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(Path(folder).rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panther_ensemble.app.model_tarball",
                                     description="Stage specs and the folds they name (checkpoints stripped, a "
                                                 "manifest) for a model tarball or for baking into the image.")
    parser.add_argument("specs", type=Path, nargs="+", metavar="SPEC", help="ensemble spec(s), one per socket")
    parser.add_argument("--weights", type=Path, required=True, help="the weights root the specs name folds under")
    parser.add_argument("--out", type=Path, required=True, help="the folder to stage into")
    parser.add_argument("--layout", choices=("tarball", "app"), default="tarball",
                        help="tarball: specs beside the folds (GC's /opt/ml/model); app: OUT/ensemble/ and "
                             "OUT/weights/ (the image's own folders) (default: tarball)")
    args = parser.parse_args(argv)
    try:
        if args.layout == "app":
            stage_models(args.specs, args.weights, args.out / "weights", args.out / "ensemble")
        else:
            stage_models(args.specs, args.weights, args.out)
    except Exception as e:
        print_failure(e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
