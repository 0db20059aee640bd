"""Probabilities that mean what they say: calibration of a model's P(WMH) (pure numpy).

The networks are trained on class-balanced voxel samples (:mod:`wmh.sampling`: about as
many normal voxels as WMH voxels), while inside a brain perhaps 1 voxel in 100 is WMH.
A classifier trained at sample prevalence ``pi_s`` and used at prevalence ``pi`` sees its
odds inflated by ``(pi_s / (1 - pi_s)) / (pi / (1 - pi))`` (a prior shift): every bright
voxel goes to P ~ 1 and the Dice-optimal threshold to 0.97-0.99. Two corrections, both
monotone (the ranking of voxels, hence the ROC, is unchanged):

* ``prior``: Bayes' rule for the change of class prior,
  ``p' = p w / (p w + 1 - p)`` with ``w = (pi / (1 - pi)) / (pi_s / (1 - pi_s))``;
  ``pi`` is the WMH prevalence among brain voxels of the validation (target) subjects,
  ``pi_s`` the positive share of the training samples.
* ``platt``: logistic regression on the log-odds, ``p' = sigmoid(a logit(p) + b)``, fitted
  on validation voxels (all WMH voxels and a seeded subsample of the others, reweighted
  to their true number, so the fit sees the true prevalence). With ``a = 1`` it is the
  prior shift with ``b = log w``; the slope also corrects over- or under-confidence.
* ``none``: the network's output as it is (the paper's).

Both corrections assume every scan has the validation subjects' WMH prevalence, but WMH
load varies a hundredfold between people (under 1 mL to over 100 mL): at the validation
prevalence a heavy load reads too unlikely and a clean brain too likely. Prevalence
adaptation (``adaptation="prevalence"``) estimates each scan's own prevalence from its
calibrated probabilities by expectation-maximisation (Saerens, Latinne & Decaestecker,
Neural Computation 14, 2002: the maximum-likelihood prior of the unlabelled voxels) and
shifts the scan's probabilities to it. Monotone within a scan (its ROC is unchanged); it
changes which voxels pass the one threshold, scan by scan.

The expected calibration error (ECE: equal-width bins, |mean P - observed WMH fraction|
weighted by the bin's share of voxels) and the reliability curve say how well a
probability map is calibrated. Voxels labelled 2 (other pathology) are left out, as
everywhere in the metrics. Every function is safe at p = 0 and p = 1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

METHODS = ("platt", "prior", "none")
ADAPTATIONS = ("none", "prevalence")
ADAPTATION_ITERATIONS = 200  # EM steps at most (it converges in 10-50 on real scans)
ADAPTATION_TOLERANCE = 1e-7  # stop when the prevalence moves less than this
ADAPTATION_RANGE = (1e-6, 0.5)  # the estimated prevalence stays inside (no brain is half WMH)
DEFAULT_BINS = 15
MAX_FIT_VOXELS = 400_000  # Platt fit: every WMH voxel plus negatives up to this many voxels
LOGIT_EPSILON = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the log-odds


def logit(probability) -> np.ndarray:
    """log(p / (1 - p)) in float64, p clipped to [1e-7, 1 - 1e-7] (finite at 0 and 1)."""
    p = np.clip(np.asarray(probability, np.float64), LOGIT_EPSILON, 1.0 - LOGIT_EPSILON)
    return np.log(p) - np.log1p(-p)


def sigmoid(value) -> np.ndarray:
    """1 / (1 + exp(-x)) in float64 without overflow for large |x|."""
    value = np.asarray(value, np.float64)
    exp = np.exp(-np.abs(value))
    return np.where(value >= 0, 1.0 / (1.0 + exp), exp / (1.0 + exp))


def prior_weight(prevalence: float, sample_positive_share: float) -> float:
    """The odds ratio ``w`` of the prior-shift correction: target odds / sample odds.

    Raises:
        ValueError: a prevalence or share outside (0, 1).
    """
    for name, value in (("prevalence", prevalence),
                        ("sample_positive_share", sample_positive_share)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {value}")
    return (prevalence / (1.0 - prevalence)) / (sample_positive_share /
                                                (1.0 - sample_positive_share))


def prior_shift(probability, weight: float) -> np.ndarray:
    """``p w / (p w + 1 - p)`` in float64 (exact 0 -> 0 and 1 -> 1; w > 0)."""
    p = np.clip(np.asarray(probability, np.float64), 0.0, 1.0)
    return p * weight / (p * weight + (1.0 - p))


def adapt_prevalence(probability, source_prevalence: float,
                     max_iterations: int = ADAPTATION_ITERATIONS,
                     tolerance: float = ADAPTATION_TOLERANCE) -> tuple[np.ndarray, float]:
    """A scan's probabilities shifted to its own WMH prevalence, estimated by EM.

    ``probability`` is calibrated at ``source_prevalence``. Each step shifts it to the
    current estimate ``pi`` (:func:`prior_shift` by :func:`prior_weight`, the odds of ``pi``
    over the source's) and takes the shifted mean as the next ``pi`` (Saerens et al. 2002),
    until ``pi`` moves less than ``tolerance``. ``pi`` stays within :data:`ADAPTATION_RANGE`.

    Args:
        probability: (N,) calibrated P(WMH) of one scan's brain voxels.
        source_prevalence: the WMH prevalence the probabilities are calibrated to, in (0, 1).

    Returns:
        (the shifted probabilities, float64; the estimated prevalence). No voxel: the
        input and ``source_prevalence``.

    Raises:
        ValueError: a source prevalence outside (0, 1).
    """
    if not 0.0 < source_prevalence < 1.0:
        raise ValueError(f"source prevalence must lie in (0, 1), got {source_prevalence}")
    p = np.clip(np.asarray(probability, np.float64), 0.0, 1.0)
    if p.size == 0:
        return p, float(source_prevalence)
    low, high = ADAPTATION_RANGE
    estimate = float(source_prevalence)
    for _ in range(max_iterations):
        shifted = prior_shift(p, prior_weight(estimate, source_prevalence))
        updated = float(np.clip(shifted.mean(), low, high))
        converged = abs(updated - estimate) < tolerance
        estimate = updated
        if converged:
            break
    return prior_shift(p, prior_weight(estimate, source_prevalence)), estimate


def fit_platt(probability, labels, weights=None, max_iterations: int = 50) -> tuple[float, float]:
    """Weighted logistic regression of the labels on ``logit(p)`` (Newton's method).

    Args:
        probability: (N,) the model's P(WMH).
        labels: (N,) 0/1 (or bool).
        weights: (N,) per-voxel weights (e.g. inverse subsampling rates), or None.
        max_iterations: Newton steps at most (it converges in about 10).

    Returns:
        (slope a, intercept b) of ``p' = sigmoid(a logit(p) + b)``.

    Raises:
        ValueError: the labels hold one class only (nothing to fit).
    """
    score = logit(probability).ravel()
    target = np.asarray(labels, np.float64).ravel()
    weight = np.ones_like(score) if weights is None else np.asarray(weights, np.float64).ravel()
    if not (np.any(target > 0.5) and np.any(target < 0.5)):
        raise ValueError("Platt scaling needs both WMH and normal voxels")
    design = np.stack([score, np.ones_like(score)], axis=1)
    ridge = 1e-9 * weight.sum()  # keeps the Hessian invertible if logit(p) is constant
    parameters = np.array([1.0, 0.0])

    def loss(values: np.ndarray) -> float:
        z = design @ values  # -log-likelihood: log(1 + e^z) - y z, computed stably
        return float(np.sum(weight * (np.logaddexp(0.0, z) - target * z)))

    current = loss(parameters)
    for _ in range(max_iterations):
        fitted = sigmoid(design @ parameters)
        gradient = design.T @ (weight * (fitted - target))
        hessian = (design * (weight * fitted * (1.0 - fitted))[:, None]).T @ design
        step = np.linalg.solve(hessian + ridge * np.eye(2), gradient)
        size = 1.0
        while size > 1e-6:  # halve the step until the loss does not rise
            candidate = parameters - size * step
            value = loss(candidate)
            if value <= current:
                break
            size /= 2
        else:
            break
        converged = abs(current - value) <= 1e-12 * max(abs(current), 1.0)
        parameters, current = candidate, value
        if converged:
            break
    return float(parameters[0]), float(parameters[1])


def fit_sample(labels, max_voxels: int = MAX_FIT_VOXELS, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Voxels for a Platt fit: every positive, negatives subsampled (seeded) so that at
    most ``max_voxels`` are kept, each negative weighted by (negatives / kept negatives).

    Returns:
        (indices into ``labels``, their weights).
    """
    labels = np.asarray(labels).ravel()
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels != 1)
    keep = max(max_voxels - positives.size, 1)
    if negatives.size <= keep:
        chosen = negatives
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(negatives, keep, replace=False))
    weights = np.concatenate([np.ones(positives.size),
                              np.full(chosen.size, negatives.size / max(chosen.size, 1))])
    return np.concatenate([positives, chosen]), weights


@dataclasses.dataclass(frozen=True)
class Reliability:
    """A reliability curve over equal-width bins of P.

    Attributes:
        edges: (bins + 1,) bin edges over [0, 1].
        counts: (bins,) voxels per bin.
        mean_probability: (bins,) mean P per bin (NaN for an empty bin).
        observed: (bins,) WMH fraction per bin (NaN for an empty bin).
    """

    edges: np.ndarray
    counts: np.ndarray
    mean_probability: np.ndarray
    observed: np.ndarray

    def ece(self) -> float:
        """Expected calibration error: sum over bins of share x |mean P - observed|."""
        total = self.counts.sum()
        if total == 0:
            return math.nan
        filled = self.counts > 0
        gaps = np.abs(self.mean_probability[filled] - self.observed[filled])
        return float(np.sum(self.counts[filled] / total * gaps))


def reliability(probability, labels, bins: int = DEFAULT_BINS) -> Reliability:
    """The reliability curve of probabilities against 0/1 labels (label 2 left out)."""
    p = np.clip(np.asarray(probability, np.float64).ravel(), 0.0, 1.0)
    y = np.asarray(labels).ravel()
    keep = y != 2
    p, positive = p[keep], (y[keep] == 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)  # p = 1 in the last bin
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    sums = np.bincount(index, weights=p, minlength=bins)
    hits = np.bincount(index, weights=positive.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        observed = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return Reliability(edges, counts, mean, observed)


def expected_calibration_error(probability, labels, bins: int = DEFAULT_BINS) -> float:
    """ECE over ``bins`` equal-width bins (label 2 left out); NaN for no voxel."""
    return reliability(probability, labels, bins).ece()


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How a model's P(WMH) is corrected (kept in ``wmh_model.json`` as ``calibration``).

    Attributes:
        method: "none", "prior" or "platt".
        parameters: "prior": ``{"weight": w}``; "platt": ``{"slope": a, "intercept": b}``.
        validation_prevalence: WMH share of the brain voxels it was fitted on.
        sample_positive_share: WMH share of the training samples (None: unknown).
        validation_ece_before, validation_ece_after: ECE of the fitting voxels with the
            network's output and with this calibration (its adaptation included).
        adaptation: "none", or "prevalence": each scan's probabilities shifted to its own
            WMH prevalence (:func:`adapt_prevalence`, from ``validation_prevalence``)
            wherever :meth:`apply` is given the scan's brain mask.
    """

    method: str = "none"
    parameters: dict = dataclasses.field(default_factory=dict)
    validation_prevalence: Optional[float] = None
    sample_positive_share: Optional[float] = None
    validation_ece_before: Optional[float] = None
    validation_ece_after: Optional[float] = None
    adaptation: str = "none"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r} is not one of "
                             f"{', '.join(METHODS)}")
        needed = {"none": (), "prior": ("weight",), "platt": ("slope", "intercept")}
        missing = [name for name in needed[self.method] if name not in self.parameters]
        if missing:
            raise ValueError(f"calibration method {self.method!r} needs parameters "
                             f"{', '.join(missing)}")
        if self.adaptation not in ADAPTATIONS:
            raise ValueError(f"calibration adaptation {self.adaptation!r} is not one of "
                             f"{', '.join(ADAPTATIONS)}")
        prevalence = self.validation_prevalence
        if self.adaptation == "prevalence" and not (prevalence is not None
                                                     and 0.0 < prevalence < 1.0):
            raise ValueError("calibration adaptation 'prevalence' needs a validation_prevalence "
                             f"in (0, 1), got {prevalence}")

    def label(self) -> str:
        """The method, "+prevalence" when adapted (reports' ``calibration`` field)."""
        return self.method if self.adaptation == "none" else f"{self.method}+{self.adaptation}"

    def transform(self, probability) -> np.ndarray:
        """The correction of P alone, float64 (no masking, no rounding)."""
        if self.method == "prior":
            return prior_shift(probability, float(self.parameters["weight"]))
        if self.method == "platt":
            return sigmoid(float(self.parameters["slope"]) * logit(probability)
                           + float(self.parameters["intercept"]))
        return np.clip(np.asarray(probability, np.float64), 0.0, 1.0)

    def apply(self, probability, brain_mask=None) -> np.ndarray:
        """The calibrated probability map: float32 in [0, 1]; exact zeros (voxels outside
        the brain, never classified) stay 0, and so does everything outside
        ``brain_mask`` when given. With ``brain_mask`` (one scan's) the map is then
        :meth:`adapt`-ed to the scan's prevalence."""
        probability = np.asarray(probability)
        result = np.where(probability == 0, 0.0, self.transform(probability))
        if brain_mask is not None:
            result = self.adapt(result * np.asarray(brain_mask, bool), brain_mask)
        return np.clip(result, 0.0, 1.0).astype(np.float32)

    def adapt(self, probability, brain_mask) -> np.ndarray:
        """One scan's calibrated map shifted to its own prevalence over ``brain_mask``
        (adaptation "prevalence"; float32, 0 outside the mask), or as it is (float32)."""
        probability = np.asarray(probability, np.float32)
        if self.adaptation == "none":
            return probability
        inside = np.asarray(brain_mask, bool)
        adapted, _ = adapt_prevalence(probability[inside], float(self.validation_prevalence))
        result = np.zeros_like(probability)
        result[inside] = adapted
        return result

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "Calibration":
        """From :meth:`to_dict`; None or {} (contracts from before calibration) = none.

        Raises:
            ValueError: an unknown method, missing parameters or unknown fields.
        """
        if not values:
            return cls()
        values = dict(values)
        values["parameters"] = {key: float(value) for key, value in
                                dict(values.get("parameters") or {}).items()}
        return cls(**values)


def _finite_or_none(value: float) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def fit_calibration(method: str, probability, labels,
                    sample_positive_share: Optional[float] = None, bins: int = DEFAULT_BINS,
                    max_voxels: int = MAX_FIT_VOXELS, seed: int = 0) -> Calibration:
    """Fits a calibration on validation voxels.

    Args:
        method: "platt", "prior" or "none".
        probability: (N,) the network's P(WMH) of the brain voxels (native grid).
        labels: (N,) their labels 0/1/2 (2 left out).
        sample_positive_share: WMH share of the training samples; needed by "prior".
        bins: ECE bins.
        max_voxels, seed: the Platt fit's subsample (:func:`fit_sample`).

    Returns:
        A :class:`Calibration`; method "none" when the voxels hold one class only
        (nothing to calibrate against), with the ECE of the output as it is.

    Raises:
        ValueError: an unknown method, or "prior" without a share in (0, 1).
    """
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    p = np.asarray(probability, np.float64).ravel()
    y = np.asarray(labels).ravel()
    keep = y != 2
    p, y = p[keep], (y[keep] == 1).astype(np.uint8)
    prevalence = float(y.mean()) if y.size else math.nan
    before = expected_calibration_error(p, y, bins)
    common = dict(validation_prevalence=_finite_or_none(prevalence),
                  sample_positive_share=_finite_or_none(sample_positive_share),
                  validation_ece_before=_finite_or_none(before))
    if method == "none" or not 0.0 < prevalence < 1.0:
        return Calibration("none", {}, **common, validation_ece_after=_finite_or_none(before))
    if method == "prior":
        if sample_positive_share is None or not 0.0 < sample_positive_share < 1.0:
            raise ValueError("prior-shift calibration needs the training samples' positive "
                             f"share in (0, 1), got {sample_positive_share}")
        parameters = {"weight": prior_weight(prevalence, sample_positive_share)}
    else:
        indices, weights = fit_sample(y, max_voxels, seed)
        slope, intercept = fit_platt(p[indices], y[indices], weights)
        parameters = {"slope": slope, "intercept": intercept}
    fitted = Calibration(method, parameters, **common)
    after = expected_calibration_error(fitted.apply(p), y, bins)
    return dataclasses.replace(fitted, validation_ece_after=_finite_or_none(after))
