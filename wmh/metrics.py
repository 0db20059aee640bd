"""Evaluation metrics: MICCAI WMH 2017 challenge metrics and the paper's measures.

Pure NumPy/SciPy (no TensorFlow, ever): the maths is a set of pure functions on arrays,
usable from training code, and :func:`evaluate_cases` applies them to NIfTI files.

Label conventions (as in the MICCAI WMH 2017 challenge): the truth holds 0 background,
1 WMH and 2 other pathology. Voxels labelled 2 in the truth are removed from the
prediction before anything is counted, and the truth is ``label == 1``. A prediction is
binarised like the challenge script does: boolean as is, integers ``>= 1``, floats
``>= threshold`` (0.5 by default).

Challenge metrics (:func:`challenge_metrics`), with every empty case defined:

===================  ====================  ====================  ==================
metric               truth empty,          truth non-empty,      both empty
                     prediction non-empty  prediction empty
===================  ====================  ====================  ==================
dice                 0.0                   0.0                   1.0
hd95 (mm)            NaN                   NaN                   NaN
avd (% of truth)     NaN (no volume to     100.0                 0.0
                     divide by)
lesion_recall        1.0 (no lesion to     0.0                   1.0
                     miss)
lesion_precision     0.0                   1.0 (nothing          1.0
                                           predicted)
lesion_f1            0.0                   0.0                   1.0
===================  ====================  ====================  ==================

HD95 is NaN whenever either mask is empty: there is no boundary to measure from.
Dice inside the brain mask (``dice_brain``) follows the Dice column; Az (``auc``) is NaN
when the counted region has no WMH voxel or no background voxel. NaN values are left
out of means (``summary.undefined`` counts them) and written as ``null`` in JSON.
Both-empty Dice is 1.0 so that a correctly empty case counts as perfect in a mean; the
overall (pooled) Dice is unaffected by it.

The paper's measures (Ghafoorian et al. 2017) count only voxels inside the brain mask:
Dice, ROC and its area (Az), the threshold that maximises the overall Dice on the
validation set, Dice-vs-threshold curves with patient-level bootstrap confidence bands,
and paired patient-level bootstrap p-values. "Overall" (pooled) Dice sums TP, FP and FN
over all cases before forming ``2 TP / (2 TP + FP + FN)``; it is the default statistic on
every bootstrap resample as well, because the paper chooses thresholds on the overall
Dice. The mean of per-case Dice is available everywhere with ``statistic="mean"``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from wmh.errors import WMHError

CHALLENGE_METRICS = ("dice", "hd95", "avd", "lesion_recall", "lesion_f1")
DEFAULT_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # probability thresholds for curves
STATISTICS = ("pooled", "mean")  # bootstrap statistic: overall Dice or mean per-case Dice
# Per-case file names inside <id>/ folders, most wanted first, for each kind of input:
# the challenge layout (<id>/wmh.nii.gz, <id>/wmh_observer2.nii.gz) and `wmh segment`
# outputs (<id>/wmh_mask.nii.gz, <id>/wmh_probability.nii.gz).
TRUTH_FILE_NAMES = ("wmh",)
OBSERVER2_FILE_NAMES = ("wmh_observer2",)
MASK_FILE_NAMES = ("wmh_mask", "wmh_probability")  # evaluate: the model's own threshold
PROBABILITY_FILE_NAMES = ("wmh_probability", "wmh_mask")  # curves need probabilities
BRAIN_MASK_FILE_NAMES = ("brain_mask",)  # what `wmh segment` writes beside its outputs
_PER_CASE_FILE_NAMES = (TRUTH_FILE_NAMES + OBSERVER2_FILE_NAMES + PROBABILITY_FILE_NAMES
                        + BRAIN_MASK_FILE_NAMES)
_CHUNK_VOXELS = 1 << 22  # bounded temporary memory when histogramming huge volumes


# ------------------------------------------------------------------------ binarising

def binarize_prediction(prediction: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Turns a prediction into a boolean mask the way the challenge script does.

    Args:
        prediction: array of any shape; bool, integer labels or float probabilities.
        threshold: floats at or above it are foreground.

    Returns:
        Boolean array of the same shape: bool as is, integers ``>= 1``, floats
        ``>= threshold``.
    """
    prediction = np.asarray(prediction)
    if prediction.dtype == bool:
        return prediction
    if np.issubdtype(prediction.dtype, np.integer):
        return prediction >= 1
    return prediction >= threshold


def split_truth(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits a challenge label map into the WMH mask and the ignored region.

    Args:
        truth: array of any shape with values 0 (background), 1 (WMH), 2 (other
            pathology, ignored); a boolean array is a WMH mask with nothing ignored.

    Returns:
        (wmh, ignored) boolean arrays of the truth's shape.

    Raises:
        ValueError: values other than 0, 1 and 2.
    """
    truth = np.asarray(truth)
    if truth.dtype == bool:
        return truth, np.zeros(truth.shape, dtype=bool)
    wmh = truth == 1
    ignored = truth == 2
    if np.count_nonzero(wmh) + np.count_nonzero(ignored) + np.count_nonzero(truth == 0) \
            != truth.size:
        unexpected = np.setdiff1d(np.unique(truth), (0, 1, 2))[:5]
        raise ValueError(f"truth has values outside {{0, 1, 2}}: {unexpected.tolist()}")
    return wmh, ignored


def _challenge_masks(prediction: np.ndarray, truth: np.ndarray,
                     threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Binary (prediction, truth) after the challenge's label-2 removal."""
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape "
                         f"{truth.shape}")
    wmh, ignored = split_truth(truth)
    predicted = binarize_prediction(prediction, threshold) & ~ignored
    return predicted, wmh


# ------------------------------------------------------------------ challenge metrics

def dice_from_counts(tp, fp, fn, empty_value: float = 1.0):
    """Dice = 2 TP / (2 TP + FP + FN), elementwise.

    Args:
        tp, fp, fn: counts (scalars or arrays of one shape).
        empty_value: the Dice where ``2 TP + FP + FN == 0`` (both masks empty).

    Returns:
        A float for scalar input, else a float64 array of the broadcast shape.
    """
    tp = np.asarray(tp, dtype=np.float64)
    denominator = 2.0 * tp + np.asarray(fp, dtype=np.float64) + np.asarray(fn, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denominator > 0, 2.0 * tp / np.where(denominator > 0, denominator, 1),
                        empty_value)
    return float(dice) if dice.ndim == 0 else dice


def dice(prediction: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Challenge Dice of one case (label 2 ignored; 1.0 when both masks are empty).

    Args:
        prediction: array of the truth's shape (bool, labels or probabilities).
        truth: array with values 0, 1, 2.
        threshold: binarisation threshold for float predictions.
    """
    predicted, wmh = _challenge_masks(prediction, truth, threshold)
    tp = np.count_nonzero(predicted & wmh)
    return dice_from_counts(tp, np.count_nonzero(predicted) - tp, np.count_nonzero(wmh) - tp)


def _boundary_world_coordinates(mask: np.ndarray, affine: np.ndarray,
                                slice_axis: int) -> np.ndarray:
    """World coordinates (mm) of a mask's in-plane boundary voxels, shape (n, 3).

    The boundary is the mask minus its erosion by a 3x3 square in the plane orthogonal
    to ``slice_axis``. Outside the image counts as foreground (ITK's BinaryErode
    default), so a mask is not eroded where it touches the image edge.
    """
    from scipy import ndimage

    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    structure_shape = [3, 3, 3]
    structure_shape[slice_axis] = 1
    eroded = ndimage.binary_erosion(mask, structure=np.ones(structure_shape, dtype=bool),
                                    border_value=1)
    boundary = mask & ~eroded
    if not boundary.any():  # a mask filling the whole image has no in-plane edge
        boundary = mask
    indices = np.argwhere(boundary).astype(np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    return indices @ affine[:3, :3].T + affine[:3, 3]


def hausdorff95(prediction: np.ndarray, truth: np.ndarray, affine: np.ndarray,
                threshold: float = 0.5, slice_axis: int = 2) -> float:
    """95th-percentile Hausdorff distance in mm, as in the MICCAI WMH 2017 challenge.

    Boundaries are each mask minus its in-plane (3x3, not through-slice) erosion; the
    boundary voxels go to world coordinates with ``affine``; nearest-neighbour distances
    are found both ways with a k-d tree; the result is the larger of the two directed
    95th percentiles (linear interpolation, ``numpy.percentile``'s default).

    Args:
        prediction: (x, y, z) array of the truth's shape (bool, labels or probabilities).
        truth: (x, y, z) array with values 0, 1, 2 (label 2 removed from the prediction).
        affine: (4, 4) voxel -> world (mm) affine of the truth; anisotropic and oblique
            affines are handled exactly.
        threshold: binarisation threshold for float predictions.
        slice_axis: the voxel axis across slices (2: the third axis, as the challenge).

    Returns:
        Distance in mm; NaN when the prediction or the truth is empty.
    """
    from scipy.spatial import cKDTree

    predicted, wmh = _challenge_masks(prediction, truth, threshold)
    if predicted.ndim != 3:
        raise ValueError(f"hausdorff95 needs 3D masks, got shape {predicted.shape}")
    if not predicted.any() or not wmh.any():
        return math.nan
    truth_points = _boundary_world_coordinates(wmh, affine, slice_axis)
    predicted_points = _boundary_world_coordinates(predicted, affine, slice_axis)
    truth_to_prediction, _ = cKDTree(predicted_points).query(truth_points, k=1)
    prediction_to_truth, _ = cKDTree(truth_points).query(predicted_points, k=1)
    return float(max(np.percentile(truth_to_prediction, 95),
                     np.percentile(prediction_to_truth, 95)))


def absolute_volume_difference(prediction: np.ndarray, truth: np.ndarray,
                               threshold: float = 0.5) -> float:
    """|V_prediction - V_truth| / V_truth in percent (label 2 removed first).

    Returns:
        Percent; 0.0 when both are empty, NaN when only the truth is empty.
    """
    predicted, wmh = _challenge_masks(prediction, truth, threshold)
    truth_volume = np.count_nonzero(wmh)
    predicted_volume = np.count_nonzero(predicted)
    if truth_volume == 0:
        return 0.0 if predicted_volume == 0 else math.nan
    return 100.0 * abs(int(predicted_volume) - int(truth_volume)) / int(truth_volume)


def lesion_detection(prediction: np.ndarray, truth: np.ndarray,
                     threshold: float = 0.5) -> dict[str, float]:
    """Lesion-wise recall, precision and F1 with 26-connected components.

    A truth lesion is detected if any of its voxels is predicted; precision is the share
    of predicted components that touch the truth. Recall is 1 when there is no truth
    lesion, precision 1 when nothing is predicted, F1 0 when both are 0.

    Args:
        prediction: array of the truth's shape (bool, labels or probabilities).
        truth: array with values 0, 1, 2 (label 2 removed from the prediction).
        threshold: binarisation threshold for float predictions.

    Returns:
        ``lesion_recall``, ``lesion_precision``, ``lesion_f1``, ``truth_lesions``,
        ``predicted_lesions``, ``detected_lesions`` (truth lesions hit),
        ``true_positive_components`` (predicted components touching the truth).
    """
    from scipy import ndimage

    predicted, wmh = _challenge_masks(prediction, truth, threshold)
    full_connectivity = np.ones((3,) * predicted.ndim, dtype=bool)
    truth_components, truth_lesions = ndimage.label(wmh, structure=full_connectivity)
    predicted_components, predicted_lesions = ndimage.label(predicted,
                                                            structure=full_connectivity)
    detected = np.unique(truth_components[predicted & wmh]).size
    touching = np.unique(predicted_components[predicted & wmh]).size
    recall = 1.0 if truth_lesions == 0 else detected / truth_lesions
    precision = 1.0 if predicted_lesions == 0 else touching / predicted_lesions
    f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return {"lesion_recall": float(recall), "lesion_precision": float(precision),
            "lesion_f1": float(f1), "truth_lesions": int(truth_lesions),
            "predicted_lesions": int(predicted_lesions), "detected_lesions": int(detected),
            "true_positive_components": int(touching)}


def challenge_metrics(prediction: np.ndarray, truth: np.ndarray, affine: np.ndarray,
                      threshold: float = 0.5, slice_axis: int = 2) -> dict[str, float]:
    """All MICCAI WMH 2017 challenge metrics of one case.

    Args:
        prediction: (x, y, z) array of the truth's shape (bool, labels or probabilities).
        truth: (x, y, z) array with values 0, 1, 2.
        affine: (4, 4) voxel -> world (mm) affine of the truth.
        threshold: binarisation threshold for float predictions.
        slice_axis: the voxel axis across slices, for the HD95 boundary.

    Returns:
        ``dice``, ``hd95`` (mm), ``avd`` (%), ``lesion_recall``, ``lesion_f1``, plus
        ``lesion_precision``, lesion counts, ``tp``/``fp``/``fn`` voxel counts and
        ``truth_volume_ml``/``predicted_volume_ml``. Empty cases as in the module table.
    """
    predicted, wmh = _challenge_masks(prediction, truth, threshold)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    tp = int(np.count_nonzero(predicted & wmh))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = int(np.count_nonzero(wmh)) - tp
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    # The helpers re-apply label-2 removal; passing the masks keeps them idempotent.
    result = {
        "dice": dice_from_counts(tp, fp, fn),
        "hd95": hausdorff95(predicted, wmh, affine, slice_axis=slice_axis),
        "avd": absolute_volume_difference(predicted, wmh),
    }
    result.update(lesion_detection(predicted, wmh))
    result.update({"tp": tp, "fp": fp, "fn": fn,
                   "truth_volume_ml": (tp + fn) * voxel_ml,
                   "predicted_volume_ml": (tp + fp) * voxel_ml})
    return result


# ----------------------------------------------------------- the paper's measures

def confusion_counts(prediction: np.ndarray, truth: np.ndarray,
                     mask: Optional[np.ndarray] = None,
                     threshold: float = 0.5) -> np.ndarray:
    """TP, FP, FN, TN voxel counts inside ``mask`` (label 2 ignored).

    Args:
        prediction: array of the truth's shape (bool, labels or probabilities).
        truth: array with values 0, 1, 2.
        mask: boolean region to count in (the brain mask), or None for everything.
        threshold: binarisation threshold for float predictions.

    Returns:
        (4,) int64 array: tp, fp, fn, tn.
    """
    predicted, wmh = _challenge_masks(prediction, truth, threshold)
    region = ~split_truth(truth)[1]
    if mask is not None:
        region &= _as_region(mask, wmh.shape)
    tp = np.count_nonzero(predicted & wmh & region)
    fp = np.count_nonzero(predicted & region) - tp
    positives = np.count_nonzero(wmh & region)
    tn = np.count_nonzero(region) - positives - fp
    return np.array([tp, fp, positives - tp, tn], dtype=np.int64)


def _as_region(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} differs from truth shape {tuple(shape)}")
    return mask.astype(bool, copy=False)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact area under the ROC curve (Az), ties counted half (Mann-Whitney U).

    Args:
        scores: (n,) or any-shape classifier scores (probabilities).
        labels: same shape; truthy = positive. Pass only the voxels to be counted
            (e.g. ``probabilities[brain & (truth != 2)]``).

    Returns:
        AUC in [0, 1]; NaN when there is no positive or no negative.
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores has {scores.size} values, labels {labels.size}")
    positives = int(np.count_nonzero(labels))
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(scores, method="average")
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    if thresholds.size == 0 or not np.all(np.isfinite(thresholds)):
        raise ValueError("thresholds must be a non-empty list of finite numbers")
    if np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be strictly increasing")
    return thresholds


def threshold_counts(probabilities: np.ndarray, truth: np.ndarray,
                     thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                     mask: Optional[np.ndarray] = None) -> np.ndarray:
    """TP, FP, FN, TN at every threshold in one pass (a histogram, not a loop).

    A voxel is predicted positive at threshold t when ``probability >= t``. Each voxel
    is placed in its threshold bin with a binary search, so the cost is
    O(n_voxels log n_thresholds) with bounded temporary memory, and the counts are exact
    for the given thresholds.

    Args:
        probabilities: array of any shape (floats, usually in [0, 1]).
        truth: same shape, values 0, 1, 2 (label 2 ignored) or bool.
        thresholds: (n_thresholds,) strictly increasing.
        mask: boolean region to count in (the brain mask), or None for everything.

    Returns:
        (n_thresholds, 4) int64 array; columns tp, fp, fn, tn.
    """
    thresholds = _check_thresholds(thresholds)
    probabilities = np.asarray(probabilities)
    wmh, ignored = split_truth(truth)
    if probabilities.shape != wmh.shape:
        raise ValueError(f"probabilities shape {probabilities.shape} differs from truth "
                         f"shape {wmh.shape}")
    region = ~ignored
    if mask is not None:
        region &= _as_region(mask, wmh.shape)
    scores = probabilities[region]
    positive = wmh[region]
    if scores.dtype.kind == "f" and np.isnan(scores).any():
        raise ValueError("probabilities contain NaN")
    bins = len(thresholds) + 1
    positive_histogram = np.zeros(bins, dtype=np.int64)
    total_histogram = np.zeros(bins, dtype=np.int64)
    for start in range(0, scores.size, _CHUNK_VOXELS):
        chunk = scores[start:start + _CHUNK_VOXELS]
        # bin k+1 holds scores in [t_k, t_{k+1}); bin 0 holds scores below t_0.
        bin_index = np.searchsorted(thresholds, chunk, side="right")
        total_histogram += np.bincount(bin_index, minlength=bins)
        positive_histogram += np.bincount(bin_index[positive[start:start + _CHUNK_VOXELS]],
                                          minlength=bins)
    # count at or above t_k = sum of bins k+1 .. end
    predicted_at_or_above = np.cumsum(total_histogram[::-1])[::-1][1:]
    tp = np.cumsum(positive_histogram[::-1])[::-1][1:]
    fp = predicted_at_or_above - tp
    positives = int(np.count_nonzero(positive))
    negatives = positive.size - positives
    return np.stack([tp, fp, positives - tp, negatives - fp], axis=1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class DiceCurve:
    """Per-case confusion counts over a threshold grid: Dice and ROC come from these.

    Attributes:
        thresholds: (n_thresholds,) strictly increasing probability thresholds.
        counts: (n_cases, n_thresholds, 4) int64; last axis tp, fp, fn, tn.
        case_ids: (n_cases,) case identifiers, in the order of ``counts``.
    """

    thresholds: np.ndarray
    counts: np.ndarray
    case_ids: tuple[str, ...]

    @property
    def pooled_dice(self) -> np.ndarray:
        """(n_thresholds,) overall Dice: counts summed over cases, then Dice."""
        total = self.counts.sum(axis=0)
        return dice_from_counts(total[:, 0], total[:, 1], total[:, 2])

    @property
    def case_dice(self) -> np.ndarray:
        """(n_cases, n_thresholds) per-case Dice (1.0 where a case has nothing at all)."""
        return dice_from_counts(self.counts[..., 0], self.counts[..., 1], self.counts[..., 2])

    @property
    def mean_dice(self) -> np.ndarray:
        """(n_thresholds,) mean of per-case Dice."""
        return self.case_dice.mean(axis=0)

    def dice(self, statistic: str = "pooled") -> np.ndarray:
        """(n_thresholds,) Dice curve: ``"pooled"`` (overall) or ``"mean"`` per case."""
        _check_statistic(statistic)
        return self.pooled_dice if statistic == "pooled" else self.mean_dice

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """Pooled ROC points from the threshold grid.

        Returns:
            (false_positive_rate, true_positive_rate), each (n_thresholds + 1,), from the
            highest threshold down: starting at (0, 0) (nothing predicted), then one
            point per threshold. NaN rates when there is no positive or no negative.
        """
        total = self.counts.sum(axis=0).astype(np.float64)
        positives = total[0, 0] + total[0, 2]
        negatives = total[0, 1] + total[0, 3]
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = total[:, 0] / positives if positives else np.full(len(total), np.nan)
            fpr = total[:, 1] / negatives if negatives else np.full(len(total), np.nan)
        return np.concatenate([[0.0], fpr[::-1]]), np.concatenate([[0.0], tpr[::-1]])

    def auc(self) -> float:
        """Pooled Az by the trapezoid rule over the threshold grid.

        Exact for scores quantised to the grid; for raw scores use :func:`roc_auc`.
        NaN when there is no positive or no negative voxel.
        """
        fpr, tpr = self.roc()
        if np.isnan(fpr).any() or np.isnan(tpr).any():
            return math.nan
        # the lowest threshold may not reach (1, 1) when scores fall below it
        fpr = np.concatenate([fpr, [1.0]])
        tpr = np.concatenate([tpr, [1.0]])
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))

    def subset(self, case_ids: Sequence[str]) -> "DiceCurve":
        """The curve of some cases, in the given order."""
        position = {case_id: index for index, case_id in enumerate(self.case_ids)}
        missing = [case_id for case_id in case_ids if case_id not in position]
        if missing:
            raise ValueError(f"cases not in the curve: {missing[:5]}")
        order = [position[case_id] for case_id in case_ids]
        return DiceCurve(self.thresholds, self.counts[order], tuple(case_ids))


def dice_threshold_curve(probs_per_case: Sequence[np.ndarray],
                         truths_per_case: Sequence[np.ndarray],
                         thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                         masks_per_case: Optional[Sequence[Optional[np.ndarray]]] = None,
                         case_ids: Optional[Sequence[str]] = None) -> DiceCurve:
    """Dice (and ROC) as a function of the binarisation threshold, for several cases.

    Args:
        probs_per_case: one probability array per case (any shape, per case).
        truths_per_case: matching truth arrays (0, 1, 2; label 2 ignored) or bools.
        thresholds: (n_thresholds,) strictly increasing; e.g. 101 or 1001 in [0, 1].
        masks_per_case: matching brain masks (voxels outside are not counted), or None.
        case_ids: names of the cases; default "0", "1", ...

    Returns:
        A :class:`DiceCurve` with ``pooled_dice``, ``mean_dice``, ``roc()``, ``auc()``.
    """
    if len(probs_per_case) != len(truths_per_case):
        raise ValueError(f"{len(probs_per_case)} probability arrays but "
                         f"{len(truths_per_case)} truths")
    if masks_per_case is None:
        masks_per_case = [None] * len(truths_per_case)
    if len(masks_per_case) != len(truths_per_case):
        raise ValueError(f"{len(masks_per_case)} masks but {len(truths_per_case)} truths")
    if case_ids is None:
        case_ids = [str(index) for index in range(len(truths_per_case))]
    if len(case_ids) != len(truths_per_case):
        raise ValueError(f"{len(case_ids)} case ids but {len(truths_per_case)} truths")
    thresholds = _check_thresholds(thresholds)
    counts = [threshold_counts(probabilities, truth, thresholds, mask)
              for probabilities, truth, mask in zip(probs_per_case, truths_per_case,
                                                     masks_per_case)]
    counts_array = (np.stack(counts) if counts
                    else np.zeros((0, len(thresholds), 4), dtype=np.int64))
    return DiceCurve(thresholds, counts_array, tuple(str(c) for c in case_ids))


def best_threshold(curve: DiceCurve, statistic: str = "pooled") -> tuple[float, float]:
    """The threshold that maximises the Dice (the paper: overall Dice on validation).

    Args:
        curve: a :class:`DiceCurve` of the validation cases.
        statistic: ``"pooled"`` (overall Dice, the paper) or ``"mean"`` per-case Dice.

    Returns:
        (threshold, dice). Ties go to the lowest threshold.
    """
    dice_curve = curve.dice(statistic)
    if dice_curve.size == 0 or len(curve.case_ids) == 0:
        raise ValueError("best_threshold needs at least one case and one threshold")
    index = int(np.argmax(dice_curve))
    return float(curve.thresholds[index]), float(dice_curve[index])


def exact_best_threshold(probs_per_case: Sequence[np.ndarray],
                         truths_per_case: Sequence[np.ndarray],
                         masks_per_case: Optional[Sequence[Optional[np.ndarray]]] = None,
                         ) -> tuple[float, float]:
    """The threshold that maximises the pooled Dice over every distinct probability.

    No grid: the voxels are sorted by probability and the Dice of ``probability >= t`` is
    computed for each distinct value, so the optimum is exact wherever the probabilities
    lie (e.g. all within 0.98-0.99). A voxel with label 2 is ignored; WMH voxels outside
    the mask are missed (false negatives), as when the whole volume is scored with the
    prediction kept to the brain.

    Args:
        probs_per_case: one probability array per case.
        truths_per_case: matching truth arrays (0, 1, 2) or bools.
        masks_per_case: where a voxel can be predicted (the brain), or None for everywhere.

    Returns:
        (threshold, pooled Dice at it). The threshold lies between the last included and
        the next lower distinct probability (a float32 value, so ``>=`` on float32 maps
        selects exactly the same voxels); highest of tied optima. (1.0, NaN) when no case
        holds a WMH voxel.
    """
    if masks_per_case is None:
        masks_per_case = [None] * len(truths_per_case)
    scores, positives, missed = [], [], 0
    for probabilities, truth, mask in zip(probs_per_case, truths_per_case, masks_per_case):
        wmh, ignored = split_truth(truth)
        region = ~ignored
        inside = region & _as_region(mask, wmh.shape) if mask is not None else region
        missed += int(np.count_nonzero(wmh & region & ~inside))
        scores.append(np.asarray(probabilities, np.float32)[inside])
        positives.append(wmh[inside])
    score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    positive = np.concatenate(positives) if positives else np.zeros(0, bool)
    total = int(np.count_nonzero(positive)) + missed
    if total == 0 or score.size == 0:
        return 1.0, math.nan
    if np.isnan(score).any():
        raise ValueError("probabilities contain NaN")
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    true_positives = np.cumsum(positive[order])
    last_of_value = np.append(ranked[1:] != ranked[:-1], True)
    index = np.flatnonzero(last_of_value)
    dice = 2.0 * true_positives[index] / (index + 1 + total)
    best = int(np.argmax(dice))
    value = ranked[index[best]]
    lower = ranked[index[best] + 1] if index[best] + 1 < ranked.size else np.float32(0)
    middle = np.float32((float(value) + float(lower)) / 2.0)
    threshold = middle if lower < middle <= value else value
    return float(threshold), float(dice[best])


# ------------------------------------------------------------------------- bootstrap

def _check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")


def bootstrap_indices(num_cases: int, num_resamples: int, seed: int) -> np.ndarray:
    """Patient-level bootstrap: case indices drawn with replacement.

    Args:
        num_cases: cases in the set.
        num_resamples: bootstrap resamples.
        seed: seed of NumPy's default generator; same seed, same resamples.

    Returns:
        (num_resamples, num_cases) int64 indices.
    """
    if num_cases < 1:
        raise ValueError("bootstrap needs at least one case")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    return np.random.default_rng(seed).integers(0, num_cases, size=(num_resamples, num_cases))


def _resample_weights(num_cases: int, num_resamples: int, seed: int) -> np.ndarray:
    """(num_resamples, num_cases) how often each case is drawn in each resample."""
    indices = bootstrap_indices(num_cases, num_resamples, seed)
    offsets = (np.arange(num_resamples) * num_cases)[:, None]
    return np.bincount((indices + offsets).ravel(),
                       minlength=num_resamples * num_cases).reshape(num_resamples, num_cases)


def _bootstrap_statistic(values: np.ndarray, weights: np.ndarray,
                         statistic: str) -> np.ndarray:
    """Dice of every resample, for counts (n_cases, ..., >=3) or per-case Dice (n_cases,).

    Returns:
        (num_resamples, ...) Dice per resample.
    """
    if statistic == "pooled":
        flat = values.reshape(values.shape[0], -1).astype(np.float64)
        totals = (weights @ flat).reshape((weights.shape[0],) + values.shape[1:])
        return dice_from_counts(totals[..., 0], totals[..., 1], totals[..., 2])
    per_case = values if values.ndim == 1 else dice_from_counts(
        values[..., 0], values[..., 1], values[..., 2])
    flat = np.asarray(per_case, dtype=np.float64).reshape(values.shape[0], -1)
    means = (weights @ flat) / values.shape[0]
    return means.reshape((weights.shape[0],) + np.shape(per_case)[1:])


def _check_case_values(values: np.ndarray, statistic: str, name: str) -> np.ndarray:
    values = np.asarray(values)
    if statistic == "pooled" and (values.ndim != 2 or values.shape[1] < 3):
        raise ValueError(f"{name}: the pooled statistic needs per-case counts of shape "
                         f"(n_cases, 3 or 4) [tp, fp, fn(, tn)], got shape {values.shape}")
    if statistic == "mean" and values.ndim not in (1, 2):
        raise ValueError(f"{name}: the mean statistic needs per-case Dice (n_cases,) or "
                         f"counts (n_cases, 3 or 4), got shape {values.shape}")
    if values.shape[0] < 1:
        raise ValueError(f"{name}: no cases")
    return values


def bootstrap_dice_curve_ci(curve: DiceCurve, num_resamples: int = 1000,
                            confidence: float = 0.95, seed: int = 0,
                            statistic: str = "pooled") -> tuple[np.ndarray, np.ndarray]:
    """Percentile confidence band of a Dice-vs-threshold curve, resampling patients.

    Args:
        curve: per-case counts over thresholds.
        num_resamples: bootstrap resamples of the cases (with replacement).
        confidence: e.g. 0.95 for a 95% band.
        seed: same seed, identical band.
        statistic: ``"pooled"`` overall Dice per resample, or ``"mean"`` per-case Dice.

    Returns:
        (low, high), each (n_thresholds,).
    """
    _check_statistic(statistic)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    weights = _resample_weights(len(curve.case_ids), num_resamples, seed)
    resampled = _bootstrap_statistic(curve.counts, weights, statistic)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha], axis=0)
    return low, high


def bootstrap_dice_ci(values: np.ndarray, num_resamples: int = 1000,
                      confidence: float = 0.95, seed: int = 0,
                      statistic: str = "pooled") -> tuple[float, float]:
    """Percentile confidence interval of one method's Dice, resampling patients.

    Args:
        values: per-case counts (n_cases, 3 or 4) [tp, fp, fn(, tn)]; or, with
            ``statistic="mean"``, per-case Dice (n_cases,).
        num_resamples, confidence, seed, statistic: as :func:`bootstrap_dice_curve_ci`.

    Returns:
        (low, high).
    """
    _check_statistic(statistic)
    values = _check_case_values(values, statistic, "values")
    weights = _resample_weights(values.shape[0], num_resamples, seed)
    resampled = _bootstrap_statistic(values, weights, statistic)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_bootstrap_pvalue(values_a: np.ndarray, values_b: np.ndarray,
                            num_resamples: int = 100, seed: int = 0,
                            statistic: str = "pooled") -> float:
    """The paper's paired patient-level bootstrap p-value for "A is better than B".

    The same resampled patients are used for both methods. The p-value is the share of
    resamples in which B's Dice is strictly higher than A's (the null hypothesis "A is
    no better than B"); small values mean A is significantly better. The paper used 100
    resamples of its 50 test cases and wrote "< 0.01" where no resample favoured B;
    this function then returns 0.0 (report it as ``< 1 / num_resamples``).

    Args:
        values_a, values_b: per-case values of the same cases in the same order: counts
            (n_cases, 3 or 4) [tp, fp, fn(, tn)] for ``statistic="pooled"`` (overall Dice
            of each resample, the default and the paper's Dice); per-case Dice (n_cases,)
            or counts for ``statistic="mean"``.
        num_resamples: bootstrap resamples.
        seed: same seed, same resamples (and the same p-value).
        statistic: ``"pooled"`` or ``"mean"``.

    Returns:
        p-value in [0, 1].
    """
    _check_statistic(statistic)
    values_a = _check_case_values(values_a, statistic, "values_a")
    values_b = _check_case_values(values_b, statistic, "values_b")
    if values_a.shape[0] != values_b.shape[0]:
        raise ValueError(f"paired bootstrap needs the same cases: {values_a.shape[0]} "
                         f"vs {values_b.shape[0]}")
    weights = _resample_weights(values_a.shape[0], num_resamples, seed)
    dice_a = _bootstrap_statistic(values_a, weights, statistic)
    dice_b = _bootstrap_statistic(values_b, weights, statistic)
    return float(np.mean(dice_b > dice_a))


def pvalue_matrix(values_by_method: Sequence[np.ndarray], num_resamples: int = 100,
                  seed: int = 0, statistic: str = "pooled") -> np.ndarray:
    """Pairwise p-values in the layout of the paper's Table 4.

    Entry [i, j] is the share of resamples in which method i's Dice is strictly higher
    than method j's, i.e. the p-value of the null hypothesis "method i is better than
    method j": small values mean method j is significantly better. The diagonal is NaN.

    Args:
        values_by_method: per method, per-case values of the same cases (see
            :func:`paired_bootstrap_pvalue`).
        num_resamples, seed, statistic: as :func:`paired_bootstrap_pvalue`.

    Returns:
        (n_methods, n_methods) float array.
    """
    size = len(values_by_method)
    matrix = np.full((size, size), np.nan)
    for row in range(size):
        for column in range(size):
            if row != column:
                matrix[row, column] = paired_bootstrap_pvalue(
                    values_by_method[column], values_by_method[row], num_resamples, seed,
                    statistic)
    return matrix


# ------------------------------------------------------------------------------ files

def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".nii.gz", ".nii"))


def _case_id(path: Path) -> str:
    from wmh.io import strip_nifti_suffix

    return strip_nifti_suffix(path.name)


def find_cases(path: str | Path, option: str,
               file_names: Sequence[str] = TRUTH_FILE_NAMES) -> dict[str, Path]:
    """Case id -> NIfTI file, for a file or a folder.

    A folder may hold ``<id>.nii[.gz]`` files and/or ``<id>/`` subfolders; a subfolder
    gives its only NIfTI file or, among several, the first of ``file_names`` present
    (``<id>/wmh.nii.gz`` for truths, ``<id>/wmh_mask.nii.gz`` for ``wmh segment``
    outputs). A single file is one case named after the file, or after its folder when
    it has a per-case name (``<id>/wmh.nii.gz``). Hidden entries are skipped.

    Args:
        path: a NIfTI file or a folder.
        option: the command-line option it came from, for messages (e.g. "--pred").
        file_names: preferred file names (without suffix) inside case subfolders.

    Raises:
        WMHError: missing path, no NIfTI files, ambiguous subfolders, duplicate ids.
    """
    path = Path(path)
    if not path.exists():
        raise WMHError(f"{option} {path}: no such file or folder")
    cohort = _cohort_label_files(path, file_names)
    if cohort:
        return cohort
    if path.is_file():
        if not _is_nifti(path):
            raise WMHError(f"{option} {path}: not a NIfTI file (expected .nii or .nii.gz)")
        if _case_id(path) in _PER_CASE_FILE_NAMES:  # e.g. <id>/wmh.nii.gz
            return {path.resolve().parent.name: path}
        return {_case_id(path): path}
    cases: dict[str, Path] = {}

    def add(case_id: str, file: Path) -> None:
        if case_id in cases:
            raise WMHError(f"{option} {path}: case '{case_id}' found twice "
                           f"({cases[case_id]} and {file})")
        cases[case_id] = file

    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):  # e.g. an interrupted run's staging folder
            continue
        if _is_nifti(entry):
            add(_case_id(entry), entry)
        elif entry.is_dir():
            files = sorted(f for f in entry.iterdir() if _is_nifti(f))
            if len(files) > 1:
                by_name = {_case_id(f): f for f in files}
                preferred = [by_name[name] for name in file_names if name in by_name]
                if not preferred:
                    raise WMHError(f"{option} {entry}: several NIfTI files "
                                   f"({', '.join(f.name for f in files[:4])}) and none named "
                                   f"{' or '.join(n + '.nii.gz' for n in file_names)}")
                files = preferred[:1]
            if files:
                add(entry.name, files[0])
    if not cases:
        raise WMHError(f"{option} {path}: no NIfTI files (.nii, .nii.gz) found")
    return cases


def _cohort_label_files(path: Path, file_names: Sequence[str]) -> dict[str, Path]:
    """Label files of a whole cohort (challenge tree, BIDS-like folder or CSV manifest,
    as :func:`wmh.io.discover` finds them), when ``file_names`` asks for labels."""
    from wmh.io import discover

    wanted = {"wmh": "labels", "wmh_observer2": "labels_observer2",
              "brain_mask": "brain_mask"}.get(file_names[0])
    if wanted is None or not (path.is_dir() or path.suffix.lower() == ".csv"):
        return {}
    try:
        subjects = discover(path)
    except WMHError:
        return {}
    files = {s.subject_id: getattr(s, wanted) for s in subjects}
    return {key: value for key, value in files.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """The files of one evaluated case (brain_mask and observer2 may be None)."""

    case_id: str
    prediction: Path
    truth: Path
    brain_mask: Optional[Path] = None


def match_cases(prediction: str | Path, truth: str | Path,
                brain_mask: str | Path | None = None,
                prediction_names: Sequence[str] = MASK_FILE_NAMES,
                ) -> tuple[list[CaseFiles], list[str]]:
    """Pairs predictions with truths (and brain masks) by case id.

    Two single files form one case, whatever their names. When ``truth`` is a cohort
    (challenge tree, BIDS-like folder, CSV manifest), only its cases that have a
    prediction are evaluated.

    Args:
        prediction, truth, brain_mask: files or folders (see :func:`find_cases`).
        prediction_names: preferred prediction file names inside ``<id>/`` folders.

    Returns:
        (cases in truth order, ids of predictions without a truth).

    Raises:
        WMHError: file vs folder, a truth case without prediction or brain mask.
    """
    prediction, truth = Path(prediction), Path(truth)
    cohort_truth = _cohort_label_files(truth, TRUTH_FILE_NAMES)
    truth_cases = cohort_truth or find_cases(truth, "--truth")
    predicted_cases = find_cases(prediction, "--pred", prediction_names)
    masks = (find_cases(brain_mask, "--brain-mask", BRAIN_MASK_FILE_NAMES)
             if brain_mask is not None else None)
    if truth.is_file() != prediction.is_file():
        raise WMHError(f"--pred {prediction}: give a {'file' if truth.is_file() else 'folder'}"
                       f" like --truth {truth}")
    if brain_mask is not None and Path(brain_mask).is_file() != truth.is_file():
        raise WMHError(f"--brain-mask {brain_mask}: give a "
                       f"{'file' if truth.is_file() else 'folder'} like --truth {truth}")
    if truth.is_file():
        mask_file = next(iter(masks.values())) if masks is not None else None
        return [CaseFiles(next(iter(truth_cases)), prediction, truth, mask_file)], []
    if cohort_truth:
        # A whole cohort as truth (e.g. the challenge tree): evaluate the cases that were
        # segmented (usually the test split); a prediction without truth is still listed.
        truth_cases = {k: v for k, v in truth_cases.items() if k in predicted_cases}
    missing = [case_id for case_id in truth_cases if case_id not in predicted_cases]
    if missing:
        raise WMHError(f"--pred {prediction}: no prediction for {len(missing)} truth "
                       f"case(s): {', '.join(missing[:5])}")
    if masks is not None:
        missing = [case_id for case_id in truth_cases if case_id not in masks]
        if missing:
            raise WMHError(f"--brain-mask {brain_mask}: no brain mask for {len(missing)} "
                           f"case(s): {', '.join(missing[:5])}")
    cases = [CaseFiles(case_id, predicted_cases[case_id], file,
                       masks[case_id] if masks is not None else None)
             for case_id, file in truth_cases.items()]
    unmatched = sorted(set(predicted_cases) - set(truth_cases))
    return cases, unmatched


@dataclasses.dataclass
class CaseArrays:
    """One case loaded in the truth's own voxel order (as the challenge script).

    Attributes:
        files: where the arrays came from.
        prediction: (x, y, z) prediction as stored (bool, integer labels or floats).
        truth: (x, y, z) uint8 labels 0, 1, 2.
        affine: (4, 4) truth voxel -> world (mm).
        brain_mask: (x, y, z) bool, or None.
        grid: the truth's :class:`wmh.io.NativeGrid` (other files must lie on it).
    """

    files: CaseFiles
    prediction: np.ndarray
    truth: np.ndarray
    affine: np.ndarray
    brain_mask: Optional[np.ndarray] = None
    grid: object = None

    @property
    def is_probabilistic(self) -> bool:
        """True for float predictions that hold values other than 0 and 1."""
        if not np.issubdtype(self.prediction.dtype, np.floating):
            return False
        return bool(np.any((self.prediction != 0) & (self.prediction != 1)))


def load_label_map(path: str | Path, reference=None) -> tuple[np.ndarray, object]:
    """A label mask (0, 1, 2) validated by :mod:`wmh.io`, in the file's voxel order.

    Args:
        path: NIfTI label file.
        reference: a :class:`wmh.io.NativeGrid` the mask must lie on, or None.

    Returns:
        (x, y, z) uint8 labels in the file's own voxel order, and its NativeGrid.
    """
    from wmh.io import load_labels

    working, grid = load_labels(path, reference)
    return grid.to_native(working), grid


def load_case(files: CaseFiles, prediction_is_labels: bool = False) -> CaseArrays:
    """Loads and checks one case's files.

    Args:
        files: the case's files.
        prediction_is_labels: the prediction is a rater's label map (0, 1, 2), validated
            like a truth (e.g. observer 2); otherwise any numeric image.

    Raises:
        WMHError: unreadable files, truth values outside {0, 1, 2}, a prediction or brain
            mask not on the truth's grid (shape and affine), a non-binary brain mask.
    """
    from wmh.io import NativeGrid, check_same_grid, load_nifti

    truth, truth_grid = load_label_map(files.truth)
    if prediction_is_labels:
        prediction, _ = load_label_map(files.prediction, truth_grid)
    else:
        prediction, image = load_nifti(files.prediction)
        check_same_grid(truth_grid, NativeGrid.from_image(image, files.prediction),
                        why=f"prediction must lie on the truth grid of {files.truth.name}")
    brain_mask = None
    if files.brain_mask is not None:
        brain_labels, _ = load_label_map(files.brain_mask, truth_grid)
        if brain_labels.max() > 1:
            raise WMHError(f"{files.brain_mask}: brain mask must be binary (0/1)")
        brain_mask = brain_labels.astype(bool)
    return CaseArrays(files, np.asarray(prediction), truth, truth_grid.affine, brain_mask,
                      truth_grid)


def evaluate_arrays(case: CaseArrays, threshold: float = 0.5) -> dict:
    """Metrics of one loaded case: challenge metrics, plus brain-mask Dice and Az.

    Returns:
        The :func:`challenge_metrics` entries with ``id``; with a brain mask also
        ``dice_brain`` (Dice inside the mask, the paper's Dice) and ``brain_tp``,
        ``brain_fp``, ``brain_fn``; for probabilistic predictions ``auc`` (inside the
        brain mask when given, else over the whole image; label 2 excluded).
    """
    result = {"id": case.files.case_id}
    result.update(challenge_metrics(case.prediction, case.truth, case.affine, threshold))
    if case.brain_mask is not None:
        tp, fp, fn, _ = confusion_counts(case.prediction, case.truth, case.brain_mask,
                                         threshold)
        result.update({"dice_brain": dice_from_counts(tp, fp, fn), "brain_tp": int(tp),
                       "brain_fp": int(fp), "brain_fn": int(fn)})
    if case.is_probabilistic:
        wmh, ignored = split_truth(case.truth)
        region = ~ignored if case.brain_mask is None else ~ignored & case.brain_mask
        result["auc"] = roc_auc(case.prediction[region], wmh[region])
    result.update({"prediction_file": str(case.files.prediction),
                   "truth_file": str(case.files.truth)})
    return result


def summarize_cases(cases: Sequence[dict]) -> dict:
    """Means over cases (NaN left out), the count of undefined values, pooled Dice.

    Returns:
        ``num_cases``, ``mean`` and ``std`` per metric, ``undefined`` (NaN count per
        metric), ``pooled_dice`` (overall Dice from summed counts) and, with brain
        masks, ``pooled_dice_brain``.
    """
    metrics = [name for name in CHALLENGE_METRICS + ("lesion_precision", "dice_brain",
                                                     "auc", "truth_volume_ml",
                                                     "predicted_volume_ml")
               if cases and all(name in case for case in cases)]
    summary: dict = {"num_cases": len(cases), "mean": {}, "std": {}, "undefined": {}}
    for name in metrics:
        values = np.array([case[name] for case in cases], dtype=np.float64)
        defined = values[~np.isnan(values)]
        summary["mean"][name] = float(defined.mean()) if defined.size else math.nan
        summary["std"][name] = float(defined.std()) if defined.size else math.nan
        summary["undefined"][name] = int(values.size - defined.size)
    if cases:
        totals = np.array([[case["tp"], case["fp"], case["fn"]] for case in cases]).sum(0)
        summary["pooled_dice"] = dice_from_counts(*totals)
        if all("brain_tp" in case for case in cases):
            totals = np.array([[case["brain_tp"], case["brain_fp"], case["brain_fn"]]
                               for case in cases]).sum(0)
            summary["pooled_dice_brain"] = dice_from_counts(*totals)
    return summary


SEGMENTATION_REPORT = "report.json"  # what `wmh segment` writes beside each mask
DEFAULT_THRESHOLD = 0.5  # for probability maps that record no threshold of their own


def recorded_threshold(prediction: str | Path) -> Optional[float]:
    """The threshold a ``wmh segment`` output was written with, or None.

    ``prediction`` is a segmentation's ``<id>/wmh_mask.nii.gz`` or
    ``<id>/wmh_probability.nii.gz``; the threshold is read from ``<id>/report.json``
    (its ``threshold`` entry). Anything else has no recorded threshold.
    """
    import json

    prediction = Path(prediction)
    if _case_id(prediction) not in PROBABILITY_FILE_NAMES:
        return None
    report = prediction.parent / SEGMENTATION_REPORT
    try:
        recorded = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    value = recorded.get("threshold") if isinstance(recorded, dict) else None
    if value is None and isinstance(recorded, dict):  # nested provenance, if any
        value = (recorded.get("provenance") or {}).get("threshold")
    return float(value) if isinstance(value, (int, float)) else None


def check_threshold(threshold: Optional[float]) -> None:
    """None (the segmentation's own) or a number in [0, 1]."""
    if threshold is not None and (not math.isfinite(threshold)
                                  or not 0.0 <= threshold <= 1.0):
        raise WMHError(f"--threshold {threshold}: must lie in [0, 1]")


def case_threshold(prediction: Path, threshold: Optional[float],
                   notes: Optional[list] = None) -> float:
    """The threshold one prediction file is scored at.

    Without ``threshold``: the one its segmentation recorded, else
    :data:`DEFAULT_THRESHOLD`. With one that differs from the recorded threshold, a
    line saying so is appended to ``notes``.
    """
    recorded = recorded_threshold(prediction)
    if threshold is None:
        return DEFAULT_THRESHOLD if recorded is None else recorded
    if recorded is not None and recorded != threshold and notes is not None:
        notes.append(f"{prediction}: thresholding wmh_probability at {threshold:g}, not "
                     f"the segmentation's {recorded:g}")
    return threshold


def evaluate_cases(pred: str | Path, truth: str | Path,
                   brain_mask: str | Path | None = None, threshold: Optional[float] = None,
                   progress: bool = False) -> dict:
    """Evaluates predictions against truths: the API behind ``wmh evaluate``.

    One threshold per segmentation: by default a ``wmh segment`` folder is scored on the
    mask it wrote (``<id>/wmh_mask.nii.gz``), and a segmentation's probability map at
    the threshold its ``report.json`` records; other probability maps at 0.5. An
    explicit ``threshold`` scores the probability maps (``<id>/wmh_probability``) at
    that value instead, and each case where it differs from the recorded one gets a
    line in ``notes``.

    Args:
        pred: a NIfTI file or a folder of them (``<id>.nii.gz`` or ``<id>/…``).
        truth: the same kind of path; cases matched by id (labels 0, 1, 2).
        brain_mask: optional file/folder of brain masks for the paper's Dice and Az.
        threshold: binarisation threshold for float (probability) predictions; None =
            each segmentation's own (see above).
        progress: show a progress bar on stderr.

    Returns:
        ``{"cases": [per-case dicts, see evaluate_arrays, with "threshold"], "summary":
        ..., "threshold" (as given, None = the segmentations'), "notes": [lines],
        "brain_mask": bool, "unmatched_predictions": [ids]}``. NaN marks undefined
        values (see the module docstring); :func:`to_json` writes them as null.

    Raises:
        WMHError: unreadable or mismatched files, missing cases.
    """
    check_threshold(threshold)
    names = MASK_FILE_NAMES if threshold is None else PROBABILITY_FILE_NAMES
    cases, unmatched = match_cases(pred, truth, brain_mask, names)
    notes: list[str] = []
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="evaluate", unit="case")
    results = []
    for files in iterator:
        used = case_threshold(files.prediction, threshold, notes)
        results.append({**evaluate_arrays(load_case(files), used), "threshold": used})
    return {"cases": results, "summary": summarize_cases(results),
            "threshold": threshold, "notes": notes, "brain_mask": brain_mask is not None,
            "unmatched_predictions": unmatched}


def to_json_safe(value):
    """A copy of nested dicts/lists/NumPy values that ``json.dumps`` accepts (NaN/Inf
    -> None, NumPy scalars -> Python numbers, Paths -> str)."""
    if isinstance(value, dict):
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json_safe(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(evaluation: dict, indent: Optional[int] = None) -> str:
    """Strict JSON text of an evaluation (NaN written as null)."""
    import json

    return json.dumps(to_json_safe(evaluation), indent=indent, allow_nan=False)
