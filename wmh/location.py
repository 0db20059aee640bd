"""The paper's 8 location features and the WMH prior probability map.

Features per working-grid voxel (paper, "Integrating explicit spatial location
features"), in this order (``LOCATION_FEATURES``), each normalised per case to [0, 1]
by its minimum and maximum inside the brain, and 0 outside the brain (like the images:
nothing is sampled or segmented there, and the zeros keep the files small):

0-2. MNI x, y, z: the voxel's atlas coordinate in mm (from the atlas registration).
3-4. in-plane distance (mm) to the left / right lateral ventricle: the 2D Euclidean
     distance within the axial slice; 0 inside the ventricle. In a slice the ventricle
     does not reach, the 3D distance is used instead (it is the in-plane distance plus
     the slice offset, so it grows smoothly past the ventricle's ends).
5.   in-plane distance (mm) to the cortex, i.e. to the brain surface: 2D distance to the
     nearest voxel outside the brain mask; 0 outside the brain.
6.   in-plane distance (mm) to the midsagittal plane (MNI x = 0): |x_MNI| divided by the
     in-plane gradient magnitude of x_MNI, the first-order distance to the plane's
     trace in the slice; symmetric by construction.
7.   WMH prior probability at the voxel's MNI coordinate.

The WMH prior is a probability map in MNI space: :func:`build_prior` (``wmh prior
build``) makes one from labelled, prepared subjects. The experiment pipeline builds it
from the training split only (``preprocess.prior: training``,
:mod:`wmh.prior`) and recomputes feature 7 of every subject with it
(:func:`prior_feature`), so no test label reaches a test feature. The package ships a
default built from **synthetic** subjects (``wmh/data/wmh_prior_mni.nii.gz``, 4 mm,
uint8 with a scale factor; ``preprocess.prior: shipped``). When that file is absent,
:func:`analytic_prior` stands in: a smooth periventricular band, documented as an
approximation.

Feature 7 samples the prior at the MNI coordinates rounded to their stored precision
(:data:`MNI_DTYPE`, as PreparedSubject files keep them), so recomputing it from a
prepared file gives exactly what preparing the subject with that prior gives.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from pathlib import Path
from typing import Iterable, Optional

import nibabel as nib
import numpy as np
from scipy import ndimage

from wmh.errors import WMHError

LOCATION_FEATURES = ("mni_x", "mni_y", "mni_z", "distance_left_ventricle",
                     "distance_right_ventricle", "distance_cortex",
                     "distance_midsagittal", "wmh_prior")
DEFAULT_PRIOR_NAME = "wmh_prior_mni.nii.gz"
MIN_GRADIENT = 0.2  # mm of MNI x per mm: floor for the midsagittal distance's divisor
MNI_DTYPE = np.float16  # how prepared files store MNI coordinates (0.06 mm at 100 mm)
N_LOCATION_FEATURES = len(LOCATION_FEATURES)
PRIOR_INDEX = LOCATION_FEATURES.index("wmh_prior")


# ------------------------------------------------------------------------ features

def location_features(mni_coordinates: np.ndarray, ventricles: np.ndarray,
                      brain_mask: np.ndarray, spacing: Iterable[float],
                      prior: Optional["Prior"] = None, axial_axis: int = 2) -> np.ndarray:
    """The 8 location features of every voxel, each normalised per case to [0, 1].

    Args:
        mni_coordinates: (X, Y, Z, 3) float, each voxel's MNI coordinate in mm (RAS).
        ventricles: (X, Y, Z) uint8, 1 left and 2 right lateral ventricle.
        brain_mask: (X, Y, Z) bool.
        spacing: (3,) working voxel size in mm.
        prior: the WMH prior; None loads the packaged default.
        axial_axis: the voxel axis nearest to the superior direction: distances are
            measured within the planes across it (axial planes, as the paper's in-plane
            distances), whatever plane the scan was acquired in.

    Returns:
        (X, Y, Z, 8) float32 in [0, 1], order ``LOCATION_FEATURES``; 0 outside the brain.
    """
    spacing = np.asarray(tuple(spacing), dtype=np.float64)
    brain_mask = np.asarray(brain_mask, dtype=bool)
    prior = load_prior() if prior is None else prior
    raw = raw_location_features(mni_coordinates, ventricles, brain_mask, spacing, prior,
                                axial_axis)
    features = np.stack([normalise_per_case(raw[..., k], brain_mask)
                         for k in range(raw.shape[-1])], axis=-1)
    features[~brain_mask] = 0.0
    return features


def raw_location_features(mni_coordinates: np.ndarray, ventricles: np.ndarray,
                          brain_mask: np.ndarray, spacing: np.ndarray,
                          prior: "Prior", axial_axis: int = 2) -> np.ndarray:
    """The 8 features before normalisation: (X, Y, Z, 8) float32 in mm / probability;
    distances within the planes across ``axial_axis``, computed (exactly) inside the
    bounding box of the brain and ventricles grown by one voxel, 0 outside it."""
    mni = np.asarray(mni_coordinates, dtype=np.float32)
    features = np.empty(mni.shape[:3] + (8,), dtype=np.float32)
    features[..., :3] = mni
    spacing = np.asarray(spacing, dtype=np.float64)
    order = [axis for axis in range(3) if axis != axial_axis] + [axial_axis]

    def axial(array):  # the axial axis last
        return np.moveaxis(np.asarray(array), axial_axis, 2)

    def back(array):
        return np.moveaxis(array, 2, axial_axis)

    # The distances matter inside the brain only (location_features zeroes the rest), so
    # they are computed on the bounding box of the brain and ventricles, one voxel wider
    # (voxels outside the brain): within it they equal the whole-volume distances (every
    # target voxel, or one at least as near, lies in it); 0 outside it.
    box = _distance_box(np.asarray(brain_mask, bool) | (np.asarray(ventricles) > 0))
    features[..., 3:6] = 0.0
    for feature, target in ((3, np.asarray(ventricles) == 1), (4, np.asarray(ventricles) == 2),
                            (5, ~np.asarray(brain_mask, bool))):
        features[box + (feature,)] = back(inplane_distance(axial(target[box]),
                                                           spacing[order]))
    features[..., 6] = back(midsagittal_distance(axial(mni[..., 0]), spacing[order]))
    features[..., PRIOR_INDEX] = prior.sample(mni.astype(MNI_DTYPE))
    return features


def prior_feature(mni_coordinates: np.ndarray, brain_mask: np.ndarray,
                  prior: "Prior") -> np.ndarray:
    """Feature 7 alone, as :func:`location_features` computes it: the prior at the MNI
    coordinates (rounded to :data:`MNI_DTYPE`), normalised per case, 0 outside the brain.

    Args:
        mni_coordinates: (X, Y, Z, 3) MNI coordinates in mm (e.g. a prepared file's).
        brain_mask: (X, Y, Z) bool.
        prior: the WMH prior.

    Returns:
        (X, Y, Z) float32 in [0, 1].
    """
    brain_mask = np.asarray(brain_mask, dtype=bool)
    raw = prior.sample(np.asarray(mni_coordinates, np.float32).astype(MNI_DTYPE))
    feature = normalise_per_case(raw, brain_mask)
    feature[~brain_mask] = 0.0
    return feature


def _distance_box(region: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``region`` grown by one voxel (clipped to the volume); the
    whole volume when ``region`` is empty."""
    if not region.any():
        return tuple(slice(None) for _ in region.shape)
    box = []
    for axis in range(region.ndim):
        present = np.flatnonzero(region.any(axis=tuple(a for a in range(region.ndim)
                                                       if a != axis)))
        box.append(slice(max(int(present[0]) - 1, 0),
                         min(int(present[-1]) + 2, region.shape[axis])))
    return tuple(box)


def inplane_distance(target: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from every voxel to the nearest ``target`` voxel of its axial slice.

    Args:
        target: (X, Y, Z) bool.
        spacing: (3,) voxel size in mm.

    Returns:
        (X, Y, Z) float32: 0 on target voxels; in slices without target voxels the 3D
        distance; a large constant (the image diagonal) when there is no target at all.
    """
    target = np.asarray(target, dtype=bool)
    distance = np.empty(target.shape, dtype=np.float32)
    if not target.any():
        distance[:] = float(np.sqrt(((np.array(target.shape) * spacing) ** 2).sum()))
        return distance
    empty_slices = []
    for z in range(target.shape[2]):
        if target[:, :, z].any():
            distance[:, :, z] = ndimage.distance_transform_edt(~target[:, :, z],
                                                               sampling=spacing[:2])
        else:
            empty_slices.append(z)
    if empty_slices:
        distance_3d = ndimage.distance_transform_edt(~target, sampling=spacing)
        distance[:, :, empty_slices] = distance_3d[:, :, empty_slices]
    return distance


def midsagittal_distance(mni_x: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """In-plane distance in mm to the midsagittal plane (MNI x = 0).

    |x| / |grad_inplane x|: exact where the atlas map is affine within the slice, and
    symmetric about the plane. The gradient magnitude is floored at ``MIN_GRADIENT``.

    Args:
        mni_x: (X, Y, Z) MNI x coordinate in mm.
        spacing: (3,) voxel size in mm.
    """
    mni_x = np.asarray(mni_x, dtype=np.float64)
    gradient_x = np.gradient(mni_x, spacing[0], axis=0) if mni_x.shape[0] > 1 else 0.0
    gradient_y = np.gradient(mni_x, spacing[1], axis=1) if mni_x.shape[1] > 1 else 0.0
    magnitude = np.maximum(np.hypot(gradient_x, gradient_y), MIN_GRADIENT)
    return (np.abs(mni_x) / magnitude).astype(np.float32)


def normalise_per_case(values: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """Min-max scaling to [0, 1] using the range inside the brain; clipped elsewhere.

    A constant feature (or an empty mask) gives zeros.
    """
    inside = values[brain_mask] if brain_mask.any() else values.ravel()
    low, high = float(inside.min()), float(inside.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------ the prior

class Prior:
    """A WMH probability map in MNI space.

    Attributes:
        probability: (I, J, K) float32 in [0, 1].
        affine: (4, 4) voxel -> MNI mm (RAS).
        source: where it came from (a path or 'analytic').
        subjects: how many labelled subjects it was built from (None: not built here).
        lesion_subjects: how many of them hold WMH voxels (None: not built here).
        lesion_voxels: their WMH voxels counted (None: not built here).
    """

    def __init__(self, probability: np.ndarray, affine: np.ndarray, source: str,
                 subjects: Optional[int] = None, lesion_subjects: Optional[int] = None,
                 lesion_voxels: Optional[int] = None):
        self.probability = np.asarray(probability, dtype=np.float32)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.source = source
        self.subjects = subjects
        self.lesion_subjects = lesion_subjects
        self.lesion_voxels = lesion_voxels

    def sample(self, mni_coordinates: np.ndarray) -> np.ndarray:
        """Trilinear prior at MNI coordinates: (..., 3) mm -> (...) float32, 0 outside."""
        points = np.asarray(mni_coordinates, dtype=np.float64).reshape(-1, 3)
        inverse = np.linalg.inv(self.affine)
        voxels = inverse[:3, :3] @ points.T + inverse[:3, 3:]
        values = ndimage.map_coordinates(self.probability, voxels, order=1, mode="constant",
                                         cval=0.0)
        return values.reshape(np.shape(mni_coordinates)[:-1]).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        """Writes the map as uint8 with a scale factor (small file), atomically."""
        from wmh.io import atomic_save

        peak = float(self.probability.max())
        slope = peak / 255.0 if peak > 0 else 1.0
        quantised = np.clip(np.rint(self.probability / slope), 0, 255).astype(np.uint8)
        image = nib.Nifti1Image(quantised, self.affine)
        image.header.set_slope_inter(slope, 0.0)
        image.header.set_sform(self.affine, code=4)  # 4 = MNI152
        image.header.set_qform(self.affine, code=4)
        image.header["descrip"] = b"wmh prior probability, MNI152"
        return atomic_save(image, path)


def default_prior_path() -> Optional[Path]:
    """The packaged prior file, or None when it is not installed."""
    resource = importlib.resources.files("wmh") / "data" / DEFAULT_PRIOR_NAME
    path = Path(str(resource))
    return path if path.is_file() else None


def load_prior(path: str | Path | None = None) -> Prior:
    """Reads a prior NIfTI; None = the packaged default, else :func:`analytic_prior`.

    Raises:
        WMHError: unreadable file or values outside [0, 1].
    """
    if path is None or str(path) == "":
        path = default_prior_path()
        if path is None:
            return analytic_prior()
    try:  # the file's identity in the cache key: a prior rewritten in place is read anew
        stat = os.stat(path)
        identity = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        identity = None  # load_nifti names the missing file
    return _load_prior_file(str(path), identity)


@functools.lru_cache(maxsize=4)
def _load_prior_file(path: str, identity: Optional[tuple] = None) -> Prior:
    """``identity`` (modification time, size, inode) only keys the cache."""
    from wmh.io import load_nifti

    data, image = load_nifti(path)
    data = np.asarray(data, dtype=np.float32)
    if data.min() < -1e-6 or data.max() > 1 + 1e-6:
        raise WMHError(f"{path}: WMH prior values must lie in [0, 1] "
                       f"(found {data.min():.3g} to {data.max():.3g})")
    return Prior(np.clip(data, 0, 1), image.affine, path)


# MNI152 (nilearn, 2009a symmetric) field of view: the grid priors are built on.
MNI_CORNER_MM = (-98.0, -134.0, -72.0)
MNI_EXTENT_MM = (197.0, 233.0, 189.0)


def mni_grid(spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a grid covering the MNI152 field of view at ``spacing_mm``."""
    shape = tuple(int(np.ceil(extent / spacing_mm)) for extent in MNI_EXTENT_MM)
    affine = np.diag([spacing_mm] * 3 + [1.0])
    affine[:3, 3] = MNI_CORNER_MM
    return shape, affine


@functools.lru_cache(maxsize=1)
def analytic_prior() -> Prior:
    """Stand-in prior when no built prior is installed: WMH predilection modelled as a
    Gaussian band (sigma 8 mm, peak 0.3) around two ellipsoids approximating the MNI152
    lateral ventricles (centres x = +-13, y = -15, z = 15 mm; semi-axes 8, 30, 12 mm).
    An approximation for development, not an estimate from data.
    """
    shape, affine = mni_grid(4.0)
    points = np.indices(shape).reshape(3, -1).T * 4.0 + np.array(MNI_CORNER_MM)
    semi_axes = np.array([8.0, 30.0, 12.0])
    distance = np.full(len(points), np.inf)
    for centre_x in (-13.0, 13.0):
        scaled = (points - np.array([centre_x, -15.0, 15.0])) / semi_axes
        radius = np.linalg.norm(scaled, axis=1)
        # distance outside the ellipsoid, approximated along the ray from its centre
        along = np.maximum(radius - 1.0, 0.0) * np.linalg.norm(scaled * semi_axes, axis=1) \
            / np.maximum(radius, 1e-6)
        distance = np.minimum(distance, along)
    probability = 0.3 * np.exp(-0.5 * (distance / 8.0) ** 2)
    return Prior(probability.reshape(shape).astype(np.float32), affine, "analytic")


def build_prior(subjects: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                spacing_mm: float = 4.0, smoothing_mm: float = 4.0) -> Prior:
    """WMH prior from labelled subjects: the share of brain voxels labelled WMH around
    each MNI location.

    Every subject's brain voxels are binned by their MNI coordinate; lesion and brain
    counts are smoothed (Gaussian, ``smoothing_mm``) and divided; where fewer than 5%
    of the peak brain count was observed the prior is 0.

    Args:
        subjects: (mni_coordinates (X, Y, Z, 3) mm, labels (X, Y, Z) uint8,
            brain_mask (X, Y, Z) bool) per subject; label 1 counts as WMH.
        spacing_mm: voxel size of the prior grid in mm.
        smoothing_mm: Gaussian sigma in mm.

    Raises:
        WMHError: no subjects.
    """
    shape, affine = mni_grid(spacing_mm)
    corner = np.array(MNI_CORNER_MM)
    lesions = np.zeros(shape, dtype=np.float64)
    brain = np.zeros(shape, dtype=np.float64)
    used = lesion_subjects = lesion_voxels = 0
    for mni_coordinates, labels, brain_mask in subjects:
        brain_mask = np.asarray(brain_mask, dtype=bool)
        points = np.asarray(mni_coordinates)[brain_mask]
        is_lesion = np.asarray(labels)[brain_mask] == 1
        voxels = np.rint((points - corner) / spacing_mm).astype(np.int64)
        inside = np.all((voxels >= 0) & (voxels < np.array(shape)), axis=1)
        index = np.ravel_multi_index(voxels[inside].T, shape)
        brain += np.bincount(index, minlength=brain.size).reshape(shape)
        lesions += np.bincount(index, weights=is_lesion[inside].astype(np.float64),
                               minlength=lesions.size).reshape(shape)
        used += 1
        lesion_subjects += int(is_lesion.any())
        lesion_voxels += int(is_lesion.sum())
    if used == 0:
        raise WMHError("wmh prior build: no labelled subject with MNI coordinates")
    sigma = smoothing_mm / spacing_mm
    lesions = ndimage.gaussian_filter(lesions, sigma)
    brain = ndimage.gaussian_filter(brain, sigma)
    floor = 0.05 * brain.max()
    probability = np.where(brain > floor, lesions / np.maximum(brain, floor), 0.0)
    return Prior(np.clip(probability, 0, 1).astype(np.float32), affine,
                 f"built from {used} subjects", subjects=used,
                 lesion_subjects=lesion_subjects, lesion_voxels=lesion_voxels)


def read_subject_list(path: str | Path) -> list[str]:
    """Subject ids from a text file, one per line (blank lines and ``#`` comments skipped).

    Raises:
        WMHError: an unreadable or empty file (``--subjects`` and the path).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise WMHError(f"--subjects {path}: cannot read ({reason})") from None
    ids = [line.split("#", 1)[0].strip() for line in lines]
    ids = [subject_id for subject_id in ids if subject_id]
    if not ids:
        raise WMHError(f"--subjects {path}: no subject ids (one per line)")
    return ids
