"""Where the app finds its spec and weights: GC's model tarball (/opt/ml/model), then the app's own folders."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import PantherError
from ..engine.spec import EnsembleSpec, load_spec

APP_DIR = Path(os.environ.get("PANTHER_APP_DIR", Path(__file__).resolve().parents[3]))
GC_MODEL_DIR = Path("/opt/ml/model")


def spec_dirs() -> list[Path]:
    """Where specs are looked up, in order: GC's model tarball, then the app's ensemble/ folder."""
    return [GC_MODEL_DIR, APP_DIR / "ensemble"]


def find_spec(socket: str, dirs: list[Path]) -> EnsembleSpec:
    """The spec whose input_socket is `socket`."""
    seen = []
    for folder in dirs:
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            spec = load_spec(path)
            if spec.input_socket == socket:
                return spec
            seen.append(f"{path.name} ({spec.input_socket})")
    raise PantherError(f"no ensemble spec for input socket '{socket}' in {', '.join(map(str, dirs))}"
                       + (f"; found {', '.join(seen)}" if seen else ""))


def resolve_weights_root(spec: EnsembleSpec, explicit: Path | None) -> Path:
    """--weights if given, else /opt/ml/model when it holds the members, else the app's weights/."""
    if explicit is not None:
        return Path(explicit)
    for candidate in (GC_MODEL_DIR, APP_DIR / "weights"):
        if all((candidate / m.model).is_dir() for m in spec.members):
            return candidate
    return APP_DIR / "weights"
