"""nnU-Net ResEnc plans from nnU-Net's own planner, and the same network cut down to a CPU budget.

Used by the benchmark (random-weight members with the real ResEncL architecture) and by the demo training
script (a ResEnc M plan cut to a CPU schedule).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CONFIGURATION = "3d_fullres"
BENCH_DATASET = (990, "Dataset990_PantherBench")
# the foreground intensities of a T1 MRI at an arbitrary scale, as nnU-Net's fingerprint records them
INTENSITIES = {"max": 1200.0, "mean": 410.0, "median": 400.0, "min": 0.0, "percentile_00_5": 20.0,
               "percentile_99_5": 1000.0, "std": 150.0}


def plan_resenc(work: Path, planner: str, median_spacing_zyx: Sequence[float], median_shape_zyx: Sequence[int],
                target_spacing: Sequence[float], plans_name: str) -> dict:
    """nnUNetv2_plan_experiment with `planner` on the fingerprint of a dataset of such scans.

    nnU-Net reads its folders from the environment when it is imported, so the planner runs in a child process
    with nnUNet_raw/nnUNet_preprocessed under `work`. Returns the plans as nnU-Net wrote them.
    """
    dataset_id, name = BENCH_DATASET
    raw, preprocessed = Path(work) / "nnUNet_raw" / name, Path(work) / "nnUNet_preprocessed" / name
    for folder in (raw / "imagesTr", raw / "labelsTr", preprocessed):
        folder.mkdir(parents=True, exist_ok=True)
    # the planner reads the file type from one training image; the fingerprint carries the statistics
    blank = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.uint8))
    sitk.WriteImage(blank, str(raw / "imagesTr" / "case_0000.mha"))
    sitk.WriteImage(blank, str(raw / "labelsTr" / "case.mha"))
    cases = 100
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "tumor": 1, "pancreas": 2},
        "numTraining": cases, "file_ending": ".mha"}))
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [list(median_spacing_zyx)] * cases, "shapes_after_crop": [list(median_shape_zyx)] * cases,
        "foreground_intensity_properties_per_channel": {"0": INTENSITIES},
        "median_relative_size_after_cropping": 1.0}))
    env = {**os.environ, "nnUNet_raw": str(raw.parent), "nnUNet_preprocessed": str(preprocessed.parent),
           "nnUNet_results": str(Path(work) / "nnUNet_results")}
    command = [sys.executable, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
               "plan_experiment_entry; plan_experiment_entry()", "-d", str(dataset_id), "-pl", planner,
               "-overwrite_target_spacing", *[str(s) for s in target_spacing], "-overwrite_plans_name", plans_name]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net's planner failed:\n{done.stderr[-2000:]}")
    return json.loads((preprocessed / f"{plans_name}.json").read_text())


def fit_patch(plans: dict, patch_target: Sequence[int]) -> dict:
    """Set the patch size to the target rounded down to what the network's strides divide (at least one
    multiple)."""
    configuration = plans["configurations"][CONFIGURATION]
    divisor = np.prod(np.array(configuration["architecture"]["arch_kwargs"]["strides"]), axis=0)
    configuration["patch_size"] = [int(max(d, t // d * d)) for d, t in zip(divisor, patch_target)]
    return plans


def shrink_plans(plans: dict, features: Sequence[int], patch_target: Sequence[int]) -> dict:
    """The planner's ResEnc network cut to len(features) stages of those widths, one block each, and a patch
    near `patch_target`: the same architecture class and layout, at a CPU's budget."""
    kwargs = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    n = len(features)
    kwargs.update(n_stages=n, features_per_stage=list(features), n_blocks_per_stage=[1] * n,
                  n_conv_per_stage_decoder=[1] * (n - 1), kernel_sizes=kwargs["kernel_sizes"][:n],
                  strides=kwargs["strides"][:n])
    return fit_patch(plans, patch_target)
