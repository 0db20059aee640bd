"""One synthetic subject: head pose and warp, contrasts, acquisition, files.

The chain for every FLAIR (or T1) voxel is::

    voxel --grid affine--> scanner world --pose^-1--> subject anatomy --warp--> MNI mm

where the pose is a random rotation (up to 10 degrees per axis), scale (about 10 %) and
translation, and the warp is a smooth random displacement plus a ventricle enlargement
(atrophy) that grows with the lesion load. The T1 has its own head pose (the head moved
between the scans). The map is evaluated exactly on a coarse lattice of the output grid
and interpolated linearly in between (the warp is smooth at the 20 mm scale), then the
MNI-space images are sampled with ``scipy.ndimage.map_coordinates`` (order 1). 2D FLAIR
slices integrate a slice profile: the MNI-space images are first blurred across the slice
direction with a smoothed box as wide as the slice.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage as ndi
from scipy.special import ndtr

from wmh.io import NativeGrid, save_like
from wmh.synth.anatomy import Anatomy
from wmh.synth.pathology import (Contrast, Overlay, draw_load_ml, observer_two,
                                 place_hard_negatives, place_infarct, place_wmh)
from wmh.synth.profiles import AcquisitionProfile
from wmh.synth.randomised import (POSE_ROTATION_DEG, Randomisation, imperfect_strip_mask,
                                  place_randomised_wmh)

ANATOMY_CENTRE_MM = np.array([0.0, -18.0, 12.0])  # the head centre in MNI mm
FLAIR_CENTRE_MM = np.array([0.0, -18.0, 20.0])  # where operators centre the FLAIR slab
LATTICE_MM = 8.0  # spacing of the exactly evaluated coordinate lattice
WARP_CONTROL_MM = 16.0  # control-point spacing of the random smooth warp
WARP_AMPLITUDE_MM = 2.0  # standard deviation of the control-point displacements
VENTRICLE_SIGMA_MM = np.array([9.0, 28.0, 16.0])  # extent of the atrophy enlargement
OBSERVER1_THRESHOLD = 0.4  # WMH fraction a rater outlines in a FLAIR voxel
COORDINATE_STEP_MM = 1.0 / 64  # truth MNI coordinates are rounded to this (compresses)

# label codes on the MNI grid, sampled with nearest neighbour
CODE_LEFT, CODE_RIGHT, CODE_BRAIN, CODE_HARD, CODE_INFARCT = 1, 2, 4, 8, 16


@dataclasses.dataclass
class SubjectResult:
    """What one subject's generation produced (arrays in working RAS orientation)."""

    subject_id: str
    record: dict  # the subject's cohort.json entry
    flair: np.ndarray
    t1: Optional[np.ndarray]
    observer1: np.ndarray
    observer2: np.ndarray
    hard_negatives: np.ndarray
    ventricles: np.ndarray
    brainmask: np.ndarray
    mni_coordinates: np.ndarray
    flair_grid: NativeGrid
    t1_grid: Optional[NativeGrid]


# ------------------------------------------------------------------- geometry

def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    rx, ry, rz = np.deg2rad(np.asarray(angles_deg, dtype=float))
    x = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
    y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    z = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def pose_matrix(rotation_deg, scale, translation_mm, centre_mm=ANATOMY_CENTRE_MM) -> np.ndarray:
    """Anatomy (MNI-like mm) -> scanner world: scale and rotate about the head centre, then
    place the head centre at ``translation_mm``."""
    linear = rotation_matrix(rotation_deg) @ np.diag(scale)
    pose = np.eye(4)
    pose[:3, :3] = linear
    pose[:3, 3] = np.asarray(translation_mm) - linear @ centre_mm
    return pose


def working_grid_affine(spacing, shape, centre_world, tilt_deg: float = 0.0) -> np.ndarray:
    """RAS voxel -> world affine of a grid centred on ``centre_world``, slices tilted by
    ``tilt_deg`` about the left-right axis."""
    linear = rotation_matrix((tilt_deg, 0, 0)) @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre_world) - linear @ ((np.asarray(shape) - 1) / 2)
    return affine


def native_grid(working_affine: np.ndarray, working_shape: tuple, axcodes: str) -> NativeGrid:
    """The stored grid whose voxel axes follow ``axcodes`` (e.g. 'LPS') for a working
    (RAS) grid; :meth:`NativeGrid.to_native` then writes working arrays onto it."""
    ornt = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    affine = working_affine @ inv_ornt_aff(ornt, working_shape)
    shape = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        shape[int(target)] = working_shape[axis]
    header = nib.Nifti1Header()
    header.set_data_shape(tuple(shape))
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    return NativeGrid(tuple(shape), affine, header)


@dataclasses.dataclass(frozen=True)
class Warp:
    """Subject anatomy mm -> MNI mm: smooth random displacement + ventricle enlargement.

    Attributes:
        control_origin: MNI mm of control point (0, 0, 0).
        control: (3, nx, ny, nz) B-spline coefficients of the displacement (mm).
        enlargement: ventricle enlargement a in [0, 0.4): the ventricles grow by 1/(1-a)
            linearly at their centre.
        centres: (2, 3) left and right ventricle centroids (MNI mm).
    """

    control_origin: np.ndarray
    control: np.ndarray
    enlargement: float
    centres: np.ndarray

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(3, n) anatomy mm -> (3, n) MNI mm."""
        index = (points - self.control_origin[:, None]) / WARP_CONTROL_MM
        out = points.astype(np.float64).copy()
        for axis in range(3):
            out[axis] += ndi.map_coordinates(self.control[axis], index, order=3,
                                             mode="nearest", prefilter=False)
        for centre in self.centres:
            offset = points - centre[:, None]
            weight = np.exp(-0.5 * ((offset / VENTRICLE_SIGMA_MM[:, None]) ** 2).sum(axis=0))
            out -= self.enlargement * weight * offset
        return out


def random_warp(rng: np.random.Generator, anatomy: Anatomy, enlargement: float,
                amplitude_mm: float = WARP_AMPLITUDE_MM) -> Warp:
    lo = anatomy.affine[:3, 3] - 2 * WARP_CONTROL_MM
    extent = np.array(anatomy.shape) + 4 * WARP_CONTROL_MM
    count = tuple(int(np.ceil(e / WARP_CONTROL_MM)) + 1 for e in extent)
    raw = rng.standard_normal((3,) + count) * amplitude_mm
    control = np.stack([ndi.spline_filter(c, order=3) for c in raw])
    return Warp(lo, control, float(enlargement), anatomy.ventricle_centroids.astype(np.float64))


def mni_voxel_coordinates(grid_affine: np.ndarray, shape: tuple, world_to_anatomy: np.ndarray,
                          warp: Warp, mni_affine: np.ndarray) -> np.ndarray:
    """(3, *shape) float32 MNI voxel coordinates of every grid voxel: exact on a lattice
    of about LATTICE_MM, linear in between."""
    spacing = np.sqrt((grid_affine[:3, :3] ** 2).sum(axis=0))
    axes = []
    for n, s in zip(shape, spacing):
        step = max(int(round(LATTICE_MM / s)), 1)
        nodes = np.arange(0, n, step)
        if nodes[-1] != n - 1:
            nodes = np.append(nodes, n - 1)
        axes.append(nodes)
    lattice = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).astype(np.float64)
    world = grid_affine[:3, :3] @ lattice + grid_affine[:3, 3:4]
    anatomy = world_to_anatomy[:3, :3] @ world + world_to_anatomy[:3, 3:4]
    mni = warp(anatomy)
    voxel = np.linalg.solve(mni_affine[:3, :3], mni - mni_affine[:3, 3:4])
    coarse = voxel.reshape((3,) + tuple(len(a) for a in axes)).astype(np.float32)
    out = coarse
    for axis, nodes in enumerate(axes):
        out = _lerp_axis(out, nodes, shape[axis], axis + 1)
    return out


def _lerp_axis(values: np.ndarray, nodes: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` known at integer ``nodes`` along ``axis`` onto
    0..size-1 (deterministic, no BLAS)."""
    if len(nodes) == size:
        return values
    target = np.arange(size, dtype=np.float32)
    upper = np.clip(np.searchsorted(nodes, target, side="right"), 1, len(nodes) - 1)
    lower = upper - 1
    fraction = ((target - nodes[lower]) / (nodes[upper] - nodes[lower])).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = size
    fraction = fraction.reshape(shape)
    low = np.take(values, lower, axis=axis)
    high = np.take(values, upper, axis=axis)
    high -= low
    high *= fraction
    high += low
    return high


def slice_profile_kernel(width_voxels: float) -> np.ndarray:
    """A box ``width_voxels`` wide with Gaussian-smoothed edges (a 2D slice profile)."""
    sigma = max(0.15 * width_voxels, 0.3)
    half = int(np.ceil(width_voxels / 2 + 2.5 * sigma))
    t = np.arange(-half, half + 1, dtype=np.float64)
    kernel = ndtr((t + width_voxels / 2) / sigma) - ndtr((t - width_voxels / 2) / sigma)
    return (kernel / kernel.sum()).astype(np.float32)


# ------------------------------------------------------------------- contrast

@dataclasses.dataclass(frozen=True)
class TissueContrast:
    """Per-subject tissue intensities relative to white matter."""

    flair: dict  # class -> FLAIR level
    t1_gamma: float  # T1 = (template / template WM) ** gamma inside the brain
    t1: dict  # non-brain class -> T1 level
    lesion: Contrast


def draw_contrast(rng: np.random.Generator) -> TissueContrast:
    csf_flair = float(rng.uniform(0.12, 0.28))
    flair = {"wm": 1.0, "gm": float(rng.uniform(1.12, 1.28)), "csf": csf_flair,
             "bone": 0.05, "marrow": float(rng.uniform(0.3, 0.6)),
             "fat": float(rng.uniform(0.75, 1.05)), "skin": float(rng.uniform(0.45, 0.65))}
    gamma = float(rng.uniform(0.85, 1.2))
    t1_csf = float((0.30 / 0.86) ** gamma)
    t1 = {"csf": t1_csf, "bone": 0.05, "marrow": float(rng.uniform(0.8, 1.0)),
          "fat": float(rng.uniform(1.15, 1.45)), "skin": float(rng.uniform(0.5, 0.7))}
    lesion = Contrast(wmh_flair=float(rng.uniform(1.55, 2.0)),
                      wmh_t1=float(rng.uniform(0.78, 0.9)), csf_flair=csf_flair, csf_t1=t1_csf)
    return TissueContrast(flair, gamma, t1, lesion)


def randomised_contrast(rng: np.random.Generator, randomisation: Randomisation,
                        ) -> TissueContrast:
    """The randomised profile's FLAIR levels (drawn with the randomisation; the gamma is
    applied to the image later) and a T1 contrast drawn as by :func:`draw_contrast`."""
    t1_contrast = draw_contrast(rng)
    flair = dict(randomisation.flair)
    lesion = dataclasses.replace(t1_contrast.lesion, wmh_flair=randomisation.lesion_flair,
                                 csf_flair=flair["csf"])
    return TissueContrast(flair, t1_contrast.t1_gamma, t1_contrast.t1, lesion)


NECK_TOP_MM = -30.0  # MNI z where the neck starts to widen out of the head
NECK_RADII_MM = (62.0, 58.0)  # left-right and anterior-posterior half widths of the neck
NECK_CENTRE_Y_MM = -12.0  # MNI y of the neck's axis
NECK_FAT_MM = 6.0  # subcutaneous fat around the neck muscles


def with_neck(signal: np.ndarray, mni_mm: np.ndarray, muscle: float, fat: float,
              ) -> np.ndarray:
    """Adds neck tissue (muscle inside a rim of fat, 1 mm soft edges) below the skull
    where the image is otherwise empty (air).

    Args:
        signal: (X, Y, Z) noise-free image.
        mni_mm: (X, Y, Z, 3) MNI coordinate of every voxel (mm).
        muscle, fat: the two tissues' levels (white matter = 1).
    """
    x, y, z = (mni_mm[..., axis] for axis in range(3))
    onset = np.clip((NECK_TOP_MM - z) / 15.0, 0.0, 1.0)
    radius = np.sqrt((x / NECK_RADII_MM[0]) ** 2 + ((y - NECK_CENTRE_Y_MM) / NECK_RADII_MM[1]) ** 2)
    depth = (1.0 - radius) * min(NECK_RADII_MM)  # mm inside the outline (approximately)
    inside = np.clip(depth + 0.5, 0.0, 1.0)
    core = np.clip(depth - NECK_FAT_MM + 0.5, 0.0, 1.0)
    neck = (onset * (fat * inside + (muscle - fat) * core)).astype(np.float32)
    return np.where(signal < 0.02, np.maximum(signal, neck), signal).astype(np.float32)


def compose_mni_images(anatomy: Anatomy, overlay: Overlay, contrast: TissueContrast,
                       skull_stripped: bool, sulcal_widening: float = 1.0,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free FLAIR and T1 on the MNI grid (white matter = 1).

    ``sulcal_widening`` >= 1 multiplies the CSF fraction in the brain (atrophy widens the
    sulci; the template, an average of 152 brains, has them blurred and narrow).
    """
    head = {} if skull_stripped else anatomy.head
    csf = np.minimum(anatomy.csf * np.float32(sulcal_widening), 1)
    tissue_scale = (1 - csf) / np.maximum(1 - anatomy.csf, np.float32(1e-3))
    flair = (contrast.flair["gm"] * anatomy.gm + contrast.flair["wm"] * anatomy.wm) * tissue_scale
    if "deep_gm" in contrast.flair:  # basal ganglia and thalami at their own level
        flair += ((contrast.flair["deep_gm"] - contrast.flair["gm"]) * anatomy.gm
                  * anatomy.deep_grey * tissue_scale)
    flair += contrast.flair["csf"] * csf
    t1 = np.power(anatomy.t1 / np.float32(0.86), np.float32(contrast.t1_gamma))
    # the added CSF replaces tissue of the template's own mixture in each voxel
    gained = (csf - anatomy.csf) / np.maximum(1 - anatomy.csf, np.float32(1e-3))
    t1 += gained * (np.float32(contrast.t1["csf"]) - t1)
    for name, fraction in head.items():
        flair += contrast.flair[name] * fraction
        t1 += contrast.t1[name] * fraction
    f = overlay.fraction
    flair += f * (overlay.flair_level - flair)
    t1 += f * (overlay.t1_level - t1)
    return flair.astype(np.float32), t1.astype(np.float32)


def code_map(anatomy: Anatomy, overlay: Overlay) -> np.ndarray:
    code = anatomy.ventricles.copy()
    code[anatomy.brain] |= CODE_BRAIN
    code[overlay.hard_negative] |= CODE_HARD
    code[overlay.infarct] |= CODE_INFARCT
    return code


def bias_field(rng: np.random.Generator, shape: tuple, amplitude: float) -> np.ndarray:
    """A smooth multiplicative field exp(quadratic polynomial) over the grid, ~1 +- amplitude."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
            for i, n in enumerate(shape)]
    log_field = np.zeros(shape, np.float32)
    for i in range(3):
        log_field += np.float32(rng.normal(0, amplitude)) * axes[i]
        log_field += np.float32(rng.normal(0, amplitude / 2)) * (axes[i] ** 2 - 1 / 3)
        log_field += np.float32(rng.normal(0, amplitude / 2)) * axes[i] * axes[(i + 1) % 3]
    return np.exp(log_field)


def acquire(rng: np.random.Generator, signal: np.ndarray, gain: float, snr: float,
            bias_amplitude: float) -> np.ndarray:
    """Bias field, gain and Rician noise (magnitude of complex Gaussian noise)."""
    signal = signal * bias_field(rng, signal.shape, bias_amplitude)
    sigma = np.float32(1.0 / snr)
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary) * np.float32(gain)


def to_int16(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 32767).astype(np.int16)


# ------------------------------------------------------------------- the subject

def generate_subject(subject_id: str, seed: int, profile: AcquisitionProfile,
                     anatomy: Anatomy, flair_only: bool = False,
                     skull_stripped: bool = False,
                     randomisation: Optional[Randomisation] = None) -> SubjectResult:
    """Generates one subject's arrays (nothing written). Deterministic in ``seed``.

    With ``randomisation`` (the randomised profile) its draws replace the contrast, load,
    lesion placement, head scale, warp strength, atrophy, skull state, gamma, bias and
    noise of the default generator; ``profile`` is then its acquisition."""
    rng = np.random.default_rng(seed)
    overlay = Overlay.empty(anatomy.shape)
    if randomisation is None:
        contrast = draw_contrast(rng)
        load_ml = draw_load_ml(rng)
        wmh_summary = place_wmh(rng, anatomy, overlay, load_ml, contrast.lesion)
    else:
        contrast = randomised_contrast(rng, randomisation)
        load_ml = randomisation.load_ml
        skull_stripped = skull_stripped or randomisation.skull == "absent"
        wmh_summary = place_randomised_wmh(rng, anatomy, overlay, randomisation,
                                           contrast.lesion)
    negatives = place_hard_negatives(rng, anatomy, overlay, load_ml, contrast.lesion)
    infarct = place_infarct(rng, anatomy, overlay, contrast.lesion)

    # pose, T1 motion, warp (atrophy grows with the load, as in SVD cohorts)
    rotation = rng.uniform(-10, 10, size=3)
    if randomisation is not None:  # any head position, beside the slab's own tilt
        rotation *= POSE_ROTATION_DEG / 10
    head_scale = (float(np.clip(rng.normal(1.0, 0.05), 0.9, 1.1)) if randomisation is None
                  else randomisation.head_scale)
    scale = head_scale * rng.uniform(0.97, 1.03, size=3)
    translation = rng.uniform(-10, 10, size=3)
    flair_pose = pose_matrix(rotation, scale, translation)
    # the head moves rigidly in the scanner between the FLAIR and the T1
    head_world = flair_pose[:3, :3] @ ANATOMY_CENTRE_MM + flair_pose[:3, 3]
    motion = pose_matrix(rng.uniform(-3, 3, size=3), np.ones(3),
                         head_world + rng.uniform(-4, 4, size=3), centre_mm=head_world)
    t1_pose = motion @ flair_pose
    if randomisation is None:
        enlargement = float(np.clip(0.05 + 0.07 * np.log(load_ml / 2.0)
                                    + rng.normal(0, 0.04), 0.0, 0.33))
        warp = random_warp(rng, anatomy, enlargement)
        widening = 1.2 + 2.0 * enlargement
    else:
        enlargement = randomisation.atrophy
        warp = random_warp(rng, anatomy, enlargement, randomisation.warp_amplitude_mm)
        widening = randomisation.sulcal_widening

    flair_mni, t1_mni = compose_mni_images(anatomy, overlay, contrast, skull_stripped,
                                           sulcal_widening=widening)
    codes = code_map(anatomy, overlay)
    wmh_mni = overlay.wmh
    del overlay

    # --- FLAIR
    flair_affine = working_grid_affine(
        profile.flair_spacing, profile.flair_shape,
        flair_pose[:3, :3] @ (FLAIR_CENTRE_MM + [0.0, 0.0, profile.fov_shift_mm])
        + flair_pose[:3, 3] + rng.uniform(-5, 5, size=3), profile.oblique_degrees)
    flair_world_to_anatomy = np.linalg.inv(flair_pose)
    slice_axis = profile.slice_axis
    if not profile.three_d:
        normal = flair_affine[:3, slice_axis] / np.linalg.norm(flair_affine[:3, slice_axis])
        gradient = flair_pose[:3, :3].T @ normal  # slab normal in anatomy space (unnormalised)
        axis = int(np.argmax(np.abs(gradient)))
        width = profile.thickness_mm / abs(gradient[axis])
        kernel = slice_profile_kernel(width)
        flair_mni = ndi.convolve1d(flair_mni, kernel, axis=axis, mode="constant")
        wmh_mni = ndi.convolve1d(wmh_mni, kernel, axis=axis, mode="constant")
    coordinates = mni_voxel_coordinates(flair_affine, profile.flair_shape,
                                        flair_world_to_anatomy, warp, anatomy.affine)
    flair_signal = ndi.map_coordinates(flair_mni, coordinates, order=1, prefilter=False,
                                       output=np.float32)
    del flair_mni
    wmh_fraction = ndi.map_coordinates(wmh_mni, coordinates, order=1, prefilter=False,
                                       output=np.float32)
    del wmh_mni
    code = ndi.map_coordinates(codes, coordinates, order=0, prefilter=False, output=np.uint8)
    mni_mm = coordinates + anatomy.affine[:3, 3].astype(np.float32).reshape(3, 1, 1, 1)
    mni_mm = np.round(np.moveaxis(mni_mm, 0, -1) / COORDINATE_STEP_MM) * COORDINATE_STEP_MM
    if profile.neck and not skull_stripped:
        flair_signal = with_neck(flair_signal, mni_mm, muscle=0.45, fat=contrast.flair["fat"])
    del coordinates

    # fine tissue heterogeneity (a few per cent, ~1.5 mm grain, independent per slice)
    grain = tuple(0.0 if axis == slice_axis else 1.5 / profile.flair_spacing[axis]
                  for axis in range(3))
    texture = ndi.gaussian_filter(rng.standard_normal(flair_signal.shape, dtype=np.float32),
                                  grain)
    flair_signal *= 1 + np.float32(0.03 / max(float(texture.std()), 1e-6)) * texture
    flair_gain = float(rng.uniform(250, 700))
    if randomisation is None:
        snr = float(rng.uniform(*profile.snr))
        flair = acquire(rng, flair_signal, flair_gain, snr, bias_amplitude=0.12)
    else:
        snr = randomisation.snr
        np.power(np.maximum(flair_signal, 0), np.float32(randomisation.gamma), out=flair_signal)
        flair = acquire(rng, flair_signal, flair_gain, snr, randomisation.bias_amplitude)
    del flair_signal
    brainmask = (code & CODE_BRAIN) > 0
    if skull_stripped:
        flair *= brainmask
    elif randomisation is not None and randomisation.skull == "imperfect":
        flair *= imperfect_strip_mask(rng, brainmask, profile.flair_spacing,
                                      randomisation.strip_margin_mm)
    infarct_mask = (code & CODE_INFARCT) > 0
    observer1 = (wmh_fraction >= OBSERVER1_THRESHOLD) & ~infarct_mask
    observer2 = observer_two(rng, wmh_fraction, profile.flair_spacing,
                             OBSERVER1_THRESHOLD, slice_axis) & ~infarct_mask
    labels1 = observer1.astype(np.uint8) + 2 * infarct_mask.astype(np.uint8)
    labels2 = observer2.astype(np.uint8) + 2 * infarct_mask.astype(np.uint8)
    hard_negatives = ((code & CODE_HARD) > 0) & (labels1 == 0)
    ventricles = (code & 3).astype(np.uint8)

    # --- T1 (own head position, 1 mm isotropic)
    t1 = t1_grid = None
    t1_record = None
    if not flair_only:
        t1_shape = profile.t1_matrix
        t1_affine = working_grid_affine(
            np.full(3, profile.t1_mm), t1_shape,
            t1_pose[:3, :3] @ ANATOMY_CENTRE_MM + t1_pose[:3, 3] + rng.uniform(-4, 4, size=3))
        t1_coordinates = mni_voxel_coordinates(t1_affine, t1_shape, np.linalg.inv(t1_pose),
                                               warp, anatomy.affine)
        t1_signal = ndi.map_coordinates(t1_mni, t1_coordinates, order=1, prefilter=False,
                                        output=np.float32)
        if profile.neck and not skull_stripped:
            t1_mm = np.moveaxis(t1_coordinates, 0, -1) + anatomy.affine[:3, 3].astype(np.float32)
            t1_signal = with_neck(t1_signal, t1_mm, muscle=0.6, fat=contrast.t1["fat"])
        if skull_stripped:
            t1_brain = ndi.map_coordinates(codes, t1_coordinates, order=0, prefilter=False,
                                           output=np.uint8) & CODE_BRAIN
        del t1_coordinates
        t1 = acquire(rng, t1_signal, float(rng.uniform(300, 900)),
                     float(rng.uniform(18, 32)), bias_amplitude=0.1)
        if skull_stripped:
            t1 *= t1_brain > 0
        t1_grid = native_grid(t1_affine, t1_shape, profile.t1_orientation)
        t1_record = {"anatomy_from_t1_world": _rounded(np.linalg.inv(t1_pose)),
                     "flair_world_from_t1_world": _rounded(flair_pose @ np.linalg.inv(t1_pose))}

    voxel_ml = float(np.prod(profile.flair_spacing)) / 1000
    components = ndi.label(observer1, np.ones((3, 3, 3), bool))[1]
    record = {
        "id": subject_id, "seed": int(seed), "site": profile.site,
        "profile": profile.name,
        "lesion_volume_ml": round(float(observer1.sum()) * voxel_ml, 3),
        "lesion_count": int(components),
        "observer2_volume_ml": round(float(observer2.sum()) * voxel_ml, 3),
        "hard_negative_volume_ml": round(float(hard_negatives.sum()) * voxel_ml, 3),
        "infarct_volume_ml": round(float(infarct_mask.sum()) * voxel_ml, 3),
        "ventricle_volume_ml": round(float((ventricles > 0).sum()) * voxel_ml, 3),
        "wmh": wmh_summary, "hard_negatives": negatives, "other_pathology": infarct,
        "contrast": {"flair": {k: round(v, 4) for k, v in contrast.flair.items()},
                     "t1_gamma": round(contrast.t1_gamma, 4),
                     "wmh_flair": round(contrast.lesion.wmh_flair, 4),
                     "wmh_t1": round(contrast.lesion.wmh_t1, 4),
                     "flair_gain": round(flair_gain, 2), "flair_snr": round(snr, 2)},
        "transforms": {
            "anatomy_from_flair_world": _rounded(flair_world_to_anatomy),
            "head_pose": {"rotation_deg": _rounded(rotation), "scale": _rounded(scale),
                          "translation_mm": _rounded(translation)},
            "warp": {"control_spacing_mm": WARP_CONTROL_MM,
                     "control_amplitude_mm": WARP_AMPLITUDE_MM,
                     "ventricle_enlargement": round(enlargement, 4),
                     "ventricle_sigma_mm": VENTRICLE_SIGMA_MM.tolist()},
            "mni_coordinates": "truth/mni_coordinates.nii.gz",
            **(t1_record or {})},
    }
    return SubjectResult(
        subject_id=subject_id, record=record, flair=flair, t1=t1, observer1=labels1,
        observer2=labels2, hard_negatives=hard_negatives, ventricles=ventricles,
        brainmask=brainmask, mni_coordinates=mni_mm.astype(np.float32),
        flair_grid=native_grid(flair_affine, profile.flair_shape, profile.orientation),
        t1_grid=t1_grid)


def _rounded(array) -> list:
    return np.round(np.asarray(array, dtype=float), 6).tolist()


def write_subject(result: SubjectResult, folder: Path) -> dict:
    """Writes the challenge files and the truth maps (each atomically); returns the
    relative file names."""
    folder = Path(folder)
    grid = result.flair_grid
    files = {
        "flair": save_like(to_int16(result.flair), grid, folder / "orig" / "FLAIR.nii.gz",
                           np.int16),
        "wmh": save_like(result.observer1, grid, folder / "wmh.nii.gz", np.uint8),
        "wmh_observer2": save_like(result.observer2, grid, folder / "wmh_observer2.nii.gz",
                                   np.uint8),
        "brainmask": save_like(result.brainmask, grid, folder / "truth" / "brainmask.nii.gz",
                               np.uint8),
        "ventricles": save_like(result.ventricles, grid, folder / "truth" / "ventricles.nii.gz",
                                np.uint8),
        "hard_negatives": save_like(result.hard_negatives, grid,
                                    folder / "truth" / "hard_negatives.nii.gz", np.uint8),
        "mni_coordinates": save_like(result.mni_coordinates, grid,
                                     folder / "truth" / "mni_coordinates.nii.gz", np.float32),
    }
    if result.t1 is not None:
        files["t1"] = save_like(to_int16(result.t1), result.t1_grid, folder / "orig" / "T1.nii.gz",
                                np.int16)
    return {name: str(path.relative_to(folder)) for name, path in files.items()}
