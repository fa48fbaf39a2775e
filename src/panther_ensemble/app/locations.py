"""Where the app finds its spec and weights: GC's model tarball (/opt/ml/model, or the folder PANTHER_MODEL_DIR
names), then the app's own folders. Each choice is a log line saying which and why."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import PantherError
from ..core.log import log
from ..engine.spec import EnsembleSpec, load_spec

APP_DIR = Path(os.environ.get("PANTHER_APP_DIR", Path(__file__).resolve().parents[3]))
GC_MODEL_DIR = Path("/opt/ml/model")  # where GC's runtime extracts the algorithm's model tarball
MODEL_DIR_VARIABLE = "PANTHER_MODEL_DIR"  # another folder in its place: a model tarball tried out without root


def model_dir() -> Path:
    """The model tarball's folder: PANTHER_MODEL_DIR where set, else GC's /opt/ml/model."""
    return Path(os.environ.get(MODEL_DIR_VARIABLE) or GC_MODEL_DIR)


def _model_dir_named() -> str:
    return f"{model_dir()} (${MODEL_DIR_VARIABLE})" if os.environ.get(MODEL_DIR_VARIABLE) else \
        f"{model_dir()} (GC's model tarball)"


def spec_dirs() -> list[Path]:
    """Where specs are looked up, in order: GC's model tarball, then the app's ensemble/ folder."""
    return [model_dir(), APP_DIR / "ensemble"]


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


def spec_origin(spec: EnsembleSpec) -> str:
    """Why this spec, for the log: from the model tarball's folder or the app's own, earlier folders lacking one."""
    if spec.path.parent == model_dir():
        return f"from {_model_dir_named()}"
    if spec.path.parent == APP_DIR / "ensemble":
        return f"the app's own; {_model_dir_named()} has none for '{spec.input_socket}'"
    return "--ensemble"


def find_spec(socket: str | None, dirs: list[Path]) -> EnsembleSpec:
    """The spec whose input_socket is `socket`; for a flat folder of images (None: no socket named), the only spec
    there is."""
    specs = specs_by_socket(dirs)
    if socket is None:
        if len(specs) == 1:
            spec, = specs.values()
            log(f"spec {spec.path} ({spec_origin(spec)}; a flat folder of images names no socket: the only spec)")
            return spec
        seen = ", ".join(f"{spec.path.name} ({spec.input_socket})" for spec in specs.values()) or "none"
        raise PantherError(f"a flat folder of images (nnU-Net's imagesTs) names no input socket, and there is not "
                           f"one spec to take (found: {seen}): pass --ensemble")
    if socket in specs:
        log(f"spec {specs[socket].path} ({spec_origin(specs[socket])})")
        return specs[socket]
    seen = [f"{spec.path.name} ({spec.input_socket})" for spec in specs.values()]
    raise PantherError(f"no ensemble spec for input socket '{socket}' in {', '.join(map(str, dirs))}"
                       + (f"; found {', '.join(seen)}" if seen else ""))


def resolve_weights_root(spec: EnsembleSpec, explicit: Path | None) -> Path:
    """--weights if given, else the model tarball's folder when it holds the members, else the app's weights/. A
    root that is missing or empty is said to be so (not blamed on the spec)."""
    if explicit is not None:
        root = _existing_root(Path(explicit), spec, "--weights")
        log(f"weights {root} (--weights)")
        return root
    if all((model_dir() / m.model).is_dir() for m in spec.members):
        log(f"weights {model_dir()} ({_model_dir_named()} holds every member)")
        return model_dir()
    root = _existing_root(APP_DIR / "weights", spec, f"no model tarball at {model_dir()} holds the members, and "
                          "the app's own weights folder")
    log(f"weights {root} (the app's own; {model_dir()} does not hold every member)")
    return root


def _existing_root(root: Path, spec: EnsembleSpec, what: str) -> Path:
    if not root.is_dir():
        raise PantherError(f"{root}: weights folder does not exist ({what})")
    if not any(root.iterdir()):
        raise PantherError(f"{root}: weights folder is empty ({what}); it should hold the nnU-Net result folders "
                           f"the spec names, e.g. {spec.members[0].model}")
    return root
