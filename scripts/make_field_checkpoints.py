"""Checkpoints as the field writes them, for tests/fixtures/field/ (committed with what this script wrote).

Participants bring folds trained in 2023-2025 under numpy 1.x with older nnU-Net releases. This script makes such
folds for real, each in a venv of its own era, with nnU-Net's own planner, trainer and `save_checkpoint`:

- `input/`: a T1 phantom at 5 mm the folds never saw, in Grand Challenge's layout, to predict;
- `nnunetv2-2.1/`: nnunetv2 2.1 (checkpoint layout of v2.0-v2.1, plans without an "architecture" entry),
  numpy 1.26.4, torch 2.5.1;
- `nnunetv2-2.5.1/`: nnunetv2 2.5.1 (layout of v2.2-v2.8, `init_args` with `unpack_dataset`), numpy 1.26.4,
  torch 2.5.1; beside its checkpoints:
  - `checkpoint_final_numpy2.pth`: the same fold loaded and saved again by nnunetv2 2.8.1's trainer under numpy 2
    (this process: the dev venv), i.e. the same weights in the layout of v2.6+ with numpy 2's pickled names;
  - `checkpoint_payload_os_system.pth`, `checkpoint_payload_numpy_runstring.pth`: that fold with one more entry in
    its training log whose unpickling runs a shell command (through os.system, and through numpy's own
    `numpy.testing._private.utils.runstring`), written under numpy 1. The command touches the file named by
    $PANTHER_PAYLOAD_MARKER, so a test can prove it never ran.

Each training is two epochs of three iterations of a network cut to 4-16 features on phantoms at 5 mm, on the CPU
(nnU-Net trains there without a grad scaler; the fixture trainer adds the CPU one, so that its state is in the
checkpoint as on a GPU). `provenance.json` records, per file, the versions that wrote it, its sha256 and the globals
its pickle names. Needs PyPI; takes about 5 minutes and 6 GB of venvs under --work.

    python scripts/make_field_checkpoints.py --work /tmp/field-checkpoints [--out tests/fixtures/field]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickletools
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
DATASET = (990, "Dataset990_Field")
TRAINER = "nnUNetTrainerFieldFixture"
SEEDS = range(3000, 3006)  # phantoms no other part of the project uses
SPACING_MM = (5.0, 5.0, 5.0)
ERAS = {
    "nnunetv2-2.1": ["numpy==1.26.4", "torch==2.5.1", "nnunetv2==2.1", "dynamic-network-architectures==0.2"],
    "nnunetv2-2.5.1": ["numpy==1.26.4", "torch==2.5.1", "nnunetv2==2.5.1"],
}
ERA_WITH_COPIES = "nnunetv2-2.5.1"

# Run inside an era's venv: plan and preprocess with nnU-Net's own commands, shrink the plans, train, save.
TRAIN_IN_ERA = textwrap.dedent('''
    import json, os, subprocess, sys
    from pathlib import Path

    import torch

    dataset_id, dataset_name, trainer_name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / dataset_name
    if not (preprocessed / "nnUNetPlans.json").exists():
        # the planner of 2.5 sets torch's threads to the augmentation processes: at least one there
        subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "1",
                        "-npfp", "1"], check=True, env={**os.environ, "nnUNet_n_proc_DA": "1"})
    plans_file = preprocessed / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"]["3d_fullres"]
    configuration["patch_size"] = [16, 32, 32]
    configuration["batch_size"] = 2
    if "architecture" in configuration:  # plans of nnU-Net 2.4 and later
        kwargs = configuration["architecture"]["arch_kwargs"]
        kwargs.update(n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3, 3]] * 3,
                      strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1],
                      n_conv_per_stage_decoder=[1, 1])
    else:  # the older format: the network is described by these keys
        configuration.update(UNet_base_num_features=4, unet_max_num_features=16,
                             conv_kernel_sizes=[[3, 3, 3]] * 3, pool_op_kernel_sizes=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                             n_conv_per_stage_encoder=[1, 1, 1], n_conv_per_stage_decoder=[1, 1])
    plans_file.write_text(json.dumps(plans, indent=2))

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    # nnU-Net records its trainer's __init__ arguments (init_args) from the signature: none of our own
    Fixture = type(trainer_name, (nnUNetTrainer,), {})
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer = Fixture(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json,
                      unpack_dataset=True, device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 2, 3, 1
    trainer.grad_scaler = torch.amp.GradScaler("cpu")  # as on a GPU: its state goes into the checkpoint
    trainer.run_training()
    print("trained", trainer.output_folder)
''')

# Run inside the numpy-1 era venv: the trained fold with a code-carrying entry in its training log.
PAYLOADS_IN_ERA = textwrap.dedent('''
    import os, sys

    import numpy
    import numpy.testing._private.utils as numpy_utils
    import torch

    source, fold = sys.argv[1], sys.argv[2]
    COMMAND = 'touch "$PANTHER_PAYLOAD_MARKER"'

    class ShellPayload:
        def __reduce__(self):
            return os.system, (COMMAND,)

    class NumpyPayload:
        def __reduce__(self):
            return numpy_utils.runstring, (f"import os; os.system({COMMAND!r})", {})

    for name, payload in (("os_system", ShellPayload()), ("numpy_runstring", NumpyPayload())):
        checkpoint = torch.load(source, map_location="cpu", weights_only=False)
        checkpoint["logging"]["note"] = [payload]
        torch.save(checkpoint, os.path.join(fold, f"checkpoint_payload_{name}.pth"))
    print("payloads written under numpy", numpy.__version__)
''')


def log(message: str) -> None:
    print(f"== {message}", flush=True)


def write_raw_dataset(raw: Path) -> None:
    """Small T1 phantoms at 5 mm: nnU-Net's raw layout."""
    from panther_ensemble.demo.sample_cases import write_raw_dataset as write

    write(raw / DATASET[1], "field", SEEDS, {"background": 0, "tumor": 1, "pancreas": 2}, resample=coarse)


def write_field_case(out: Path) -> Path:
    """A T1 phantom the folds never saw (seed 3100) at their 5 mm, in the GC layout: input/images/<socket>/."""
    from panther_ensemble.demo.phantom import make_phantom

    target = out / "input" / "images" / "abdominal-t1-mri" / "field.mha"
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(coarse(make_phantom(3100, "t1").image, sitk.sitkLinear), str(target), useCompression=True)
    return target


def coarse(image: sitk.Image, interpolator: int) -> sitk.Image:
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), SPACING_MM)]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), SPACING_MM,
                         image.GetDirection(), 0, image.GetPixelID())


def era_venv(work: Path, era: str) -> Path:
    venv = work / "venvs" / era
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"{era}: venv with {' '.join(ERAS[era])}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ERAS[era]], check=True)
    return python


def era_environment(work: Path, era: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{work / 'venvs' / era / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / era / "preprocessed"),
           "nnUNet_results": str(work / era / "results"), "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false",
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return env


def versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, platform; print(json.dumps({'python': platform.python_version(), "
            "**{p: m.version(p) for p in ('numpy', 'torch', 'nnunetv2')}}))")
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)


def model_folder(root: Path) -> Path:
    return root / DATASET[1] / f"{TRAINER}__nnUNetPlans__3d_fullres"


def train_era(work: Path, era: str, out: Path) -> tuple[Path, dict[str, str]]:
    python = era_venv(work, era)
    env = era_environment(work, era)
    trained = model_folder(Path(env["nnUNet_results"]))
    if not (trained / "fold_0" / "checkpoint_final.pth").exists():
        log(f"{era}: plan, preprocess and train with nnU-Net's own code")
        subprocess.run([str(python), "-c", TRAIN_IN_ERA, str(DATASET[0]), DATASET[1], TRAINER], check=True, env=env)
    target = model_folder(out / era)
    shutil.rmtree(out / era, ignore_errors=True)
    (target / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(trained / name, target / name)
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        shutil.copy(trained / "fold_0" / name, target / "fold_0" / name)
    return target, versions(python)


def resave_under_numpy2(fold: Path, plans_folder: Path, work: Path) -> None:
    """The fold loaded and saved again by this venv's nnU-Net trainer (numpy 2): the same weights."""
    # read when nnunetv2 is imported; the trainer looks at the preprocessed data of the era that trained the fold
    os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_results=str(work / "numpy2" / "results"),
                      nnUNet_preprocessed=str(work / ERA_WITH_COPIES / "preprocessed"))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    Fixture = type(TRAINER, (nnUNetTrainer,), {})
    plans = json.loads((plans_folder / "plans.json").read_text())
    plans["continue_training"] = False  # nnunetv2 2.7+ takes this from its run_training command
    dataset_json = json.loads((plans_folder / "dataset.json").read_text())
    trainer = Fixture(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json,
                      device=torch.device("cpu"))
    trainer.grad_scaler = torch.amp.GradScaler("cpu")
    trainer.initialize()
    trainer.load_checkpoint(str(fold / "checkpoint_final.pth"))
    trainer.save_checkpoint(str(fold / "checkpoint_final_numpy2.pth"))


def pickle_globals(path: Path) -> list[str]:
    """The module.name globals a torch.save zip's pickle imports (read from its opcodes, nothing run)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    names, strings = set(), []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            names.add(argument.replace(" ", "."))
        elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.add(f"{strings[-2]}.{strings[-1]}")
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder: venvs, raw and preprocessed data")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "field")
    args = parser.parse_args()
    work = args.work.resolve()
    write_raw_dataset(work / "raw")
    provenance: dict[str, dict] = {}
    for era in ERAS:
        target, era_versions = train_era(work, era, args.out)
        for file in sorted((target / "fold_0").glob("*.pth")):
            provenance[str(file.relative_to(args.out))] = {"written_by": era_versions}
        if era == ERA_WITH_COPIES:
            python = era_venv(work, era)
            subprocess.run([str(python), "-c", PAYLOADS_IN_ERA, str(target / "fold_0" / "checkpoint_final.pth"),
                            str(target / "fold_0")], check=True, env=era_environment(work, era))
            for name in ("os_system", "numpy_runstring"):
                provenance[str((target / "fold_0" / f"checkpoint_payload_{name}.pth").relative_to(args.out))] = {
                    "written_by": era_versions, "carries_code": True}
            log("the same fold saved again by nnunetv2 2.8.1 under numpy 2")
            resave_under_numpy2(target / "fold_0", target, work)
            import importlib.metadata as metadata
            import platform

            provenance[str((target / "fold_0" / "checkpoint_final_numpy2.pth").relative_to(args.out))] = {
                "written_by": {"python": platform.python_version(), "numpy": np.__version__,
                               "torch": torch.__version__, "nnunetv2": metadata.version("nnunetv2")},
                "same_weights_as": str((target / "fold_0" / "checkpoint_final.pth").relative_to(args.out))}
    for name, entry in provenance.items():
        file = args.out / name
        entry["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
        entry["bytes"] = file.stat().st_size
        entry["pickle_globals"] = pickle_globals(file)
        entry["keys"] = sorted(torch.load(file, map_location="cpu", weights_only=False).keys()) \
            if not entry.get("carries_code") else None
    (args.out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    write_field_case(args.out)
    log(f"wrote {args.out}: {sum(e['bytes'] for e in provenance.values()) / 1e6:.1f} MB in {len(provenance)} files")


if __name__ == "__main__":
    main()
