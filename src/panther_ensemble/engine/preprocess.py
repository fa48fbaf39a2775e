"""nnU-Net preprocessing of one image, once per group of members whose preprocessing is identical."""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

from ..core.log import warn
from . import image_resampling as resample
from .devices import HOST, out_of_memory, release_device_memory
from .image import Image
from .members import Member


@dataclass
class Preprocessed:
    """The image on a member group's grid (c, z', y', x') and nnU-Net's properties to export back."""

    data: torch.Tensor
    properties: dict


def preprocessing_key(member: Member) -> str:
    """Members with equal keys get bit-identical preprocessed data, so they share one preprocessing."""
    configuration = member.configuration_manager.configuration
    plans = member.plans_manager
    return json.dumps({
        "preprocessor": configuration.get("preprocessor_name", "DefaultPreprocessor"),
        "transpose_forward": plans.transpose_forward,
        "spacing": configuration["spacing"],
        "normalization_schemes": configuration["normalization_schemes"],
        "use_mask_for_norm": configuration["use_mask_for_norm"],
        "resampling_fn_data": configuration["resampling_fn_data"],
        "resampling_fn_data_kwargs": configuration["resampling_fn_data_kwargs"],
        "intensity_properties": plans.foreground_intensity_properties_per_channel,
        "channel_names": member.dataset_json.get("channel_names", member.dataset_json.get("modality")),
    }, sort_keys=True)


def resampled_shape(shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...], member: Member) -> tuple[int, ...]:
    """The member's grid size for an image (before cropping: an upper bound), without touching voxels."""
    transpose = member.plans_manager.transpose_forward
    shape = [shape_zyx[i] for i in transpose]
    spacing = [spacing_zyx[i] for i in transpose]
    target = list(member.configuration_manager.spacing)
    if len(target) < len(shape):  # 2-D configurations keep the first axis
        target = [spacing[0], *target]
    return tuple(int(n) for n in compute_new_shape(shape, spacing, target))


class DeviceResampling:
    """A member's ConfigurationManager whose image resampling runs on the device (resample.resample_image),
    where the plans name nnU-Net's default one; everything else is the member's own."""

    def __init__(self, configuration_manager, device: torch.device) -> None:
        self._configuration_manager = configuration_manager
        self._device = device

    def __getattr__(self, name: str):
        return getattr(self._configuration_manager, name)

    @property
    def resampling_fn_data(self):
        configuration = self._configuration_manager.configuration
        kwargs = configuration["resampling_fn_data_kwargs"]
        if configuration["resampling_fn_data"] != "resample_data_or_seg_to_shape" or not resample.supports(kwargs):
            return self._configuration_manager.resampling_fn_data
        return partial(_resample_image, device=self._device, **kwargs)

    @property
    def resampling_fn_seg(self):
        # at inference nnU-Net resamples the nonzero mask and never uses it afterwards: skip that work
        return lambda seg, *args, **kwargs: seg


def _resample_image(data, new_shape, current_spacing, new_spacing, device: torch.device, **kwargs) -> torch.Tensor:
    """resample.resample_image on the device; out of memory there, on the host (the same arithmetic)."""
    try:
        return resample.resample_image(data, new_shape, current_spacing, new_spacing, device=device, **kwargs)
    except RuntimeError as e:  # torch's OutOfMemoryError among them
        if device == HOST or not out_of_memory(e):
            raise
        warn("out of device memory while resampling the image: it is resampled on the host")
        release_device_memory()
        return resample.resample_image(data, new_shape, current_spacing, new_spacing, device=HOST, **kwargs)


def preprocess(image: Image, member: Member, device: torch.device | None = None) -> Preprocessed:
    """Run the member's own nnU-Net preprocessor (transpose, crop to nonzero, normalize, resample).

    With a device, the resampling (the costly step) runs there with nnU-Net's arithmetic and the data stays
    there; without, everything is stock nnU-Net on the host.
    """
    data, properties = image.nnunet_input()
    preprocessor = member.configuration_manager.preprocessor_class(verbose=False)
    configuration = member.configuration_manager if device is None else \
        DeviceResampling(member.configuration_manager, device)
    data, _, properties = preprocessor.run_case_npy(data, None, deepcopy(properties), member.plans_manager,
                                                    configuration, member.dataset_json)
    if isinstance(data, torch.Tensor):
        return Preprocessed(data, properties)
    return Preprocessed(torch.from_numpy(np.ascontiguousarray(data)), properties)
