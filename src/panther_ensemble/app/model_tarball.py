"""The content of a GC model tarball: a spec and only the member folds it names, checkpoints stripped to what
inference needs, and the weights manifest the product verifies at start-up (export.sh runs this in the image).

    python -m panther_ensemble.app.model_tarball SPEC WEIGHTS_ROOT STAGE
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from ..core.errors import PantherError
from ..engine.members import INFERENCE_CHECKPOINT_KEYS, load_checkpoint
from ..engine.spec import check_against_weights, load_spec
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


def stage_models(spec_file: Path, weights_root: Path, stage: Path) -> Path:
    """Copy the spec and the folds it names from weights_root into stage (stripped); write the manifest."""
    spec = load_spec(spec_file)
    check_against_weights(spec, weights_root)
    stage.mkdir(parents=True, exist_ok=True)
    shutil.copy(spec_file, stage / spec_file.name)
    for member in spec.members:
        source, target = member.checkpoint_path(weights_root), member.checkpoint_path(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copy(weights_root / member.model / name, stage / member.model / name)
        if strip_checkpoint(source, target):
            print(f"   {member.name}: {source.stat().st_size / 1e6:.1f} MB, stripped to "
                  f"{target.stat().st_size / 1e6:.1f} MB")
        else:
            print(f"   {member.name}: {target.stat().st_size / 1e6:.1f} MB")
    manifest = write_manifest(stage)
    print(f"   {manifest.name}: sha256 of every file")
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m panther_ensemble.app.model_tarball SPEC WEIGHTS_ROOT STAGE")
    try:
        stage_models(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    except PantherError as e:
        sys.exit(f"error: {e}")
