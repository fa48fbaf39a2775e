"""What each command does, once its arguments are parsed (cli.py): heavy imports (torch, nnunetv2) happen here,
per command, so --help and argument errors cost nothing."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .core.errors import PantherError, finite_number
from .core.stop import write_text_atomically, written_atomically

if TYPE_CHECKING:
    from .engine.spec import EnsembleSpec


def _spec_and_weights(spec_file: Path, weights: Path | None, backend: str | None = None
                      ) -> tuple[EnsembleSpec, Path, str]:
    """The spec, its weights root (--weights or the app's lookup), its backend for the tools (--backend, else the
    spec's, else torch) and the check that the root holds its members' network files for that backend."""
    from .app.locations import resolve_weights_root
    from .app.predict_run import choose_backend
    from .engine.spec import check_against_weights, load_spec

    spec = load_spec(spec_file)
    backend = choose_backend(backend, spec, "fast") or "torch"
    weights_root = resolve_weights_root(spec, weights)
    check_against_weights(spec, weights_root, backend)
    return spec, weights_root, backend


def run_predict(args: argparse.Namespace) -> None:
    from .app.predict_run import CohortOptions, predict_folder  # heavy imports (torch, nnunetv2) only now
    from .core.clock import exec_task

    predict_folder(args.input, args.output, ensemble=args.ensemble, weights=args.weights, device=args.device,
                   budget=args.budget, mode=args.mode, backend=args.backend,
                   cohort=CohortOptions(args.shard, args.shard_count, args.skip_existing, args.records),
                   time_limit=args.time_limit, origin=exec_task() if args.process_clock else None)


def run_serve(args: argparse.Namespace) -> None:
    from .app.invoke_server import serve  # the port is bound before torch is imported
    from .core.clock import job_start, now

    job = job_start() if args.process_clock else now("the server's start")

    def load():
        from .app.loaded_ensembles import LoadedEnsembles, ServeOptions

        ensembles = LoadedEnsembles(ServeOptions(args.input, args.output, args.ensemble, args.weights, args.device,
                                                 args.budget, args.mode, args.backend, tuple(args.socket or ()),
                                                 args.time_limit, job))
        ensembles.load_at_start()
        return ensembles.predict

    serve(load, args.host, args.port, folders=(args.input, args.output))


def run_summarize(args: argparse.Namespace) -> None:
    from .app.cohort import summarize
    from .core.errors import AlreadyReported

    text, complete = summarize(args.records, args.slowest)
    print(text)
    if not complete:  # exit 1: a scheduler's loop resubmits until it is 0
        raise AlreadyReported("the cohort is incomplete")


def _evaluation(args: argparse.Namespace) -> tuple[dict, str]:
    """evaluate's result and its summary, in either mode."""
    folders, members = (args.pred, args.gt), (args.ensemble, args.images, args.labels)
    if all(folders) and not any(members):
        from .tools.evaluate import evaluate_folders

        result = evaluate_folders(args.pred, args.gt, args.tumor_label, args.pred_label)
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result["aggregates"].items())
    elif all(members) and not any(folders):
        if args.pred_label != 1 or args.tumor_label is not None:
            raise PantherError("with --ensemble the spec's tumor_label is the label: --tumor-label and --pred-label "
                               "go with --pred and --gt")
        from .engine.devices import select_device
        from .tools.member_table import compare_members, format_table

        spec, weights_root, backend = _spec_and_weights(args.ensemble, args.weights, args.backend)
        result = compare_members(spec, weights_root, args.images, args.labels, select_device(args.device), backend)
        summary = "\n" + format_table(result)
    else:
        raise PantherError("evaluate takes either --pred and --gt, or --ensemble, --images and --labels")
    return result, summary


def run_evaluate(args: argparse.Namespace) -> None:
    import json

    from .core.log import progress_on_stderr

    with progress_on_stderr(args.json):  # --json: the progress lines on stderr
        result, summary = _evaluation(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.out, json.dumps(result, indent=2) + "\n")
    if args.json:  # stdout is the JSON alone, for jq and scripts
        print(json.dumps(result, indent=2))
        return
    print(summary.strip())
    if args.out is not None:
        print(f"wrote {args.out}")


def run_preview(args: argparse.Namespace) -> None:
    from .tools.preview import write_preview

    print(f"wrote {write_preview(args.image, args.mask, args.out, args.gt, args.tumor_label, args.pred_label)}")


def run_export_onnx(args: argparse.Namespace) -> None:
    from .app.locations import resolve_weights_root
    from .engine.spec import load_spec
    from .tools.onnx_export import export_beside, export_ensemble

    spec = load_spec(args.ensemble)
    weights_root = resolve_weights_root(spec, args.weights)
    if args.beside:
        export_beside(spec, weights_root, args.opset)
        print(f"wrote {len(spec.members)} ONNX members beside their checkpoints in {weights_root}; on a CPU, predict "
              "runs each with torch, ONNX Runtime or OpenVINO, whichever it measures fastest here "
              "(PANTHER_FORWARD_CHOICE=off: torch)")
        return
    written = export_ensemble(spec, weights_root, args.out, args.opset)
    print(f"wrote {len(spec.members)} ONNX members to {args.out}; run them with: panther-ensemble predict "
          f"--ensemble {written} --weights {args.out}")


def run_export_model(args: argparse.Namespace) -> None:
    import tempfile

    from .app.manifest import sha256
    from .app.model_tarball import stage_models, write_tarball

    if not args.out.name.endswith(".tar.gz"):
        raise PantherError(f"--out {args.out}: a model tarball's name ends in .tar.gz")
    spec, weights_root, backend = _spec_and_weights(args.ensemble, args.weights)
    with tempfile.TemporaryDirectory(prefix="panther-export-model-") as scratch:
        stage = Path(scratch) / "model"
        if args.onnx and backend == "torch":
            from .tools.onnx_export import export_ensemble

            export_ensemble(spec, weights_root, stage, args.opset)
        else:  # the spec's own members: checkpoints, or the ONNX models export-onnx wrote (backend = "onnxruntime")
            stage_models([spec.path], weights_root, stage, backend=backend)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_tarball(stage, args.out)
    digest = sha256(args.out)  # streamed: a model tarball is gigabytes
    print(f"wrote {args.out}: {args.out.stat().st_size / 1e6:.1f} MB, sha256 {digest}, {len(spec.members)} member(s) "
          f"of {spec.path.name} for {spec.input_socket}; upload it on the algorithm's Models page (GC extracts it "
          "to /opt/ml/model)")


def run_benchmark(args: argparse.Namespace) -> None:
    import tempfile

    from .engine.devices import select_device

    try:
        from .tools.benchmark import format_report, run_benchmark
    except ModuleNotFoundError as e:  # the image leaves the demo package out
        raise PantherError(f"benchmark needs {e.name}, which this installation lacks (run it from a checkout: "
                           "pip install -e .)") from None

    if args.repeats is not None and args.repeats < 1:
        raise PantherError(f"--repeats must be at least 1, got {args.repeats}")
    finite_number(args.max_minutes, "--max-minutes")
    with tempfile.TemporaryDirectory(prefix="panther-benchmark-") as scratch:
        report = run_benchmark(args.preset, args.work or Path(scratch), select_device(args.device), args.case,
                               args.repeats, args.max_minutes, args.out, not args.no_onnxruntime)
    print(format_report(report))
    print(f"wrote {args.out}")


def _geometry(shape: str | None, spacing: str | None) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """--shape Z,Y,X and --spacing Z,Y,X, both or neither."""
    if shape is None and spacing is None:
        return None
    try:
        dims, mm = tuple(int(v) for v in shape.split(",")), tuple(float(v) for v in spacing.split(","))
    except (AttributeError, ValueError):
        raise PantherError(f"--shape and --spacing take Z,Y,X numbers together, got {shape!r} and {spacing!r}") \
            from None
    if len(dims) != 3 or len(mm) != 3 or min(dims) < 1 or not all(math.isfinite(v) and v > 0 for v in mm):
        raise PantherError(f"--shape and --spacing take three positive, finite numbers each, got {shape!r} and "
                           f"{spacing!r}")
    return dims, mm


def run_select(args: argparse.Namespace) -> None:
    from .engine.devices import select_device
    from .tools.cost import target_named
    from .tools.select import run_selection
    from .tools.selection_report import held_out_table, path_table, postprocessing_table, write_report

    target = target_named(args.target)
    geometry = _geometry(args.shape, args.spacing)
    held_out = (args.held_out_images, args.held_out_labels)
    if any(held_out) and not all(held_out):
        raise PantherError("--held-out-images and --held-out-labels go together")
    candidates, weights_root, backend = _spec_and_weights(args.candidates, args.weights, args.backend)
    selection = run_selection(candidates, weights_root, args.images, args.labels, args.out,
                              select_device(args.device), target, args.objective, args.budget, geometry,
                              held_out if all(held_out) else None, args.remeasure, not args.no_postprocessing,
                              backend)
    print(path_table(selection))
    if selection.post is not None:
        print(postprocessing_table(selection))
    if selection.held_out:
        print(held_out_table(selection.held_out))
    if args.report:
        print("wrote " + ", ".join(map(str, write_report(selection, target.name, args.report))))
    post = f", post-processing: {selection.post.chosen}" if selection.post is not None else ""
    print(f"wrote {selection.spec}: {len(selection.path[-1].weights)} member(s){post}, projected "
          f"{selection.path[-1].seconds:.1f} s per case on {target.name}")


def _cost(args: argparse.Namespace) -> dict:
    from .app.forward_choice import choose_forwards
    from .app.predict_run import choose_backend
    from .engine.devices import select_device
    from .engine.image import check_image
    from .engine.members import describe_member
    from .tools.cost import pool_cost_on, target_named

    target = target_named(args.target)
    geometry = _geometry(args.shape, args.spacing)
    if (geometry is None) == (args.image is None):
        raise PantherError("cost takes either --image or --shape and --spacing")
    if geometry is None:
        header = check_image(args.image)
        geometry = header.shape_zyx, header.spacing_zyx
    spec, weights_root, backend = _spec_and_weights(args.ensemble, args.weights, args.backend)
    members = [describe_member(weights_root, m, backend) for m in spec.members]
    device = select_device(args.device)
    # `here` prices what predict runs: where no backend is named, each member's measured choice
    if target.tflops is None and choose_backend(args.backend, spec, "fast") is None:
        choose_forwards(members, device)
    postprocessing = spec.postprocessing.kind if spec.postprocessing else "none"
    return pool_cost_on(members, *geometry, target, device, args.remeasure, postprocessing).report()


def run_cost(args: argparse.Namespace) -> None:
    import json

    from .core.log import progress_on_stderr
    from .tools.cost import format_cost

    with progress_on_stderr(args.json):  # --json: stdout is the JSON alone ('here' logs its rates' origin)
        cost = _cost(args)
    print(json.dumps(cost, indent=2) if args.json else format_cost(cost))


def run_phantoms(args: argparse.Namespace) -> None:
    try:
        from .demo.phantom import panther_label_map
        from .demo.sample_cases import write_raw_dataset
    except ModuleNotFoundError as e:  # the image leaves the demo package out
        raise PantherError(f"phantoms needs {e.name}, which this installation lacks (run it from a checkout: "
                           "pip install -e .)") from None
    if args.count < 1:
        raise PantherError(f"--count must be at least 1, got {args.count}")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise PantherError(f"--out {args.out}: exists and is not an empty folder")
    labels = {"background": 0, "pancreas": 1, "tumor": 2} if args.labels == "panther" else \
        {"background": 0, "tumor": 1, "pancreas": 2}
    seeds = range(args.seed, args.seed + args.count)
    with written_atomically(args.out) as partial:
        write_raw_dataset(partial, args.flavour, seeds, labels,
                          label_map=panther_label_map if args.labels == "panther" else None, flavour=args.flavour)
    print(f"wrote {args.count} {args.flavour.upper()} phantom case(s) to {args.out} (imagesTr/, labelsTr/, "
          f"dataset.json: {labels}); try: panther-ensemble select --candidates YOUR_SPEC --images "
          f"{args.out / 'imagesTr'} --labels {args.out / 'labelsTr'} --out chosen.toml")
