"""A sha256 manifest of the weights (`sha256sum` format), written at export and verified at start-up."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from .errors import PantherError

MANIFEST_NAME = "weights.sha256"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(root: Path, known: dict[str, str] | None = None) -> Path:
    """List every file under root (but the manifest) with its sha256, relative paths, sorted. `known` maps
    relative paths to digests the caller already computed (a ResEncL's ONNX weights are 400 MB a member)."""
    root = Path(root)
    known = known or {}
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.name != MANIFEST_NAME)
    manifest = root / MANIFEST_NAME
    manifest.write_text("".join(f"{known.get(name) or sha256(root / name)}  {name}\n" for name in names))
    return manifest


def verify_manifest(root: Path, files: list[Path]) -> bool:
    """When root holds a manifest, every one of `files` must be listed in it with its hash. Returns whether a
    manifest was there."""
    manifest = Path(root) / MANIFEST_NAME
    if not manifest.is_file():
        return False
    listed = {}
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for file in files:
        name = Path(file).relative_to(root).as_posix()
        if name not in listed:
            raise PantherError(f"{manifest}: does not list {name}, which the ensemble uses")
        if sha256(file) != listed[name]:
            raise PantherError(f"{file}: sha256 differs from {manifest} (corrupt or replaced weights)")
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m panther_ensemble.manifest WEIGHTS_ROOT  (writes WEIGHTS_ROOT/weights.sha256)")
    print(f"wrote {write_manifest(Path(sys.argv[1]))}")
