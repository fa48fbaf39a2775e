"""Abdominal-MRI-like phantoms with pancreas and pancreatic tumor labels (0 background, 1 tumor, 2 pancreas).

Anatomy is defined in physical millimetres and sampled on a scanner grid with PANTHER-like spacing, random
direction cosines and origin, so the same code gives thick-slice diagnostic T1 ("t1") and MR-Linac T2 ("t2")
volumes. Deterministic: the same (seed, flavour) always gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

FLAVOURS = ("t1", "t2")

# Tissue intensities (arbitrary units, before bias field, noise and scaling). T1 CE: fat and enhancing
# pancreas bright, tumor hypointense against the pancreas; T2: fluid bright, vessels dark (flow void),
# tumor mildly hyperintense against the pancreas. Tumor contrast is kept low on purpose.
CONTRAST = {
    "t1": {"body": 0.35, "fat": 0.90, "liver": 0.60, "spleen": 0.50, "kidney": 0.55, "vessel": 0.95,
           "bone": 0.15, "bowel": 0.30, "stomach": 0.40, "pancreas": 0.72, "tumor": 0.48},
    "t2": {"body": 0.25, "fat": 0.80, "liver": 0.35, "spleen": 0.60, "kidney": 0.65, "vessel": 0.08,
           "bone": 0.15, "bowel": 0.85, "stomach": 0.75, "pancreas": 0.42, "tumor": 0.62},
}
# (in-plane range, slice range) in mm
SPACING = {"t1": ((0.9, 1.5), (2.0, 4.0)), "t2": ((1.0, 1.6), (1.0, 3.0))}


@dataclass
class Phantom:
    image: sitk.Image  # int16 or uint16, arbitrary scale
    label: sitk.Image  # uint8: 0 background, 1 tumor, 2 pancreas
    tumor_diameter_mm: float
    tumor_at_border: bool


def _random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field on a voxel grid."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (field - field.mean()) / (field.std() + 1e-6)


def _ellipsoid(points: np.ndarray, centre, radii) -> np.ndarray:
    return (((points - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) < 1


def _pancreas_centreline(rng: np.random.Generator) -> np.ndarray:
    """An elongated curved tube path from the head (patient right) to the tail (patient left), in mm."""
    t = np.linspace(0, 1, 200)[:, None]
    head, tail = np.array([-45.0, 5.0, 0.0]), np.array([65.0, 35.0, 12.0])
    head += rng.uniform(-8, 8, 3)
    tail += rng.uniform(-8, 8, 3)
    bend = np.array([0.0, -25.0, 0.0]) + rng.uniform(-8, 8, 3)  # arching anteriorly over the spine
    return (1 - t) * head + t * tail + 4 * t * (1 - t) * bend


HARD = ("faint", "distractor")  # phantoms made hard on purpose (post-processing's cases)
FAINT = 0.3  # a faint tumor keeps this share of its contrast against the pancreas


def make_phantom(seed: int, flavour: str = "t1", hard: str | None = None) -> Phantom:
    """One phantom case; geometry, anatomy, tumor, contrast and scale all drawn from `seed`. `hard`: "faint", the
    tumor at FAINT of its contrast; "distractor", a tumor-like lesion in a pancreas-like rim in the liver, far from
    the pancreas and not labelled (the same seed gives the same phantom otherwise)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if hard not in (None, *HARD):
        raise ValueError(f"hard must be one of {HARD} or None, got {hard!r}")
    rng = np.random.default_rng([seed, FLAVOURS.index(flavour)])
    (in_lo, in_hi), (sl_lo, sl_hi) = SPACING[flavour]
    in_plane = rng.uniform(in_lo, in_hi)
    spacing = np.array([in_plane, in_plane * rng.uniform(0.95, 1.05), rng.uniform(sl_lo, sl_hi)])
    body_radii = np.array([rng.uniform(105, 125), rng.uniform(75, 90)])
    fov = np.array([2 * body_radii[0] + rng.uniform(0, 20), 2 * body_radii[1] + rng.uniform(0, 20),
                    rng.uniform(90, 120)])
    size = np.maximum(np.round(fov / spacing).astype(int), 8)  # (x, y, z) voxels
    direction = _random_rotation(rng, 12.0)
    centre = rng.uniform(-250, 250, 3)  # where the patient lies in scanner coordinates
    origin = centre - direction @ (spacing * (size - 1) / 2)

    # physical position of every voxel, relative to the patient centre, in the patient's own frame
    zi, yi, xi = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size[::-1]], indexing="ij")
    index = np.stack([xi, yi, zi], -1) * spacing.astype(np.float32)
    index -= (spacing * (size - 1) / 2).astype(np.float32)
    tilt = _random_rotation(rng, 4.0).astype(np.float32)  # the patient is not perfectly aligned
    points = index @ tilt.T  # (z, y, x, 3) mm: x patient left, y posterior, z cranial

    tissue = CONTRAST[flavour]
    image = np.zeros(size[::-1], np.float32)
    x, y = points[..., 0], points[..., 1]
    body_r = (x / body_radii[0]) ** 2 + (y / body_radii[1]) ** 2
    body = body_r < 1
    image[body] = tissue["fat"]
    inner = body_r < (1 - rng.uniform(0.12, 0.2)) ** 2
    image[inner] = tissue["body"]

    organs = [
        ("liver", (-55, -5, 25), (55, 60, 70)),
        ("spleen", (75, 30, 20), (22, 35, 40)),
        ("kidney", (-55, 50, -10), (22, 25, 45)),
        ("kidney", (60, 50, 0), (22, 25, 45)),
        ("stomach", (40, -35, 35), (40, 28, 35)),
        ("bone", (0, 62, 0), (16, 14, 400)),
        ("vessel", (8, 35, 0), (9, 9, 400)),  # aorta
        ("vessel", (-18, 30, 0), (11, 9, 400)),  # IVC
    ]
    organs += [("bowel", (rng.uniform(-60, 60), rng.uniform(-60, -20), rng.uniform(-50, 0)),
                tuple(rng.uniform(10, 22, 3))) for _ in range(4)]
    for name, c, r in organs:
        jitter = rng.uniform(-6, 6, 3)
        image[_ellipsoid(points, np.array(c) + jitter, r) & inner] = tissue[name]

    # pancreas: a tube of varying radius around a curved centreline
    line = _pancreas_centreline(rng)
    radius = 9 + 4 * np.sin(np.linspace(0, np.pi, len(line)) + rng.uniform(-0.5, 0.5)) * rng.uniform(0.6, 1.0)
    distance, nearest = cKDTree(line).query(points.reshape(-1, 3), distance_upper_bound=30)
    distance = distance.reshape(size[::-1])
    nearest = np.minimum(nearest.reshape(size[::-1]), len(line) - 1)
    wobble = 1.5 * _smooth_noise(rng, image.shape, 4)
    pancreas = distance + wobble < radius[nearest]

    # tumor: an irregular blob 1-4 cm on the pancreas, sometimes bulging over its border
    diameter = rng.uniform(10, 40)
    at_border = bool(rng.uniform() < 0.35)
    k = rng.integers(20, len(line) - 20)
    offset = rng.standard_normal(3)
    offset *= (radius[k] * (0.9 if at_border else rng.uniform(0, 0.4))) / np.linalg.norm(offset)
    tumor_centre = line[k] + offset
    rough = 1 + 0.15 * _smooth_noise(rng, image.shape, 3)
    stretch = rng.uniform(0.8, 1.25, 3)
    tumor = (((points - tumor_centre) / (stretch * diameter / 2)) ** 2).sum(-1) < rough ** 2
    tumor &= pancreas | at_border & (distance < radius[nearest] + diameter / 3)
    tumor &= inner

    image[pancreas & inner] = tissue["pancreas"]
    image[tumor] = tissue["tumor"]
    if hard == "faint":
        image[tumor] = tissue["pancreas"] + FAINT * (tissue["tumor"] - tissue["pancreas"])
    elif hard == "distractor":
        centre = np.array([-55.0, -5.0, 25.0]) + rng.uniform(-15, 15, 3)  # in the liver
        lesion_mm = rng.uniform(15, 25)
        reach = np.sqrt((((points - centre) / (lesion_mm / 2)) ** 2).sum(-1))
        image[(reach < 1.6) & inner & ~pancreas] = tissue["pancreas"]
        image[(reach < 1) & inner & ~pancreas] = tissue["tumor"]
    label = np.zeros(image.shape, np.uint8)
    label[pancreas & inner] = 2
    label[tumor] = 1

    # texture, bias field, partial volume along the slices, Rician-like noise, arbitrary scale
    image *= 1 + 0.06 * _smooth_noise(rng, image.shape, 1.5)
    image *= 1 + 0.25 * _smooth_noise(rng, image.shape, 25)
    image = ndimage.gaussian_filter(image, (0.6, 0.4, 0.4))
    sigma = rng.uniform(0.025, 0.045)
    image = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    dtype = np.int16 if rng.uniform() < 0.5 else np.uint16
    scale = rng.uniform(300, 3000)
    voxels = np.clip(image * scale, 0, np.iinfo(dtype).max).astype(dtype)

    itk_image, itk_label = sitk.GetImageFromArray(voxels), sitk.GetImageFromArray(label)
    for item in (itk_image, itk_label):
        item.SetSpacing(tuple(float(s) for s in spacing))
        item.SetOrigin(tuple(float(o) for o in origin))
        item.SetDirection(tuple(float(d) for d in direction.ravel()))
    return Phantom(itk_image, itk_label, float(diameter), at_border)


def panther_label_map(label: sitk.Image) -> sitk.Image:
    """A phantom's label map (1 tumor, 2 pancreas) as PANTHER's annotations have it: 1 pancreas, 2 tumor."""
    array = sitk.GetArrayFromImage(label)
    out = sitk.GetImageFromArray(np.select([array == 1, array == 2], [2, 1], 0).astype(np.uint8))
    out.CopyInformation(label)
    return out
