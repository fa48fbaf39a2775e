"""Back to the input grid as nnU-Net's export does, then the weighted softmax mean and the label map."""

from __future__ import annotations

import numpy as np
import torch

from .members import Member


def probabilities_on_input_grid(logits: torch.Tensor, member: Member, properties: dict) -> torch.Tensor:
    """softmax(logits) on the input's (z, y, x) grid: nnU-Net's export with probabilities returned.

    The steps and functions are those of nnunetv2's convert_predicted_logits_to_segmentation_with_correct_shape,
    without the per-member segmentation it would compute and throw away.
    """
    plans, configuration = member.plans_manager, member.configuration_manager
    original_spacing = [properties["spacing"][i] for i in plans.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current_spacing = configuration.spacing if len(configuration.spacing) == len(shape) \
        else [original_spacing[0], *configuration.spacing]
    resampled = configuration.resampling_fn_probabilities(logits, shape, current_spacing, original_spacing)
    probabilities = member.label_manager.apply_inference_nonlin(resampled)
    probabilities = member.label_manager.revert_cropping_on_probabilities(
        probabilities, properties["bbox_used_for_cropping"], properties["shape_before_cropping"])
    return probabilities.permute(0, *[i + 1 for i in plans.transpose_backward])


class SoftmaxMean:
    """Running weighted mean of member probability maps: P = sum w_m p_m / sum w_m."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.weight = 0.0

    def add(self, probabilities: torch.Tensor, weight: float) -> None:
        if self.total is None:
            self.total = probabilities.float() * weight
        else:
            self.total.add_(probabilities.float(), alpha=weight)
        self.weight += weight

    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise ValueError("no member was added")
        return self.total / self.weight

    def labels(self) -> torch.Tensor:
        """Index of the most probable class per voxel (index == label for non-region nnU-Net models)."""
        return torch.argmax(self.mean(), dim=0)


def tumor_mask(labels: torch.Tensor, tumor_label: int) -> np.ndarray:
    return (labels == tumor_label).to(torch.uint8).numpy()
