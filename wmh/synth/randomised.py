"""The randomised profile: domain-randomised synthetic FLAIR (SynthSeg-style) for training a
model that segments real scans of any protocol.

Per subject a seeded RNG draws a :class:`Randomisation` (:func:`draw_randomisation`, no
rendering): the acquisition (2D or 3D; axial, coronal or sagittal slices; in-plane
0.4-1.3 mm; slices 1-8 mm with gaps; any stored orientation; obliquity: slab tilt up to
25 degrees and head rotation up to 20 degrees about each axis; field of view with or
without the neck; matrix and voxel count capped), the contrast (FLAIR-plausible levels of
WM, GM, deep GM, CSF, lesion, skull, marrow, scalp fat and skin, then a gamma), the
artefacts (bias field strength, Rician SNR), the anatomy (head scale, warp strength,
ventricle enlargement and sulcal widening) and the lesions (a heavy-tailed load of 0-150 mL
split between SVD-like confluent caps and bands, punctate deep lesions and MS-like ovoid
periventricular, juxtacortical and infratentorial lesions; since version 8, 15 % of
subjects get an extra 30-120 mL of confluent lesions on top, so that training sees
confluent components of tens of mL).

Lesions are placed by :func:`place_randomised_wmh` from distances to the ventricles and to
the cortex and white-matter depth around random seeds; it never reads the WMH prior
(``Anatomy.prior`` or location feature 8), so that "location helps" is not true by
construction on this data.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import ndimage as ndi

from wmh.synth.anatomy import Anatomy
from wmh.synth.pathology import (Contrast, Overlay, _ball_box, _blob, _choose_voxels,
                                 smooth_noise)
from wmh.synth.profiles import RANDOMISED, AcquisitionProfile, profile_as_dict

RANDOMISED_SYNTH_VERSION = 8  # the generator version of cohorts of this profile
MAX_MATRIX = 512  # in-plane matrix cap (a 0.4 mm grid then spans 205 mm)
MAX_VOXELS = 12_000_000  # FLAIR voxel cap: bounds memory (~1 GB peak) and time

# Ranges drawn from (uniform unless noted); the tests check draws stay inside them.
INPLANE_2D_MM = (0.4, 1.3)
INPLANE_3D_MM = (0.8, 1.3)
THICKNESS_2D_MM = (2.0, 8.0)
THICKNESS_3D_MM = (1.0, 1.5)
GAP_FRACTION = (0.0, 0.3)  # of the thickness, in 60 % of 2D acquisitions
OBLIQUE_DEGREES = (-25.0, 25.0)
FOV_MM = (200.0, 260.0)
COVERAGE_MM = {"axial": (120.0, 190.0), "coronal": (150.0, 210.0), "sagittal": (120.0, 170.0)}
NECK_SHIFT_MM = (15.0, 45.0)  # the field of view moved towards the neck
PLANES = ("axial", "coronal", "sagittal")
PLANE_P = (0.6, 0.2, 0.2)
THREE_D_P = 0.3
NECK_P = 0.35
SKULL_STATES = ("present", "absent", "imperfect")
SKULL_P = (0.45, 0.35, 0.2)
STRIP_MARGIN_MM = (0.0, 6.0)
FLAIR_LEVELS = {"gm": (1.0, 1.45), "deep_gm": (0.85, 1.3), "csf": (0.03, 0.35),
                "bone": (0.01, 0.12), "marrow": (0.2, 0.9), "fat": (0.6, 1.5),
                "skin": (0.3, 0.9)}
GAMMA = (0.7, 1.4)
# Lesion / WM after the gamma. Version 6 draws the excess (contrast - 1) log-uniform, so
# 58 % of subjects lie below x1.5, where real lesions are (x1.2-1.7 of WM on the real
# development cases); version 5 drew the contrast itself log-uniform (36 % below x1.5), and
# its model missed most lesions below x1.5, synthetic and real (BENCHMARKS.md, issue 17).
LESION_CONTRAST = (1.1, 2.6)
# A lesion voxel's excess over WM, as a share of the subject's nominal excess (version 5):
# every lesion voxel stays brighter than WM however subtle the contrast. Version 4 scaled
# the level itself (x 0.88-1.1), so at contrast 1.1 part of every lesion was as dark as
# WM or darker yet labelled WMH: labels no rater would draw (BENCHMARKS.md, issue 17).
LESION_EXCESS = (0.75, 1.15)
BIAS_AMPLITUDE = (0.0, 0.4)
SNR = (5.0, 60.0)  # log-uniform
HEAD_SCALE = (0.85, 1.15)
POSE_ROTATION_DEG = 20.0  # head rotation about each axis, up to (default profiles: 10)
WARP_AMPLITUDE_MM = (1.0, 4.5)
ATROPHY = (0.0, 0.38)  # ventricle enlargement (see subject.Warp)
SULCAL_WIDENING = (1.0, 3.0)
LOAD_ZERO_P = 0.07
LOAD_MEDIAN_ML = 5.0
LOAD_LOG_SD = 1.4
LOAD_RANGE_ML = (0.0, 150.0)
# Version 8: on top of the lognormal load (unchanged), a share of subjects get an extra
# heavy load of confluent periventricular lesions only. Version 6 had no lesion component
# above 39 mL in 80 subjects, and its model missed a real 46 mL confluent lesion almost
# entirely (BENCHMARKS.md, "Why patient19 is missed"). Version 7 (a quarter of subjects
# heavy, MS patterns with confluent shares, reverted) loosened the network on light loads;
# its probe with the heavy share confluent-only cost the light cases less
# (BENCHMARKS.md, "Heavy loads in training from scratch").
HEAVY_CONFLUENT_P = 0.15
HEAVY_CONFLUENT_ML = (30.0, 120.0)  # log-uniform
PATTERNS = ("svd", "ms", "mixed")


@dataclasses.dataclass(frozen=True)
class Randomisation:
    """Everything drawn for one randomised subject (see the module docstring).

    Attributes:
        acquisition: the FLAIR grid (with ``name`` 'randomised').
        flair: tissue -> FLAIR level relative to white matter, before the gamma.
        gamma: the image is raised to this power (white matter stays 1).
        lesion_contrast: lesion / white matter after the gamma.
        bias_amplitude: standard deviation of the log bias field's coefficients.
        snr: white-matter signal to noise ratio (Rician).
        skull: 'present', 'absent' (stripped) or 'imperfect' (stripped with a margin).
        strip_margin_mm: the imperfect stripping's mean margin outside the brain.
        head_scale: isotropic head scale (each axis jitters a further 3 %).
        warp_amplitude_mm: standard deviation of the smooth warp's control points.
        atrophy: ventricle enlargement.
        sulcal_widening: factor on the sulcal CSF fraction.
        load_ml: WMH load to place.
        pattern: 'svd', 'ms' or 'mixed'.
        shares: lesion kind -> share of the load.
        heavy_confluent_ml: extra confluent load on top of ``load_ml`` (0 for most).
    """

    acquisition: AcquisitionProfile
    flair: dict
    gamma: float
    lesion_contrast: float
    bias_amplitude: float
    snr: float
    skull: str
    strip_margin_mm: float
    head_scale: float
    warp_amplitude_mm: float
    atrophy: float
    sulcal_widening: float
    load_ml: float
    pattern: str
    shares: dict
    capped: bool = False
    heavy_confluent_ml: float = 0.0

    def as_dict(self) -> dict:
        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "acquisition"}
        return _rounded(values)

    @property
    def lesion_flair(self) -> float:
        """The lesion's FLAIR level before the gamma."""
        return float(self.lesion_contrast ** (1.0 / self.gamma))


def generator_ranges() -> dict:
    """Every range and probability the sampler draws from (for cohort.json)."""
    names = ("INPLANE_2D_MM", "INPLANE_3D_MM", "THICKNESS_2D_MM", "THICKNESS_3D_MM",
             "GAP_FRACTION", "OBLIQUE_DEGREES", "FOV_MM", "COVERAGE_MM", "NECK_SHIFT_MM",
             "PLANE_P", "THREE_D_P", "NECK_P", "SKULL_P", "STRIP_MARGIN_MM", "FLAIR_LEVELS",
             "GAMMA", "LESION_CONTRAST", "LESION_EXCESS", "BIAS_AMPLITUDE", "SNR", "HEAD_SCALE",
             "POSE_ROTATION_DEG", "WARP_AMPLITUDE_MM", "ATROPHY", "SULCAL_WIDENING",
             "LOAD_ZERO_P", "LOAD_MEDIAN_ML", "LOAD_LOG_SD", "LOAD_RANGE_ML",
             "HEAVY_CONFLUENT_P", "HEAVY_CONFLUENT_ML", "MAX_MATRIX", "MAX_VOXELS")
    values = globals()
    return {name.lower(): (list(values[name]) if isinstance(values[name], tuple)
                           else values[name]) for name in names}


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 4)
    return value


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw_load_ml(rng: np.random.Generator) -> float:
    """A WMH load in 0-150 mL: none with probability LOAD_ZERO_P, else a lognormal (median
    5 mL, heavy right tail) clipped to the range."""
    if rng.random() < LOAD_ZERO_P:
        return 0.0
    load = LOAD_MEDIAN_ML * math.exp(LOAD_LOG_SD * rng.standard_normal())
    return float(np.clip(load, *LOAD_RANGE_ML))


def random_axcodes(rng: np.random.Generator) -> str:
    """Any of the 48 stored orientations (axis order and direction)."""
    order = list(itertools.permutations(range(3)))[int(rng.integers(6))]
    pairs = ("LR", "PA", "IS")
    return "".join(pairs[axis][int(rng.integers(2))] for axis in order)


def draw_acquisition(rng: np.random.Generator, max_voxels: int = MAX_VOXELS,
                     ) -> tuple[AcquisitionProfile, bool]:
    """A FLAIR protocol; returns it and whether the voxel cap coarsened it."""
    three_d = bool(rng.random() < THREE_D_P)
    plane = PLANES[int(rng.choice(3, p=PLANE_P))]
    if three_d:
        inplane = float(rng.uniform(*INPLANE_3D_MM))
        spacing = [inplane, inplane]
        thickness = float(rng.uniform(*THICKNESS_3D_MM))
        gap = 0.0
    else:
        spacing = [float(rng.uniform(*INPLANE_2D_MM))] * 2
        spacing[1] = float(np.clip(spacing[0] * rng.uniform(0.9, 1.1), *INPLANE_2D_MM))
        thickness = float(rng.uniform(*THICKNESS_2D_MM))
        gap = float(rng.uniform(*GAP_FRACTION)) * thickness if rng.random() < 0.6 else 0.0
    fov = rng.uniform(*FOV_MM, size=2)
    coverage = float(rng.uniform(*COVERAGE_MM[plane]))
    neck = bool(rng.random() < NECK_P)
    shift = -float(rng.uniform(*NECK_SHIFT_MM)) if neck else 0.0
    if neck and plane == "axial":
        coverage -= 2 * shift  # the slab reaches down to the neck and still holds the brain
    orientation = random_axcodes(rng)
    oblique = float(rng.uniform(*OBLIQUE_DEGREES))

    def grid(inplane_mm):
        matrix = [min(int(math.ceil(f / s / 2) * 2), MAX_MATRIX) for f, s in zip(fov, inplane_mm)]
        return matrix, int(math.ceil(coverage / (thickness + gap)))

    matrix, slices = grid(spacing)
    capped = False
    limit = INPLANE_3D_MM[1] if three_d else INPLANE_2D_MM[1]
    while matrix[0] * matrix[1] * slices > max_voxels:
        capped = True
        if max(spacing) < limit:  # coarser in plane first, then fewer slices
            spacing = [min(s * 1.05, limit) for s in spacing]
            matrix, slices = grid(spacing)
        elif slices > 1:
            slices = max(max_voxels // (matrix[0] * matrix[1]), 1)
        else:
            break  # one slice at the coarsest spacing: nothing left to give
    profile = AcquisitionProfile(
        RANDOMISED, inplane_mm=tuple(round(s, 4) for s in spacing), matrix=tuple(matrix),
        thickness_mm=round(thickness, 3), gap_mm=round(gap, 3), slices=int(slices),
        orientation=orientation, oblique_degrees=round(oblique, 2), three_d=three_d,
        snr=SNR, plane=plane, neck=neck, fov_shift_mm=round(shift, 2))
    return profile, capped


def draw_randomisation(rng: np.random.Generator, max_voxels: int = MAX_VOXELS,
                       ) -> Randomisation:
    """Draws one subject's randomisation (cheap: nothing is rendered)."""
    acquisition, capped = draw_acquisition(rng, max_voxels)
    flair = {"wm": 1.0, **{name: float(rng.uniform(*limits))
                           for name, limits in FLAIR_LEVELS.items()}}
    gamma = float(rng.uniform(*GAMMA))
    lesion_contrast = 1.0 + _log_uniform(rng, LESION_CONTRAST[0] - 1, LESION_CONTRAST[1] - 1)
    skull = SKULL_STATES[int(rng.choice(3, p=SKULL_P))]
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    values = dict(
        acquisition=acquisition, flair=flair, gamma=gamma, lesion_contrast=lesion_contrast,
        bias_amplitude=float(rng.uniform(*BIAS_AMPLITUDE)), snr=_log_uniform(rng, *SNR),
        skull=skull, strip_margin_mm=float(rng.uniform(*STRIP_MARGIN_MM)),
        head_scale=float(rng.uniform(*HEAD_SCALE)),
        warp_amplitude_mm=float(rng.uniform(*WARP_AMPLITUDE_MM)),
        atrophy=float(rng.uniform(*ATROPHY)),
        sulcal_widening=float(rng.uniform(*SULCAL_WIDENING)),
        load_ml=draw_load_ml(rng), pattern=pattern, shares=_shares(rng, pattern),
        capped=capped)
    # drawn last, so that every other draw is version 6's
    heavy = _log_uniform(rng, *HEAVY_CONFLUENT_ML) if rng.random() < HEAVY_CONFLUENT_P else 0.0
    return Randomisation(**values, heavy_confluent_ml=heavy)


def _shares(rng: np.random.Generator, pattern: str) -> dict:
    """Share of the load per lesion kind."""
    svd = {"confluent": rng.uniform(0.6, 0.95), "punctate": rng.uniform(0.05, 0.3)}
    ms = {"ovoid": rng.uniform(0.5, 0.8), "juxtacortical": rng.uniform(0.08, 0.25),
          "infratentorial": rng.uniform(0.03, 0.15), "punctate": rng.uniform(0.02, 0.1)}
    if pattern == "svd":
        weights = {**{k: 0.0 for k in ms}, **svd}
    elif pattern == "ms":
        weights = {"confluent": 0.0, **ms}
    else:
        weights = {k: svd.get(k, 0.0) + ms.get(k, 0.0) for k in (*svd, *ms)}
    total = sum(weights.values())
    return {k: float(v / total) for k, v in weights.items()}


# ------------------------------------------------------------------ lesion placement

def infratentorial_region(anatomy: Anatomy) -> np.ndarray:
    """Brainstem and cerebellar white matter."""
    z = anatomy.axes_mm()[2]
    return anatomy.brain & (anatomy.wm > 0.5) & (z < -15) & ~anatomy.lesion_region


def juxtacortical_region(anatomy: Anatomy) -> np.ndarray:
    """White matter touching the cortex (within 3 mm), supratentorial."""
    z = anatomy.axes_mm()[2]
    return (anatomy.brain & (anatomy.wm > 0.4) & (anatomy.d_cortex <= 3) & ~anatomy.cortex
            & (z > -12) & (anatomy.ventricles == 0))


def lesion_level(contrast: Contrast, excess):
    """Lesion FLAIR level before the gamma: ``1 + (wmh_flair - 1) * excess`` (scalar or
    array), above white matter's 1 for any positive ``excess``."""
    return 1.0 + (contrast.wmh_flair - 1.0) * np.maximum(excess, 0.05)


def _paint(overlay: Overlay, box, soft, level, t1_level) -> float:
    overlay.paint(box, soft, level, t1_level)
    np.maximum(overlay.wmh[box], soft, out=overlay.wmh[box])
    return float(soft.sum()) / 1000


def _ovoid(centre: np.ndarray, direction: np.ndarray, long_mm: float, short_mm: float,
           shape: tuple) -> tuple[tuple, np.ndarray]:
    """An ellipsoid (Dawson finger) with its long axis along ``direction``."""
    box, offsets = _ball_box(centre, long_mm, shape)
    along = np.tensordot(direction.astype(np.float32), offsets, axes=1)
    across = np.maximum((offsets ** 2).sum(axis=0) - along ** 2, 0)
    distance = np.sqrt((along / long_mm) ** 2 + across / short_mm ** 2)
    return box, np.clip((1 - distance) * short_mm + 0.5, 0, 1).astype(np.float32)


def _confluent(rng, anatomy: Anatomy, overlay: Overlay, target_ml: float,
               contrast: Contrast) -> float:
    """Caps and bands: the top voxels of a smooth field grown from random seeds next to
    the ventricles (more seeds, wider kernels with the load), plus smooth noise."""
    region = anatomy.lesion_region
    index = np.argwhere(region)
    lo = np.maximum(index.min(axis=0) - 2, 0)
    hi = np.minimum(index.max(axis=0) + 3, region.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = region[box]
    d_vent = anatomy.d_ventricles[box]
    # seeds: next to the ventricle wall, favouring its anterior and posterior ends (caps)
    y = anatomy.axes_mm()[1][:, box[1], :]
    centre_y = float(anatomy.ventricle_centroids[:, 1].mean())
    weights = np.exp(-d_vent / 2.5) * (1 + 3 * ((y - centre_y) / 40.0) ** 2) * (d_vent < 8)
    seeds = _choose_voxels(rng, sub, int(3 + rng.poisson(2 + 2.5 * math.sqrt(target_ml))),
                           weights=weights)
    sigma = float(np.clip(2.5 + 1.2 * math.sqrt(target_ml), 3.0, 14.0))
    field = np.zeros(sub.shape, np.float32)
    field[tuple(seeds.T)] = rng.uniform(0.5, 1.5, size=len(seeds))
    field = ndi.gaussian_filter(field, sigma * np.array(rng.uniform(0.6, 1.4, size=3)))
    coarse = tuple(int(np.ceil(s / 2)) + 1 for s in sub.shape)
    noise = ndi.zoom(smooth_noise(rng, coarse, 1.5), 2, order=1, grid_mode=False)
    noise = noise[tuple(slice(0, s) for s in sub.shape)]
    inside = np.flatnonzero(sub)
    score = np.log(field.ravel()[inside] + 1e-6) + 0.8 * noise.ravel()[inside]
    count = int(min(target_ml * 1000, inside.size))
    lesion = np.zeros(sub.shape, bool)
    if count > 0:
        lesion.flat[inside[np.argpartition(score, -count)[-count:]]] = True
    soft = np.clip(ndi.gaussian_filter(lesion.astype(np.float32), 0.6) * 1.15, 0, 1)
    soft *= sub | (anatomy.wm[box] > 0.2)
    core = ndi.gaussian_filter(lesion.astype(np.float32), 2.0)
    level = lesion_level(contrast, LESION_EXCESS[0] + 0.3 * core
                         + 0.06 * np.clip(noise, -2.5, 2.5))
    return _paint(overlay, box, soft, level.astype(np.float32), contrast.wmh_t1)


def _scattered(rng, anatomy: Anatomy, overlay: Overlay, target_ml: float, contrast: Contrast,
               sites: np.ndarray, kind: str) -> tuple[float, int]:
    """Small lesions of one kind until ``target_ml`` is placed (at most 300)."""
    placed, count = 0.0, 0
    if target_ml <= 0 or not sites.any():
        return placed, count
    gradient = np.gradient(anatomy.d_ventricles) if kind == "ovoid" else None
    while placed < target_ml and count < 300:
        centre = _choose_voxels(rng, sites, 1)[0]
        level = lesion_level(contrast, rng.uniform(*LESION_EXCESS))
        if kind == "ovoid":
            direction = np.array([g[tuple(centre)] for g in gradient], np.float32)
            norm = float(np.linalg.norm(direction))
            direction = direction / norm if norm > 0 else np.array([0, 0, 1], np.float32)
            box, soft = _ovoid(centre.astype(np.float32), direction,
                               float(rng.uniform(3.0, 9.0)), float(rng.uniform(1.5, 3.5)),
                               anatomy.shape)
        else:
            radius = (float(np.clip(np.exp(rng.normal(np.log(1.9), 0.35)), 1.0, 4.5))
                      if kind == "punctate" else float(rng.uniform(1.5, 4.0)))
            box, soft, _ = _blob(rng, centre.astype(np.float32), radius, anatomy.shape)
        soft *= anatomy.brain[box] & (anatomy.wm[box] > 0.2)
        placed += _paint(overlay, box, soft, level, contrast.wmh_t1)
        count += 1
    return placed, count


def place_randomised_wmh(rng: np.random.Generator, anatomy: Anatomy, overlay: Overlay,
                         randomisation: Randomisation, contrast: Contrast) -> dict:
    """Places the load by kind (see :func:`_shares`); never reads ``anatomy.prior``.
    Returns a summary for cohort.json."""
    load = randomisation.load_ml
    heavy = randomisation.heavy_confluent_ml
    summary = {"target_ml": round(load + heavy, 3), "pattern": randomisation.pattern}
    if load > 0:
        _place_load(rng, anatomy, overlay, randomisation, contrast, summary)
    if heavy > 0:  # after the rest, which therefore lies where version 6 put it
        summary["heavy_confluent_ml"] = round(
            _confluent(rng, anatomy, overlay, heavy, contrast), 3)
    return summary


def _place_load(rng, anatomy: Anatomy, overlay: Overlay, randomisation: Randomisation,
                contrast: Contrast, summary: dict) -> None:
    """Places ``randomisation.load_ml`` by kind; adds the placed volumes to ``summary``."""
    load = randomisation.load_ml
    shares = randomisation.shares
    periventricular = anatomy.lesion_region & (anatomy.d_ventricles >= 1) & (
        anatomy.d_ventricles <= 10)
    sites = {"punctate": anatomy.deep_region, "ovoid": periventricular,
             "juxtacortical": juxtacortical_region(anatomy),
             "infratentorial": infratentorial_region(anatomy)}
    for kind, mask in sites.items():
        if shares.get(kind, 0) > 0:
            placed, count = _scattered(rng, anatomy, overlay, shares[kind] * load, contrast,
                                       mask, kind)
            summary[f"{kind}_ml"], summary[f"{kind}_lesions"] = round(placed, 3), count
    if shares.get("confluent", 0) > 0:
        summary["confluent_ml"] = round(
            _confluent(rng, anatomy, overlay, shares["confluent"] * load, contrast), 3)


# ------------------------------------------------------------------- imperfect stripping

def imperfect_strip_mask(rng: np.random.Generator, brainmask: np.ndarray, spacing,
                         margin_mm: float) -> np.ndarray:
    """A skull-stripping mask that leaves a margin of 0 to ~2x ``margin_mm`` of
    non-brain tissue (dura, skull, scalp), varying smoothly around the head."""
    outside_mm = ndi.distance_transform_edt(~brainmask, sampling=spacing)
    coarse = tuple(max(int(n * s / 8.0), 2) for n, s in zip(brainmask.shape, spacing))
    noise = smooth_noise(rng, coarse, 1.0)
    noise = ndi.zoom(noise, [n / c for n, c in zip(brainmask.shape, coarse)], order=1)
    noise = noise[tuple(slice(0, n) for n in brainmask.shape)]
    limit = np.clip(margin_mm * (1 + 0.8 * noise), 0, None)
    return brainmask | (outside_mm <= limit)


# ------------------------------------------------------------------- coverage

COVERAGE_BINS = {
    "inplane_mm": [0.4, 0.6, 0.8, 1.0, 1.2, 1.31],
    "thickness_mm": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.01],
    "gap_mm": [0.0, 0.01, 0.5, 1.0, 1.5, 2.0, 2.41],
    "snr": [5.0, 10.0, 20.0, 30.0, 45.0, 60.01],
    "lesion_contrast": [1.1, 1.3, 1.5, 1.8, 2.2, 2.61],
    "gamma": [0.7, 0.85, 1.0, 1.15, 1.3, 1.41],
    "bias_amplitude": [0.0, 0.1, 0.2, 0.3, 0.41],
    "load_ml": [0.0, 0.01, 1.0, 5.0, 15.0, 30.0, 60.0, 100.0, 150.01],
    "heavy_confluent_ml": [0.0, 0.01, 30.0, 60.0, 90.0, 120.01],
    "lesion_volume_ml": [0.0, 0.01, 1.0, 5.0, 15.0, 30.0, 60.0, 100.0, 200.0],
    "head_scale": [0.85, 0.95, 1.05, 1.151],
    "atrophy": [0.0, 0.1, 0.2, 0.3, 0.381],
}


def coverage_row(acquisition: dict, randomisation: dict, lesion_volume_ml=None) -> dict:
    """One subject's spanned quantities from its acquisition and randomisation dicts (as
    recorded in cohort.json or from :meth:`Randomisation.as_dict`)."""
    row = {"inplane_mm": float(min(acquisition["inplane_mm"])),
           "thickness_mm": float(acquisition["thickness_mm"]),
           "gap_mm": float(acquisition["gap_mm"]),
           "plane": acquisition.get("plane", "axial"),
           "three_d": bool(acquisition["three_d"]),
           "neck": bool(acquisition.get("neck", False)),
           "orientation": acquisition["orientation"],
           "oblique_degrees": float(acquisition["oblique_degrees"]),
           **{key: randomisation[key] for key in (
               "snr", "lesion_contrast", "gamma", "bias_amplitude", "load_ml", "skull",
               "pattern", "head_scale", "atrophy")},
           "heavy_confluent_ml": float(randomisation.get("heavy_confluent_ml", 0.0))}
    if lesion_volume_ml is not None:
        row["lesion_volume_ml"] = float(lesion_volume_ml)
    return row


def coverage(rows: list[dict]) -> dict:
    """What a set of subjects spans: min/median/max and a histogram of each number, and the
    share of each category (plane, 2D/3D, skull, neck, pattern, orientations)."""
    summary: dict = {"subjects": len(rows)}
    for key, bins in COVERAGE_BINS.items():
        values = np.array([row[key] for row in rows if key in row], dtype=float)
        if values.size == 0:
            continue
        counts = np.histogram(np.clip(values, bins[0], bins[-1] - 1e-9), bins=bins)[0]
        summary[key] = {"min": round(float(values.min()), 3),
                        "median": round(float(np.median(values)), 3),
                        "max": round(float(values.max()), 3),
                        "histogram": {"edges": bins, "counts": counts.tolist()}}
    for key in ("plane", "skull", "pattern"):
        values = [row[key] for row in rows]
        summary[key] = {value: round(values.count(value) / len(values), 3)
                        for value in sorted(set(values))}
    summary["three_d_fraction"] = round(float(np.mean([r["three_d"] for r in rows])), 3)
    summary["neck_fraction"] = round(float(np.mean([r["neck"] for r in rows])), 3)
    summary["distinct_orientations"] = len({r["orientation"] for r in rows})
    oblique = np.abs([r["oblique_degrees"] for r in rows])
    summary["oblique_degrees_abs"] = {"median": round(float(np.median(oblique)), 2),
                                      "max": round(float(oblique.max()), 2)}
    return summary


def sampler_coverage(draws: int, seed: int = 0) -> dict:
    """:func:`coverage` of ``draws`` randomisations (nothing rendered)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        r = draw_randomisation(rng)
        rows.append(coverage_row(profile_as_dict(r.acquisition), r.as_dict()))
    return coverage(rows)
