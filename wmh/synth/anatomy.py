"""Reference anatomy on the MNI ICBM152 2009 grid, derived once from nilearn's templates.

The T1, GM and WM templates ship inside the nilearn wheel (``nilearn/datasets/data``),
so nothing is downloaded. From them we derive, on a 1 mm MNI grid cropped to the head:

* tissue fractions: GM, WM, CSF (= 1 - GM - WM inside the brain) and the brain mask;
* the left (1) and right (2) lateral ventricles: the large central CSF component split
  at the midsagittal plane x = 0 (the template is symmetric);
* the septum pellucidum / fornix band between the two ventricles;
* cortex (GM next to sulcal or outer CSF) and the distance to it;
* the head around the brain as distance shells (CSF, inner table, diploe, outer table,
  scalp fat, skin) so images have a skull and scalp;
* the explicit WMH spatial prior (periventricular rims, caps at the horns, a low deep
  white-matter floor) and the region lesions may occupy.

Everything is computed once per process (memoised) and cached on disk under
``<cache_dir>/synth_anatomy/`` keyed by the nilearn and anatomy versions (atomic write).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import numpy as np

from wmh.io import atomic_output
from scipy import ndimage as ndi

ANATOMY_VERSION = 3  # bump when a derivation below changes
HEAD_MARGIN_MM = 18  # head shells reach 13 mm (up to ~17 mm stretched) beyond the brain
# Head shells as distance (mm) outside the brain: (class, inner edge, outer edge).
HEAD_SHELLS = (("csf", 0.0, 2.0), ("bone", 2.0, 3.2), ("marrow", 3.2, 6.4),
               ("bone", 6.4, 7.4), ("fat", 7.4, 11.5), ("skin", 11.5, 13.0))
HEAD_CLASSES = ("bone", "marrow", "fat", "skin")

_FLOAT_FIELDS = ("t1", "gm", "wm", "csf", "d_out", "d_ventricles", "d_cortex", "prior")
_MASK_FIELDS = ("brain", "ventricles", "septum", "cortex", "lesion_region", "deep_region")


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """The reference head on a cropped 1 mm MNI grid (arrays are (x, y, z), RAS).

    Attributes:
        affine: voxel -> MNI mm (1 mm, axis aligned).
        full_shape: shape of the uncropped nilearn template grid.
        crop_offset: voxel offset of this grid inside the template grid.
        t1: template T1 intensity in [0, 1] (0 outside the brain).
        gm, wm, csf: tissue fractions inside the brain (sum 1 there, 0 outside).
        d_out: distance outside the brain mask, mm (0 inside), locally stretched so that
            the head shells vary in thickness.
        d_ventricles: distance to the nearest lateral ventricle, mm.
        d_cortex: distance to cortex, mm.
        prior: WMH prior probability in [0, 1].
        brain: brain mask (template support, holes filled).
        ventricles: uint8, 1 = left lateral ventricle, 2 = right.
        septum: septum pellucidum / fornix band between the ventricles.
        cortex: cortical grey matter.
        lesion_region: where WMH may be placed (supratentorial white matter).
        deep_region: deep white matter for punctate lesions (far from ventricles and cortex).
        ventricle_centroids: (2, 3) MNI mm of the left and right ventricle.
    """

    affine: np.ndarray
    full_shape: tuple
    crop_offset: tuple
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    d_out: np.ndarray
    d_ventricles: np.ndarray
    d_cortex: np.ndarray
    prior: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    septum: np.ndarray
    cortex: np.ndarray
    lesion_region: np.ndarray
    deep_region: np.ndarray
    ventricle_centroids: np.ndarray

    @property
    def shape(self) -> tuple:
        return self.t1.shape

    def voxel_of(self, mni_mm) -> np.ndarray:
        """Voxel coordinates (float) of an MNI mm point."""
        return np.asarray(mni_mm, dtype=np.float32) - self.affine[:3, 3].astype(np.float32)

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse (broadcastable) MNI mm x, y, z coordinate arrays of this grid."""
        return _world_axes(self.affine, self.shape)

    @functools.cached_property
    def spot_sites(self) -> np.ndarray:
        """Cortex and juxtacortical white matter at supratentorial levels."""
        juxtacortical = (self.d_cortex <= 2) & (self.wm > 0.3) & self.brain
        supratentorial = self.lesion_region.any(axis=(0, 1))
        return ((self.cortex & (self.gm > 0.5)) | juxtacortical) & supratentorial[None, None, :]

    def _basal_ganglia(self, medial_mm: float, posterior_mm: float) -> np.ndarray:
        x, y, z = self.axes_mm()
        return ((self.gm > 0.5) & ~self.cortex & (np.abs(x) > medial_mm) & (np.abs(x) < 32)
                & (y > posterior_mm) & (y < 25) & (z > -8) & (z < 18))

    @functools.cached_property
    def lacune_sites(self) -> np.ndarray:
        """Deep white matter and basal ganglia, not touching the ventricles."""
        return (self.lesion_region | self._basal_ganglia(8, -25)) & (self.d_ventricles > 3)

    @functools.cached_property
    def deep_grey(self) -> np.ndarray:
        """Basal ganglia and thalami (float32 0/1, smoothed 1 mm): deep grey matter."""
        mask = self._basal_ganglia(2, -38).astype(np.float32)
        return ndi.gaussian_filter(mask, 1.0)

    @functools.cached_property
    def infarct_sites(self) -> dict[int, np.ndarray]:
        """Lateral cortex in the middle cerebral artery territory, per side (-1 left)."""
        x, y, z = self.axes_mm()
        lateral = self.cortex & (y > -50) & (y < 30) & (z > 0) & (z < 50)
        return {side: lateral & (x * side > 48) for side in (-1, 1)}

    @functools.cached_property
    def head(self) -> dict[str, np.ndarray]:
        """See :meth:`head_fractions` (memoised)."""
        return self.head_fractions()

    def head_fractions(self) -> dict[str, np.ndarray]:
        """Fractions of the non-brain classes (extra-cerebral CSF, bone, marrow, fat, skin)
        from the distance shells, with 1 mm linear transitions (partial volume)."""
        d = self.d_out
        fractions: dict[str, np.ndarray] = {}
        outside = ~self.brain
        for name, inner, outer in HEAD_SHELLS:
            shell = (np.clip(d - inner + 0.5, 0, 1) - np.clip(d - outer + 0.5, 0, 1))
            shell = np.where(outside, shell, 0).astype(np.float32)
            fractions[name] = fractions[name] + shell if name in fractions else shell
        return fractions

    def full_grid(self, cropped: np.ndarray) -> np.ndarray:
        """Pads a cropped array back onto the full nilearn template grid."""
        full = np.zeros(self.full_shape, dtype=cropped.dtype)
        o = self.crop_offset
        full[o[0]:o[0] + cropped.shape[0], o[1]:o[1] + cropped.shape[1],
             o[2]:o[2] + cropped.shape[2]] = cropped
        return full

    @property
    def full_affine(self) -> np.ndarray:
        affine = self.affine.copy()
        affine[:3, 3] -= np.asarray(self.crop_offset, dtype=float)
        return affine


def _nilearn_version() -> str:
    import nilearn
    return nilearn.__version__


def load_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm ICBM152 2009 T1, GM and WM templates (files inside the nilearn wheel).

    Returns:
        (t1, gm, wm) float32 arrays of shape (197, 233, 189) and their affine.
    """
    from nilearn import datasets
    t1_image = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    return (t1_image.get_fdata(dtype=np.float32), gm, wm, np.asarray(t1_image.affine))


def _world_axes(affine: np.ndarray, shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse MNI mm coordinate arrays for an axis-aligned grid."""
    return tuple(
        (np.arange(n, dtype=np.float32) * affine[axis, axis] + affine[axis, 3]).reshape(
            [-1 if a == axis else 1 for a in range(3)])
        for axis, n in enumerate(shape))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = ndi.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def derive_anatomy() -> Anatomy:
    """Computes every derived map from the templates (about 15 s; use :func:`get_anatomy`)."""
    t1, gm, wm, affine = load_templates()
    brain_full = ndi.binary_fill_holes(t1 > 0)
    index = np.argwhere(brain_full)
    lo = np.maximum(index.min(axis=0) - HEAD_MARGIN_MM, 0)
    hi = np.minimum(index.max(axis=0) + HEAD_MARGIN_MM + 1, brain_full.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    t1, gm, wm, brain = t1[crop], gm[crop], wm[crop], brain_full[crop]
    crop_affine = affine.copy()
    crop_affine[:3, 3] += lo * np.diag(affine)[:3]
    x, y, z = _world_axes(crop_affine, t1.shape)

    gm = np.where(brain, np.clip(gm, 0, 1), 0).astype(np.float32)
    wm = np.where(brain, np.clip(wm, 0, 1), 0).astype(np.float32)
    total = gm + wm
    over = total > 1
    gm = np.where(over, gm / np.maximum(total, 1e-6), gm).astype(np.float32)
    wm = np.where(over, wm / np.maximum(total, 1e-6), wm).astype(np.float32)
    csf = np.where(brain, 1 - gm - wm, 0).astype(np.float32)
    t1 = np.where(brain, t1, 0).astype(np.float32)

    # Lateral ventricles: the large CSF component at the centre, away from the surface,
    # minus the midline (3rd ventricle, cava), split into left and right.
    depth = ndi.distance_transform_edt(brain)
    central_box = (np.abs(x) < 35) & (y > -90) & (y < 40) & (z > -25) & (z < 40)
    central_csf = (csf > 0.5) & central_box & (depth > 6)
    labels, count = ndi.label(central_csf)
    sizes = ndi.sum_labels(central_csf, labels, index=np.arange(1, count + 1))
    large = np.isin(labels, 1 + np.flatnonzero(sizes > 5000))  # ventricles and cisterns
    centre_distance = np.sqrt((x / 1.0) ** 2 + ((y + 10) / 1.0) ** 2 + ((z - 15) / 1.0) ** 2)
    lateral = np.zeros_like(central_csf)
    for component in 1 + np.flatnonzero(sizes > 5000):
        member = labels == component
        if centre_distance[member].min() < 15:  # the component holding the ventricle bodies
            lateral |= member
    lateral &= (np.abs(x) >= 2.5) & (z > 0)
    ventricles = np.zeros(t1.shape, np.uint8)
    ventricles[_largest_component(lateral & (x < 0))] = 1
    ventricles[_largest_component(lateral & (x > 0))] = 2

    # Septum pellucidum / fornix: midline voxels with a ventricle on both sides.
    septum = _septum_band(ventricles, x, z)

    # Cortex: GM within 3 mm of sulcal / outer CSF (not the central CSF).
    outer_csf = ((csf > 0.5) & ~large & ~(ventricles > 0)) | ~brain
    d_outer_csf = ndi.distance_transform_edt(~outer_csf)
    cortex = (gm > 0.4) & (d_outer_csf <= 3) & brain & (depth < 30)
    d_cortex = ndi.distance_transform_edt(~cortex).astype(np.float32)
    d_ventricles = ndi.distance_transform_edt(ventricles == 0).astype(np.float32)
    # distance outside the brain, locally stretched by up to ~25 % so that skull and scalp
    # thickness vary around the head (a fixed field: part of the reference anatomy)
    stretch = ndi.gaussian_filter(np.random.default_rng(0).standard_normal(brain.shape)
                                  .astype(np.float32), 10.0)
    stretch /= stretch.std()
    d_out = (ndi.distance_transform_edt(~brain) * np.exp(-0.12 * stretch)).astype(np.float32)

    supratentorial = (z > -12) & ~((y < -45) & (z < 8))
    lesion_region = ((wm > 0.35) & brain & supratentorial & (ventricles == 0)
                     & (d_cortex >= 3) & ~septum & (np.abs(x) > 3))
    deep_region = lesion_region & (wm > 0.7) & (d_ventricles > 10) & (d_cortex > 5)
    prior = _wmh_prior(ventricles, d_ventricles, d_cortex, lesion_region, wm, y, z)
    centroids = np.array([np.argwhere(ventricles == side).mean(axis=0) for side in (1, 2)])
    centroids = centroids + crop_affine[:3, 3]
    return Anatomy(affine=crop_affine, full_shape=tuple(brain_full.shape),
                   crop_offset=tuple(int(v) for v in lo), t1=t1, gm=gm, wm=wm, csf=csf,
                   d_out=d_out, d_ventricles=d_ventricles, d_cortex=d_cortex, prior=prior,
                   brain=brain, ventricles=ventricles, septum=septum, cortex=cortex,
                   lesion_region=lesion_region, deep_region=deep_region,
                   ventricle_centroids=centroids.astype(np.float32))


def _septum_band(ventricles: np.ndarray, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Voxels within 2 mm of the midline that have a left ventricle within 8 mm to their
    left and a right ventricle within 8 mm to their right (same y, z), plus the fornix
    just below them."""
    centre = int(np.argmin(np.abs(x.ravel())))
    left = (ventricles[max(centre - 8, 0):centre] == 1).any(axis=0)
    right = (ventricles[centre + 1:centre + 9] == 2).any(axis=0)
    sandwich = left & right  # (y, z)
    fornix = np.zeros_like(sandwich)
    fornix[:, :-3] = sandwich[:, 3:]  # 3 mm below the septum, same y
    for shift in (1, 2):
        fornix[:, :-shift] |= sandwich[:, shift:]
    plane = sandwich | fornix
    band = (np.abs(x) <= 1) & plane[None, :, :] & (ventricles == 0)
    return band & (z > -5)


def _wmh_prior(ventricles, d_ventricles, d_cortex, lesion_region, wm, y, z) -> np.ndarray:
    """The explicit WMH prior: periventricular rims, caps at the frontal and occipital
    horns, a low deep-white-matter floor rising in the centrum semiovale, inside the
    lesion region; scaled so the highest voxels have probability 0.8."""
    horns = np.zeros(ventricles.shape, bool)
    for side in (1, 2):
        member = ventricles == side
        ys = np.broadcast_to(y, member.shape)[member]
        front, back = np.percentile(ys, 92), np.percentile(ys, 6)
        horns |= member & ((y >= front) | (y <= back))
    d_horns = ndi.distance_transform_edt(~horns).astype(np.float32)
    rim = np.exp(-d_ventricles / 4.0)
    caps = np.exp(-d_horns / 7.0)
    semiovale = np.exp(-((z - 30.0) / 25.0) ** 2)
    deep = 0.03 + 0.05 * semiovale * np.clip((d_cortex - 3) / 6, 0, 1)
    prior = (0.45 * rim + 0.55 * caps + deep) * lesion_region * np.clip(wm * 1.5, 0, 1)
    prior = ndi.gaussian_filter(prior.astype(np.float32), 1.0)
    prior *= lesion_region
    return (0.8 * prior / prior.max()).astype(np.float32)


# ------------------------------------------------------------------------ caching

def _cache_path(cache_dir: Path) -> Path:
    """Keyed by the nilearn version and this module's source (the derivation code)."""
    source = Path(__file__).read_bytes()
    key = hashlib.sha1(f"{_nilearn_version()}-{ANATOMY_VERSION}-".encode() + source).hexdigest()[:12]
    return Path(cache_dir) / "synth_anatomy" / f"anatomy-{key}.npz"


def _save(anatomy: Anatomy, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(anatomy, name).astype(np.float16) for name in _FLOAT_FIELDS}
    arrays.update({name: getattr(anatomy, name) for name in _MASK_FIELDS})
    arrays.update(affine=anatomy.affine, full_shape=np.array(anatomy.full_shape),
                  crop_offset=np.array(anatomy.crop_offset),
                  ventricle_centroids=anatomy.ventricle_centroids)
    with atomic_output(path) as temporary:
        np.savez(temporary, **arrays)


def _load(path: Path) -> Anatomy:
    with np.load(path) as data:
        values = {name: data[name].astype(np.float32) for name in _FLOAT_FIELDS}
        values.update({name: data[name] for name in _MASK_FIELDS})
        return Anatomy(affine=data["affine"], full_shape=tuple(int(v) for v in data["full_shape"]),
                       crop_offset=tuple(int(v) for v in data["crop_offset"]),
                       ventricle_centroids=data["ventricle_centroids"], **values)


def _quantised(anatomy: Anatomy) -> Anatomy:
    """The anatomy with its float maps rounded through float16, exactly as the disk cache
    stores them, so that generated arrays never depend on whether the cache was warm."""
    return dataclasses.replace(anatomy, **{
        name: getattr(anatomy, name).astype(np.float16).astype(np.float32)
        for name in _FLOAT_FIELDS})


@functools.lru_cache(maxsize=1)
def _derived() -> Anatomy:
    """The derivation (about 12 CPU s), once per process whatever the cache folder."""
    return _quantised(derive_anatomy())


@functools.lru_cache(maxsize=2)
def get_anatomy(cache_dir: str | None = "data_cache") -> Anatomy:
    """The reference anatomy: memoised per process, cached on disk under ``cache_dir``
    (None: no disk cache). A corrupt cache file is recomputed."""
    if cache_dir is None:
        return _derived()
    path = _cache_path(Path(cache_dir))
    if path.exists():
        try:
            return _load(path)
        except (OSError, ValueError, KeyError, EOFError):
            pass
    anatomy = _derived()
    try:
        _save(anatomy, path)
    except OSError:
        pass  # a read-only cache folder only costs recomputation
    return anatomy
