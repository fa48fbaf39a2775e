"""The one writer of ensemble specs, the inverse of engine.spec's parser: whatever it accepts is written back to a
spec it reads as equal (checked before anything is written). Values are written by tomli-w, a maintained TOML writer
(quotes, backslashes, apostrophes and any Unicode in a model folder's name escaped as TOML wants them); the layout
and the comments are ours: a header, a few lines before each [[member]] (select's provenance: the step that chose
it, its projected cost) and before [postprocessing]. SpecComments.of reads such comments back from a spec file, so
that a spec rewritten (export-onnx's backend) keeps them; comments elsewhere (after a value, inside a table) are not
carried over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomli_w

from ..core.stop import write_text_atomically
from .postprocess import KEYS as POSTPROCESSING_KEYS
from .postprocess import PostProcessing
from .spec import EnsembleSpec, MemberId, parse_spec

TOP = ("input_socket", "output_socket", "tumor_label", "tumor_label_name", "budget_seconds", "time_limit_seconds",
       "backend")
MEMBER = ("model", "fold", "checkpoint", "weight")
POSTPROCESSING = ("keep_largest", "min_volume_mm3", "organ_label", "near_organ_mm", "never_empty_floor", "nnunet")
assert set(POSTPROCESSING) == POSTPROCESSING_KEYS  # one list of the table's keys in the parser and here


@dataclass(frozen=True)
class SpecComments:
    """Comment lines (without their '#') for a spec's header, each member and the [postprocessing] table."""

    header: tuple[str, ...] = ()
    members: Mapping[MemberId, tuple[str, ...]] = field(default_factory=dict)
    postprocessing: tuple[str, ...] = ()

    @classmethod
    def of(cls, path: Path, spec: EnsembleSpec) -> SpecComments:
        """The comments of the spec file at `path` (which holds `spec`): those before its first key, before each
        [[member]] and before [postprocessing]."""
        header: list[str] | None = None
        pending: list[str] = []
        members: list[tuple[str, ...]] = []
        postprocessing: tuple[str, ...] = ()
        for line in Path(path).read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped[1:].removeprefix(" "))
                continue
            if not stripped:
                continue
            table = stripped.replace(" ", "")
            if header is None:  # the first line that is not a comment: what came before is the header
                header, pending = ([], pending) if table.startswith("[") else (pending, [])
            if table.startswith("[[member]]"):
                members.append(tuple(pending))
            elif table.startswith("[postprocessing]"):
                postprocessing = tuple(pending)
            pending = []  # comments anywhere else are not carried over
        by_member = {member.id: lines for member, lines in zip(spec.members, members) if lines}
        return cls(tuple(header or ()), by_member, postprocessing)


def _line(key: str, value: object) -> str:
    return tomli_w.dumps({key: value}).rstrip("\n")


def _comment(lines: tuple[str, ...] | list[str]) -> list[str]:
    return [f"# {line}".rstrip() for text in lines for line in str(text).splitlines() or [""]]


def _postprocessing_lines(postprocessing: PostProcessing) -> list[str]:
    lines = ["[postprocessing]"]
    for key in POSTPROCESSING:
        value = getattr(postprocessing, key)
        if value is not None and value is not False:
            lines.append(_line(key, value))
    return lines


def spec_text(spec: EnsembleSpec, comments: SpecComments = SpecComments()) -> str:
    """The spec as TOML, with `comments`."""
    lines = _comment(comments.header)
    for key in TOP:
        value = getattr(spec, key)
        if value is not None:
            lines.append(_line(key, value))
    for member in spec.members:
        lines += ["", *_comment(comments.members.get(member.id, ())), "[[member]]"]
        lines += [_line(key, getattr(member, key)) for key in MEMBER]
    if spec.postprocessing is not None:
        lines += ["", *_comment(comments.postprocessing), *_postprocessing_lines(spec.postprocessing)]
    return "\n".join(lines) + "\n"


def write_spec(spec: EnsembleSpec, path: Path, comments: SpecComments = SpecComments()) -> Path:
    """The spec written to `path`, whole or not at all; it reads back as `spec` (else nothing is written)."""
    path = Path(path)
    text = spec_text(spec, comments)
    if parse_spec(text, path) != replace(spec, path=path):
        raise AssertionError(f"{path}: the spec would not read back as written")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, text)
