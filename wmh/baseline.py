"""The conventional baseline: a random forest on 22 hand-crafted voxel features.

The paper ("Conventional segmentation system", after its ref. 23, Ghafoorian et al.,
Med. Phys. 43(12):6246, 2016) trains a random forest of 50 trees on 22 features per
voxel and reports a test Dice of 0.716 against 0.792 for MSWS + Loc (Table 3). It is
trained here on the same balanced samples and subject splits as the CNNs
(:mod:`wmh.sampling`), selected with ``model.arch=rf`` in the same MLflow entry point, and
produces the same outputs: probability maps, a validation-optimal threshold, the ROC and
Dice-vs-threshold figures and a model folder that ``wmh segment`` uses.

Features, in the order of :func:`feature_names` (FLAIR-only models drop ``t1``: 21):

================  ====================================================================
name              definition (L = G_s * FLAIR, a Gaussian of standard deviation s mm)
================  ====================================================================
flair, t1         the prepared intensities ([0, 1] inside the brain, 0 outside)
log_{s}mm         s^2 (L_xx + L_yy), s = 1, 2, 4: scale-normalised Laplacian of Gaussian,
                  most negative at the centre of a bright Gaussian blob of standard
                  deviation s (a bright disk of radius about s sqrt(2))
doh_{s}mm         s^4 (L_xx L_yy - L_xy^2), s = 1, 2, 4: scale-normalised determinant of
                  the Hessian, positive on blobs, negative on saddles and beside ridges
vesselness_1mm    Frangi et al. (MICCAI 1998) in 2D at s = 1 mm on the scale-normalised
                  Hessian, bright-ridge polarity: with eigenvalues |l1| <= |l2|,
                  0 where l2 >= 0, else exp(-(l1/l2)^2 / (2 beta^2)) *
                  (1 - exp(-(l1^2 + l2^2) / (2 c^2))), beta = 0.5, c = 0.05
annular_{t}mm     t = 1, 2, 4: mean FLAIR on the disk r <= t mm minus mean FLAIR on the
                  ring t < r <= 2t mm around the voxel (a centre-surround contrast)
flair_mean_16mm   FLAIR mean over the 16 x 16 mm in-plane window around the voxel
flair_std_16mm    FLAIR standard deviation over that window
mni_x ... prior   the 8 location features of the prepared subject (wmh.location)
================  ====================================================================

Scales are in mm and converted to voxels per axis (s / spacing_x, s / spacing_y), so
anisotropic in-plane voxels are respected. Every filter is 2D, per axial slice, and is
never applied across slices: the working grid keeps the native slices, which are thick
(paper: 5 mm + 1 mm gap, i.e. 6 mm apart); a 1-4 mm Gaussian spans 0.17-0.67 of such a
slice step, so a through-plane second derivative would be a finite difference over 12 mm
that cannot resolve 1-4 mm structure, and, as the paper argues for its 2D patches,
consecutive thick slices "do not highly correspond". In-plane filters also keep the
baseline comparable with the 2D CNNs and mean the same on any slice thickness. Derivatives
are taken per mm and scale-normalised (times s^2 per order pair), so responses are
unit-free and comparable across scales and spacings. Outside the volume the image is 0,
the value of background after normalisation (as for the CNN patches, :mod:`wmh.data`).

The annular filter. The paper names "a multi-scale annular filter (t = 1, 2, 4 mm)"
without a formula. We implement the bi-level centre-surround filter of CenSurE (Agrawal,
Konolige and Blas, ECCV 2008) with a circular centre: +1/|disk| on the disk of radius t
and -1/|ring| on the ring out to 2t (each region averaged, so the kernel sums to 0 and a
uniform region gives 0), so a bright disk of radius t gives its contrast over the
surround and a bright ring around a darker centre gives a negative response. It
complements the LoG (a smooth blob detector) with a flat-topped, sharp-edged one.

Derivative-based and annular features use FLAIR (the modality that defines WMH); the T1
contributes its intensity, as in the paper's count of 22.

Training (:class:`ForestLearner`, run by :func:`wmh.lifecycle.train_run` like the CNNs)
reads the sample coordinates of the split (:func:`wmh.sampling.load_index`), computes
each subject's features once from its prepared file (float32, the same values
whole-volume prediction sees) and gathers the samples' rows; ``train.max_train_samples``
caps them with a seeded subset. Validation is the lifecycle's: it predicts the validation
subjects whole, reads the sample AUC from those maps at the validation samples (a forest
is fitted once: no epochs) and chooses the calibration and threshold as for the CNNs.

The model folder holds ``forest.skops`` (the fitted scikit-learn forest, written with
skops, so loading never executes code from the file: only an allowlist of types is
accepted and no pickle is involved) and ``wmh_model.json`` (:class:`wmh.contract.ModelContract`
with ``model.arch = "rf"``; its ``patch`` field names the features, checked on load).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from scipy import fft, ndimage

from wmh.contract import CONTRACT_FILE, read_model_folder
from wmh.errors import WMHError
from wmh.io import atomic_output
from wmh.lifecycle import Fitted, RunContext
from wmh.location import LOCATION_FEATURES, N_LOCATION_FEATURES
from wmh.threshold import load_prepared

FOREST_FILE = "forest.skops"
FEATURES_VERSION = 1  # bump when a feature definition changes: old models then refuse to load
DERIVATIVE_SCALES_MM = (1.0, 2.0, 4.0)  # LoG and determinant of Hessian sigma (paper)
ANNULAR_RADII_MM = (1.0, 2.0, 4.0)  # annular filter centre radius t; the ring reaches 2t
VESSELNESS_SCALE_MM = 1.0  # the paper's single vesselness scale
VESSELNESS_BETA = 0.5  # Frangi's blob-vs-line sensitivity (his recommended 0.5)
VESSELNESS_C = 0.05  # structure-strength scale for [0, 1] images and scale-normalised
#   Hessians: a ridge of contrast 0.4 and 1-2 mm width reaches about 0.14, noise of
#   standard deviation 0.04 about 0.01
NEIGHBOURHOOD_MM = 16.0  # side of the in-plane window of the FLAIR mean and std (paper)
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)  # skops types beyond its defaults we accept


# --------------------------------------------------------------------------- features

def feature_names(use_t1: bool = True) -> list[str]:
    """Names of the voxel features, in the column order of :func:`compute_features`.

    Args:
        use_t1: include the T1 intensity (22 features) or not (FLAIR only, 21).
    """
    names = ["flair"] + (["t1"] if use_t1 else [])
    names += [f"log_{scale:g}mm" for scale in DERIVATIVE_SCALES_MM]
    names += [f"doh_{scale:g}mm" for scale in DERIVATIVE_SCALES_MM]
    names += [f"vesselness_{VESSELNESS_SCALE_MM:g}mm"]
    names += [f"annular_{radius:g}mm" for radius in ANNULAR_RADII_MM]
    names += [f"flair_mean_{NEIGHBOURHOOD_MM:g}mm", f"flair_std_{NEIGHBOURHOOD_MM:g}mm"]
    return names + list(LOCATION_FEATURES)


def describe_features(use_t1: bool) -> str:
    """The feature definition a model was trained with (stored in its contract)."""
    return (f"wmh.baseline features v{FEATURES_VERSION}, 2D in-plane: "
            + ", ".join(feature_names(use_t1)))


def _check_inputs(images: np.ndarray, location: np.ndarray, spacing, use_t1: bool):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] < 1:
        raise ValueError(f"images must be (X, Y, Z, C), got shape {images.shape}")
    if use_t1 and images.shape[-1] < 2:
        raise WMHError("the random forest needs FLAIR and T1 but the subject has only "
                       "FLAIR (use a FLAIR-only model: data.use_t1=false)")
    location = np.asarray(location)
    if location.ndim != 4 or location.shape[:3] != images.shape[:3] or \
            location.shape[3] != N_LOCATION_FEATURES:
        raise ValueError(f"location must be (X, Y, Z, {N_LOCATION_FEATURES}) on the images' "
                         f"grid {images.shape[:3]}, got {location.shape}")
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {spacing}")
    return images, location, spacing


def gaussian_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled Gaussian smoothing, first- and second-derivative kernels (for correlation).

    Truncated at 4 sigma (at least one voxel each side) and corrected so that their
    moments are exact: order 0 sums to 1, order 1 has sum(k x) = 1, order 2 sums to 0 and
    has sum(k x^2) = 2. So derivatives are exact on polynomials up to degree 2 (a constant
    image has no derivative response, unlike plain truncated kernels), and a sigma far
    below a voxel degrades gracefully to central finite differences.

    Args:
        sigma: standard deviation in voxels (> 0).

    Returns:
        (order 0, order 1, order 2) float64 kernels of length 2 radius + 1.
    """
    radius = max(1, int(4 * sigma + 0.5))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    smoothing = weights / weights.sum()
    first = offsets * weights
    first /= np.sum(first * offsets)
    moment0, moment2, moment4 = (np.sum(weights * offsets ** k) for k in (0, 2, 4))
    # second = (a x^2 + b) weights with sum(second) = 0 and sum(second x^2) = 2
    scale = 2.0 / (moment4 - moment2 ** 2 / moment0)
    second = scale * (offsets ** 2 - moment2 / moment0) * weights
    return smoothing, first, second


def _hessian(flair: np.ndarray, scale_mm: float, spacing: np.ndarray):
    """Scale-normalised in-plane Hessian (s^2 L_xx, s^2 L_yy, s^2 L_xy) per mm, each
    (X, Y, Z) float32; axis 2 (across slices) is not filtered."""
    sigma_x, sigma_y = scale_mm / spacing[0], scale_mm / spacing[1]  # in voxels
    kernels_x, kernels_y = gaussian_kernels(sigma_x), gaussian_kernels(sigma_y)

    def derivative(order_x, order_y):
        along_x = ndimage.correlate1d(flair, kernels_x[order_x], axis=0, mode="constant",
                                      output=np.float32)
        return ndimage.correlate1d(along_x, kernels_y[order_y], axis=1, mode="constant",
                                   output=np.float32)

    # s^2 d2/dx_mm2 = (s / spacing_x)^2 d2/dx_voxel2, and likewise for the mixed term
    xx = derivative(2, 0) * np.float32(sigma_x ** 2)
    yy = derivative(0, 2) * np.float32(sigma_y ** 2)
    xy = derivative(1, 1) * np.float32(sigma_x * sigma_y)
    return xx, yy, xy


def vesselness(xx: np.ndarray, yy: np.ndarray, xy: np.ndarray,
               beta: float = VESSELNESS_BETA, c: float = VESSELNESS_C) -> np.ndarray:
    """2D Frangi vesselness of bright ridges from a (scale-normalised) Hessian.

    Args:
        xx, yy, xy: same-shape Hessian components.
        beta: blob-vs-line sensitivity; c: structure-strength scale (Hessian units).

    Returns:
        Same shape, float32 in [0, 1): high on bright lines, low on blobs and flat areas,
        0 where the larger-magnitude eigenvalue is not negative (dark or no structure).
    """
    half_trace = (xx + yy) / 2
    radius = np.sqrt(((xx - yy) / 2) ** 2 + xy ** 2)
    sign = np.where(half_trace >= 0, 1.0, -1.0).astype(xx.dtype)
    large = half_trace + sign * radius  # |large| >= |small|
    small = half_trace - sign * radius
    with np.errstate(divide="ignore", invalid="ignore"):
        blobness = np.where(large < 0, small / large, 0.0)
    structure = small ** 2 + large ** 2
    value = np.exp(-blobness ** 2 / (2 * beta ** 2)) * (1 - np.exp(-structure / (2 * c ** 2)))
    return np.where(large < 0, value, 0.0).astype(np.float32)


def annular_kernel(radius_mm: float, spacing_xy: Sequence[float]) -> np.ndarray:
    """The annular (centre-surround) kernel: +1/|disk| on r <= t, -1/|ring| on t < r <= 2t.

    Args:
        radius_mm: the centre radius t in mm.
        spacing_xy: (2,) in-plane voxel size in mm.

    Returns:
        (2 Rx + 1, 2 Ry + 1) float64 kernel summing to 0, R = floor(2t / spacing).
    """
    reach = [int(math.floor(2 * radius_mm / s + 1e-9)) for s in spacing_xy]
    x = np.arange(-reach[0], reach[0] + 1)[:, None] * spacing_xy[0]
    y = np.arange(-reach[1], reach[1] + 1)[None, :] * spacing_xy[1]
    distance = np.hypot(x, y)
    disk = distance <= radius_mm + 1e-9
    ring = (distance > radius_mm + 1e-9) & (distance <= 2 * radius_mm + 1e-9)
    if not ring.any():
        raise ValueError(f"annular radius {radius_mm} mm is below the voxel size "
                         f"{tuple(spacing_xy)} mm")
    return disk / disk.sum() - ring / ring.sum()


def annular_filters(flair: np.ndarray, radii_mm: Sequence[float],
                    spacing: np.ndarray) -> Iterator[np.ndarray]:
    """Annular responses at several radii, per axial slice, zero outside the volume.

    One FFT of the zero-padded volume serves every radius (a linear, not circular,
    convolution: the padding covers the largest kernel).

    Yields:
        (X, Y, Z) float32 per radius, in order.
    """
    kernels = [annular_kernel(radius, spacing[:2]) for radius in radii_mm]
    reach = np.max([np.array(k.shape) // 2 for k in kernels], axis=0)
    shape = tuple(fft.next_fast_len(int(n + 2 * r), real=True)
                  for n, r in zip(flair.shape[:2], reach))
    spectrum = fft.rfft2(flair.astype(np.float32), s=shape, axes=(0, 1))
    for kernel in kernels:
        centred = np.zeros((2 * reach[0] + 1, 2 * reach[1] + 1), np.float32)
        offset = reach - np.array(kernel.shape) // 2
        centred[offset[0]:offset[0] + kernel.shape[0],
                offset[1]:offset[1] + kernel.shape[1]] = kernel
        # the kernel is symmetric, so convolution equals the correlation we want
        response = fft.irfft2(spectrum * fft.rfft2(centred, s=shape)[..., None], s=shape,
                              axes=(0, 1))
        yield np.ascontiguousarray(response[reach[0]:reach[0] + flair.shape[0],
                                            reach[1]:reach[1] + flair.shape[1]],
                                   dtype=np.float32)


def neighbourhood_mean_std(flair: np.ndarray, spacing: np.ndarray,
                           side_mm: float = NEIGHBOURHOOD_MM):
    """FLAIR mean and standard deviation over an in-plane window of ``side_mm`` mm.

    The window is ``round(side_mm / spacing)`` voxels per axis (16 x 16 at 1 mm); for an
    even size n it covers offsets -n/2 ... n/2 - 1 around the voxel (scipy's convention).
    Voxels outside the volume count as 0.

    Returns:
        (mean, std), each (X, Y, Z) float32.
    """
    size = tuple(max(1, int(round(side_mm / s))) for s in spacing[:2]) + (1,)
    values = flair.astype(np.float64)
    mean = ndimage.uniform_filter(values, size, mode="constant")
    mean_square = ndimage.uniform_filter(values * values, size, mode="constant")
    std = np.sqrt(np.maximum(mean_square - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def feature_maps(images: np.ndarray, location: np.ndarray, spacing,
                 use_t1: bool = True) -> Iterator[np.ndarray]:
    """Every feature map in :func:`feature_names` order, one volume at a time.

    Whole-volume vectorised filters; yielding one map at a time bounds memory when only
    some voxels are wanted (:func:`features_at`).

    Args:
        images: (X, Y, Z, C) float32, FLAIR then T1, on the working grid.
        location: (X, Y, Z, 8) float32 location features.
        spacing: (3,) voxel size in mm (only the in-plane sizes matter: filters are 2D).
        use_t1: include the T1 intensity.

    Yields:
        (X, Y, Z) float32 arrays (or views), one per feature name.
    """
    images, location, spacing = _check_inputs(images, location, spacing, use_t1)
    flair = np.ascontiguousarray(images[..., 0], dtype=np.float32)
    yield flair
    if use_t1:
        yield images[..., 1]
    hessians = {scale: _hessian(flair, scale, spacing) for scale in DERIVATIVE_SCALES_MM}
    for scale in DERIVATIVE_SCALES_MM:
        xx, yy, _ = hessians[scale]
        yield xx + yy
    for scale in DERIVATIVE_SCALES_MM:
        xx, yy, xy = hessians[scale]
        yield xx * yy - xy * xy
    if VESSELNESS_SCALE_MM in hessians:
        hessian = hessians[VESSELNESS_SCALE_MM]
    else:
        hessian = _hessian(flair, VESSELNESS_SCALE_MM, spacing)
    del hessians
    yield vesselness(*hessian)
    del hessian
    yield from annular_filters(flair, ANNULAR_RADII_MM, spacing)
    yield from neighbourhood_mean_std(flair, spacing)
    for index in range(location.shape[-1]):
        yield location[..., index]


def features_at(images: np.ndarray, location: np.ndarray, spacing, voxels,
                use_t1: bool = True) -> np.ndarray:
    """The feature vectors of some voxels (filters still run on the whole volume).

    Args:
        images, location, spacing, use_t1: as for :func:`feature_maps`.
        voxels: (x, y, z) index arrays, each (N,), e.g. ``np.nonzero(brain_mask)``.

    Returns:
        (N, F) float32, columns in :func:`feature_names` order.
    """
    shape = np.shape(images)[:3]
    flat = np.ravel_multi_index(tuple(np.asarray(axis) for axis in voxels), shape)
    n_features = len(feature_names(use_t1))
    features = np.empty((flat.shape[0], n_features), np.float32)
    for column, volume in enumerate(feature_maps(images, location, spacing, use_t1)):
        np.take(np.reshape(volume, -1), flat, out=features[:, column])
    return features


def compute_features(prepared, use_t1: bool = True) -> np.ndarray:
    """All features of every voxel of a prepared subject.

    Args:
        prepared: a :class:`wmh.preprocess.PreparedSubject`.
        use_t1: include the T1 intensity (22 features) or not (21).

    Returns:
        (X, Y, Z, F) float32, last axis in :func:`feature_names` order.
    """
    maps = list(feature_maps(prepared.images, prepared.location, prepared.spacing, use_t1))
    return np.stack(maps, axis=-1)


# ------------------------------------------------------------------------------ model

def _positive_column(forest) -> int:
    classes = list(np.asarray(forest.classes_).tolist())
    if 1 not in classes:
        raise WMHError("the random forest was trained without WMH samples (label 1)")
    return classes.index(1)


class RandomForestBaseline:
    """A fitted forest and the features it expects; predicts P(WMH) for volumes.

    Attributes:
        forest: the fitted ``sklearn.ensemble.RandomForestClassifier``.
        use_t1: whether its features include the T1 intensity.
    """

    def __init__(self, forest, use_t1: bool):
        self.forest = forest
        self.use_t1 = bool(use_t1)

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.use_t1)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) float32 P(WMH) (the mean of the trees' leaf shares)."""
        if len(features) == 0:
            return np.zeros(0, np.float32)
        probabilities = self.forest.predict_proba(np.asarray(features, np.float32))
        return probabilities[:, _positive_column(self.forest)].astype(np.float32)

    def tree_mean_std(self, features: np.ndarray, transform=None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(N,) mean and standard deviation of P(WMH) over the individual trees, each
        tree's P passed through ``transform`` first (e.g. a calibration) when given."""
        column = _positive_column(self.forest)
        features = np.asarray(features, np.float32)
        total = np.zeros(len(features), np.float64)
        total_square = np.zeros(len(features), np.float64)
        for tree in self.forest.estimators_:
            share = tree.predict_proba(features)[:, column]
            if transform is not None:
                share = np.asarray(transform(share), np.float64)
            total += share
            total_square += share * share
        count = len(self.forest.estimators_)
        mean = total / count
        std = np.sqrt(np.maximum(total_square / count - mean * mean, 0.0))
        return mean.astype(np.float32), std.astype(np.float32)

    def predict_volume(self, images: np.ndarray, location: np.ndarray,
                       brain_mask: np.ndarray, spacing, mc_samples: int = 0, transform=None):
        """P(WMH) of every brain voxel of a working-grid volume.

        Args:
            images: (X, Y, Z, C) float32, FLAIR then T1 (extra channels ignored).
            location: (X, Y, Z, 8) float32; brain_mask: (X, Y, Z) bool.
            spacing: (3,) voxel size in mm.
            mc_samples: > 0 also returns the spread of the trees (the forest's own
                ensemble; there is no dropout to sample), whatever the number.
            transform: with ``mc_samples``, applied to every tree's P before the mean
                and spread (e.g. a calibration); ignored otherwise.

        Returns:
            (X, Y, Z) float32 probabilities, 0 outside the brain; with ``mc_samples`` > 0
            a pair (mean, standard deviation over the trees).
        """
        brain = np.asarray(brain_mask, bool)
        voxels = np.nonzero(brain)
        features = features_at(images, location, spacing, voxels, self.use_t1)
        probability = np.zeros(brain.shape, np.float32)
        if mc_samples:
            spread = np.zeros(brain.shape, np.float32)
            probability[voxels], spread[voxels] = self.tree_mean_std(features, transform)
            return probability, spread
        probability[voxels] = self.predict_features(features)
        return probability


def make_forest(config, seed: int):
    """An unfitted forest from a :class:`wmh.config.BaselineConfig`.

    Raises:
        WMHError: a setting out of range (naming the option).
    """
    from sklearn.ensemble import RandomForestClassifier

    for name, value, lowest in (("n_trees", config.n_trees, 1),
                                ("min_samples_leaf", config.min_samples_leaf, 1),
                                ("max_depth", config.max_depth, 0)):
        if value < lowest:
            raise WMHError(f"option baseline.{name}: must be at least {lowest}, got {value}")
    if config.n_jobs == 0:
        raise WMHError("option baseline.n_jobs: must be -1 (all cores) or a positive number")
    return RandomForestClassifier(n_estimators=config.n_trees,
                                  max_depth=config.max_depth or None,
                                  min_samples_leaf=config.min_samples_leaf,
                                  n_jobs=config.n_jobs, random_state=seed)


# ----------------------------------------------------------------------- model folder

def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)


def save_model_dir(model: RandomForestBaseline, contract, folder: Path) -> Path:
    """Writes ``forest.skops`` + ``wmh_model.json`` into ``folder`` (created).

    Args:
        model: the fitted baseline.
        contract: its :class:`wmh.contract.ModelContract` (``model.arch == "rf"``).
        folder: the model folder.
    """
    import skops.io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(folder / FOREST_FILE, skops.io.dumps(model.forest))
    _atomic_write_bytes(folder / CONTRACT_FILE, contract.to_json().encode())
    return folder


def load_model_dir(folder: str | Path):
    """Loads a random-forest model folder without executing code from its files.

    The forest is read with skops, accepting only its default (scikit-learn and numpy)
    types and ``TRUSTED_TYPES``; no pickle is involved.

    Returns:
        (RandomForestBaseline, ModelContract).

    Raises:
        WMHError: missing files, untrusted or corrupt content, or features that differ
            from this version's (naming the file).
    """
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    folder = Path(folder)
    forest_path, contract_path = folder / FOREST_FILE, folder / CONTRACT_FILE
    contract = read_model_folder(folder, FOREST_FILE, "by `wmh train` with model.arch=rf")
    use_t1 = "T1" in contract.channels
    if contract.model.arch != "rf":
        raise WMHError(f"{contract_path}: model.arch is '{contract.model.arch}', not 'rf'")
    if contract.patch != describe_features(use_t1):
        raise WMHError(f"{contract_path}: trained with other features ({contract.patch}); "
                       "retrain with this version of wmh")
    try:
        untrusted = skops.io.get_untrusted_types(file=forest_path)
        refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
        if refused:
            raise WMHError(f"{forest_path}: refusing to load untrusted types "
                           f"{', '.join(refused)}")
        forest = skops.io.load(forest_path, trusted=list(untrusted))
    except WMHError:
        raise
    except Exception as error:  # skops raises several types for a damaged file
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WMHError(f"{forest_path}: cannot load the forest ({first_line})") from None
    expected = len(feature_names(use_t1))
    if not isinstance(forest, RandomForestClassifier) or forest.n_features_in_ != expected:
        raise WMHError(f"{forest_path}: not a random forest on {expected} features")
    return RandomForestBaseline(forest, use_t1), contract


# --------------------------------------------------------------------------- training

def gather_features(index, prepared_dir: Path, use_t1: bool, progress: str = "",
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """Feature vectors of a split's samples, each subject's features computed once.

    Args:
        index: a :class:`wmh.sampling.SampleIndex` (possibly a subset of a split).
        prepared_dir: the prepared subjects the samples came from.
        use_t1: include the T1 intensity.
        progress: a progress-bar label ("" = no bar).

    Returns:
        (features (N, F) float32, labels (N,) uint8, feature seconds per subject), rows in
        the order of ``index``.
    """
    from tqdm import tqdm

    features = np.empty((len(index), len(feature_names(use_t1))), np.float32)
    subjects = np.unique(index.subject)
    seconds = 0.0
    for subject in tqdm(subjects, desc=progress, unit="subject", disable=not progress or None):
        prepared = load_prepared(prepared_dir, index.subject_ids[subject])
        rows = np.flatnonzero(index.subject == subject)
        start = time.perf_counter()
        features[rows] = features_at(prepared.images, prepared.location, prepared.spacing,
                                     (index.row[rows], index.col[rows], index.slice[rows]),
                                     use_t1)
        seconds += time.perf_counter() - start
    return features, np.asarray(index.label, np.uint8), seconds / max(1, len(subjects))


def _subset(index, keep: np.ndarray):
    import dataclasses

    return dataclasses.replace(index, subject=index.subject[keep], slice=index.slice[keep],
                               row=index.row[keep], col=index.col[keep],
                               label=index.label[keep])


# --------------------------------------------------------------- the forest's learner

class ForestLearner:
    """The random forest's :class:`wmh.lifecycle.Learner`: fits once on the training
    samples' features (no epochs, no checkpoints: a rerun refits), predicts volumes, saves
    and loads ``forest.skops``.

    Args:
        config: the resolved :class:`wmh.config.ExperimentConfig` (None: a loaded model);
            ``model.arch`` must be ``rf``; ``baseline`` holds the forest settings (checked
            here), ``train.seed`` seeds it, ``train.max_train_samples`` caps the training
            samples (a seeded subset; 0 = all), the sample set's channels pick 22 or 21
            features. ``model.loc`` is unused: the 8 location features are always in.
        callbacks: must be empty (Keras callbacks, e.g. Optuna pruning, do not apply).
    """

    name = "rf"
    checkpoints = False

    def __init__(self, config, callbacks: Sequence = ()):
        self.config, self.model, self.contract = config, None, None
        if config is None:
            return
        if config.model.arch != "rf":
            raise WMHError(f"option model.arch: the random forest trains 'rf', got "
                           f"'{config.model.arch}'")
        if callbacks:
            raise WMHError("model.arch rf: training callbacks (e.g. Optuna pruning) do not "
                           "apply to the random forest")
        self.forest = make_forest(config.baseline, config.train.seed)

    @classmethod
    def load(cls, folder: Path) -> "ForestLearner":
        """The forest of a model folder (:func:`load_model_dir`: skops, an allow-list)."""
        learner = cls(None)
        learner.model, learner.contract = load_model_dir(folder)
        return learner

    def fit(self, run: RunContext) -> Fitted:
        """Fits on the training samples' features (each subject's computed once); logs
        ``feature_importances.json``; its final metrics: ``train_samples``,
        ``fit_seconds`` and ``feature_seconds_per_case``."""
        import mlflow
        import pandas as pd

        from wmh import sampling

        config, use_t1 = run.config, "T1" in run.channels
        index = sampling.load_index(run.samples_dir, "train")
        if config.train.max_train_samples and len(index) > config.train.max_train_samples:
            rng = np.random.default_rng([config.train.seed, 2])
            keep = np.sort(rng.choice(len(index), config.train.max_train_samples,
                                      replace=False))
            index = _subset(index, keep)
        if len(index) == 0 or len(np.unique(index.label)) < 2:
            raise WMHError(f"{run.samples_dir}: the training samples need both WMH and "
                           "normal voxels to fit the random forest")
        features, labels, feature_seconds = gather_features(index, run.prepared_dir, use_t1,
                                                            progress="rf features")
        example = pd.DataFrame(features[:2], columns=feature_names(use_t1))  # input example
        start = time.perf_counter()
        self.forest.fit(features, labels)
        fit_seconds = time.perf_counter() - start
        self.model = RandomForestBaseline(self.forest, use_t1)
        mlflow.log_dict(dict(zip(self.model.feature_names,
                                 map(float, self.forest.feature_importances_))),
                        "feature_importances.json")
        return Fitted(best_epoch=1, validation_auc=None, example=example,
                      metrics={"train_samples": len(labels), "fit_seconds": fit_seconds,
                               "feature_seconds_per_case": feature_seconds})

    def predict_volume(self, prepared) -> np.ndarray:
        """P(WMH) of a PreparedSubject on its working grid (the mean of the trees)."""
        return self.model.predict_volume(prepared.images, prepared.location,
                                         prepared.brain_mask, prepared.spacing)

    def contract_fields(self) -> dict:
        """The feature definition (checked on load)."""
        return {"patch": describe_features(self.model.use_t1)}

    def save(self, folder: Path, contract) -> Path:
        """``forest.skops`` + ``wmh_model.json`` (:func:`save_model_dir`)."""
        self.contract = contract
        return save_model_dir(self.model, contract, folder)
