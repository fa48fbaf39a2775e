"""Command line: `panther-ensemble predict` (and `python inference.py`, its Grand Challenge default)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PantherError

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
Progress and timing go to stdout; errors are one line on stderr and a non-zero exit, with no output written.
"""


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, default=Path("/input"), help="input folder (default: /input)")
    parser.add_argument("--output", type=Path, default=Path("/output"), help="output folder (default: /output)")
    parser.add_argument("--ensemble", type=Path, help="ensemble spec (TOML); default: the one for the input socket")
    parser.add_argument("--weights", type=Path, help="root of the nnU-Net result folders the spec names")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: CUDA when available, else CPU (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panther-ensemble", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="segment the input images", description=PREDICT_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_predict_arguments(predict)
    return parser


def inference_parser() -> argparse.ArgumentParser:
    """`python inference.py`: the container entrypoint, predict with Grand Challenge defaults."""
    parser = argparse.ArgumentParser(prog="inference.py", description=PREDICT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_predict_arguments(parser)
    return parser


def run_predict(args: argparse.Namespace) -> None:
    from .run import predict_folder  # heavy imports (torch, nnunetv2) only once the arguments are fine

    predict_folder(args.input, args.output, ensemble=args.ensemble, weights=args.weights, device=args.device)


def _run(action, args: argparse.Namespace) -> int:
    try:
        action(args)
    except PantherError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run({"predict": run_predict}[args.command], args)


def inference_main(argv: list[str] | None = None) -> int:
    return _run(run_predict, inference_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
