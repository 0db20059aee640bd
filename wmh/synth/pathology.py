"""Lesions and their look-alikes, placed in MNI space on the reference anatomy.

Everything here works on the :class:`~wmh.synth.anatomy.Anatomy` grid (1 mm MNI). What a
lesion does to the images is kept as an *overlay*: a partial-volume fraction and the
target FLAIR and T1 intensities (relative to white matter) of the lesion tissue; the
subject module blends the overlay into the healthy tissue. Labels are kept separately:

* WMH (label 1): periventricular caps and rims drawn by thresholding the explicit prior
  perturbed by smooth noise (confluent bands in heavy cases), plus punctate deep lesions;
* hard negatives (label 0, look like WMH up close): cortical/juxtacortical spots, the
  septum pellucidum / fornix, gliosis rims around lacunes (CSF-like holes), and a
  bilateral corticospinal-tract hyperintensity;
* a territorial infarct (label 2, other pathology): CSF-like core with a gliotic rim.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

from wmh.synth.anatomy import Anatomy

LOAD_MEDIAN_ML = 5.0  # median WMH load of the lognormal
LOAD_LOG_SD = 1.15  # heavy tail: 5th-95th percentile about 0.75 to 33 mL
LOAD_RANGE_ML = (0.5, 80.0)
INFARCT_PROBABILITY = 0.15  # territorial infarcts in about one SVD patient in seven


@dataclasses.dataclass
class Overlay:
    """Lesion tissue on the anatomy grid.

    Attributes:
        fraction: partial-volume fraction of lesion tissue in each voxel, [0, 1].
        flair_level: FLAIR intensity of that tissue relative to white matter.
        t1_level: T1 intensity of that tissue relative to white matter.
        wmh: WMH fraction (what observers label), [0, 1].
        hard_negative: where a WMH look-alike was placed.
        infarct: the territorial infarct (label 2).
    """

    fraction: np.ndarray
    flair_level: np.ndarray
    t1_level: np.ndarray
    wmh: np.ndarray
    hard_negative: np.ndarray
    infarct: np.ndarray

    @classmethod
    def empty(cls, shape: tuple) -> "Overlay":
        return cls(np.zeros(shape, np.float32), np.ones(shape, np.float32),
                   np.ones(shape, np.float32), np.zeros(shape, np.float32),
                   np.zeros(shape, bool), np.zeros(shape, bool))

    def paint(self, box: tuple, soft: np.ndarray, flair_level, t1_level) -> np.ndarray:
        """Lays lesion tissue with fraction ``soft`` into ``box`` where it exceeds what is
        there; levels are scalars or arrays shaped like ``soft``. Returns the voxels
        (within the box) where it won."""
        current = self.fraction[box]
        wins = soft > current
        current[wins] = soft[wins]
        for target, level in ((self.flair_level, flair_level), (self.t1_level, t1_level)):
            view = target[box]
            view[wins] = level[wins] if np.ndim(level) else level
        return wins


@dataclasses.dataclass(frozen=True)
class Contrast:
    """Per-subject lesion contrasts, relative to white matter (FLAIR, T1)."""

    wmh_flair: float  # WMH FLAIR level, e.g. 1.7 = 70 % brighter than WM
    wmh_t1: float  # WMH T1 level (mildly dark)
    csf_flair: float  # suppressed CSF (lacune and infarct cores)
    csf_t1: float


def draw_load_ml(rng: np.random.Generator) -> float:
    """Per-subject WMH load from a clipped lognormal (heavy right tail)."""
    load = LOAD_MEDIAN_ML * np.exp(LOAD_LOG_SD * rng.standard_normal())
    return float(np.clip(load, *LOAD_RANGE_ML))


def smooth_noise(rng: np.random.Generator, shape: tuple, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation (float32)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _ball_box(centre: np.ndarray, radius: float, shape: tuple) -> tuple[tuple, np.ndarray]:
    """A box of half-size ``radius`` + 2 around ``centre`` (voxels), clipped to the grid,
    and the (3, ...) offsets of its voxels from the centre."""
    half = int(np.ceil(radius)) + 2
    lo = np.maximum(np.round(centre).astype(int) - half, 0)
    hi = np.minimum(np.round(centre).astype(int) + half + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    offsets = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) - c
                                     for a, b, c in zip(lo, hi, centre)], indexing="ij"))
    return box, offsets


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, shape: tuple,
          roughness: float = 0.25) -> tuple[tuple, np.ndarray, np.ndarray]:
    """An irregular ellipsoidal blob: (box, soft fraction, normalised radius) where the
    normalised radius is 1 on the blob's edge."""
    radii = radius * rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    box, offsets = _ball_box(centre, float(radii.max() * (1 + roughness)), shape)
    rotation = _random_rotation(rng)
    local = np.tensordot(rotation, offsets, axes=1)
    distance = np.sqrt(sum((local[i] / radii[i]) ** 2 for i in range(3)))
    if roughness > 0 and distance.size > 8:
        bumps = smooth_noise(rng, distance.shape, max(radius / 2.5, 0.8))
        distance = distance * (1 + roughness * np.clip(bumps, -2, 2) / 2)
    soft = np.clip((1 - distance) * radius + 0.5, 0, 1).astype(np.float32)  # ~1 mm edge
    return box, soft, distance


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a*a + b*b - c*c - d*d, 2*(b*c - a*d), 2*(b*d + a*c)],
                     [2*(b*c + a*d), a*a - b*b + c*c - d*d, 2*(c*d - a*b)],
                     [2*(b*d - a*c), 2*(c*d + a*b), a*a - b*b - c*c + d*d]], np.float32)


def _choose_voxels(rng: np.random.Generator, mask: np.ndarray, count: int,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """``count`` random voxel coordinates (count, 3) inside ``mask``."""
    flat = np.flatnonzero(mask)
    if flat.size == 0 or count <= 0:
        return np.zeros((0, 3), int)
    p = None
    if weights is not None:
        w = weights.ravel()[flat].astype(np.float64)
        p = w / w.sum() if w.sum() > 0 else None
    chosen = rng.choice(flat, size=count, replace=True, p=p)
    return np.stack(np.unravel_index(chosen, mask.shape), axis=1)


# ---------------------------------------------------------------------------- WMH

def place_wmh(rng: np.random.Generator, anatomy: Anatomy, overlay: Overlay, load_ml: float,
              contrast: Contrast) -> dict:
    """Places ``load_ml`` of WMH: punctate deep lesions first, the rest as periventricular
    caps/rims/bands grown from the prior. Returns a summary for cohort.json."""
    shape = anatomy.shape
    punctate_count = int(rng.poisson(2 + 1.2 * np.sqrt(load_ml)))
    centres = _choose_voxels(rng, anatomy.deep_region, punctate_count,
                             weights=anatomy.prior)
    punctate_ml = 0.0
    for centre in centres:
        radius = float(np.clip(np.exp(rng.normal(np.log(1.9), 0.35)), 1.0, 4.5))
        box, soft, _ = _blob(rng, centre.astype(np.float32), radius, shape)
        soft *= anatomy.lesion_region[box] | (anatomy.wm[box] > 0.3)
        level = contrast.wmh_flair * rng.uniform(0.85, 1.1)
        overlay.paint(box, soft, level, contrast.wmh_t1)
        np.maximum(overlay.wmh[box], soft, out=overlay.wmh[box])
        punctate_ml += float(soft.sum()) / 1000
        if punctate_ml > 0.35 * load_ml:
            break
    confluent_ml = max(load_ml - punctate_ml, 0.3 * load_ml)

    # Confluent part: the top voxels of log(prior) + smooth noise inside the lesion region.
    region = anatomy.lesion_region
    box = _bounding_box(region)
    sub_region = region[box]
    coarse_shape = tuple(int(np.ceil(s / 2)) + 1 for s in sub_region.shape)
    noise = (0.75 * smooth_noise(rng, coarse_shape, 1.0)
             + 0.65 * smooth_noise(rng, coarse_shape, 2.5))
    noise = ndi.zoom(noise, 2, order=1, grid_mode=False)[tuple(slice(0, s) for s in sub_region.shape)]
    inside = np.flatnonzero(sub_region)
    score = np.log(anatomy.prior[box].ravel()[inside] + 1e-3) + noise.ravel()[inside]
    count = int(min(confluent_ml * 1000, inside.size))
    lesion = np.zeros(sub_region.shape, bool)
    if count > 0:
        lesion.flat[inside[np.argpartition(score, -count)[-count:]]] = True
    soft = ndi.gaussian_filter(lesion.astype(np.float32), 0.6)
    soft = np.clip(soft * 1.15, 0, 1) * (sub_region | (anatomy.wm[box] > 0.2))
    # brightness varies smoothly inside confluent lesions; the core is the brightest
    core = ndi.gaussian_filter(lesion.astype(np.float32), 2.0)
    level = contrast.wmh_flair * (0.85 + 0.2 * core + 0.04 * np.clip(noise, -2.5, 2.5))
    overlay.paint(box, soft, level.astype(np.float32), contrast.wmh_t1)
    np.maximum(overlay.wmh[box], soft, out=overlay.wmh[box])
    return {"target_ml": round(load_ml, 3), "punctate_lesions": int(len(centres)),
            "punctate_ml": round(punctate_ml, 3)}


def _bounding_box(mask: np.ndarray, margin: int = 2) -> tuple:
    index = np.argwhere(mask)
    lo = np.maximum(index.min(axis=0) - margin, 0)
    hi = np.minimum(index.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


# ------------------------------------------------------------------ hard negatives

def place_hard_negatives(rng: np.random.Generator, anatomy: Anatomy, overlay: Overlay,
                         load_ml: float, contrast: Contrast) -> dict:
    """WMH look-alikes (label 0). Their volume follows a budget that grows with the WMH
    load (lacunes and gliosis come with small vessel disease): 1 mL + 30-50 % of the
    load, filled with lacunes and cortical spots after the septum and corticospinal
    tract. Returns counts for cohort.json."""
    shape = anatomy.shape

    def bright() -> float:  # as bright as WMH: intensity alone cannot tell them apart
        return contrast.wmh_flair * rng.uniform(0.85, 1.15)

    def mark(box, wins, inside) -> float:
        new = wins & inside & ~overlay.hard_negative[box]
        overlay.hard_negative[box] |= new
        return float(new.sum()) / 1000

    def spot(centre) -> float:  # cortical or juxtacortical hyperintensity
        box, soft, _ = _blob(rng, centre.astype(np.float32), float(rng.uniform(1.5, 3.5)), shape)
        soft *= anatomy.brain[box]
        return mark(box, overlay.paint(box, soft, bright(), contrast.wmh_t1 * 1.05), soft > 0.5)

    def lacune(centre) -> float:  # CSF-like hole (3-15 mm) with a bright gliosis rim
        core_radius = float(rng.uniform(2.0, 5.0))
        scale = core_radius + float(rng.uniform(1.2, 2.2))
        box, soft_outer, distance = _blob(rng, centre.astype(np.float32), scale, shape,
                                          roughness=0.15)
        soft_core = np.clip((core_radius / scale - distance) * scale + 0.5, 0, 1)
        soft_outer *= anatomy.brain[box]
        flair_level, t1_level = _cored(soft_core, (bright(), 0.85),
                                       (contrast.csf_flair, contrast.csf_t1))
        wins = overlay.paint(box, soft_outer, flair_level, t1_level)
        return mark(box, wins, (soft_outer > 0.5) & (soft_core < 0.5))

    budget_ml = 1.0 + float(rng.uniform(0.3, 0.5)) * load_ml
    placed_ml = 0.0
    # septum pellucidum / fornix: a bright stretch of the midline band
    septum_ml = 0.0
    if rng.random() < 0.8 and anatomy.septum.any():
        y = np.argwhere(anatomy.septum)[:, 1]
        length = rng.uniform(0.4, 1.0) * (y.max() - y.min())
        start = rng.uniform(y.min(), y.max() - length)
        band = anatomy.septum.copy()
        band[:, :int(start)] = False
        band[:, int(start + length) + 1:] = False
        box = _bounding_box(band, 2)
        soft = np.clip(ndi.gaussian_filter(band[box].astype(np.float32), 0.7) * 1.6, 0, 1)
        septum_ml = mark(box, overlay.paint(box, soft, bright(), 0.9), soft > 0.5)
        placed_ml += septum_ml
    # corticospinal tract (posterior limb of the internal capsule): bilateral, fainter
    tract = bool(rng.random() < 0.35)
    if tract:
        sigma = np.array([3.0, 4.0, 9.0])
        level = 1 + (contrast.wmh_flair - 1) * rng.uniform(0.6, 0.9)
        for side in (-1, 1):
            centre = anatomy.voxel_of([side * 22.0, -16.0, 8.0])
            box, offsets = _ball_box(centre, float(sigma.max() * 1.6), shape)
            weight = np.exp(-0.5 * sum((offsets[i] / sigma[i]) ** 2 for i in range(3)))
            soft = (np.clip((weight - 0.3) * 4, 0, 1) * (anatomy.wm[box] > 0.5)).astype(np.float32)
            placed_ml += mark(box, overlay.paint(box, soft, level, 1.0), soft > 0.5)
    # a few of each whatever the load, then fill the budget
    spots = lacunes = 0
    for centre in _choose_voxels(rng, anatomy.spot_sites, int(rng.poisson(3))):
        placed_ml += spot(centre)
        spots += 1
    for centre in _choose_voxels(rng, anatomy.lacune_sites, int(rng.poisson(0.7))):
        placed_ml += lacune(centre)
        lacunes += 1
    while placed_ml < budget_ml and spots + lacunes < 60:
        if rng.random() < 0.6:
            placed_ml += lacune(_choose_voxels(rng, anatomy.lacune_sites, 1)[0])
            lacunes += 1
        else:
            placed_ml += spot(_choose_voxels(rng, anatomy.spot_sites, 1)[0])
            spots += 1
    overlay.hard_negative &= overlay.wmh < 0.5
    return {"budget_ml": round(budget_ml, 3), "cortical_spots": spots, "lacunes": lacunes,
            "septum_ml": round(septum_ml, 3), "corticospinal": tract}


def place_infarct(rng: np.random.Generator, anatomy: Anatomy, overlay: Overlay,
                  contrast: Contrast) -> dict:
    """With probability INFARCT_PROBABILITY, a chronic cortical-subcortical territorial
    infarct (middle cerebral artery branch): CSF-like core, gliotic rim; label 2."""
    if rng.random() >= INFARCT_PROBABILITY:
        return {"infarct": False}
    side = int(rng.choice([-1, 1]))
    centre = _choose_voxels(rng, anatomy.infarct_sites[side], 1)[0].astype(np.float32)
    radius = float(rng.uniform(9, 17))
    centre[0] -= side * radius * 0.15  # a cortical-subcortical dome
    box, soft, distance = _blob(rng, centre, radius, anatomy.shape, roughness=0.3)
    soft *= anatomy.brain[box] & ((anatomy.gm[box] + anatomy.wm[box]) > 0.3)
    rim_mm = float(rng.uniform(2.0, 3.5))
    core = np.clip((1 - rim_mm / radius - distance) * radius + 0.5, 0, 1) * (soft > 0)
    flair_level, t1_level = _cored(core, (contrast.wmh_flair * rng.uniform(0.85, 1.05), 0.75),
                                   (contrast.csf_flair * 1.3, contrast.csf_t1 * 1.2))
    overlay.paint(box, soft, flair_level, t1_level)
    overlay.infarct[box] |= soft > 0.5
    overlay.wmh[box] *= soft < 0.5
    return {"infarct": True, "infarct_side": "left" if side < 0 else "right",
            "infarct_radius_mm": round(radius, 2)}


def _cored(core: np.ndarray, rim_levels: tuple, core_levels: tuple) -> tuple:
    """(FLAIR, T1) level arrays of a lesion whose core (fraction ``core``) is CSF-like
    tissue and whose rim is gliosis."""
    core = core.astype(np.float32)
    return tuple((rim + core * (inner - rim)).astype(np.float32)
                 for rim, inner in zip(rim_levels, core_levels))


# ------------------------------------------------------------------- observers

def observer_two(rng: np.random.Generator, wmh_fraction: np.ndarray, spacing: np.ndarray,
                 threshold_observer1: float, slice_axis: int = 2) -> np.ndarray:
    """A second rater on the FLAIR grid: a smoothly varying boundary criterion (draws
    lesions a little larger or smaller, region by region), a per-rater bias, and small
    lesions missed in some slices (raters work slice by slice).

    Args:
        wmh_fraction: (x, y, z) WMH partial-volume fraction seen in each FLAIR voxel.
        spacing: (3,) voxel size in mm.
        threshold_observer1: observer 1's fraction threshold.
        slice_axis: the voxel axis across the acquired slices (the rater draws per slice).

    Returns:
        bool mask of observer 2's WMH.
    """
    inplane = [axis for axis in range(3) if axis != slice_axis]
    sigma = np.where(np.arange(3) == slice_axis, 0.0, 3.0) / spacing  # in-plane smooth
    jitter = ndi.gaussian_filter(rng.standard_normal(wmh_fraction.shape, dtype=np.float32), sigma)
    jitter /= max(float(jitter.std()), 1e-6)
    bias = rng.normal(0.0, 0.06)
    observer2 = ((wmh_fraction > 0.1)
                 & (wmh_fraction + 0.16 * jitter > threshold_observer1 + bias))
    # per-slice 2D components: small ones are missed (or, rarely, small faint ones added)
    structure = np.zeros((3, 3, 3), bool)
    np.moveaxis(structure, slice_axis, 2)[:, :, 1] = ndi.generate_binary_structure(2, 1)
    labels, count = ndi.label(observer2, structure)
    if count:
        sizes = ndi.sum_labels(observer2, labels, index=np.arange(1, count + 1))
        voxel_mm2 = spacing[inplane[0]] * spacing[inplane[1]]
        small = sizes * voxel_mm2 < 12.0
        missed = small & (rng.random(count) < 0.45)
        drop = np.concatenate([[False], missed])
        observer2 &= ~drop[labels]
    return observer2
