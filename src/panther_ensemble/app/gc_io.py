"""Grand Challenge's input and output layout: the input socket and its image files (inputs.json, else
images/<socket>/), where the mask goes, and whether it can be written there."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PantherError
from ..engine.image import IMAGE_SUFFIXES, image_files, image_stem


@dataclass
class CaseInputs:
    """The image files of one input socket."""

    socket: str
    files: list[Path]


def find_inputs(input_dir: Path) -> CaseInputs:
    """The image socket and its files, from inputs.json when present, else from images/<slug>/."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise PantherError(f"{input_dir}: input folder does not exist")
    inputs_json = input_dir / "inputs.json"
    if inputs_json.exists():
        folders = _image_sockets_from_inputs_json(inputs_json, input_dir)
    else:
        images = input_dir / "images"
        folders = {p.name: p for p in sorted(images.iterdir()) if p.is_dir()} if images.is_dir() else {}
    with_files = {slug: image_files(folder) for slug, folder in folders.items() if folder.is_dir()}
    with_files = {slug: files for slug, files in with_files.items() if files}
    if not with_files:
        raise PantherError(
            f"{input_dir}: no input image found (expected inputs.json or images/<socket>/<name>.mha "
            f"with one of {', '.join(IMAGE_SUFFIXES)})"
        )
    if len(with_files) > 1:
        raise PantherError(f"{input_dir}: images for several input sockets at once ({', '.join(with_files)}); "
                           "expected exactly one")
    (socket, files), = with_files.items()
    return CaseInputs(socket, files)


def _image_sockets_from_inputs_json(inputs_json: Path, input_dir: Path) -> dict[str, Path]:
    try:
        entries = json.loads(inputs_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PantherError(f"{inputs_json}: not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise PantherError(f"{inputs_json}: expected a JSON list of socket values, got {type(entries).__name__}")
    folders: dict[str, Path] = {}
    for i, entry in enumerate(entries):
        # GC writes each value's socket under "socket" and, for algorithms made before that name, again under
        # "interface" (its ComponentInterfaceValueSerializer); either alone is read
        socket = _socket_of(entry)
        if socket is None:
            raise PantherError(f"{inputs_json}: entry {i} has no socket.slug (nor interface.slug)")
        if socket.get("super_kind", "Image") != "Image":
            continue
        relative = socket.get("relative_path") or f"images/{socket['slug']}"
        folders[socket["slug"]] = input_dir / relative
    return folders


def _socket_of(entry: object) -> dict | None:
    if not isinstance(entry, dict):
        return None
    for key in ("socket", "interface"):
        socket = entry.get(key)
        if isinstance(socket, dict) and isinstance(socket.get("slug"), str):
            return socket
    return None


def output_path(output_dir: Path, socket: str, input_file: Path) -> Path:
    return Path(output_dir) / "images" / socket / f"{image_stem(input_file)}.mha"


def check_writable(folder: Path) -> None:
    """Create the output folder and prove a file can be written there, before any heavy work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as e:
        raise PantherError(f"{folder}: output folder is not writable ({e.strerror})") from None
