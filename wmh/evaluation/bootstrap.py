"""Patient-level bootstrap statistics of the paper: confidence intervals and bands of the
Dice, and paired p-values between methods.

Job: resample cases (patients) with replacement, seeded, and compute the overall
("pooled") or mean per-case Dice of every resample from per-case counts.
Must not: read files, draw, or talk to MLflow; it works on arrays of per-case counts
(or per-case Dice) and :class:`wmh.evaluation.metrics.DiceCurve` objects.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from wmh.evaluation.metrics import DiceCurve, check_statistic, dice_from_counts


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
    check_statistic(statistic)
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
    check_statistic(statistic)
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
    check_statistic(statistic)
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
