"""nnU-Net's default image resampling as per-axis matrices, applied on the device.

nnU-Net's `resample_data_or_seg_to_shape` (is_seg False) computes, per channel, skimage.transform.resize:
scipy.ndimage.zoom(order, mode "nearest", grid_mode) and a clip to the input's range; for anisotropic
spacings the zoom runs per slice in-plane (each slice clipped to its own range) and nearest-neighbour
(order_z 0) along the slow axis. A spline zoom of a grid is separable and linear, so along each axis it is
one fixed (n_out, n_in) matrix. Each matrix is taken from scipy itself, by zooming the unit vectors, so the
arithmetic is scipy's cubic B-spline (not trilinear, which moves masks: docs/measured.md); the device applies them
as three float64 matrix products and clips as skimage does. tests/test_resample.py holds it to nnU-Net's
function; on a GPU this replaces the slowest single-threaded step of nnU-Net's preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from nnunetv2.configuration import ANISO_THRESHOLD
from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
from scipy import ndimage


@lru_cache(maxsize=64)
def zoom_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """(n_out, n_in): scipy.ndimage.zoom along one axis as skimage's resize (mode 'edge') calls it."""
    return np.stack([ndimage.zoom(unit, n_out / n_in, order=order, mode="nearest", grid_mode=True)
                     for unit in np.eye(n_in)], axis=1)


@lru_cache(maxsize=64)
def nearest_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): the order-0 map_coordinates nnU-Net runs along a separate (anisotropic) axis."""
    coordinates = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
    return np.stack([ndimage.map_coordinates(unit, coordinates[None], order=0, mode="nearest")
                     for unit in np.eye(n_in)], axis=1)


def _along(data: torch.Tensor, matrix: np.ndarray, axis: int) -> torch.Tensor:
    """Apply a (n_out, n_in) matrix along `axis` of data."""
    m = torch.from_numpy(matrix).to(data.device, data.dtype)
    return torch.movedim(torch.tensordot(m, data, dims=([1], [axis])), 0, axis)


def supports(kwargs: dict) -> bool:
    """Whether these resample_data_or_seg_to_shape kwargs are the image resampling this module reproduces."""
    return not kwargs.get("is_seg", False) and kwargs.get("order_z", 0) == 0 and \
        set(kwargs) <= {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}


def resample_image(data: np.ndarray | torch.Tensor, new_shape: Sequence[int], current_spacing: Sequence[float],
                   new_spacing: Sequence[float], device: torch.device, order: int = 3,
                   force_separate_z: bool | None = False, separate_z_anisotropy_threshold: float = ANISO_THRESHOLD,
                   is_seg: bool = False, order_z: int = 0) -> torch.Tensor:
    """resample_data_or_seg_to_shape(data (c, z, y, x) float32, ...) for images, as float32 on `device`."""
    if is_seg or order_z != 0:
        raise ValueError("only image resampling with order_z 0 is reproduced")
    shape = tuple(data.shape[1:])
    new_shape = tuple(int(n) for n in new_shape)
    if shape == new_shape:
        return torch.as_tensor(data).to(device)
    do_separate_z, axis = determine_do_sep_z_and_axis(force_separate_z, current_spacing, new_spacing,
                                                      separate_z_anisotropy_threshold)
    x = torch.as_tensor(data).to(device).double()  # copied as float32, widened on the device
    channel_dims = (1, 2, 3)
    if do_separate_z:
        in_plane = [a for a in range(3) if a != axis]
        channel_dims = tuple(a + 1 for a in in_plane)  # skimage clips each slice to its own range
    low, high = torch.amin(x, dim=channel_dims, keepdim=True), torch.amax(x, dim=channel_dims, keepdim=True)
    for a in range(3):
        if do_separate_z and a == axis:
            continue
        x = _along(x, zoom_matrix(shape[a], new_shape[a], order), a + 1)
    x = torch.clamp(x, low, high)
    if do_separate_z and shape[axis] != new_shape[axis]:
        x = _along(x, nearest_matrix(shape[axis], new_shape[axis]), axis + 1)
    return x.float()
