"""The reference: stock nnunetv2, one nnUNetPredictor per member, probabilities returned, weighted mean.

This is what docs/contracts.md defines as correct (Parity). Members whose trainer class nnunetv2 does not ship (or
cannot import) are set up with nnUNetPredictor.manual_initialization and the network from the plans, since
nnU-Net itself cannot find their trainer; everything after that is the stock predictor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ..engine.members import network_from_plans
from ..engine.spec import EnsembleSpec, MemberSpec


def stock_predictor(folder: Path, folds: Sequence[int | str], checkpoint_name: str,
                    device: torch.device) -> nnUNetPredictor:
    """nnUNetPredictor for a model folder and its folds (no mirroring, tile step 0.5), as a user sets it up."""
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, allow_tqdm=False)
    try:
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds),
                                                       checkpoint_name=checkpoint_name)
        return predictor
    except RuntimeError:  # nnunetv2 cannot find (or import) the trainer class named in the checkpoint
        pass
    checkpoints = [torch.load(Path(folder) / f"fold_{fold}" / checkpoint_name, map_location="cpu",
                              weights_only=False) for fold in folds]
    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    configuration = plans_manager.get_configuration(checkpoints[0]["init_args"]["configuration"])
    network = network_from_plans(plans_manager, configuration, dataset_json)
    network.load_state_dict(checkpoints[0]["network_weights"])
    predictor.manual_initialization(network, plans_manager, configuration,
                                    [c["network_weights"] for c in checkpoints], dataset_json,
                                    checkpoints[0]["trainer_name"],
                                    checkpoints[0].get("inference_allowed_mirroring_axes"))
    return predictor


def stock_preprocess(predictor: nnUNetPredictor, data: np.ndarray, properties: dict) -> dict:
    """nnU-Net's preprocessing of one case for this predictor, as predict_single_npy_array runs it."""
    return next(PreprocessAdapterFromNpy([data], [None], [properties], [None], predictor.plans_manager,
                                         predictor.dataset_json, predictor.configuration_manager,
                                         num_threads_in_multithreaded=1))


def stock_logits(predictor: nnUNetPredictor, prepared: dict) -> torch.Tensor:
    """The predictor's logits (its folds' mean) on the preprocessed grid, as predict_single_npy_array computes them."""
    return predictor.predict_logits_from_preprocessed_data(prepared["data"]).cpu()


def stock_export(predictor: nnUNetPredictor, logits: torch.Tensor, prepared: dict) -> np.ndarray:
    """nnU-Net's export of the logits to the input grid, probabilities returned (classes, z, y, x)."""
    _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
        prepared["data_properties"], return_probabilities=True)
    return probabilities


def stock_member_probabilities(image_file: Path, weights_root: Path, member: MemberSpec,
                               device: torch.device | None = None) -> np.ndarray:
    """(classes, z, y, x) probabilities of one member on the input grid, by the stock predictor."""
    data, properties = SimpleITKIO().read_images([str(image_file)])
    predictor = stock_predictor(weights_root / member.model, (member.fold,), member.checkpoint,
                                device or torch.device("cpu"))
    prepared = stock_preprocess(predictor, data, properties)
    return stock_export(predictor, stock_logits(predictor, prepared), prepared)


def stock_ensemble_mask(image_file: Path, weights_root: Path, spec: EnsembleSpec,
                        device: torch.device | None = None) -> np.ndarray:
    """The reference tumor mask (z, y, x) uint8: weighted mean of stock per-member probabilities."""
    return (stock_ensemble_labels(image_file, weights_root, spec, device) == spec.tumor_label).astype(np.uint8)


def stock_ensemble_labels(image_file: Path, weights_root: Path, spec: EnsembleSpec,
                          device: torch.device | None = None) -> np.ndarray:
    """The reference label map (z, y, x): the argmax of the weighted mean of stock per-member probabilities.

    Each member is its own stock predictor, run through predict_single_npy_array's three steps; the
    preprocessing, which depends only on the plans, is run once per distinct plans and configuration.
    """
    data, properties = SimpleITKIO().read_images([str(image_file)])
    prepared: dict[str, dict] = {}
    total = None
    for member in spec.members:
        predictor = stock_predictor(weights_root / member.model, (member.fold,), member.checkpoint,
                                    device or torch.device("cpu"))
        key = json.dumps([predictor.plans_manager.plans, predictor.configuration_manager.configuration],
                         sort_keys=True)
        if key not in prepared:
            prepared[key] = stock_preprocess(predictor, data, properties)
        weighted = stock_export(predictor, stock_logits(predictor, prepared[key]), prepared[key]) * member.weight
        total = weighted if total is None else total + weighted
    return np.argmax(total / sum(m.weight for m in spec.members), axis=0)
