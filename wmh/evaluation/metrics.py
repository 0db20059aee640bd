"""Metric maths: MICCAI WMH 2017 challenge metrics and the paper's measures, on arrays.

Job: pure functions of NumPy arrays (per-case metrics, Dice and ROC over thresholds, the
Dice-maximising threshold, summaries of per-case results), usable from training code.
Must not: read or write files, import nibabel, TensorFlow, MLflow or matplotlib, or raise
:class:`wmh.errors.WMHError` (bad arrays are a ``ValueError``). Loading cases is
:mod:`wmh.evaluation.cases`; bootstrap statistics are :mod:`wmh.evaluation.bootstrap`.

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
and paired patient-level bootstrap p-values (:mod:`wmh.evaluation.bootstrap`). "Overall"
(pooled) Dice sums TP, FP and FN over all cases before forming ``2 TP / (2 TP + FP + FN)``;
it is the default statistic on every bootstrap resample as well, because the paper
chooses thresholds on the overall Dice. The mean of per-case Dice is available everywhere
with ``statistic="mean"``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

CHALLENGE_METRICS = ("dice", "hd95", "avd", "lesion_recall", "lesion_f1")
DEFAULT_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # probability thresholds for curves
STATISTICS = ("pooled", "mean")  # bootstrap statistic: overall Dice or mean per-case Dice
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
        check_statistic(statistic)
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


def check_statistic(statistic: str) -> None:
    """Raises ValueError unless ``statistic`` is one of :data:`STATISTICS`."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")


# ------------------------------------------------------------------------- summaries

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
