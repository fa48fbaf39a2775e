"""A participant's folds, for tests/fixtures/participant/: trained by nnU-Net's own trainer with PANTHER's label map
as the organizers' annotations have it — 0 background, 1 pancreas, 2 tumor — the way a participant brings them.

    python scripts/make_participant_folds.py --work /tmp/participant-folds [--out tests/fixtures/participant]

Phantoms (seeds 3200-3219, no other part of the project uses them) relabelled to that map, in nnU-Net's raw layout
(.nii.gz, `_0000` channel suffix); the demo's plans (nnU-Net's ResEnc planner, cut to a CPU budget: weights/) moved
onto this dataset as nnU-Net's pretraining recipe moves plans; nnU-Net's preprocessing; nnUNetTrainer (stock) on
folds 0 and 1 of its 5-fold split, fine-tuned from the demo's Task 1 fold 0 with the tumor and pancreas outputs of
its segmentation heads swapped (a few hundred iterations on a CPU do not learn a low-contrast tumor from scratch).
The checkpoints are nnU-Net's own files, optimizer state and training log included. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASET = (991, "Dataset991_Participant")
PLANS, CONFIGURATION = "nnUNetResEncUNetDemoPlans", "3d_fullres"
LABELS = {"background": 0, "pancreas": 1, "tumor": 2}
SEEDS = range(3200, 3220)
SOURCE = REPO / "weights" / "Dataset901_PantherT1" / f"nnUNetTrainer__{PLANS}__{CONFIGURATION}"
FOLDS = {0: ("checkpoint_final.pth",), 1: ("checkpoint_final.pth",)}
ITERATIONS, ITERATIONS_PER_EPOCH, LEARNING_RATE = 300, 50, 5e-3


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_raw_dataset(raw: Path) -> None:
    from panther_ensemble.demo.phantom import panther_label_map
    from panther_ensemble.demo.sample_cases import write_raw_dataset as write

    write(raw / DATASET[1], "case", SEEDS, LABELS, label_map=panther_label_map)
    log(f"{DATASET[1]}: {len(SEEDS)} phantoms, labels {LABELS}")


def plan_and_preprocess() -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, preprocess

    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / DATASET[1]
    if (preprocessed / ".preprocessed").exists():
        return
    extract_fingerprints([DATASET[0]], num_processes=2, check_dataset_integrity=True, clean=True, verbose=False)
    plans = json.loads((SOURCE / "plans.json").read_text())  # as move_plans_between_datasets writes them
    plans["dataset_name"] = DATASET[1]
    (preprocessed / f"{PLANS}.json").write_text(json.dumps(plans, indent=2))
    shutil.copy(Path(os.environ["nnUNet_raw"]) / DATASET[1] / "dataset.json", preprocessed / "dataset.json")
    preprocess([DATASET[0]], PLANS, (CONFIGURATION,), (2,), verbose=False)
    (preprocessed / ".preprocessed").touch()
    log(f"preprocessed {DATASET[1]} with {PLANS}")


def swapped_heads(network_weights: dict) -> dict:
    """The demo member's weights with the segmentation heads' outputs 1 and 2 swapped (tumor 1 -> 2)."""
    order = [0, 2, 1]
    return {k: v[order] if ".seg_layers." in k else v for k, v in network_weights.items()}


def train(fold: int) -> Path:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    output = Path(os.environ["nnUNet_results"]) / DATASET[1] / f"nnUNetTrainer__{PLANS}__{CONFIGURATION}"
    if (output / f"fold_{fold}" / "checkpoint_final.pth").exists():
        return output
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / DATASET[1]
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    plans["continue_training"] = False  # nnUNetTrainer pops this (run_training sets it)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer = nnUNetTrainer(plans, CONFIGURATION, fold, dataset_json, device=torch.device("cpu"))
    trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = ITERATIONS_PER_EPOCH, 10
    trainer.num_epochs = ITERATIONS // ITERATIONS_PER_EPOCH
    trainer.initial_lr = LEARNING_RATE
    trainer.initialize()
    source = torch.load(SOURCE / "fold_0" / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    trainer.network.load_state_dict(swapped_heads(source["network_weights"]))
    start = time.time()
    trainer.run_training()
    log(f"fold {fold}: {ITERATIONS} iterations in {time.time() - start:.0f} s, best EMA pseudo Dice "
        f"{trainer._best_ema:.3f}")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="nnUNet_raw/preprocessed/results live here")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "participant")
    args = parser.parse_args()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(args.work / name)
        (args.work / name).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    write_raw_dataset(args.work / "nnUNet_raw")
    plan_and_preprocess()
    trained = [train(fold) for fold in FOLDS][0]
    target = args.out / DATASET[1] / trained.name
    shutil.rmtree(args.out / DATASET[1], ignore_errors=True)
    for name in ("plans.json", "dataset.json"):
        (target).mkdir(parents=True, exist_ok=True)
        shutil.copy(trained / name, target / name)
    for fold, names in FOLDS.items():
        (target / f"fold_{fold}").mkdir()
        for name in names:
            shutil.copy(trained / f"fold_{fold}" / name, target / f"fold_{fold}" / name)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    log(f"wrote {target}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
