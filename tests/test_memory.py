"""Memory estimates and the run's adaptations, with injected sizes (no GPU needed)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import read_mask
from test_robustness import STAND_IN_DEVICE, write_input

import panther_ensemble.app.predict_run as run
import panther_ensemble.engine.input_grid as input_grid
from panther_ensemble.engine import activations as activations_module
from panther_ensemble.engine import memory
from panther_ensemble.engine.ensemble import Placement
from panther_ensemble.engine.members import describe_member
from panther_ensemble.engine.spec import load_spec

GiB = 2 ** 30


def members(workspace, spec="mixed_spec"):
    return [describe_member(workspace.weights, m) for m in load_spec(getattr(workspace, spec)).members]


def test_host_estimate_covers_a_measured_run(workspace, tmp_path):
    """The estimate is an upper bound of the anonymous memory a real run adds to its process (sampled every 5 ms in a
    child process; file-backed pages, the libraries' code and the mapped checkpoints, are reclaimable and not what
    runs a container out of memory), and not wildly above it."""
    input_dir = write_input(tmp_path, np.random.default_rng(1).integers(1, 900, (60, 300, 300), dtype=np.int16),
                            spacing=(0.7, 0.7, 1.5))
    code = f"""
import threading, time
from pathlib import Path
from panther_ensemble.app.predict_run import predict_folder

def anonymous():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

baseline, peak, running = anonymous(), [0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], anonymous())
        time.sleep(0.005)
sampler = threading.Thread(target=sample)
sampler.start()
predict_folder(Path({str(input_dir)!r}), Path({str(tmp_path / 'out')!r}), ensemble=Path({str(workspace.mixed_spec)!r}),
               weights=Path({str(workspace.weights)!r}), device="cpu", budget=0)
running[0] = False
sampler.join()
print("grew", peak[0] - baseline)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grew = int(re.search(r"grew (\d+)", result.stdout).group(1))
    estimate = memory.host_bytes(members(workspace), (60, 300, 300), (1.5, 0.7, 0.7), 2, "fast",
                                 memory.torch.device("cpu"), True)
    assert grew <= estimate <= 3 * grew, f"measured {grew / 2 ** 20:.0f} MiB, estimated {estimate / 2 ** 20:.0f} MiB"


def test_forward_bytes_of_resencl_from_a_meta_dry_run():
    """The activation peak of one ResEncL 192^3 tile forward in fp16 (what a captured graph's pool must hold),
    counted on the meta device: 1.69 GiB, the same on every run."""
    import torch
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    class Stub:  # what forward_bytes reads of a member
        input_shape = [1, 192, 192, 192]
        plans_manager = configuration_manager = dataset_json = None

    kwargs = dict(input_channels=1, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320],
                  conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
                  n_blocks_per_stage=[1, 3, 4, 6, 6, 6], num_classes=3, n_conv_per_stage_decoder=[1] * 5,
                  conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    original = activations_module.network_from_plans
    activations_module.network_from_plans = lambda *a: ResidualEncoderUNet(**kwargs)
    try:
        parameters, activations = activations_module.forward_bytes(Stub())
    finally:
        activations_module.network_from_plans = original
    assert parameters == pytest.approx(102.35e6 * 4, rel=0.01)
    assert activations == 1.6875 * GiB


def test_cpu_tiles_per_forward_follow_the_hosts_room(workspace):
    """On a CPU, as many tiles per forward as a quarter of the room holds at the plans' bound of fp32 activations,
    at most four; one where even one does not fit; one on a GPU, as nnU-Net. No dry run: its imports (torch's
    dynamo, sympy: 70 MB) would come mid-case, where GC's RLIMIT_DATA makes a failed import an abort."""
    import sys

    import torch

    member = members(workspace, "t1_spec")[0]
    cpu, most, bound = torch.device("cpu"), activations_module.CPU_MAX_TILES_PER_FORWARD, \
        activations_module.tile_bytes_bound(member)
    assert activations_module.tiles_per_forward(member, cpu, room=2 ** 40) == most
    assert activations_module.tiles_per_forward(member, cpu, room=int(4 * 2.5 * bound)) == 2
    assert activations_module.tiles_per_forward(member, cpu, room=0) == 1
    assert activations_module.tiles_per_forward(member, torch.device("cuda"), room=2 ** 40) == 1
    script = ("import sys, torch\nfrom pathlib import Path\n"
              "from panther_ensemble.engine.members import describe_member\n"
              "from panther_ensemble.engine.spec import load_spec\n"
              "from panther_ensemble.engine.activations import tiles_per_forward\n"
              f"m = describe_member(Path({str(workspace.weights)!r}), load_spec(Path({str(workspace.t1_spec)!r}))"
              ".members[0])\n"
              "for room in (0, 2 ** 20, 2 ** 40):\n    tiles_per_forward(m, torch.device('cpu'), room)\n"
              "print('sympy' in sys.modules, 'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["False", "False"], done.stderr[-2000:]


def _meta(architecture, **kwargs):
    import torch

    base = dict(input_channels=1, conv_op=torch.nn.Conv3d, num_classes=3, conv_bias=True,
                norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    with torch.device("meta"):
        return architecture(**base, **kwargs)


def test_the_plans_bound_holds_a_dry_runs_count(workspace):
    """The plans' bound the CPU batch is sized by is above what a dry run counts, for the demo's members, ResEncL
    at 128^3, a 4-stage ResEnc at 96^3 and a plain U-Net."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    class Stub:  # what tile_bytes_bound reads of a member
        def __init__(self, features, patch):
            self.input_shape = [1, *patch]
            self.configuration_manager = type("C", (), {"network_arch_init_kwargs": {"features_per_stage": features}})
            self.label_manager = type("L", (), {"num_segmentation_heads": 3})

    resencl = dict(n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320], kernel_sizes=[[3, 3, 3]] * 6,
                   strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, n_blocks_per_stage=[1, 3, 4, 6, 6, 6],
                   n_conv_per_stage_decoder=[1] * 5)
    small = dict(n_stages=4, features_per_stage=[4, 8, 16, 32], kernel_sizes=[[3, 3, 3]] * 4,
                 strides=[[1, 1, 1]] + [[2, 2, 2]] * 3, n_blocks_per_stage=[1, 3, 4, 6],
                 n_conv_per_stage_decoder=[1] * 3)
    plain = dict(n_stages=5, features_per_stage=[32, 64, 128, 256, 320], kernel_sizes=[[3, 3, 3]] * 5,
                 strides=[[1, 1, 1]] + [[2, 2, 2]] * 4, n_conv_per_stage=[2] * 5, n_conv_per_stage_decoder=[2] * 4)
    cases = [(_meta(ResidualEncoderUNet, **resencl), resencl, (128, 128, 128)),
             (_meta(ResidualEncoderUNet, **small), small, (96, 96, 96)),
             (_meta(PlainConvUNet, **plain), plain, (64, 128, 128))]
    for network, kwargs, patch in cases:
        counted = activations_module.activation_bytes(network, (1, *patch), torch.float32)
        assert counted <= activations_module.tile_bytes_bound(Stub(kwargs["features_per_stage"], patch))
    member = members(workspace, "t1_spec")[0]
    counted = activations_module.activation_bytes(activations_module._meta_network(member), member.input_shape,
                                                  torch.float32)
    assert counted <= activations_module.tile_bytes_bound(member)


@pytest.mark.parametrize("batch", [2, 4, 8])
def test_a_batchs_activations_are_at_most_its_tiles_times_one(workspace, batch):
    """The batch rule multiplies one tile's activations: a batch's dry run holds no more than that."""
    import torch

    member = members(workspace, "t1_spec")[0]
    network = activations_module._meta_network(member)
    one = activations_module.activation_bytes(network, member.input_shape, torch.float32)
    many = activations_module.activation_bytes(network, member.input_shape, torch.float32, batch)
    assert batch * one * 0.9 <= many <= batch * one


def test_the_host_plan_counts_the_batchs_activations(workspace, monkeypatch):
    """On a CPU the host estimate grows by the batch's activations (the window and a forward are alive at once)."""
    import torch

    ensemble = members(workspace, "t1_spec")
    arguments = (ensemble, (40, 200, 200), (3.0, 1.0, 1.0), 2, "fast", torch.device("cpu"), True)
    with_batch = memory.host_bytes(*arguments)
    expected = max(activations_module.batch_activation_bytes(m, torch.device("cpu")) for m in ensemble)
    monkeypatch.setattr(memory, "batch_activation_bytes", lambda member, device: 0)
    assert with_batch - memory.host_bytes(*arguments) == expected > 0


def estimate(networks=6, graphs=3, forward=2, window=1, input_grid=1, one=1) -> memory.DeviceEstimate:
    return memory.DeviceEstimate(networks * GiB, graphs * GiB, forward * GiB, window * GiB, input_grid * GiB, one * GiB)


@pytest.mark.parametrize("free, placement, said", [
    (100, Placement(), ""),
    (12.5, Placement(capture_graphs=False), "to fit: no CUDA graph capture"),
    (11, Placement(capture_graphs=False, input_grid_on_device=False),
     "to fit: no CUDA graph capture, the input-grid stage on the host"),
    (7, Placement(False, False, False), "networks loaded when needed, not all kept"),
    (1, Placement(False, False, False), "still 5.75 GiB: steps that run out of device memory fall back to the host"),
])
def test_device_plan_gives_things_up_in_order(capsys, free, placement, said):
    # all kept: 1.15 * (6 + 3 + 2 + 1 + 1) = 14.95 GiB; no graphs 11.5; grid on host 10.35; networks 2 of 1: 5.75
    assert memory.plan_device(estimate(), int(free * GiB)) == placement
    line = capsys.readouterr().out
    assert line.startswith(f"device memory: {free:.2f} GiB free; estimate 14.95 GiB") and said in line


def test_a_device_too_small_for_everything_adapts_and_gives_the_same_mask(workspace, tmp_path, monkeypatch, capsys):
    """On a device (the CPU under another name here) with an injected free memory that fits nothing: no graph
    capture, the input grid on the host, networks loaded when needed; the mask is the default run's."""
    input_dir = write_input(tmp_path, np.random.default_rng(5).uniform(100, 900, (10, 30, 34)).astype(np.float32))
    default = predict_folder_mask(workspace, input_dir, tmp_path / "default")
    capsys.readouterr()
    sums = []
    monkeypatch.setattr(run, "select_device", lambda requested: STAND_IN_DEVICE)
    monkeypatch.setattr(run, "device_free_bytes", lambda device: 2 ** 20)
    original = input_grid.ProbabilitySum.__init__
    monkeypatch.setattr(input_grid.ProbabilitySum, "__init__",
                        lambda self, shape, classes, device: sums.append(device) or original(self, shape, classes,
                                                                                             device))
    adapted = predict_folder_mask(workspace, input_dir, tmp_path / "adapted")
    log = capsys.readouterr().out
    assert "to fit: no CUDA graph capture, the input-grid stage on the host, networks loaded when needed" in log
    assert sums == [input_grid.HOST]
    np.testing.assert_array_equal(adapted, default)


def predict_folder_mask(workspace, input_dir, out):
    written = run.predict_folder(input_dir, out, ensemble=workspace.mixed_spec, weights=workspace.weights,
                                 device="auto", budget=0)
    return read_mask(written[0])[0]


def test_onnx_runtime_arenas_are_capped_and_counted(workspace, monkeypatch):
    """Each ONNX Runtime session on CUDA keeps an arena of its own: the plan counts every one, each session is
    capped at its share, and a device that cannot hold them refuses the backend in one line."""
    from dataclasses import replace as copy

    import panther_ensemble.engine.onnx_network as onnx_network
    from panther_ensemble.core.errors import PantherError

    torch_members = members(workspace)
    onnx_members = [copy(m, backend="onnxruntime") for m in torch_members]
    torch_estimate = memory.estimate_device(torch_members, (40, 200, 200), (3.0, 1.0, 1.0))
    onnx_estimate = memory.estimate_device(onnx_members, (40, 200, 200), (3.0, 1.0, 1.0))
    assert torch_estimate.arenas == () and len(onnx_estimate.arenas) == len(onnx_members)
    assert onnx_estimate.networks == 0 and onnx_estimate.graphs == 0  # the arenas hold them
    parameters, activations = memory.forward_bytes(onnx_members[0])
    assert onnx_estimate.arenas[0] == memory.onnx_arena_bytes(parameters, activations)
    assert onnx_estimate.total(Placement()) >= sum(onnx_estimate.arenas)
    assert onnx_estimate.total(Placement(keep_networks=False)) < onnx_estimate.total(Placement())
    # the session's provider options
    monkeypatch.setattr(onnx_network, "import_onnxruntime", lambda: type("ort", (), {
        "get_available_providers": staticmethod(lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        "preload_dlls": staticmethod(lambda msvc=False: None)}))
    cuda = onnx_network.providers(run.torch.device("cuda", 0), 123_456_789)[0]
    assert cuda == ("CUDAExecutionProvider", {"device_id": 0, "arena_extend_strategy": "kSameAsRequested",
                                              "gpu_mem_limit": 123_456_789})
    # placement: capped where it fits, refused where it cannot
    monkeypatch.setattr(run, "device_free_bytes", lambda device: 2 ** 40)
    run.device_placement(onnx_members, STAND_IN_DEVICE, (40, 200, 200), (3.0, 1.0, 1.0))
    assert [m.arena_bytes for m in onnx_members] == list(onnx_estimate.arenas)
    monkeypatch.setattr(run, "device_free_bytes", lambda device: 1024)
    with pytest.raises(PantherError, match="the onnxruntime backend would need about .* use --backend torch"):
        run.device_placement(onnx_members, STAND_IN_DEVICE, (40, 200, 200), (3.0, 1.0, 1.0))


def test_select_and_the_member_table_check_host_memory_before_predicting(workspace, tmp_path, monkeypatch, capsys):
    """Under predict's memory plan: a labelled case that cannot fit is refused before any network loads."""
    from panther_ensemble.cli import main
    from panther_ensemble.demo import synthetic as syn

    for name in ("images", "labels"):
        syn.make_image(tmp_path / name / "case.mha", (10, 30, 34), (1, 1, 3), seed=1)
    monkeypatch.setattr(memory, "available_memory", lambda: (10 * 2 ** 20, "a tiny limit"))
    for command in (["select", "--candidates", str(workspace.t1_spec), "--out", str(tmp_path / "chosen.toml")],
                    ["evaluate", "--ensemble", str(workspace.t1_spec)]):
        assert main([*command, "--weights", str(workspace.weights), "--images", str(tmp_path / "images"),
                     "--labels", str(tmp_path / "labels"), "--device", "cpu"]) == 1
        captured = capsys.readouterr()
        assert "would need about" in captured.err and "(a tiny limit)" in captured.err
        assert " tiles in " not in captured.out  # no member ran
    assert not (tmp_path / "chosen.toml").exists()
