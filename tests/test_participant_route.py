"""A participant's route through the commands: `select --target here --budget X` writes a spec that `cost` (the
command its header names) prices within X, at the path's own seconds; export.sh and build.sh take the caller's
relative --ensemble and --weights and refuse missing ones in one line."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import labelled_cases

from panther_ensemble.cli import main
from panther_ensemble.tools import cost as cost_module
from panther_ensemble.tools.cost import Measured

REPO = Path(__file__).resolve().parents[1]
SPACING_XYZ = (0.9765625, 0.9765625, 3.0)  # a 512-matrix MRI's in-plane spacing: `:g` would round it to 0.976562


def fake_measure_here(members, device, known=None) -> Measured:
    """This machine's rates without measuring it (a tile forward per architecture, a fresh process's imports):
    distinct seconds per tile per architecture, so that members cost differently."""
    per_tile = dict(known.seconds_per_tile) if known else {}
    for member in members:
        per_tile.setdefault(cost_module._architecture(member), 0.3 + 0.1 * len(per_tile))
    return Measured(per_tile, 0.5, 0.1, 1e8, 1.0, "2026-12-01T00:00:00")


@pytest.fixture
def labelled(tmp_path) -> Path:
    """Two tiny labelled cases (nnU-Net's _0000 image naming): 'tumor' the bright part of the body."""
    return labelled_cases(tmp_path, [(8, 24, 28), (10, 26, 30)], SPACING_XYZ)


def test_select_for_a_budget_here_then_cost_of_its_spec_keeps_the_budget(workspace, labelled, tmp_path,
                                                                          monkeypatch, capsys):
    """The issue's scenario: select --target here --budget X, then the `cost` command the spec's header names: at
    most X and the path's last projected seconds; `cost --json` is JSON alone while 'here' says its rates were
    reused."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cost_module, "measure_here", fake_measure_here)
    weights = ["--weights", str(workspace.weights), "--device", "cpu"]
    assert main(["cost", "--ensemble", str(workspace.t1_spec), *weights, "--image",
                 str(labelled / "images" / "case1_0000.mha"), "--target", "here", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    budget = round(every["total_seconds"] - min(m["seconds"] for m in every["members"]) - 0.05, 2)  # not all fit

    spec = tmp_path / "chosen.toml"
    assert main(["select", "--candidates", str(workspace.t1_spec), *weights, "--images", str(labelled / "images"),
                 "--labels", str(labelled / "labels"), "--out", str(spec), "--target", "here", "--budget",
                 str(budget), "--report", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    projected = json.loads((tmp_path / "report" / "selection.json").read_text())["path"][-1]["projected_seconds"]
    header = re.search(r"panther-ensemble (cost .*)$", spec.read_text(), re.MULTILINE).group(1)
    command = shlex.split(header)
    assert command[command.index("--ensemble") + 1] == spec.name and "--target" in command
    shape, spacing = command[command.index("--shape") + 1], command[command.index("--spacing") + 1]
    assert tuple(int(v) for v in shape.split(",")) == (10, 26, 30)  # the largest case
    assert tuple(float(v) for v in spacing.split(",")) == tuple(reversed(SPACING_XYZ))  # exactly, not rounded

    command[command.index("--ensemble") + 1] = str(spec)
    assert main([*command, *weights, "--json"]) == 0
    captured = capsys.readouterr()
    priced = json.loads(captured.out)  # stdout is the JSON alone
    assert "here: rates measured 2026-12-01T00:00:00 on this machine, reused" in captured.err
    assert priced["total_seconds"] == projected <= budget
    assert len(priced["members"]) == spec.read_text().count("[[member]]") < len(every["members"])


# --- export.sh and build.sh: the caller's paths

DOCKER_STAND_IN = '''#!{python}
"""docker as far as export.sh uses it: `image inspect` answers for an invoke image of 3 GiB; `save` writes a few kB;
`run` runs the image's command on this host with each -v mount mapped back to its host path, and records the
mounts."""
import json
import subprocess
import sys

args = sys.argv[1:]
with open({calls!r}, "a") as calls:
    calls.write(json.dumps(args) + "\\n")
if args[:2] == ["image", "inspect"]:
    print(3 * 2 ** 30 if "{{{{.Size}}}}" in args else "invoke")  # the unpacked size, or the API label
    sys.exit(0)
if args[0] == "save":  # an image's layers: a few kB that gzip cannot shrink
    sys.stdout.buffer.write(bytes(range(256)) * 64 + __import__("os").urandom(8192))
    sys.exit(0)
assert args[0] == "run", args
mounts, rest = {{}}, args[1:]
while rest[0].startswith("-"):
    if rest[0] == "-v":
        source, target = rest[1].split(":")[:2]
        mounts[target] = source
    rest = rest[2:] if rest[0] in ("-v", "--network", "--user", "--entrypoint", "--env") else rest[1:]


def host(arg):
    for target, source in mounts.items():
        if arg == target or arg.startswith(target + "/"):
            return source + arg[len(target):]
    return arg


sys.exit(subprocess.call([sys.executable, *map(host, rest[1:])]))  # rest[0]: the image
'''


@pytest.fixture
def docker(tmp_path) -> Path:
    """A docker stand-in first on PATH (no Docker here); its calls, one JSON line each, in the file returned."""
    folder, calls = tmp_path / "bin", tmp_path / "docker-calls.jsonl"
    folder.mkdir()
    stand_in = folder / "docker"
    stand_in.write_text(DOCKER_STAND_IN.format(python=sys.executable, calls=str(calls)))
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    calls.touch()
    return calls


def script(name: str, arguments: list[str], cwd: Path, docker: Path, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{docker.parent / 'bin'}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(["bash", str(REPO / name), *arguments], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_export_models_only_takes_the_callers_relative_paths(workspace, tmp_path, docker):
    caller = tmp_path / "caller"
    (caller / "specs").mkdir(parents=True)
    shutil.copy(workspace.t1_spec, caller / "specs" / "my_task1.toml")
    shutil.copytree(workspace.weights, caller / "folds")
    result = script("export.sh", ["--models-only", "--ensemble", "specs/my_task1.toml", "--weights", "folds",
                                  "--out", "out"], caller, docker)
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in docker.read_text().splitlines() if line.startswith('["run"')]
    assert len(runs) == 1
    mounts = runs[0][runs[0].index("-v") + 1:]
    assert f"{(caller / 'specs' / 'my_task1.toml').resolve()}:/in/my_task1.toml:ro" in mounts
    assert f"{(caller / 'folds').resolve()}:/in/weights:ro" in mounts
    with tarfile.open(caller / "out" / "model-my_task1.tar.gz") as tarball:  # --out: the caller's too
        names = tarball.getnames()
    assert "my_task1.toml" in names and "weights.sha256" in names
    assert not (REPO / "out").exists() and not (REPO / "specs").exists()


@pytest.mark.parametrize("name, arguments, expected", [
    ("export.sh", ["--models-only", "--ensemble", "my_task1.toml"],
     "export.sh: --ensemble my_task1.toml is not a file"),
    ("export.sh", ["--models-only", "--ensemble", "spec.toml", "--weights", "folds"],
     "export.sh: --weights folds is not a folder"),
    ("build.sh", ["--ensemble", "my_task1.toml"], "build.sh: --ensemble my_task1.toml is not a file"),
    ("build.sh", ["--ensemble", "spec.toml", "--weights", "folds"], "build.sh: --weights folds is not a folder"),
])
def test_a_missing_ensemble_or_weights_is_one_line(tmp_path, docker, name, arguments, expected):
    """Refused before Docker is asked (docker -v would create the missing path as a folder)."""
    (tmp_path / "spec.toml").write_text("")  # there, but no weights folder beside it
    result = script(name, arguments, tmp_path, docker)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [expected], result.stderr
    assert docker.read_text() == "" and not (tmp_path / "my_task1.toml").exists()


def test_export_prints_the_image_sizes_and_refuses_one_above_gcs_limit(tmp_path, docker):
    result = script("export.sh", ["--image-only", "--out", "out"], tmp_path, docker)
    assert result.returncode == 0, result.stderr
    assert re.search(r"written in \d+ s: 0\.00 GiB to upload \(GC's limit 10\.00 GiB\), 3\.00 GiB unpacked",
                     result.stdout), result.stdout
    assert len(list((tmp_path / "out").glob("panther-ensemble-latest-invoke_*.tar.gz"))) == 1
    env = {"PANTHER_IMAGE_LIMIT_BYTES": "4096"}  # a limit the few kB are above
    result = script("export.sh", ["--image-only", "--out", "over"], tmp_path, docker, env)
    assert result.returncode == 1
    line, = result.stderr.strip().splitlines()
    assert re.fullmatch(r"export\.sh: panther-ensemble-latest-invoke_\S+\.tar\.gz would be 0\.00 GiB, above GC's "
                        r"image upload limit of 0\.00 GiB; not written .*", line), line
    assert list((tmp_path / "over").iterdir()) == []  # neither the tarball nor its partial
