"""On a CPU, each member's backend and tiles per forward chosen by one measurement on this machine (app.forward_choice),
with ONNX exports beside the checkpoints (`export-onnx --beside`); kept in the per-host cache cost's `here` uses."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dice, gc_input, read_mask

from panther_ensemble.app import forward_choice
from panther_ensemble.app.here_cache import here_cache, machine_key, read_entry, update_entry
from panther_ensemble.app.manifest import MANIFEST_NAME, Manifest, sha256, write_manifest
from panther_ensemble.cli import main
from panther_ensemble.core.errors import PantherError
from panther_ensemble.engine.activations import tile_bytes_bound, tiles_per_forward
from panther_ensemble.engine.members import describe_member
from panther_ensemble.engine.memory import ONNX_CPU_BUFFER_FACTOR, network_host_bytes
from panther_ensemble.engine.spec import load_spec
from panther_ensemble.tools import onnx_export
from panther_ensemble.tools.reference import stock_ensemble_mask

OUTPUT = Path("images") / "pancreatic-tumor-segmentation"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def beside(workspace, tmp_path_factory) -> Path:
    """A copy of the test weights with the mixed ensemble's members exported beside their checkpoints (the CLI)."""
    weights = tmp_path_factory.mktemp("beside") / "weights"
    shutil.copytree(workspace.weights, weights)
    assert main(["export-onnx", "--ensemble", str(workspace.mixed_spec), "--weights", str(weights), "--beside"]) == 0
    return weights


@pytest.fixture()
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def measured_as(monkeypatch, seconds: dict[tuple[str, int], float],
                differences: dict[tuple[str, int], float] | None = None) -> list[list[str]]:
    """Measurements replaced by these seconds per (backend, tiles) and, for the ONNX backends, these differences from
    torch's logits (default 1e-6); returns the options measured, per call."""
    calls = []

    def fake(member, options, verify, exported):
        calls.append([o.name for o in options])
        return ({o.name: seconds[(o.backend, o.tiles)] for o in options},
                {o.name: (differences or {}).get((o.backend, o.tiles), 1e-6) for o in options if o.backend != "torch"})

    monkeypatch.setattr(forward_choice, "_measure", fake)
    return calls


SMALL = dict(shape_zyx=(8, 30, 30), spacing_xyz=(1.2, 1.2, 3.0), seed=1)
ONNX_FASTEST = {("torch", 1): 0.5, ("torch", 2): 0.3, ("torch", 4): 0.35,
                ("onnxruntime", 1): 0.2, ("onnxruntime", 2): 0.1, ("onnxruntime", 4): 0.15,
                ("openvino", 1): 0.25, ("openvino", 2): 0.2, ("openvino", 4): 0.3}
OPENVINO_FASTEST = {**ONNX_FASTEST, ("openvino", 4): 0.05}


def members_of(spec_path: Path, weights: Path) -> list:
    return [describe_member(weights, m) for m in load_spec(spec_path).members]


def predict(input_dir: Path, output: Path, spec: Path, weights: Path, *extra: str) -> np.ndarray:
    assert main(["predict", "--input", str(input_dir), "--output", str(output), "--ensemble", str(spec),
                 "--weights", str(weights), "--budget", "0", "--device", "cpu", *extra]) == 0
    return read_mask(output / OUTPUT / "case.mha")[0]


def test_export_beside_puts_each_model_next_to_its_checkpoint(beside, workspace):
    spec = load_spec(workspace.mixed_spec)
    for member in spec.members:
        assert member.onnx_path(beside).is_file() and member.checkpoint_path(beside).is_file()
    assert not [p for p in beside.iterdir() if p.name.startswith(".")]  # the staging folder is gone
    assert load_spec(workspace.mixed_spec).backend is None  # the spec is left as it was


def test_predict_runs_the_measured_choice_within_parity_of_the_reference(beside, workspace, tmp_path, own_cache,
                                                                       monkeypatch, capsys):
    calls = measured_as(monkeypatch, ONNX_FASTEST)
    image = dict(shape_zyx=(20, 60, 70), spacing_xyz=(1.2, 1.2, 3.0), seed=3)
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": image})
    chosen = predict(input_dir, tmp_path / "chosen", workspace.mixed_spec, beside)
    out = capsys.readouterr().out
    assert "forwards on this CPU" in out and "onnxruntime, 2 tile(s) per forward, 0.100 s a tile" in out
    assert "loading 3 members (onnxruntime)" in out
    assert calls and all(len(names) == 9 for names in calls)  # torch, onnxruntime and openvino at 1, 2, 4 tiles
    reference = stock_ensemble_mask(input_dir / "images" / "abdominal-t1-mri" / "case.mha", beside,
                                    load_spec(workspace.mixed_spec), CPU)
    assert reference.sum() > 0
    assert dice(chosen, reference) >= 0.999 and np.mean(chosen != reference) <= 0.0005

    # the same run again: the choice is read from the cache, nothing measured
    count = len(calls)
    predict(input_dir, tmp_path / "again", workspace.mixed_spec, beside)
    assert len(calls) == count and "kept in" in capsys.readouterr().out
    # --backend wins over the measured choice; the setting off turns it off
    predict(input_dir, tmp_path / "flag", workspace.mixed_spec, beside, "--backend", "torch")
    assert "loading 3 members (torch)" in capsys.readouterr().out
    monkeypatch.setenv(forward_choice.VARIABLE, "off")
    predict(input_dir, tmp_path / "off", workspace.mixed_spec, beside)
    out = capsys.readouterr().out
    assert "loading 3 members (torch)" in out and "forwards on this CPU" not in out
    monkeypatch.setenv(forward_choice.VARIABLE, "remeasure")
    predict(input_dir, tmp_path / "remeasure", workspace.mixed_spec, beside)
    assert len(calls) > count and "measured now" in capsys.readouterr().out


def test_torch_wins_where_it_measures_faster_and_members_without_an_export_take_its_batch(beside, workspace,
                                                                                         own_cache, monkeypatch):
    measured_as(monkeypatch, {**ONNX_FASTEST, ("torch", 1): 0.05})
    members = members_of(workspace.mixed_spec, beside)
    forward_choice.choose_forwards(members, CPU)
    assert [(m.backend, m.tiles_per_forward) for m in members] == [("torch", 1)] * 3
    assert all(m.network_file.suffix == ".pth" for m in members)

    # a member of a measured architecture without an export: the architecture's fastest torch option
    workspace_members = members_of(workspace.mixed_spec, workspace.weights)  # no exports beside these
    measured_as(monkeypatch, ONNX_FASTEST)
    forward_choice.choose_forwards(workspace_members, CPU)
    assert [(m.backend, m.tiles_per_forward) for m in workspace_members] == [("torch", 1)] * 3  # kept: torch x1


def test_no_export_no_measurement_and_a_gpu_is_left_alone(workspace, own_cache, monkeypatch):
    calls = measured_as(monkeypatch, ONNX_FASTEST)
    members = members_of(workspace.mixed_spec, workspace.weights)
    forward_choice.choose_forwards(members, CPU)
    forward_choice.choose_forwards(members, torch.device("cuda"))
    assert calls == [] and all(m.backend == "torch" and m.tiles_per_forward is None for m in members)
    assert not here_cache().exists()


def test_a_bad_setting_is_one_line_and_nothing_written(beside, workspace, tmp_path, own_cache, monkeypatch, capsys):
    monkeypatch.setenv(forward_choice.VARIABLE, "fastest")
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": SMALL})
    assert main(["predict", "--input", str(input_dir), "--output", str(tmp_path / "out"), "--ensemble",
                 str(workspace.mixed_spec), "--weights", str(beside), "--device", "cpu"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == "error: $PANTHER_FORWARD_CHOICE must be one of on, off, remeasure, got 'fastest'"
    assert not list(tmp_path.glob("out/**/*.mha"))  # nothing written


def test_the_real_measurement_times_every_option_and_keeps_it(beside, workspace, own_cache, capsys):
    members = members_of(workspace.mixed_spec, beside)
    forward_choice.choose_forwards(members, CPU)
    kept = read_entry(machine_key(CPU))["forwards"]
    assert len(kept) == 3  # three architectures in the mixed ensemble
    for record in kept.values():
        seconds = record["seconds_per_tile"]
        assert len(seconds) == 9 and all(0 < s < 10 for s in seconds.values())
        differences = record["max_relative_difference"]  # the members' own weights, torch against each ONNX way
        assert len(differences) == 6 and all(0 <= d < 1e-3 for d in differences.values())
    for member in members:
        seconds = kept[member.architecture]["seconds_per_tile"]
        record = kept[member.architecture]
        allowed = {name: s for name, s in seconds.items()
                   if record["max_relative_difference"].get(name, 0.0) <= forward_choice.DIFFERENCE_LIMIT}
        chosen = min(allowed, key=allowed.get)
        assert chosen.startswith(member.backend) and chosen.endswith(f"x{member.tiles_per_forward}")
    assert capsys.readouterr().out.count("forwards on this CPU") == 3


def test_cost_rates_and_forward_choices_share_the_cache(own_cache):
    key = machine_key(CPU)
    update_entry(key, {"seconds_per_tile": {"a": 1.0}, "startup_seconds": 2.0})
    update_entry(key, {"forwards": {"arch": {"seconds_per_tile": {"torch x1": 0.1}}}})
    update_entry(key, {"startup_seconds": 3.0})
    entry = json.loads(here_cache().read_text())[key]
    assert entry == {"seconds_per_tile": {"a": 1.0}, "startup_seconds": 3.0,
                     "forwards": {"arch": {"seconds_per_tile": {"torch x1": 0.1}}}}


def test_cost_here_prices_what_predict_runs(beside, workspace, own_cache, monkeypatch, capsys):
    from panther_ensemble.tools import cost as cost_module

    measured_as(monkeypatch, ONNX_FASTEST)
    priced = []

    def seconds_per_tile(member, device):
        priced.append((member.backend, member.tiles_per_forward))
        return 0.1, 0.01, 1000

    monkeypatch.setattr(cost_module, "_seconds_per_tile", seconds_per_tile)
    assert main(["cost", "--ensemble", str(workspace.mixed_spec), "--weights", str(beside), "--target", "here",
                 "--device", "cpu", "--shape", "20,60,70", "--spacing", "3,1.2,1.2"]) == 0
    assert priced and set(priced) == {("onnxruntime", 2)}


def test_the_manifest_decides_which_exports_may_run(beside, workspace, tmp_path, own_cache, monkeypatch, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(beside, weights)
    spec = load_spec(workspace.mixed_spec)
    member = spec.members[0]
    onnx_file = member.onnx_path(weights)
    onnx_file.rename(onnx_file.with_suffix(".aside"))
    write_manifest(weights)  # lists every file but the first member's export
    onnx_file.with_suffix(".aside").rename(onnx_file)
    measured_as(monkeypatch, ONNX_FASTEST)
    members = members_of(workspace.mixed_spec, weights)
    forward_choice.choose_forwards(members, CPU)
    assert "not listed in" in capsys.readouterr().out
    assert [m.backend for m in members] == ["torch", "onnxruntime", "onnxruntime"]

    # export --beside lists what it writes in the root's manifest
    assert main(["export-onnx", "--ensemble", str(workspace.mixed_spec), "--weights", str(weights),
                 "--beside"]) == 0
    listed = Manifest(weights).listed
    assert listed[onnx_file.relative_to(weights).as_posix()] == sha256(onnx_file)


def test_a_tampered_export_fails_the_manifest_before_it_runs(beside, workspace, tmp_path, own_cache, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(beside, weights)
    write_manifest(weights)
    onnx_file = load_spec(workspace.mixed_spec).members[1].onnx_path(weights)
    onnx_file.write_bytes(onnx_file.read_bytes()[:-8] + b"tampered")
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": SMALL})
    assert main(["predict", "--input", str(input_dir), "--output", str(tmp_path / "out"), "--ensemble",
                 str(workspace.mixed_spec), "--weights", str(weights), "--device", "cpu"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == f"error: {onnx_file}: sha256 differs from {weights / MANIFEST_NAME} (corrupt or replaced weights)"


def test_a_failed_export_beside_leaves_the_root_as_it_was(workspace, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(workspace.weights, weights)
    before = sorted(p.relative_to(weights) for p in weights.rglob("*"))
    real, count = onnx_export.export_network, []

    def fail_second(network, input_shape, target, opset, metadata):
        count.append(target)
        if len(count) == 2:
            raise PantherError("ONNX export failed (unsupported operator)")
        real(network, input_shape, target, opset, metadata)

    monkeypatch.setattr(onnx_export, "export_network", fail_second)
    assert main(["export-onnx", "--ensemble", str(workspace.mixed_spec), "--weights", str(weights),
                 "--beside"]) == 1
    assert "ONNX export failed (unsupported operator)" in capsys.readouterr().err
    assert sorted(p.relative_to(weights) for p in weights.rglob("*")) == before


def test_export_takes_out_or_beside_not_both(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export-onnx", "--ensemble", str(workspace.mixed_spec), "--out", str(tmp_path / "o"), "--beside"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_measured_tiles_per_forward_stay_within_memory(workspace):
    member = members_of(workspace.mixed_spec, workspace.weights)[0]
    assert tiles_per_forward(member, CPU, room=2 ** 40) == 4
    member.tiles_per_forward = 2
    assert tiles_per_forward(member, CPU, room=2 ** 40) == 2
    assert tiles_per_forward(member, CPU, room=int(tile_bytes_bound(member) / 0.25)) == 1
    assert tiles_per_forward(member, torch.device("cuda")) == 1


def test_the_memory_plan_counts_what_onnx_backends_keep(beside, workspace):
    """ONNX Runtime's sessions share one arena (counted once, the largest); OpenVINO's compiled models keep their
    buffers each."""
    members = members_of(workspace.mixed_spec, beside)
    torch_bytes = network_host_bytes(members, CPU)
    for member, backend in zip(members, ("onnxruntime", "onnxruntime", "openvino")):
        member.backend, member.network_file = backend, member.spec.onnx_path(beside)
    files = sum(m.network_file.stat().st_size for m in members)
    kept = [ONNX_CPU_BUFFER_FACTOR * tiles_per_forward(m, CPU) * tile_bytes_bound(m, at_least=0) for m in members]
    assert network_host_bytes(members, CPU) == pytest.approx(files + max(kept[:2]) + kept[2], abs=3)
    assert torch_bytes == sum(m.spec.checkpoint_path(beside).stat().st_size for m in members)
    assert network_host_bytes(members, torch.device("cuda")) == 0


def test_onnx_runtime_sessions_share_one_arena_on_a_cpu(beside, workspace):
    import onnxruntime as ort

    from panther_ensemble.engine import onnx_network

    network = onnx_network.OnnxNetwork(load_spec(workspace.mixed_spec).members[0].onnx_path(beside), CPU)
    network(torch.zeros((1, *network.input_shape[1:])))
    assert onnx_network._shared_cpu_arena_registered
    assert network.session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    onnx_network.share_one_cpu_arena(ort)  # registered once per process: a second call is no error


def test_openvino_chosen_where_it_measures_fastest_within_parity_of_the_reference(beside, workspace, tmp_path,
                                                                                 own_cache, monkeypatch, capsys):
    measured_as(monkeypatch, OPENVINO_FASTEST)
    image = dict(shape_zyx=(20, 60, 70), spacing_xyz=(1.2, 1.2, 3.0), seed=3)
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": image})
    chosen = predict(input_dir, tmp_path / "chosen", workspace.mixed_spec, beside)
    assert "loading 3 members (openvino)" in capsys.readouterr().out
    named = predict(input_dir, tmp_path / "named", workspace.mixed_spec, beside, "--backend", "openvino")
    reference = stock_ensemble_mask(input_dir / "images" / "abdominal-t1-mri" / "case.mha", beside,
                                    load_spec(workspace.mixed_spec), CPU)
    for mask in (chosen, named):
        assert dice(mask, reference) >= 0.999 and np.mean(mask != reference) <= 0.0005


def test_openvino_network_matches_torch_with_a_last_smaller_batch(beside, workspace):
    from panther_ensemble.engine.members import load_member
    from panther_ensemble.engine.openvino_network import OpenVinoNetwork

    spec = load_spec(workspace.mixed_spec)
    torch_member = load_member(beside, spec.members[1])
    network = OpenVinoNetwork(spec.members[1].onnx_path(beside), CPU)
    tiles = torch.randn((3, *torch_member.input_shape), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = torch_member.network(tiles)
    scale = float(expected.abs().max())
    got = torch.cat([network(tiles[:2]), network(tiles[2:])])  # a last forward of one tile: compiled for it
    assert sorted(network._compiled) == [1, 2]
    assert float((got - expected).abs().max()) <= 1e-4 * max(1.0, scale)
    assert network.metadata.get("configuration") == torch_member.configuration_name


def test_openvino_refusals_are_one_line(beside, workspace, tmp_path, capsys):
    from panther_ensemble.engine.openvino_network import OpenVinoNetwork

    member = load_spec(workspace.mixed_spec).members[0]
    with pytest.raises(PantherError, match="the openvino backend runs on a CPU, not on cuda"):
        OpenVinoNetwork(member.onnx_path(beside), torch.device("cuda"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(PantherError, match="garbage.onnx: not a loadable ONNX model"):
        OpenVinoNetwork(garbage, CPU)
    input_dir = gc_input(tmp_path, "abdominal-t1-mri", {"case.mha": SMALL})
    for extra, message in ((["--backend", "openvino", "--mode", "exact"],
                            "--mode exact runs stock nnU-Net's torch forward; the openvino backend needs --mode fast"),
                           (["--backend", "openvino", "--weights", str(workspace.weights)],
                            "the openvino backend runs members written by `panther-ensemble export-onnx`")):
        arguments = ["predict", "--input", str(input_dir), "--output", str(tmp_path / "out"), "--ensemble",
                     str(workspace.mixed_spec), "--weights", str(beside), "--device", "cpu", *extra]
        assert main(arguments) == 1
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error
        assert not list(tmp_path.glob("out/**/*.mha"))


def test_onnx_runners_are_found_by_their_packages_without_importing_them(monkeypatch):
    from importlib import metadata

    installed = {"onnxruntime-gpu": "1.26.0", "openvino": "2026.4.1"}  # the image's ONNX Runtime is the GPU package

    def version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(forward_choice.metadata, "version", version)
    assert forward_choice.onnx_runners() == {"onnxruntime": "1.26.0", "openvino": "2026.4.1"}
    del installed["openvino"]
    assert forward_choice.onnx_runners() == {"onnxruntime": "1.26.0"}


def test_the_console_scripts_keep_torchs_idle_threads_asleep_unless_told(monkeypatch):
    from panther_ensemble.cli import quiet_openmp_threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    quiet_openmp_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    quiet_openmp_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_faster_way_whose_logits_stray_from_torchs_is_not_taken(beside, workspace, own_cache, monkeypatch, capsys):
    measured_as(monkeypatch, OPENVINO_FASTEST, {("openvino", 4): 2e-4})
    members = members_of(workspace.mixed_spec, beside)
    forward_choice.choose_forwards(members, CPU)
    assert [(m.backend, m.tiles_per_forward) for m in members] == [("onnxruntime", 2)] * 3
    out = capsys.readouterr().out
    assert "not taken, logits further than 1e-04 from torch's: openvino x4 (0.050 s, 2.0e-04)" in out
