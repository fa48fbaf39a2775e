"""Write test/ (GC-layout sample inputs and the product's expected outputs) and score the demo ensemble.

    python scripts/make_demo_cases.py [--work /tmp/demo-eval]

1. test/input/<task>/ from the sample phantoms, test/expected_output/<task>/ by running the product;
2. the member table of each task's ensemble on its held-out phantoms, written into weights/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch

from panther_ensemble.app.predict_run import predict_folder
from panther_ensemble.demo.sample_cases import HELD_OUT_SEEDS, SAMPLE_CASES, write_held_out, write_sample_input
from panther_ensemble.engine.spec import load_spec
from panther_ensemble.tools.member_table import compare_members, format_table

REPO = Path(__file__).resolve().parents[1]
MAX_FILE_BYTES = 3 * 1024 * 1024


def write_test_folder() -> None:
    for case in SAMPLE_CASES:
        input_dir = write_sample_input(case, REPO / "test")
        output_dir = REPO / "test" / "expected_output" / case.task
        shutil.rmtree(output_dir, ignore_errors=True)
        # no deadline: the expected masks must not depend on how fast this machine was
        predict_folder(input_dir, output_dir, weights=REPO / "weights", device="cpu", budget=0)
        for file in [*input_dir.rglob("*.mha"), *output_dir.rglob("*.mha")]:
            assert file.stat().st_size < MAX_FILE_BYTES, f"{file} is {file.stat().st_size} bytes"


def score_ensembles(work: Path) -> None:
    tables = {}
    for case in SAMPLE_CASES:
        spec = load_spec(REPO / "ensemble" / f"{case.task}.toml")
        held_out = write_held_out(case.flavour, work / case.flavour)
        result = compare_members(spec, REPO / "weights", held_out / "images", held_out / "labels",
                                 torch.device("cpu"))
        (work / f"{case.task}_members.json").write_text(json.dumps(result, indent=2))
        seeds = HELD_OUT_SEEDS[case.flavour]
        tables[case.task] = (f"<!-- {case.task} table -->\n{len(seeds)} held-out \"{case.flavour}\" phantoms (seeds "
                             f"{seeds.start}-{seeds.stop - 1}), tumor metrics, means over cases:\n\n"
                             f"{format_table(result)}\n<!-- /{case.task} table -->")
        print(tables[case.task])
    # read only now: the scoring takes minutes, and the README may be edited meanwhile
    readme = REPO / "weights" / "README.md"
    text = readme.read_text()
    for task, table in tables.items():
        text = re.sub(rf"<!-- {task} table -->.*?<!-- /{task} table -->", table.replace("\\", "\\\\"), text, flags=re.S)
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo-eval"), help="held-out phantoms go here")
    args = parser.parse_args()
    write_test_folder()
    score_ensembles(args.work)


if __name__ == "__main__":
    main()
