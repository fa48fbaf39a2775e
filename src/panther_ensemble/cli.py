"""Command line: `panther-ensemble predict` (and `python inference.py`, its Grand Challenge default)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import commands
from .core import stop
from .core.errors import AlreadyReported, print_failure

PREDICT_HELP = """\
Segment pancreatic tumors with a heterogeneous nnU-Net v2 ensemble, Grand Challenge style.

Input:  INPUT/inputs.json (a list of GC socket values) and the image at INPUT/<relative_path>/<name>.mha;
        without inputs.json, INPUT/images/<socket>/<name>.(mha|nii.gz|nii|nrrd). One input socket:
        abdominal-t1-mri (Task 1) or abdominal-t2-mri (Task 2); it picks the ensemble spec.
Output: OUTPUT/images/pancreatic-tumor-segmentation/<name>.mha, uint8, 1 = tumor, 0 elsewhere, on the
        input's exact grid (size, spacing, origin, direction), compressed; written atomically.
Ensemble: --ensemble FILE, else the *.toml in /opt/ml/model, then in the app's ensemble/ folder, whose
        input_socket matches the input. Weights root: --weights, else /opt/ml/model when it holds the
        members, else the app's weights/ folder.
Several images in the socket folder are predicted one after another with the models loaded once.
Deadline: members run in spec order; when the projected finish would pass --budget, the remaining members
are dropped (logged) and the ensemble of those done is written; at least one member always completes.
Progress and timing go to stdout; errors are one line on stderr and a non-zero exit, with no output written.
"""

SERVE_HELP = """\
Serve Grand Challenge's invoke API (an image labelled org.grand-challenge.api-method=invoke; docs/container.md):
an HTTP server that loads the ensembles once, then predicts INPUT into OUTPUT (as predict does) per task.

  GET  /health   503 while loading, 200 once the ensembles are loaded (on CUDA: warmed)
  POST /invoke   201: the masks are written; 422: bad input, 500: anything else (one error line on stderr each;
                 the server stays up for the next task); 409: another task is running; 503: not loaded yet

Loaded at start-up: --ensemble; else every spec of the first folder holding any (/opt/ml/model, then the app's
ensemble/), only the sockets --socket or PANTHER_SOCKETS name where set. A task for another socket loads its spec
then (within that task's budget) and keeps it. The first task's budget counts from the job's start on GC's clock
(GC's runtime's start, else this process's), loading and the wait for the call included; a later task's from its
/invoke, at most from the job's start plus the time limits of the tasks before it. A problem while loading is one
error line and exit 1 (the health check never turns 200).
"""


def _add_predict_arguments(parser: argparse.ArgumentParser, cohorts: bool = True) -> None:
    parser.add_argument("--input", type=Path, default=Path("/input"), help="input folder (default: /input)")
    parser.add_argument("--output", type=Path, default=Path("/output"), help="output folder (default: /output)")
    parser.add_argument("--ensemble", type=Path, help="ensemble spec (TOML); default: the one for the input socket")
    parser.add_argument("--weights", type=Path, help="root of the nnU-Net result folders the spec names")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: CUDA when available, else CPU (default: auto)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="time budget per task: members that would finish past it are dropped and the ensemble "
                             "of those done is written; it counts from the job's start on GC's clock (GC's runtime's "
                             "start where it started this process, else this process's: start-up, imports, loading "
                             "and, serving, the wait for the first /invoke included; docs/contracts.md) (default: "
                             "the spec's budget_seconds, else the time limit less a 30 s margin: 270; 0: no limit)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="the phase's time limit per task on GC, which the budget must stay within; the k-th "
                             "task of a job has at most k of them from the job's start (default: the spec's "
                             "time_limit_seconds, else GC's 300)")
    parser.add_argument("--mode", choices=("fast", "exact"), default="fast",
                        help="fast (default): nnU-Net's resampling arithmetic on the device, the image's (cubic "
                             "B-spline as matrices) and the logits' (nnU-Net's torch resampling, slab by slab), and "
                             "on a CPU small tiles a few per forward: within the parity bound of stock nnU-Net; "
                             "exact: stock nnU-Net's arithmetic step by step (the plans' resampling on the host, one "
                             "tile per forward): the same masks as stock nnU-Net on every parity case")
    parser.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"),
                        help="what runs the member networks: torch (the checkpoints), onnxruntime or openvino (a "
                             "CPU only) (members written by export-onnx) (default: the spec's backend, else on a CPU "
                             "each member's fastest, measured, with exports beside the checkpoints; else torch)")
    if not cohorts:
        return
    cohort = parser.add_argument_group("cohorts (docs/cohorts.md)")
    cohort.add_argument("--shard", metavar="I/N", help="predict every N-th case of the sorted inputs, starting at I "
                        "(default: the Slurm, Kubernetes or LSF array index where one is set, else every case)")
    cohort.add_argument("--shard-count", type=int, metavar="N",
                        help="the number of shards, with an index from the engine (a Kubernetes Indexed Job's "
                             "completions; or set PANTHER_SHARD_COUNT)")
    cohort.add_argument("--skip-existing", action="store_true",
                        help="skip a case whose mask is there and valid on its input's grid (predict anything else "
                             "again)")
    cohort.add_argument("--records", type=Path, metavar="FILE",
                        help="append one JSON line per case (status, seconds, members used and dropped, tumor "
                             "volume, error); with records a failing case is recorded and the others go on")


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    serve = parser.add_argument_group("the invoke API (serve)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, where GC's "
                       "shim calls; 0.0.0.0 to reach it from outside the container)")
    serve.add_argument("--port", type=int, default=4743, help="port (default: 4743, GC's)")
    serve.add_argument("--socket", action="append", metavar="SLUG",
                       help="load only this input socket's spec at start-up (repeatable; default: PANTHER_SOCKETS, "
                            "else every spec found)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panther-ensemble", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True)
    predict = subcommands.add_parser("predict", help="segment the input images", description=PREDICT_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_predict_arguments(predict)
    serve = subcommands.add_parser("serve", help="serve Grand Challenge's invoke API (/health, /invoke)",
                                   description=SERVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_predict_arguments(serve, cohorts=False)
    _add_serve_arguments(serve)
    evaluate = subcommands.add_parser(
        "evaluate", help="PANTHER metrics: of a prediction folder, or of every member and the ensemble",
        description="PANTHER metrics as the organizers compute them (surface-distance): per subject\n"
                    "volumetric Dice, surface Dice at 5 mm, HD95, MASD and tumor volumes; aggregates with\n"
                    "the tumor burden RMSE (mm³).\n\n"
                    "  evaluate --pred DIR --gt DIR [--tumor-label N] [--pred-label N] [--out FILE]\n"
                    "      score predicted masks; files pair by case name (<id>.mha or .nii.gz; _seg\n"
                    "      and nnU-Net's _0000 suffix do not count). --tumor-label is the ground\n"
                    "      truth's (PANTHER's annotations: 2, the pancreas 1); this product's masks\n"
                    "      are 1 = tumor (--pred-label for other label maps)\n"
                    "  evaluate --ensemble SPEC --images DIR --labels DIR [--weights DIR] [--device ...]\n"
                    "           [--out FILE]\n"
                    "      predict the labelled images with each member alone and with the ensemble,\n"
                    "      and print the member table (best per column in bold) to choose members by\n"
                    "      metric",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--pred", type=Path, help="folder of predicted masks")
    evaluate.add_argument("--gt", type=Path, help="folder of ground-truth label maps")
    evaluate.add_argument("--ensemble", type=Path, help="ensemble spec whose members to compare")
    evaluate.add_argument("--images", type=Path, help="folder of images (nnU-Net's _0000 suffix allowed)")
    evaluate.add_argument("--labels", type=Path, help="folder of label maps named like the images")
    evaluate.add_argument("--weights", type=Path, help="weights root (default as for predict)")
    evaluate.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                          help="with --ensemble: where the members run, as for predict (default: auto)")
    evaluate.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"),
                          help="with --ensemble: what runs the members, as for predict (default: the spec's "
                               "backend, else torch)")
    evaluate.add_argument("--tumor-label", type=int,
                          help="with --pred/--gt: the ground truth's tumor label (default: the label a dataset.json "
                               "beside the ground truth names a tumor, else 1, with a warning where the truth holds "
                               "several labels)")
    evaluate.add_argument("--pred-label", type=int, default=1,
                          help="with --pred/--gt: the predictions' tumor label (default: 1, as predict writes them)")
    evaluate.add_argument("--out", type=Path, help="also write the JSON here")
    evaluate.add_argument("--json", action="store_true", help="print the JSON alone (default: a table)")
    preview = subcommands.add_parser("preview", help="PNG montage of the slices through the tumor",
                                  description="A PNG montage of the axial slices through the tumor: the MRI with "
                                              "the predicted contour in red and, with --gt, the ground truth's in "
                                              "green. For local review; never written into /output.")
    preview.add_argument("--image", type=Path, required=True, help="the MRI")
    preview.add_argument("--mask", type=Path, required=True, help="the predicted mask")
    preview.add_argument("--gt", type=Path, help="a ground-truth label map")
    preview.add_argument("--tumor-label", type=int, help="the ground truth's tumor label (default: as evaluate "
                         "finds it: a dataset.json's tumor beside the truth, else 1; PANTHER's annotations: 2)")
    preview.add_argument("--pred-label", type=int, default=1,
                         help="the mask's tumor label (default: 1, as predict writes them)")
    preview.add_argument("--out", type=Path, required=True, help="the PNG to write")
    export_onnx = subcommands.add_parser(
        "export-onnx", help="write every member of a spec as an ONNX model, for --backend onnxruntime",
        description="Export each member of the spec to ONNX (torch.export-based exporter, dynamic batch axis, the "
                    "plans' patch size; weights in a .onnx.data file beside the model when the network exceeds "
                    "100 MB), checked with onnx.checker and, run by ONNX Runtime on a random tile, against the "
                    "checkpoint's network. OUT becomes a weights root of its own: each model folder's plans.json "
                    "and dataset.json, fold_<f>/<checkpoint stem>.onnx, the spec with backend = \"onnxruntime\", "
                    "onnx_manifest.json (member, fold, checkpoint, sha256 of every file) and weights.sha256. "
                    "Run it with: predict --ensemble OUT/<spec>.toml --weights OUT. With --beside instead, each "
                    "model goes beside its checkpoint in the weights root (listed in its weights.sha256 where it "
                    "has one) and the spec is unchanged: on a CPU, predict then runs each member with torch or "
                    "ONNX Runtime, whichever this machine runs faster (measured once, docs/onnx.md).")
    export_onnx.add_argument("--ensemble", type=Path, required=True, help="the ensemble spec (TOML)")
    export_onnx.add_argument("--weights", type=Path, help="weights root (default as for predict)")
    where = export_onnx.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="a new (or empty) folder to write, a weights root of its own")
    where.add_argument("--beside", action="store_true",
                       help="write each model beside its checkpoint in the weights root")
    export_onnx.add_argument("--opset", type=int, default=18, help="ONNX opset, at least 17 (default: 18)")
    export_model = subcommands.add_parser(
        "export-model", help="write your spec and its folds as a GC model tarball (the algorithm's Models page)",
        description="The spec and only the member folds it names (plans.json, dataset.json, fold_K/<checkpoint>, "
                    "checkpoints stripped to what inference needs) and a weights.sha256 manifest, as a reproducible "
                    ".tar.gz: upload it on the algorithm's Models page; GC extracts it to /opt/ml/model, where the "
                    "image takes its spec and weights from (docs/container.md). With --onnx the members go as "
                    "ONNX models (export-onnx) and the spec says backend = \"onnxruntime\".")
    export_model.add_argument("--ensemble", type=Path, required=True, help="your spec (TOML), e.g. select's")
    export_model.add_argument("--weights", type=Path, help="weights root (default as for predict)")
    export_model.add_argument("--out", type=Path, required=True, help="the .tar.gz to write")
    export_model.add_argument("--onnx", action="store_true", help="the members as ONNX models")
    export_model.add_argument("--opset", type=int, default=18, help="with --onnx: ONNX opset (default: 18)")
    benchmark = subcommands.add_parser(
        "benchmark", help="time the stock nnU-Net chain against this product, alternated in one run",
        description="Random-weight members with nnU-Net's ResEncL architecture (its own planner; 1 mm isotropic, "
                    "patch 192^3 in the gpu preset, cut down in cpu and smoke), the paper's 3+2+1 (t1) and 1+4 "
                    "(t2) compositions, PANTHER-sized inputs. Runs (a) one stock nnUNetPredictor per model "
                    "folder and (b) this product (torch backend, and onnxruntime where it can run), alternated; "
                    "prints whole-case and per-stage medians, the ratio a/b, peak memory and (b)'s parity against "
                    "the per-member reference; writes JSON.")
    benchmark.add_argument("--preset", choices=("gpu", "cpu", "smoke"), default="cpu",
                           help="gpu: full ResEncL; cpu: a 4-stage cut at 2 mm; smoke: seconds (default: cpu)")
    benchmark.add_argument("--case", action="append", choices=("t1", "t2", "t1-96"),
                           help="only these cases (t1-96: Task 1's members with 96^3 patches, the cpu preset's)")
    benchmark.add_argument("--repeats", type=int, help="alternated runs per path (default: the preset's)")
    benchmark.add_argument("--max-minutes", type=float, default=60.0,
                           help="start no new repeat or case after this (default: 60)")
    benchmark.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                           help="where both paths run (default: auto)")
    benchmark.add_argument("--no-onnxruntime", action="store_true",
                           help="skip this product's onnxruntime backend (default: run it too where ONNX Runtime "
                                "has a provider for the device)")
    benchmark.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    benchmark.add_argument("--out", type=Path, default=Path("benchmark.json"), help="JSON report")
    _add_selection_commands(subcommands)
    phantoms = subcommands.add_parser(
        "phantoms", help="write labelled phantom cases in nnU-Net's raw layout, to try select and evaluate on",
        description="Abdominal-MRI-like phantoms (the demo's generator: body, liver, pancreas, a tumor in it; T1- or "
                    "T2-like contrast and geometry drawn from each seed) as an nnU-Net raw dataset: OUT/imagesTr/"
                    "<flavour>_<seed>_0000.nii.gz, OUT/labelsTr/<flavour>_<seed>.nii.gz and OUT/dataset.json with "
                    "the label map you choose. Then: select --images OUT/imagesTr --labels OUT/labelsTr, or evaluate "
                    "(the truth's tumor label is read from OUT/dataset.json). Phantoms are not patients: they show "
                    "that the commands run and what they print, not how your folds score.")
    phantoms.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    phantoms.add_argument("--count", type=int, default=4, help="how many cases (default: 4)")
    phantoms.add_argument("--flavour", choices=("t1", "t2"), default="t1", help="Task 1 (diagnostic T1W) or Task 2 "
                          "(MR-Linac T2W) contrast and geometry (default: t1)")
    phantoms.add_argument("--labels", choices=("panther", "demo"), default="panther",
                          help="panther: 1 pancreas, 2 tumor, as PANTHER's annotations; demo: 1 tumor, 2 pancreas, as "
                               "the demo's folds (default: panther)")
    phantoms.add_argument("--seed", type=int, default=1, help="the first case's seed; the others follow it "
                          "(default: 1)")
    summarize = subcommands.add_parser("summarize", help="a cohort's totals from predict's --records files",
                                    description="Cases done (predicted, or skipped as finished), failed and "
                                                "interrupted (a case's latest record counts), seconds, members "
                                                "dropped, the slowest cases, every case not done and how to resubmit "
                                                "it, from the JSON lines predict --records appended (any number of "
                                                "files). Exit 0 when every case is done, 1 otherwise.")
    summarize.add_argument("records", type=Path, nargs="+", help="records files")
    summarize.add_argument("--slowest", type=int, default=5, help="how many slowest cases to list (default: 5)")
    return parser


def _add_selection_commands(subcommands) -> None:
    select = subcommands.add_parser(
        "select", help="choose the ensemble's members by metric within a time budget",
        description="Every candidate predicts each labelled case once; greedy forward selection with replacement "
                    "(Caruana et al., 2004) adds the candidate that most improves the objective of the softmax-"
                    "averaged ensemble (choosing a member again raises its weight), until nothing improves or the "
                    "next new member would not fit --budget on --target. Writes the spec (members in the order "
                    "chosen, a comment per member: step gain and projected cost) and, with --report, the path as a "
                    "table, a plot per metric against projected seconds and the held-out comparison.")
    select.add_argument("--candidates", type=Path, required=True, help="a spec listing every fold you have")
    select.add_argument("--images", type=Path, required=True, help="folder of labelled images (_0000 suffix allowed)")
    select.add_argument("--labels", type=Path, required=True, help="folder of label maps named like the images")
    select.add_argument("--out", type=Path, required=True, help="the spec to write")
    select.add_argument("--weights", type=Path, help="weights root (default as for predict)")
    select.add_argument("--budget", type=float, metavar="SECONDS",
                        help="projected seconds per case on --target, start-up included (default: no limit)")
    select.add_argument("--target", default="t4", help="t4 (a projection), here (measured on this machine, once) or "
                                                       "an effective TFLOP/s (default: t4)")
    select.add_argument("--objective", default="rank", choices=("rank", "dice", "surface-dice", "hd95", "masd", "rmse"),
                        help="rank: the mean of the five PANTHER metrics' ranks among each step's options, as the "
                             "challenge ranks; or one metric (default: rank)")
    select.add_argument("--shape", help="Z,Y,X voxels of the case the budget is for (default: the largest labelled)")
    select.add_argument("--spacing", help="Z,Y,X mm, with --shape")
    select.add_argument("--held-out-images", type=Path, help="labelled images the selection never sees")
    select.add_argument("--held-out-labels", type=Path, help="their label maps")
    select.add_argument("--report", type=Path, help="folder for selection.md, selection.png and selection.json")
    select.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where the candidates predict (default: auto)")
    select.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"),
                        help="what runs the candidates, as for predict (default: the spec's backend, else torch)")
    select.add_argument("--remeasure", action="store_true", help="with --target here: measure this machine again "
                        "(default: its rates measured once, kept and reused by select and cost alike)")
    select.add_argument("--no-postprocessing", action="store_true",
                        help="choose members only (default: post-processing chosen with them: largest component, "
                             "minimum volume, near the organ, never empty; docs/evaluation.md)")
    cost = subcommands.add_parser(
        "cost", help="the projected seconds of a spec on one case, per member",
        description="Per member: the tiles of its sliding window for the case, TFLOP per tile (counted from the "
                    "network) and projected seconds on --target; per preprocessing group its preprocessing; once: "
                    "start-up, the first network's load and writing. t4 is a projection from a documented "
                    "effective TFLOP/s (source printed); here measures this machine.")
    cost.add_argument("--ensemble", type=Path, required=True, help="the ensemble spec (TOML)")
    cost.add_argument("--weights", type=Path, help="weights root (default as for predict)")
    cost.add_argument("--image", type=Path, help="the case (its header is read, not its voxels)")
    cost.add_argument("--shape", help="Z,Y,X voxels, instead of --image")
    cost.add_argument("--spacing", help="Z,Y,X mm, with --shape")
    cost.add_argument("--target", default="t4", help="t4, here or an effective TFLOP/s (default: t4)")
    cost.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="for --target here")
    cost.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"),
                      help="the members' network files to price, as for predict (default: the spec's backend, "
                           "else torch)")
    cost.add_argument("--remeasure", action="store_true", help="with --target here: measure this machine again "
                      "(default: its rates measured once, kept and reused by select and cost alike)")
    cost.add_argument("--json", action="store_true", help="print the cost as JSON")


API_METHOD_VARIABLE = "PANTHER_API_METHOD"  # the image sets it from its build argument, beside GC's label


def inference_parser() -> argparse.ArgumentParser:
    """`python inference.py`: the container entrypoint, predict with Grand Challenge defaults, or serve."""
    parser = argparse.ArgumentParser(prog="inference.py", description=PREDICT_HELP + "\n--api invoke: serve GC's "
                                     "invoke API instead (see `panther-ensemble serve --help`).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", choices=("exec", "invoke"), default=os.environ.get(API_METHOD_VARIABLE) or "exec",
                        help="GC's API method: exec (predict once and exit) or invoke (serve /health and /invoke) "
                             f"(default: ${API_METHOD_VARIABLE}, which the image's build sets, else exec)")
    _add_predict_arguments(parser)
    _add_serve_arguments(parser)
    return parser


def _run(action, args: argparse.Namespace) -> int:
    """The command; anything that goes wrong is one `error:` line on stderr and exit 1 (core.errors)."""
    try:
        action(args)
    except AlreadyReported:
        return 1
    except (Exception, KeyboardInterrupt) as e:
        print_failure(e)
        return 1
    return 0


def exit_now(code: int) -> None:
    """End the process as soon as its work is written: a network still loading for a member the deadline dropped
    (a daemon thread) is not waited for, nor torch's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None, process_clock: bool = False) -> int:
    """The command line in this process. `process_clock`: this process was started for the command (the console
    scripts), so a task's budget counts from its start (core.clock); else from the call."""
    args = build_parser().parse_args(argv)
    args.process_clock = process_clock
    actions = {"predict": commands.run_predict, "serve": commands.run_serve, "evaluate": commands.run_evaluate,
               "preview": commands.run_preview,
               "benchmark": commands.run_benchmark, "export-onnx": commands.run_export_onnx,
               "export-model": commands.run_export_model,
               "select": commands.run_select, "cost": commands.run_cost, "summarize": commands.run_summarize,
               "phantoms": commands.run_phantoms}
    return _run(actions[args.command], args)


def inference_main(argv: list[str] | None = None, process_clock: bool = False) -> int:
    parser = inference_parser()
    args = parser.parse_args(argv)
    args.process_clock = process_clock
    if args.api == "invoke":
        given = [o for o, v in (("--shard", args.shard), ("--shard-count", args.shard_count),
                                ("--skip-existing", args.skip_existing), ("--records", args.records)) if v]
        if given:
            parser.error(f"{', '.join(given)}: for exec only (a cohort run), not with --api invoke")
        return _run(commands.run_serve, args)
    return _run(commands.run_predict, args)


def quiet_openmp_threads() -> None:
    """torch's OpenMP threads spin after each operation (libgomp's default) and hold the cores that ONNX Runtime's
    and OpenVINO's threads need next: a six-case cohort's forwards through OpenVINO took 6.9 s with them spinning,
    5.6 s without, torch's own 14.2-15.4 s either way (2 cores, 2026-12-07). Where the user has not chosen, they
    sleep when idle; set before torch loads (the console scripts call this first)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def console_main() -> None:
    """The panther-ensemble console script (SIGINT and SIGTERM: one line, core.stop)."""
    quiet_openmp_threads()
    stop.install(quiet_when_idle=sys.argv[1:2] == ["serve"])
    exit_now(main(process_clock=True))


def inference_console_main() -> None:
    """`python inference.py`, the image's entrypoint."""
    quiet_openmp_threads()
    stop.install(quiet_when_idle=inference_parser().parse_known_args()[0].api == "invoke")
    exit_now(inference_main(process_clock=True))


if __name__ == "__main__":
    console_main()
