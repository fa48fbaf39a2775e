"""The package's layers, read from the code's own imports: nothing below imports anything above."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "panther_ensemble"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
# each layer and the layers it may import (docs/architecture.md says the same, and a test below checks it)
ALLOWED = {
    "core": set(),
    "engine": {"core"},
    "app": {"core", "engine"},
    "demo": {"core", "engine"},
    "tools": {"core", "engine", "app", "demo"},
    "cli": {"core", "engine", "app", "tools", "demo"},
}


def layer_of(module: str) -> str:
    """'panther_ensemble.engine.members' -> 'engine'; the package's top-level modules are the CLI."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "cli"


def imports(path: Path) -> list[str]:
    """The panther_ensemble modules a file imports, absolute, however it spells them (lazy imports included)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("panther_ensemble"):
                found += [f"{target}.{a.name}" if target.count(".") < 2 else target for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("panther_ensemble")]
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


TOP = {"__init__.py", "cli.py", "commands.py"}  # the package's own modules: the command line


def test_every_module_sits_in_a_layer():
    for path in modules():
        relative = path.relative_to(PACKAGE)
        assert len(relative.parts) == 2 and relative.parts[0] in ALLOWED or relative.as_posix() in TOP, \
            f"{relative}: outside the layers"


def test_nothing_imports_a_layer_above_it():
    wrong = []
    for path in modules():
        source = layer_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for target in imports(path):
            layer = layer_of(target)
            if layer != source and layer not in ALLOWED[source]:
                wrong.append(f"{path.relative_to(PACKAGE)} ({source}) imports {target} ({layer})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports():
    """The reader itself: it finds relative, absolute and lazy imports."""
    found = imports(PACKAGE / "app" / "predict_run.py")
    assert "panther_ensemble.engine.ensemble" in found and "panther_ensemble.core.errors" in found
    assert any(t.startswith("panther_ensemble.tools.") for t in imports(PACKAGE / "commands.py"))


def test_the_architecture_doc_states_these_rules():
    text = DOCS.read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]*) \|$", text, flags=re.M))
    assert set(table) == set(ALLOWED), table
    for layer, allowed in ALLOWED.items():
        assert set(re.findall(r"`(\w+)`", table[layer])) == allowed, layer
