"""The README a newcomer reads agrees with the program: its command list has exactly --help's options, its links and
the docs' links lead somewhere, and it stays short."""

from __future__ import annotations

import re
from pathlib import Path

from panther_ensemble.cli import build_parser, inference_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def glance() -> dict[str, set[str]]:
    """Options per command in the README's 'Commands at a glance' block."""
    block = README.split("## Commands at a glance")[1].split("```")[1]
    options: dict[str, set[str]] = {}
    command = None
    for line in block.splitlines():
        start = re.match(r"(python inference\.py|panther-ensemble [\w-]+)", line)
        if start:
            command = start.group(1).removeprefix("panther-ensemble ")
        if command:
            options.setdefault(command, set()).update(re.findall(r"(--[a-z][\w-]*)", line))
    return options


def parser_options(parser) -> set[str]:
    return {a.option_strings[-1] for a in parser._actions if a.option_strings and a.option_strings[-1] != "--help"}


def test_the_command_list_has_the_options_of_help():
    listed = glance()
    commands = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert set(listed) == {"python inference.py", *commands}, set(listed)
    assert listed["python inference.py"] == parser_options(inference_parser())
    assert "(the same options" in README.split("panther-ensemble predict")[1].splitlines()[0]
    for name, sub in commands.items():
        if name != "predict":
            assert listed[name] == parser_options(sub), name
    # inference.py: predict's options, and the invoke API's (it serves when --api invoke or the image says so)
    assert parser_options(inference_parser()) == parser_options(commands["predict"]) | {"--api", "--host", "--port",
                                                                                       "--socket"}


def test_links_lead_somewhere():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_readme_is_short_and_the_design_is_in_the_repository():
    assert len(README.encode()) < 12 * 1024
    for path in [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("src/**/*.py")]:
        assert "DESIGN.md" not in path.read_text(), path  # the design lives in docs/


def test_every_module_is_in_the_architecture():
    table = (REPO / "docs" / "architecture.md").read_text()
    package = REPO / "src" / "panther_ensemble"
    for path in package.rglob("*.py"):
        relative = path.relative_to(package).as_posix()
        if path.name != "__init__.py" and len(path.relative_to(package).parts) == 2:
            assert f"`{relative}`" in table, relative
