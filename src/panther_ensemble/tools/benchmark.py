"""The stock nnU-Net chain against this product on PANTHER-sized cases, alternated in one process run.

(a) stock: one nnUNetPredictor per model folder with its folds (no mirroring, tile step 0.5), probabilities
    returned by nnU-Net's own export, weighted by each folder's fold count and averaged, argmax, written;
(b) this product: `predict` on the same case in the GC layout (budget off), with its torch backend and, where
    ONNX Runtime is installed (and on CUDA has its CUDA provider), with the onnxruntime backend on the same
    members exported by export-onnx (the export timed apart, once).
All are timed as a whole process would be (models loaded, image read, mask written) with per-stage times,
peak host RSS and peak device memory; runs alternate (a-b-c, b-c-a, c-a-b, ...) and the report takes medians.
(b)'s masks are compared with the per-member reference (docs/contracts.md) once, outside the timing. On a GPU one
untimed tile forward comes first, so that the first timed run does not pay alone for CUDA's start and cuDNN's
autotuning.

Members are random-weight nnU-Net folders with the ResEncL architecture that nnU-Net's own planner
(nnUNetPlannerResEncL) designs for 1 mm isotropic spacing, patch 192^3 as in the paper; presets cut the
network and spacing down to what a CPU or a smoke test can run.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import PantherError
from ..core.log import StageTimer, log
from ..core.stop import write_text_atomically
from ..demo.resenc import fit_patch, plan_resenc, shrink_plans
from ..demo.synthetic import ModelConfig, make_model_folder, write_gc_input, write_spec
from ..engine.members import Member, load_member
from ..engine.spec import load_spec

PLANNER, PLANS_NAME = "nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans"
T1_GEOMETRY = dict(shape_zyx=(72, 260, 320), spacing_xyz=(1.19, 1.19, 3.0))  # PANTHER Task 1 (issue 5)
T2_GEOMETRY = dict(shape_zyx=(96, 300, 300), spacing_xyz=(1.2, 1.2, 1.7))  # an MR-Linac-like T2 volume
# dense fp16 tensor-core peaks (NVIDIA data sheets), for the T4 projection
PEAK_FP16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "T4": 65.0}
T4_PEAK_TFLOPS = 65.0
STAGES = ("load", "read", "preprocess", "forward", "resample", "combine", "write")


@dataclass(frozen=True)
class Preset:
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    features: tuple[int, ...] | None  # None: the planner's full ResEncL
    cases: dict[str, dict]  # "t1", "t2" or a variant "t1-<name>": the composition and socket of its base case
    repeats: int
    patches: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # a case's own patch (else patch_size)

    def patch(self, case: str) -> tuple[int, int, int]:
        return self.patches.get(case, self.patch_size)


PRESETS = {
    "gpu": Preset((1.0, 1.0, 1.0), (192, 192, 192), None, {"t1": T1_GEOMETRY, "t2": T2_GEOMETRY}, repeats=2),
    # t1-96: the same members with 96^3 patches, where a CPU's single-tile forward is slowest (issue 35)
    "cpu": Preset((2.0, 2.0, 2.0), (64, 64, 64), (4, 8, 16, 32),
                  {"t1": T1_GEOMETRY, "t2": T2_GEOMETRY, "t1-96": T1_GEOMETRY}, 3, {"t1-96": (96, 96, 96)}),
    "smoke": Preset((3.0, 3.0, 3.0), (32, 32, 32), (4, 8, 16),
                    {"t1": dict(shape_zyx=(20, 72, 88), spacing_xyz=(1.19, 1.19, 3.0))}, repeats=1),
}
# The paper's compositions: Task 1 3 + 2 + 1 folds of three models, Task 2 1 + 4 folds of two.
COMPOSITIONS = {
    "t1": ("Dataset901_PantherT1", [("nnUNetTrainer", (0, 1, 2), "checkpoint_best.pth"),
                                    ("nnUNetTrainerDA5", (0, 1), "checkpoint_final.pth"),
                                    ("nnUNetTrainerDA5ord0", (0,), "checkpoint_best.pth")]),
    "t2": ("Dataset902_PantherT2", [("nnUNetTrainerDA5", (0,), "checkpoint_best.pth"),
                                    ("nnUNetTrainerDA5Segord0", (0, 1, 2, 3), "checkpoint_best.pth")]),
}
SOCKETS = {"t1": "abdominal-t1-mri", "t2": "abdominal-t2-mri"}
IMAGE_SEEDS = {"t1": 41, "t2": 42}


@dataclass
class Setup:
    spec: Path
    weights: Path
    input_dir: Path
    image: Path
    folders: list[tuple[Path, tuple, str]]  # (model folder, folds, checkpoint) per stock predictor
    onnx_spec: Path | None = None  # the members exported by export-onnx, and their spec


def bench_plans(work: Path, preset: Preset, patch: tuple[int, int, int] | None = None) -> dict:
    """The planner's ResEncL plans for PANTHER-like scans, fitted to `patch` (default: the preset's)."""
    plans = plan_resenc(work / "planning", PLANNER, T1_GEOMETRY["spacing_xyz"][::-1], T1_GEOMETRY["shape_zyx"],
                        preset.target_spacing, PLANS_NAME)
    if preset.features is None:
        return fit_patch(plans, patch or preset.patch_size)
    return shrink_plans(plans, preset.features, patch or preset.patch_size)


def base_case(case: str) -> str:
    """The case whose composition, socket and image seed a variant ("t1-96") shares."""
    return case.split("-")[0]


def set_up(work: Path, preset: Preset, case: str, plans: dict, plans_names: tuple[str, ...] | None = None,
           trainer: str | None = None) -> Setup:
    """Random-weight member folders, the spec and the GC-layout input for one case. `trainer` and `plans_names`
    (one per model) replace the composition's: models that differ only by plans, as the seed's fine-tuning makes."""
    dataset, models = COMPOSITIONS[base_case(case)]
    socket = SOCKETS[base_case(case)]
    weights, members, folders = work / "weights", [], []
    for seed, (model_trainer, folds, checkpoint) in enumerate(models, start=1):
        config = ModelConfig(dataset=dataset, trainer=trainer or model_trainer,
                             plans_name=plans_names[seed - 1] if plans_names else PLANS_NAME, folds=folds,
                             checkpoints=(checkpoint,), seed=seed, plans=plans)
        folders.append((make_model_folder(weights, config), folds, checkpoint))
        members += [(config, fold, checkpoint, 1.0) for fold in folds]
    spec = write_spec(work / f"{case}.toml", members, input_socket=socket)
    input_dir = write_gc_input(work / f"input-{case}", socket, {f"{case}.mha": dict(
        **preset.cases[case], seed=IMAGE_SEEDS[base_case(case)])})
    return Setup(spec, weights, input_dir, input_dir / "images" / socket / f"{case}.mha", folders)


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 10 ms from /proc)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096


def run_stock(setup: Setup, device: torch.device, output: Path) -> tuple[StageTimer, np.ndarray]:
    """(a): the chain a user of stock nnU-Net would write, split into its stages with nnU-Net's own calls
    (those predict_single_npy_array makes)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from .reference import stock_export, stock_logits, stock_predictor, stock_preprocess

    timer = StageTimer()
    with timer.stage("load"):
        predictors = [(stock_predictor(folder, folds, checkpoint, device), len(folds))
                      for folder, folds, checkpoint in setup.folders]
    with timer.stage("read"):
        data, properties = SimpleITKIO().read_images([str(setup.image)])
    total, weight = None, 0
    for predictor, folds in predictors:
        with timer.stage("preprocess"):
            prepared = stock_preprocess(predictor, data, properties)
        with timer.stage("forward"):
            logits = stock_logits(predictor, prepared)
        with timer.stage("resample"):
            probabilities = stock_export(predictor, logits, prepared)
        with timer.stage("combine"):
            total = probabilities * folds if total is None else total + probabilities * folds
            weight += folds
    with timer.stage("combine"):
        mask = (np.argmax(total / weight, axis=0) == 1).astype(np.uint8)
    with timer.stage("write"):
        SimpleITKIO().write_seg(mask, str(output / "stock.mha"), properties)
    return timer, mask


def run_ours(setup: Setup, device: torch.device, output: Path, backend: str = "torch",
             ) -> tuple[StageTimer, np.ndarray]:
    """(b): this product's predict, as `panther-ensemble predict --budget 0 --backend B` runs it."""
    import SimpleITK as sitk

    from ..app.predict_run import predict_folder

    timer = StageTimer()
    # export-onnx writes the spec into the weights root it makes
    spec, weights = (setup.onnx_spec, setup.onnx_spec.parent) if backend == "onnxruntime" else \
        (setup.spec, setup.weights)
    written = predict_folder(setup.input_dir, output / "ours", ensemble=spec, weights=weights, device=device.type,
                             budget=0, backend=backend, timer=timer)
    return timer, sitk.GetArrayFromImage(sitk.ReadImage(str(written[0])))


def onnxruntime_runs_on(device: torch.device) -> bool:
    """Whether ONNX Runtime is installed with a provider for the device (the reason logged where not)."""
    try:
        from ..engine.onnx_network import providers

        providers(device)
        return True
    except PantherError as e:
        log(f"onnxruntime backend not benchmarked: {e}")
        return False


# "chosen": predict as it runs by default on a CPU, each member's backend and tiles per forward measured and chosen
# (app.forward_choice) with the ONNX exports beside the checkpoints
PATHS = {"stock": run_stock, "ours": run_ours, "onnxruntime": functools.partial(run_ours, backend="onnxruntime"),
         "chosen": functools.partial(run_ours, backend=None)}


def measure(run, setup: Setup, device: torch.device, output: Path) -> tuple[dict, np.ndarray]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss, contextlib.redirect_stdout(io.StringIO()):
        timer, mask = run(setup, device, output)
    result = {"wall_s": timer.elapsed(), "stages_s": {stage: timer.seconds.get(stage, 0.0) for stage in STAGES},
              "peak_host_gib": rss.peak / 1024 ** 3}
    if device.type == "cuda":
        result["peak_device_gib"] = torch.cuda.max_memory_allocated() / 1024 ** 3
    return result, mask


def forward_flops(setup: Setup, member: Member, members: int, device: torch.device) -> tuple[float, int]:
    """FLOPs of one network forward on one tile (counted on the meta device) and the forwards a case needs."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..engine.image import read_image
    from ..engine.members import network_from_plans
    from ..engine.preprocess import preprocess
    from ..engine.sliding_window import tile_count

    patch = member.configuration_manager.patch_size
    with torch.device("meta"):
        network = network_from_plans(member.plans_manager, member.configuration_manager, member.dataset_json)
        with FlopCounterMode(display=False) as counter:
            network(torch.empty(1, 1, *patch))
    tiles = tile_count(preprocess(read_image(setup.image), member, device).data.shape[1:], patch)
    return float(counter.get_total_flops()), tiles * members


def warm_up(member: Member, device: torch.device) -> float:
    """One untimed tile forward, so that neither path's first run pays for CUDA's start and cuDNN's choice of
    convolutions (both paths run the same network shapes under fp16 autocast). Seconds it took."""
    started = time.perf_counter()
    network = member.network.to(device)
    with torch.inference_mode(), torch.autocast(device.type):
        network(torch.zeros(1, 1, *member.configuration_manager.patch_size, device=device))
    network.to("cpu")  # off the device again: the timed runs' peak device memory is theirs alone
    torch.cuda.synchronize(device)
    return time.perf_counter() - started


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FP16_TFLOPS.items() if key in name), None)


def summarize(runs: list[dict]) -> dict:
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "stages_s": {s: statistics.median(r["stages_s"][s] for r in runs) for s in STAGES},
            "peak_host_gib": max(r["peak_host_gib"] for r in runs),
            **({"peak_device_gib": max(r["peak_device_gib"] for r in runs)} if "peak_device_gib" in runs[0] else {}),
            "runs_wall_s": [round(r["wall_s"], 2) for r in runs]}


def benchmark_case(work: Path, preset: Preset, case: str, plans: dict, device: torch.device, repeats: int,
                   deadline: float, with_onnxruntime: bool) -> dict:
    from .reference import stock_ensemble_mask

    setup = set_up(work / case, preset, case, plans)
    spec = load_spec(setup.spec)
    member = load_member(setup.weights, spec.members[0])
    flops, forwards = forward_flops(setup, member, len(spec.members), device)
    warm_up_s = warm_up(member, device) if device.type == "cuda" else 0.0
    with_choice = with_onnxruntime and device.type == "cpu"
    names = ["stock", "ours"] + (["onnxruntime"] if with_onnxruntime else []) + (["chosen"] if with_choice else [])
    export_s = choice = None
    if with_onnxruntime:
        from .onnx_export import export_beside, export_ensemble

        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            setup.onnx_spec = export_ensemble(spec, setup.weights, work / case / "onnx", verify=False)
        export_s = time.perf_counter() - started
        log(f"{case}: exported {len(spec.members)} members to ONNX in {export_s:.1f}s (not timed in the runs)")
        if with_choice:
            with contextlib.redirect_stdout(io.StringIO()):
                export_beside(spec, setup.weights, verify=False)
            choice = measure_choice(setup.weights, spec, device)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    masks = {}
    for r in range(repeats):
        if r and time.monotonic() > deadline:
            log(f"{case}: time limit reached after {r} repeat(s)")
            break
        for name in names[r % len(names):] + names[:r % len(names)]:  # each path first in turn
            output = work / case / f"out-{name}-{r}"
            output.mkdir(parents=True, exist_ok=True)
            result, masks[name] = measure(PATHS[name], setup, device, output)
            runs[name].append(result)
            stages = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in result["stages_s"].items())
            log(f"{case} repeat {r + 1}: {name} {result['wall_s']:.1f}s ({stages})")
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's own prints
        reference = stock_ensemble_mask(setup.image, setup.weights, spec, device)
    stock, ours = summarize(runs["stock"]), summarize(runs["ours"])
    result = {"case": {**{k: list(v) for k, v in preset.cases[case].items()},
                       "members": len(spec.members)},
              "patch_size": list(member.configuration_manager.patch_size),
              "stock": stock, "ours": ours, "ratio": stock["wall_s"] / ours["wall_s"],
              "forward_share_ours": ours["stages_s"]["forward"] / ours["wall_s"],
              "parity_vs_reference": parity(masks["ours"], reference),
              "stock_chain_vs_reference": parity(masks["stock"], reference),
              "flops_per_forward": flops, "forwards": forwards, "warm_up_s": warm_up_s}
    if with_onnxruntime:
        onnx = summarize(runs["onnxruntime"])
        result["onnxruntime"] = {**onnx, "ratio": stock["wall_s"] / onnx["wall_s"],
                                 "forward_share": onnx["stages_s"]["forward"] / onnx["wall_s"],
                                 "parity_vs_reference": parity(masks["onnxruntime"], reference),
                                 "export_s": export_s}
    if with_choice:
        chosen = summarize(runs["chosen"])
        result["chosen"] = {**chosen, "ratio": stock["wall_s"] / chosen["wall_s"],
                            "ratio_to_torch": ours["wall_s"] / chosen["wall_s"],
                            "parity_vs_reference": parity(masks["chosen"], reference), **choice}
    peak = device_peak_tflops(device)
    achieved = flops * forwards / ours["stages_s"]["forward"] / 1e12
    result["achieved_tflops"] = achieved
    if peak is not None:
        t4_forward = flops * forwards / 1e12 / (achieved / peak * T4_PEAK_TFLOPS)
        result["t4_projection"] = {
            "device_peak_tflops": peak, "utilization": achieved / peak, "forward_s": t4_forward,
            "case_s": t4_forward + ours["wall_s"] - ours["stages_s"]["forward"],
            "note": "projection: the forward at this device's fraction of its fp16 peak, scaled to the T4's "
                    "65 TFLOP/s; every other stage as measured here"}
    return result


def measure_choice(weights: Path, spec, device: torch.device) -> dict:
    """The forward choice's measurement, once before the runs (as a machine's first predict makes it, then keeps
    it): its seconds and what it chose per member."""
    from ..app.forward_choice import choose_forwards
    from ..engine.members import describe_member

    members = [describe_member(weights, m) for m in spec.members]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        choose_forwards(members, device)
    seconds = time.perf_counter() - started
    chosen = sorted({f"{m.backend} x{m.tiles_per_forward}" for m in members})
    log(f"forward choice measured in {seconds:.1f}s (not timed in the runs): {', '.join(chosen)}")
    return {"choice_s": seconds, "forwards": [{"member": m.spec.name, "backend": m.backend,
                                               "tiles_per_forward": m.tiles_per_forward} for m in members]}


def parity(mask: np.ndarray, reference: np.ndarray) -> dict:
    overlap = 2 * int(np.logical_and(mask, reference).sum())
    size = int(mask.sum()) + int(reference.sum())
    return {"dice": 1.0 if size == 0 else overlap / size, "differing_fraction": float((mask != reference).mean())}


@contextlib.contextmanager
def own_cache(work: Path) -> Iterator[None]:
    """This machine's measurements (app.here_cache) kept under `work` while the block runs: a benchmark measures
    the forward choice afresh, as a machine's first run does, and leaves the user's cache alone."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before


def run_benchmark(preset_name: str, work: Path, device: torch.device, cases: list[str] | None = None,
                  repeats: int | None = None, max_minutes: float = 60.0, out: Path | None = None,
                  onnxruntime: bool = True) -> dict:
    """The report; written to `out` after each case too, so a run stopped from outside keeps what it measured.
    `onnxruntime`: also run this product with its onnxruntime backend, where ONNX Runtime can run it."""
    preset = PRESETS[preset_name]
    unknown = [case for case in cases or [] if case not in preset.cases]
    if unknown:
        raise PantherError(f"the {preset_name} preset has no case {', '.join(unknown)} (it has "
                           f"{', '.join(preset.cases)})")
    with_onnxruntime = onnxruntime and onnxruntime_runs_on(device)
    deadline = time.monotonic() + 60 * max_minutes
    log(f"benchmark {preset_name} on {device_name(device)}: planning members with nnU-Net's {PLANNER}")
    plans = bench_plans(work, preset)
    report = {"preset": preset_name, "device": device_name(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "target_spacing": list(preset.target_spacing),
              "patch_size": plans["configurations"]["3d_fullres"]["patch_size"],
              "features": plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"],
              "cases": {}}
    for case in cases or list(preset.cases):  # the forward choice measured afresh, kept under work/ (own_cache)
        if report["cases"] and time.monotonic() > deadline:
            log(f"time limit reached: {case} not run")
            break
        case_plans = plans if preset.patch(case) == preset.patch_size else \
            bench_plans(work / case, preset, preset.patch(case))
        with own_cache(work):
            report["cases"][case] = benchmark_case(work, preset, case, case_plans, device,
                                                   repeats or preset.repeats, deadline, with_onnxruntime)
        if out is not None:
            write_report(report, out)
    return report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def format_report(report: dict) -> str:
    lines = [f"benchmark {report['preset']} on {report['device']} ({report['date']}), ResEnc features "
             f"{report['features']}, patch {report['patch_size']}, target spacing {report['target_spacing']} mm"]
    header = "| case | path | wall s | " + " | ".join(STAGES) + " | peak host GiB | peak device GiB |"
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    for case, result in report["cases"].items():
        for name in ("stock", "ours", "onnxruntime", "chosen"):
            if name not in result:
                continue
            r = result[name]
            device_peak = f"{r['peak_device_gib']:.2f}" if "peak_device_gib" in r else "-"
            lines.append(f"| {case} | {name} | {r['wall_s']:.1f} | " +
                         " | ".join(f"{r['stages_s'][s]:.1f}" for s in STAGES) +
                         f" | {r['peak_host_gib']:.2f} | {device_peak} |")
    lines.append("")
    for case, result in report["cases"].items():
        patch = f" (patch {result['patch_size']})" if result.get("patch_size", report["patch_size"]) != \
            report["patch_size"] else ""
        line = (f"{case}{patch}: stock/ours = {result['ratio']:.2f}x (medians of {len(result['ours']['runs_wall_s'])} "
                f"alternated runs), forward {result['forward_share_ours']:.0%} of ours, parity vs the per-member "
                f"reference: Dice {result['parity_vs_reference']['dice']:.5f}, "
                f"{result['parity_vs_reference']['differing_fraction']:.4%} voxels differ; "
                f"{result['forwards']} forwards x {result['flops_per_forward'] / 1e9:.1f} GFLOP at "
                f"{result['achieved_tflops']:.3f} TFLOP/s")
        if result["warm_up_s"]:
            line += f"; untimed warm-up {result['warm_up_s']:.1f}s"
        if "t4_projection" in result:
            t4 = result["t4_projection"]
            line += (f"; T4 projection (not a measurement): forward {t4['forward_s']:.0f}s, case "
                     f"{t4['case_s']:.0f}s of 300s")
        lines.append(line)
        if "onnxruntime" in result:
            onnx = result["onnxruntime"]
            lines.append(f"{case}: stock/onnxruntime = {onnx['ratio']:.2f}x, ours torch/onnxruntime = "
                         f"{result['ours']['wall_s'] / onnx['wall_s']:.2f}x, forward "
                         f"{onnx['forward_share']:.0%} of the onnxruntime run, parity vs the per-member reference: "
                         f"Dice {onnx['parity_vs_reference']['dice']:.5f}, "
                         f"{onnx['parity_vs_reference']['differing_fraction']:.4%} voxels differ; ONNX export "
                         f"{onnx['export_s']:.1f}s (once, not in the runs)")
        if "chosen" in result:
            chosen = result["chosen"]
            ways = sorted({f"{f['backend']} x{f['tiles_per_forward']}" for f in chosen["forwards"]})
            lines.append(f"{case}: stock/chosen = {chosen['ratio']:.2f}x, torch/chosen = "
                         f"{chosen['ratio_to_torch']:.2f}x ({', '.join(ways)}), parity vs the per-member reference: "
                         f"Dice {chosen['parity_vs_reference']['dice']:.5f}, "
                         f"{chosen['parity_vs_reference']['differing_fraction']:.4%} voxels differ; the choice "
                         f"measured in {chosen['choice_s']:.1f}s (once, not in the runs)")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, json.dumps(report, indent=2) + "\n")
