"""Back to the input grid as nnU-Net's export does, then the weighted softmax mean and the label map.

Two resamplings of a member's logits: "exact" runs the member's own plans resampling function on the host, as
stock nnU-Net does (bit-equal to it); "fast" (the default) runs nnU-Net's torch resampling
(resample_torch_fornnunet: linear in-plane, nearest along a separate anisotropic axis) where the logits
are, on the GPU when there is one. The fast export is within DESIGN.md's parity bound (tests/test_parity.py)
and several times quicker on the CPU too (benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np
import torch
from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet

from .members import Member

RESAMPLING = ("fast", "exact")


def probabilities_on_input_grid(logits: torch.Tensor, member: Member, properties: dict,
                                resampling: str = "fast") -> torch.Tensor:
    """softmax(logits) on the input's (z, y, x) grid: nnU-Net's export with probabilities returned.

    The steps are those of nnunetv2's convert_predicted_logits_to_segmentation_with_correct_shape, without the
    per-member segmentation it would compute and throw away. The result is on the logits' device.
    """
    plans, configuration = member.plans_manager, member.configuration_manager
    original_spacing = [properties["spacing"][i] for i in plans.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current_spacing = configuration.spacing if len(configuration.spacing) == len(shape) \
        else [original_spacing[0], *configuration.spacing]
    if resampling == "exact":
        resampled = configuration.resampling_fn_probabilities(logits.cpu(), shape, current_spacing, original_spacing)
    elif resampling == "fast":
        resampled = resample_torch_fornnunet(logits, shape, current_spacing, original_spacing, is_seg=False,
                                             num_threads=torch.get_num_threads(), device=logits.device)
    else:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    probabilities = member.label_manager.apply_inference_nonlin(resampled)
    probabilities = revert_cropping(probabilities, properties["bbox_used_for_cropping"],
                                    properties["shape_before_cropping"])
    return probabilities.permute(0, *[i + 1 for i in plans.transpose_backward])


def revert_cropping(probabilities: torch.Tensor, bbox: list[list[int]], shape: tuple[int, ...]) -> torch.Tensor:
    """LabelManager.revert_cropping_on_probabilities (non-region labels) on the probabilities' own device:
    outside the nonzero crop everything is background."""
    full = torch.zeros((probabilities.shape[0], *shape), dtype=probabilities.dtype, device=probabilities.device)
    full[0] = 1
    full[(slice(None), *(slice(low, high) for low, high in bbox))] = probabilities
    return full


class SoftmaxMean:
    """Running weighted mean of member probability maps: P = sum w_m p_m / sum w_m, on the first map's device."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.weight = 0.0

    def add(self, probabilities: torch.Tensor, weight: float) -> None:
        if self.total is None:
            self.total = probabilities.float() * weight
        else:
            self.total.add_(probabilities.to(self.total.device, torch.float32), alpha=weight)
        self.weight += weight

    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise ValueError("no member was added")
        return self.total / self.weight

    def labels(self) -> torch.Tensor:
        """Index of the most probable class per voxel (index == label for non-region nnU-Net models)."""
        return torch.argmax(self.mean(), dim=0)


def tumor_mask(labels: torch.Tensor, tumor_label: int) -> np.ndarray:
    return (labels == tumor_label).to(torch.uint8).cpu().numpy()
