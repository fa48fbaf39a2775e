"""A sha256 manifest of the weights (`sha256sum` format), written at export and verified at start-up."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from ..core.errors import PantherError
from ..core.stop import write_text_atomically

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
                   if p.is_file() and p.name not in (MANIFEST_NAME, f".{MANIFEST_NAME}.partial"))
    manifest = root / MANIFEST_NAME
    return write_text_atomically(manifest, "".join(f"{known.get(name) or sha256(root / name)}  {name}\n"
                                                   for name in names))


def add_to_manifest(root: Path, digests: dict[str, str]) -> Path:
    """The root's manifest with these files (relative paths) listed or their digests replaced, the rest as it was."""
    listed = {**Manifest(root).listed, **digests}
    return write_text_atomically(Path(root) / MANIFEST_NAME, "".join(f"{listed[name]}  {name}\n"
                                                                     for name in sorted(listed)))


class Manifest:
    """A weights root's manifest: which files it lists and their digests."""

    def __init__(self, root: Path) -> None:
        self.root, self.path = Path(root), Path(root) / MANIFEST_NAME
        self.listed = {}
        try:
            lines = self.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise PantherError(f"{self.path}: cannot be read ({e})") from None
        for number, line in enumerate(lines, start=1):
            digest, _, name = line.partition("  ")
            if not name or len(digest) != 64 or Path(name).is_absolute() or ".." in Path(name).parts:
                raise PantherError(f"{self.path}: line {number} is not '<sha256>  <path inside the weights root>': "
                                   f"{line[:120]!r}")
            self.listed[name] = digest

    @classmethod
    def of(cls, root: Path) -> Manifest | None:
        """The manifest of root, None where there is none."""
        return cls(root) if (Path(root) / MANIFEST_NAME).is_file() else None

    def _name(self, file: Path) -> str:
        try:
            name = Path(file).relative_to(self.root).as_posix()
        except ValueError:
            raise PantherError(f"{file}: outside the weights root {self.root} that {self.path} lists") from None
        if name not in self.listed:
            raise PantherError(f"{self.path}: does not list {name}, which the ensemble uses")
        return name

    def check_listed(self, files: list[Path]) -> None:
        """Every file is listed (cheap: nothing is read)."""
        for file in files:
            self._name(file)

    def verify(self, file: Path) -> None:
        """The file's sha256 is the listed one (reading it once, which leaves it in the page cache for its loader)."""
        if sha256(file) != self.listed[self._name(file)]:
            raise PantherError(f"{file}: sha256 differs from {self.path} (corrupt or replaced weights)")


def verify_manifest(root: Path, files: list[Path]) -> bool:
    """When root holds a manifest, every one of `files` must be listed in it with its hash. Returns whether a
    manifest was there."""
    manifest = Manifest.of(root)
    if manifest is None:
        return False
    manifest.check_listed(files)
    for file in files:
        manifest.verify(file)
    return True


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m panther_ensemble.app.manifest",
                                     description=f"Write ROOT/{MANIFEST_NAME}: the sha256 of every file under ROOT.")
    parser.add_argument("root", type=Path, metavar="ROOT", help="a weights root")
    root = parser.parse_args().root
    if not root.is_dir():
        sys.exit(f"error: {root}: not a folder")
    print(f"wrote {write_manifest(root)}")
