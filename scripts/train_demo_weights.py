"""Train the demo ensemble with nnU-Net's own pipeline on phantoms, on a CPU, and write weights/.

    python scripts/train_demo_weights.py --work /tmp/demo-training [--iterations-scale 1.0]

Steps (each skipped when its output exists, so an interrupted run resumes):
1. phantoms as nnU-Net raw datasets: Dataset901_PantherT1 ("t1") and Dataset902_PantherT2 ("t2");
2. fingerprint + plan with nnU-Net's ResEnc M planner, then shrink the network and patch to a CPU budget
   (plans "nnUNetResEncUNetDemoPlans"), preprocess; Task 2 gets the same plans (nnU-Net's
   move_plans_between_datasets), as fine-tuning across datasets requires;
3. train: a foundation model from scratch on all Task 1 phantoms, every member fine-tuned from a trained
   model (the paper's cascade, T1 -> T2), with nnUNetTrainer, DA5, DA5ord0 and DA5Segord0 at short schedules;
4. export every fold but the foundation to weights/ (the candidate pool the specs are chosen from with `select`:
   scripts/select_demo_ensembles.py), checkpoints stripped to what inference needs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import SimpleITK as sitk

from panther_ensemble.demo.resenc import shrink_plans

REPO = Path(__file__).resolve().parents[1]
PLANS = "nnUNetResEncUNetDemoPlans"
CONFIGURATION = "3d_fullres"
T1, T2 = (901, "Dataset901_PantherT1", "t1"), (902, "Dataset902_PantherT2", "t2")
LABELS = {"background": 0, "tumor": 1, "pancreas": 2}
TRAIN_SEEDS = {"t1": range(1000, 1040), "t2": range(2000, 2048)}  # held-out evaluation seeds start at 5000

# (task, trainer, fold, iterations, initialised from (task, trainer, fold) or None, initial lr)
# A "foundation" model on all Task 1 phantoms (fold "all", not an ensemble member) comes first, as the
# paper's pre-trained start; every member is fine-tuned from a trained model, each on its own fold.
FOUNDATION = (T1, "nnUNetTrainer", "all")
T2_ALL_ROUNDER = (T2, "nnUNetTrainerDA5", 0)
T2_VOLUME = (T2, "nnUNetTrainerDA5Segord0", 0)
SCHEDULE = [
    (*FOUNDATION, 5000, None, 1e-2),
    # a warm restart (5e-3, 500 iterations): at the paper's 1e-3 and 200 iterations the six members stayed near
    # copies of the foundation and their ensemble never beat its best member (weights/README.md has the numbers)
    (T1, "nnUNetTrainer", 0, 500, FOUNDATION, 5e-3),
    (T1, "nnUNetTrainer", 1, 500, FOUNDATION, 5e-3),
    (T1, "nnUNetTrainer", 2, 500, FOUNDATION, 5e-3),
    (T1, "nnUNetTrainerDA5", 0, 500, FOUNDATION, 5e-3),
    (T1, "nnUNetTrainerDA5", 1, 500, FOUNDATION, 5e-3),
    (T1, "nnUNetTrainerDA5ord0", 0, 500, FOUNDATION, 5e-3),
    # the paper's Task 2 cascade: the all-rounder from Task 1's DA5 model, the volume model from Task 1's
    # all-rounder. Task 2's tumor is brighter than the pancreas, Task 1's darker: a model crossing over re-learns
    # it at nnU-Net's default rate (at 1e-3 and 400 iterations its tumor pseudo Dice stayed 0.0); the other
    # volume folds start from the first with a warm restart (5e-3, 500 iterations each)
    (*T2_ALL_ROUNDER, 2000, (T1, "nnUNetTrainerDA5", 0), 1e-2),
    (*T2_VOLUME, 2000, (T1, "nnUNetTrainer", 0), 1e-2),
    (T2, "nnUNetTrainerDA5Segord0", 1, 500, T2_VOLUME, 5e-3),
    (T2, "nnUNetTrainerDA5Segord0", 2, 500, T2_VOLUME, 5e-3),
    (T2, "nnUNetTrainerDA5Segord0", 3, 500, T2_VOLUME, 5e-3),
    # a wider Task 2 pool for `select` (scripts/select_demo_ensembles.py): default augmentation (the paper found it
    # gives the better boundaries) and one more fold from the all-rounder, a fifth volume fold
    (T2, "nnUNetTrainer", 0, 500, T2_ALL_ROUNDER, 5e-3),
    (T2, "nnUNetTrainer", 1, 500, T2_ALL_ROUNDER, 5e-3),
    (T2, "nnUNetTrainerDA5", 1, 500, T2_ALL_ROUNDER, 5e-3),
    (T2, "nnUNetTrainerDA5Segord0", 4, 500, T2_VOLUME, 5e-3),
]
ITERATIONS_PER_EPOCH = 50


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_raw_dataset(task) -> None:
    from panther_ensemble.demo.phantom import make_phantom

    _, name, flavour = task
    raw = Path(os.environ["nnUNet_raw"]) / name
    if (raw / "dataset.json").exists():
        return
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for seed in TRAIN_SEEDS[flavour]:
        phantom = make_phantom(seed, flavour)
        sitk.WriteImage(phantom.image, str(raw / "imagesTr" / f"{flavour}_{seed:04d}_0000.mha"), useCompression=True)
        sitk.WriteImage(phantom.label, str(raw / "labelsTr" / f"{flavour}_{seed:04d}.mha"), useCompression=True)
    dataset = {"channel_names": {"0": flavour.upper()}, "labels": LABELS, "numTraining": len(TRAIN_SEEDS[flavour]),
               "file_ending": ".mha"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    log(f"{name}: {len(TRAIN_SEEDS[flavour])} phantoms written")


def demo_plans(plans: dict) -> dict:
    """The planner's ResEnc network, cut to 4 stages of 8-64 features and one block each, patch ~32x64x64."""
    plans = shrink_plans(plans, features=(8, 16, 32, 64), patch_target=(32, 64, 64))
    plans["configurations"][CONFIGURATION]["batch_size"] = 2
    plans["plans_name"] = PLANS
    return plans


def plan_and_preprocess() -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
        move_plans_between_datasets,
    )

    preprocessed = Path(os.environ["nnUNet_preprocessed"])
    t1_plans = preprocessed / T1[1] / f"{PLANS}.json"
    unfingerprinted = [task[0] for task in (T1, T2)
                       if not (preprocessed / task[1] / "dataset_fingerprint.json").exists()]
    if unfingerprinted:
        extract_fingerprints(unfingerprinted, num_processes=2, check_dataset_integrity=True, clean=True, verbose=False)
    if not t1_plans.exists():
        plan_experiments([T1[0]], "nnUNetPlannerResEncM", overwrite_plans_name=PLANS)
        t1_plans.write_text(json.dumps(demo_plans(json.loads(t1_plans.read_text())), indent=2))
        configuration = json.loads(t1_plans.read_text())["configurations"][CONFIGURATION]
        log(f"planned {T1[1]}: spacing {configuration['spacing']}, patch {configuration['patch_size']}")
    for task in (T1, T2):
        done = preprocessed / task[1] / ".preprocessed"  # written last: an interrupted preprocessing is redone
        if done.exists():
            continue
        if task is T2:  # fine-tuning across datasets needs the same plans (nnU-Net's pretraining recipe)
            move_plans_between_datasets(T1[0], T2[0], PLANS, PLANS)
            shutil.copy(Path(os.environ["nnUNet_raw"]) / T2[1] / "dataset.json", preprocessed / T2[1] / "dataset.json")
        preprocess([task[0]], PLANS, (CONFIGURATION,), (2,), verbose=False)
        done.touch()
        log(f"preprocessed {task[1]}")


def result_folder(task, trainer: str) -> Path:
    return Path(os.environ["nnUNet_results"]) / task[1] / f"{trainer}__{PLANS}__{CONFIGURATION}"


def train(task, trainer_name: str, fold: int | str, iterations: int, init_from, lr: float) -> None:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation import nnUNetTrainerDA5 as da5

    output = result_folder(task, trainer_name) / f"fold_{fold}"
    if (output / "checkpoint_final.pth").exists():
        return
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / task[1]
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    plans["continue_training"] = False  # nnUNetTrainer pops this (run_training sets it)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    # imported by name, not found by nnU-Net's recursive search: that imports every trainer module, and some pull
    # in torchvision, which the CPU-only torch of constraints-cpu.txt cannot load
    trainer_class = {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerDA5": da5.nnUNetTrainerDA5,
                     "nnUNetTrainerDA5ord0": da5.nnUNetTrainerDA5ord0,
                     "nnUNetTrainerDA5Segord0": da5.nnUNetTrainerDA5Segord0}[trainer_name]
    trainer = trainer_class(plans, CONFIGURATION, fold, dataset_json, device=torch.device("cpu"))
    trainer.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
    trainer.num_val_iterations_per_epoch = 10
    trainer.num_epochs = max(1, iterations // ITERATIONS_PER_EPOCH)
    trainer.save_every = 5  # checkpoint_latest often enough that an interruption costs minutes
    trainer.initial_lr = lr
    trainer.initialize()
    # an interrupted run resumes from its own latest checkpoint, as nnU-Net's --c does
    resume = next((output / n for n in ("checkpoint_latest.pth", "checkpoint_best.pth") if (output / n).exists()), None)
    if resume is not None:
        trainer.load_checkpoint(str(resume))
        log(f"{task[1]} {trainer_name} fold {fold}: resuming from {resume.name}, epoch {trainer.current_epoch}")
    elif init_from is not None:
        source_task, source_trainer, source_fold = init_from
        source = result_folder(source_task, source_trainer) / f"fold_{source_fold}" / "checkpoint_final.pth"
        # every weight, the segmentation head included: nnU-Net's load_pretrained_weights re-initializes the head
        # (made for new label sets), and a short schedule does not relearn the tumor (measured: pseudo Dice 0.0)
        trainer.network.load_state_dict(torch.load(source, map_location="cpu", weights_only=False)["network_weights"])
    start = time.time()
    trainer.run_training()
    log(f"{task[1]} {trainer_name} fold {fold}: {trainer.num_epochs} epochs x {ITERATIONS_PER_EPOCH} iterations "
        f"in {time.time() - start:.0f} s, best EMA pseudo Dice {trainer._best_ema:.3f}")


# the checkpoint each model of the pool ships (one per fold): chosen on validation phantoms (weights/README.md)
POOL_CHECKPOINT = {(T1, "nnUNetTrainer"): "checkpoint_best.pth", (T1, "nnUNetTrainerDA5ord0"): "checkpoint_best.pth",
                   (T2, "nnUNetTrainerDA5"): "checkpoint_best.pth"}


def export(weights: Path) -> None:
    """Every fold of the pool (the schedule but the foundation), its checkpoint stripped of optimizer state and
    training log: the candidates `select` chooses the specs from."""
    import torch

    from panther_ensemble.engine.members import INFERENCE_CHECKPOINT_KEYS

    for task, trainer, fold, *_ in SCHEDULE[1:]:
        source = result_folder(task, trainer)
        checkpoint_name = POOL_CHECKPOINT.get((task, trainer), "checkpoint_final.pth")
        target = weights / task[1] / source.name
        (target / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copy(source / name, target / name)
        checkpoint = torch.load(source / f"fold_{fold}" / checkpoint_name, map_location="cpu", weights_only=False)
        torch.save({k: checkpoint[k] for k in INFERENCE_CHECKPOINT_KEYS}, target / f"fold_{fold}" / checkpoint_name)
    log(f"exported to {weights}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="nnUNet_raw/preprocessed/results live here")
    parser.add_argument("--weights", type=Path, default=REPO / "weights", help="where the ensemble is written")
    parser.add_argument("--iterations-scale", type=float, default=1.0, help="scale every schedule (smoke runs)")
    args = parser.parse_args()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(args.work / name)
        (args.work / name).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    start = time.time()
    for task in (T1, T2):
        write_raw_dataset(task)
    plan_and_preprocess()
    for task, trainer, fold, iterations, init_from, lr in SCHEDULE:
        train(task, trainer, fold, max(ITERATIONS_PER_EPOCH, int(iterations * args.iterations_scale)), init_from, lr)
    export(args.weights)
    log(f"done in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
