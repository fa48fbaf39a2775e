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


def specs_by_socket(dirs: list[Path]) -> dict[str, EnsembleSpec]:
    """Every spec in `dirs` by its input socket: a folder earlier in the list wins (GC's model tarball over the app's
    own specs); two specs for one socket in one folder is an error naming both, never a silent choice."""
    found: dict[str, EnsembleSpec] = {}
    for folder in dirs:
        here: dict[str, EnsembleSpec] = {}
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            spec = load_spec(path)
            if spec.input_socket in here:
                raise PantherError(f"{folder}: two ensemble specs for input socket '{spec.input_socket}': "
                                   f"{here[spec.input_socket].path.name} and {path.name}; keep one (or pass "
                                   "--ensemble)")
            here[spec.input_socket] = spec
        found = here | found
    return found


def find_spec(socket: str, dirs: list[Path]) -> EnsembleSpec:
    """The spec whose input_socket is `socket`."""
    specs = specs_by_socket(dirs)
    if socket in specs:
        return specs[socket]
    seen = [f"{spec.path.name} ({spec.input_socket})" for spec in specs.values()]
    raise PantherError(f"no ensemble spec for input socket '{socket}' in {', '.join(map(str, dirs))}"
                       + (f"; found {', '.join(seen)}" if seen else ""))


def resolve_weights_root(spec: EnsembleSpec, explicit: Path | None) -> Path:
    """--weights if given, else /opt/ml/model when it holds the members, else the app's weights/. A root that is
    missing or empty is said to be so (not blamed on the spec)."""
    if explicit is not None:
        return _existing_root(Path(explicit), spec, "--weights")
    for candidate in (GC_MODEL_DIR, APP_DIR / "weights"):
        if all((candidate / m.model).is_dir() for m in spec.members):
            return candidate
    return _existing_root(APP_DIR / "weights", spec, f"no model tarball at {GC_MODEL_DIR} holds the members, and "
                          "the app's own weights folder")


def _existing_root(root: Path, spec: EnsembleSpec, what: str) -> Path:
    if not root.is_dir():
        raise PantherError(f"{root}: weights folder does not exist ({what})")
    if not any(root.iterdir()):
        raise PantherError(f"{root}: weights folder is empty ({what}); it should hold the nnU-Net result folders "
                           f"the spec names, e.g. {spec.members[0].model}")
    return root
