"""Random-weight nnU-Net result folders and synthetic MRI-like images, as nnU-Net writes and reads them.

Used by the tests, the benchmarks and the demo that runs without trained weights. The folders have the
layout of `nnUNet_results/<Dataset>/<Trainer>__<Plans>__<configuration>/` with plans.json, dataset.json
and fold_K/checkpoint_*.pth holding the keys nnUNetTrainer.save_checkpoint writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from ..engine import spec_writer
from ..engine.spec import EnsembleSpec, MemberSpec

LABELS = {"background": 0, "tumor": 1, "pancreas": 2}
ARCHITECTURES = {
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
}


@dataclass
class ModelConfig:
    """One random nnU-Net model: its folder name parts and the plans entries that make it differ."""

    dataset: str = "Dataset901_PantherT1"
    trainer: str = "nnUNetTrainer"
    plans_name: str = "nnUNetResEncUNetMPlans"
    configuration: str = "3d_fullres"
    architecture: str = "ResidualEncoderUNet"
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    spacing: tuple[float, float, float] = (3.0, 1.0, 1.0)  # in transposed (z, y, x) order, as nnU-Net stores it
    patch_size: tuple[int, int, int] = (16, 32, 32)
    features: tuple[int, ...] = (4, 8, 16)
    normalization: str = "ZScoreNormalization"
    use_mask_for_norm: bool = False
    folds: tuple[int | str, ...] = (0,)
    checkpoints: tuple[str, ...] = ("checkpoint_final.pth", "checkpoint_best.pth")
    labels: dict = field(default_factory=lambda: dict(LABELS))
    seed: int = 0
    plans: dict | None = None  # a planner's plans (the benchmark's); the fields above then only name the folder

    @property
    def folder_name(self) -> str:
        return f"{self.trainer}__{self.plans_name}__{self.configuration}"

    @property
    def model(self) -> str:
        """The model path as an ensemble spec names it, relative to the weights root."""
        return f"{self.dataset}/{self.folder_name}"


def _strides(patch_size: tuple[int, ...], n_stages: int) -> list[list[int]]:
    strides, size = [[1] * len(patch_size)], list(patch_size)
    for _ in range(n_stages - 1):
        stride = [2 if s % 2 == 0 and s // 2 >= 4 else 1 for s in size]
        size = [s // st for s, st in zip(size, stride)]
        strides.append(stride)
    return strides


# The paper's Task 1 composition in miniature: 3 folds of an all-rounder (best checkpoints), 2 of a "volume"
# model (a trainer nnunetv2 ships, final checkpoints) on the same plans, 1 of a "boundary" model with another
# architecture, spacing, patch size and a trainer nnunetv2 does not ship.
ALL_ROUNDER = ModelConfig(seed=1, folds=(0, 1, 2))
VOLUME = ModelConfig(trainer="nnUNetTrainerDA5", seed=2, folds=(0, 1))
BOUNDARY = ModelConfig(trainer="nnUNetTrainer_DA5Segord0_150epochs", plans_name="nnUNetPlans",
                       architecture="PlainConvUNet", spacing=(2.0, 1.2, 1.2), patch_size=(16, 24, 40),
                       features=(4, 8, 16, 24), seed=3)
T1_MEMBERS = [
    (ALL_ROUNDER, 0, "checkpoint_best.pth", 1.0),
    (ALL_ROUNDER, 1, "checkpoint_best.pth", 1.0),
    (ALL_ROUNDER, 2, "checkpoint_best.pth", 1.0),
    (VOLUME, 0, "checkpoint_final.pth", 0.75),
    (VOLUME, 1, "checkpoint_final.pth", 0.75),
    (BOUNDARY, 0, "checkpoint_best.pth", 1.5),
]


def make_plans(config: ModelConfig) -> dict:
    if config.plans is not None:
        return {**config.plans, "dataset_name": config.dataset, "plans_name": config.plans_name}
    n_stages = len(config.features)
    arch_kwargs = {
        "n_stages": n_stages,
        "features_per_stage": list(config.features),
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n_stages,
        "strides": _strides(config.patch_size, n_stages),
        "n_conv_per_stage_decoder": [1] * (n_stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    blocks = [1] + [2] * (n_stages - 1)
    arch_kwargs["n_blocks_per_stage" if config.architecture == "ResidualEncoderUNet" else "n_conv_per_stage"] = blocks
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": config.dataset,
        "plans_name": config.plans_name,
        "original_median_spacing_after_transp": [3.0, 1.19, 1.19],
        "original_median_shape_after_transp": [72, 260, 320],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(config.transpose_forward),
        "transpose_backward": [int(i) for i in np.argsort(config.transpose_forward)],
        "configurations": {config.configuration: {
            "data_identifier": f"{config.plans_name}_{config.configuration}",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2,
            "patch_size": list(config.patch_size),
            "median_image_size_in_voxels": [72, 260, 320],
            "spacing": list(config.spacing),
            "normalization_schemes": [config.normalization],
            "use_mask_for_norm": [config.use_mask_for_norm],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "architecture": {
                "network_class_name": ARCHITECTURES[config.architecture],
                "arch_kwargs": arch_kwargs,
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            },
            "batch_dice": False,
        }},
        "experiment_planner_used": "nnUNetPlannerResEncM",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1200.0, "mean": 410.0, "median": 400.0, "min": 0.0,
            "percentile_00_5": 20.0, "percentile_99_5": 1000.0, "std": 150.0}},
    }


def make_dataset_json(config: ModelConfig) -> dict:
    return {"channel_names": {"0": "T1"}, "labels": dict(config.labels), "numTraining": 10, "file_ending": ".mha"}


def random_network(plans: dict, config: ModelConfig, seed: int) -> torch.nn.Module:
    """He-initialized like nnU-Net, with a sharpened output layer so that every class wins somewhere."""
    torch.manual_seed(seed)
    arch = plans["configurations"][config.configuration]["architecture"]
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, len(config.labels), allow_init=True, deep_supervision=False)
    with torch.no_grad():
        seg_layer = network.decoder.seg_layers[-1]
        seg_layer.weight.mul_(20.0)
        seg_layer.bias.copy_(torch.randn_like(seg_layer.bias))
    return network


def checkpoint_dict(network: torch.nn.Module, plans: dict, config: ModelConfig, fold: int | str,
                    dataset_json: dict, epoch: int) -> dict:
    """The dict nnUNetTrainer.save_checkpoint writes, numpy scalars in the log included."""
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    ema = [np.float64(0.1 * i) for i in range(epoch)]
    return {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": ema, "ema_fg_dice": ema, "train_losses": [float(-i) for i in range(epoch)],
                    "lrs": [1e-2] * epoch},
        "_best_ema": ema[-1] if ema else None,
        "current_epoch": epoch,
        "init_args": {"plans": plans, "configuration": config.configuration, "fold": fold,
                      "dataset_json": dataset_json, "device": torch.device("cpu")},
        "trainer_name": config.trainer,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def make_model_folder(weights_root: Path, config: ModelConfig) -> Path:
    """Write a random-weight nnU-Net result folder; each fold and checkpoint gets its own weights."""
    folder = Path(weights_root) / config.model
    folder.mkdir(parents=True, exist_ok=True)
    plans, dataset_json = make_plans(config), make_dataset_json(config)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    for f, fold in enumerate(config.folds):
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        for c, name in enumerate(config.checkpoints):
            network = random_network(plans, config, seed=config.seed * 1000 + f * 10 + c)
            torch.save(checkpoint_dict(network, plans, config, fold, dataset_json, epoch=5 + c),
                       folder / f"fold_{fold}" / name)
    return folder


def rotation(angles_rad: tuple[float, float, float]) -> tuple[float, ...]:
    """A direction-cosine matrix (row-major) from rotations about x, y and z."""
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel().tolist())


def make_image(path: Path, shape_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
               seed: int, oblique: bool = True, dtype=np.int16) -> Path:
    """A body-like ellipsoid of smooth texture and blobs on a zero background, on an oblique grid."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    body = (x / 0.9) ** 2 + (y / 0.75) ** 2 + (z / 1.2) ** 2 < 1
    volume = 300 + 60 * np.sin(3 * x + rng.uniform(0, 6)) * np.cos(2 * y + rng.uniform(0, 6))
    for _ in range(6):
        c = rng.uniform(-0.6, 0.6, 3)
        r = rng.uniform(0.1, 0.35)
        blob = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r ** 2
        volume = np.where(blob, volume + rng.uniform(-250, 400), volume)
    volume = volume + rng.normal(0, 25, shape_zyx)
    volume = np.where(body, np.clip(volume, 1, None), 0).astype(dtype)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(tuple(rng.uniform(-200, 200, 3)))
    if oblique:
        image.SetDirection(rotation(tuple(rng.uniform(-0.5, 0.5, 3))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


GC_SOCKET_TITLES = {"abdominal-t1-mri": "Abdominal T1 MRI", "abdominal-t2-mri": "Abdominal T2 MRI"}


def gc_image_value(socket: str, image_name: str, keys: tuple[str, ...] = ("socket", "interface")) -> dict:
    """One image value of inputs.json as Grand Challenge writes it (ComponentInterfaceValueSerializer): the socket
    under "socket" and again under "interface" (the legacy name; `keys` leaves either out)."""
    described = {"title": GC_SOCKET_TITLES.get(socket, socket), "description": "", "slug": socket, "kind": "Image",
                 "pk": 0, "default_value": None, "super_kind": "Image", "relative_path": f"images/{socket}",
                 "overlay_segments": [], "look_up_table": None}
    value = {key: dict(described) for key in keys}
    return value | {"value": None, "file": None, "image": {"pk": image_name.split(".")[0], "name": image_name},
                    "pk": 0}


def write_gc_input(input_dir: Path, socket: str, images: dict[str, dict]) -> Path:
    """A GC-layout input folder (inputs.json + images/<socket>/); images maps file name -> make_image kwargs."""
    input_dir = Path(input_dir)
    for name, kwargs in images.items():
        make_image(input_dir / "images" / socket / name, **kwargs)
    value = gc_image_value(socket, next(iter(images), ""))
    (input_dir / "inputs.json").write_text(json.dumps([value], indent=2))
    return input_dir


def write_spec(path: Path, members: list[tuple[ModelConfig, int | str, str, float]],
               input_socket: str = "abdominal-t1-mri", tumor_label: int = 1) -> Path:
    """An ensemble spec naming (model, fold, checkpoint, weight) members (engine.spec_writer writes it)."""
    path = Path(path)
    specs = tuple(MemberSpec(config.model, fold, checkpoint, float(weight))
                  for config, fold, checkpoint, weight in members)
    return spec_writer.write_spec(EnsembleSpec(path, input_socket, "pancreatic-tumor-segmentation", tumor_label,
                                               specs), path)


def write_random_demo(root: Path) -> None:
    """weights/, task1.toml and a GC-layout input/ under root: the product end to end without trained weights."""
    root = Path(root)
    for config in (ALL_ROUNDER, VOLUME, BOUNDARY):
        make_model_folder(root / "weights", config)
    write_spec(root / "task1.toml", T1_MEMBERS)
    write_gc_input(root / "input", "abdominal-t1-mri", {
        "demo-case.mha": dict(shape_zyx=(24, 96, 110), spacing_xyz=(1.19, 1.19, 3.0), seed=7)})


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m panther_ensemble.demo.synthetic",
                                     description="A random-weight ensemble and a GC-layout input, to try the product "
                                                 "without trained weights: DIR/weights, DIR/task1.toml, DIR/input.")
    parser.add_argument("folder", type=Path, metavar="DIR")
    folder = parser.parse_args().folder
    write_random_demo(folder)
    print(f"random-weight ensemble and a sample input written to {folder}")
