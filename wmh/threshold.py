"""The validation verdict shared by the CNNs and the random forest: calibration and
threshold on whole validation volumes, and the sample loss.

The binarisation threshold is the one that maximises the overall (pooled) Dice of the
validation subjects, or with ``train.threshold_objective: mean`` the mean of their Dice
(:func:`mean_dice_threshold`), as the test is scored: whole volumes resampled to their
native FLAIR grids as ``wmh segment`` does (:func:`native_validation`), the pooled Dice
searched exactly over every distinct probability (:func:`choose_threshold`). Before the
threshold is chosen the probabilities are calibrated (``train.calibration``,
:mod:`wmh.calibration`): the balanced training samples push every bright voxel towards
P = 1; the correction is fitted on the same native validation voxels and the threshold is
chosen on the calibrated probabilities (:func:`calibrated_threshold`).
:func:`log_calibration` records the verdict in the active MLflow run. :func:`sample_loss`
is the validation loss both report per epoch.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from wmh.errors import WMHError

VALIDATION_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 201), 6)
# What the validation threshold maximises (``train.threshold_objective``): the Dice of all
# validation voxels pooled, or the mean of the subjects' Dice (as the MICCAI challenge
# ranks), where one heavy load weighs no more than one light one.
THRESHOLD_OBJECTIVES = ("pooled", "mean")
MEAN_OBJECTIVE_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 1001), 6)  # its search grid


def sample_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of balanced samples' P(WMH) ``scores`` against their 0/1
    ``labels`` (probabilities clipped to [1e-7, 1]); NaN for no sample."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return math.nan
    return float(np.mean(-np.log(np.clip(np.where(labels == 1, scores, 1 - scores),
                                         1e-7, 1.0))))


def native_validation(prepared, probability: np.ndarray):
    """A validation subject as the test is scored: the working-grid probability resampled
    to the native FLAIR grid exactly as ``wmh segment`` does (linear, clipped to [0, 1],
    kept to the resampled brain mask) and the native labels (the labels file the subject
    was prepared from when it is still readable, else the working labels resampled by
    nearest neighbour).

    Returns:
        (probability float32, labels uint8, brain bool), each on the native grid in
        working orientation.
    """
    from wmh import io

    brain = prepared.to_native_working(prepared.brain_mask.astype(np.uint8), 0) > 0
    native = np.clip(prepared.to_native_working(probability, order=1), 0, 1) * brain
    source = (prepared.provenance or {}).get("inputs", {}).get("labels", {}).get("path")
    if source and Path(source).is_file():
        truth, _ = io.load_labels(source, prepared.native_grid())
    else:
        truth = prepared.to_native_working(prepared.labels, 0)
    return native.astype(np.float32), truth.astype(np.uint8), brain


def native_validations(subjects, probabilities, subject_ids):
    """The validation subjects as the test is scored (:func:`native_validation`), each
    probability volume checked to be finite.

    Returns:
        (native probabilities, native labels, native brain masks): three lists.

    Raises:
        WMHError: a probability volume holds NaN or inf (training diverged).
    """
    natives = []
    for subject_id, prepared, probability in zip(subject_ids, subjects, probabilities):
        if not np.all(np.isfinite(probability)):
            raise WMHError(f"validation subject {subject_id}: the model's probabilities are "
                           "not finite (training diverged; lower train.learning_rate)")
        natives.append(native_validation(prepared, probability))
    scores, truths, brains = (list(part) for part in zip(*natives))
    return scores, truths, brains


def threshold_curve(scores, truths, brains, subject_ids):
    """The Dice-optimal threshold of native validation volumes, searched exactly over
    every distinct probability (:func:`wmh.evaluation.metrics.exact_best_threshold`), its
    Dice, and their DiceCurve (for the figures and the voxel-wise AUC inside the brain)."""
    from wmh.evaluation import metrics

    threshold, dice = metrics.exact_best_threshold(scores, truths, brains)
    inside = np.concatenate([score[brain] for score, brain in zip(scores, brains)])
    fine = np.quantile(inside, np.linspace(0, 1, 201)) if inside.size else []
    grid = np.unique(np.concatenate([VALIDATION_THRESHOLDS, fine, [threshold]]).clip(0, 1))
    curve = metrics.dice_threshold_curve(scores, truths, grid, brains, subject_ids)
    return threshold, dice, curve


def choose_threshold(subjects, probabilities, subject_ids):
    """The binarisation threshold of the network's uncalibrated output: the one that
    maximises the overall Dice of the validation subjects on their native grids
    (:func:`threshold_curve`); :func:`calibrated_threshold` calibrates first.

    Args:
        subjects: the validation PreparedSubjects.
        probabilities: their working-grid probability volumes, in the same order.
        subject_ids: their ids (the curve's case ids).

    Returns:
        (threshold, overall native Dice at it, DiceCurve of the native volumes).

    Raises:
        WMHError: a probability volume holds NaN or inf (training diverged).
    """
    return threshold_curve(*native_validations(subjects, probabilities, subject_ids),
                           subject_ids)


@dataclasses.dataclass(frozen=True)
class ThresholdChoice:
    """The validation subjects' verdict: the calibration, then the threshold on it.

    Attributes:
        threshold: Dice-optimal threshold of the calibrated probabilities.
        dice: overall native Dice at it.
        auc: voxel-wise AUC inside the brain (of ``curve``).
        uncalibrated_threshold: Dice-optimal threshold of the network's own output.
        calibration: the fitted :class:`wmh.calibration.Calibration`.
        curve: DiceCurve of the calibrated native volumes (None: no validation subject).
        reliability: {"uncalibrated", "calibrated"} -> :class:`wmh.calibration.Reliability`
            of the brain voxels.
    """

    threshold: float
    dice: float
    auc: float
    uncalibrated_threshold: float
    calibration: object
    curve: object = None
    reliability: dict = dataclasses.field(default_factory=dict)

    def contract_fields(self) -> dict:
        """The :class:`wmh.contract.ModelContract` fields it decides besides ``threshold``."""
        return {"calibration": self.calibration.to_dict(),
                "uncalibrated_threshold": float(self.uncalibrated_threshold)}


def mean_dice_threshold(scores, truths, brains, subject_ids) -> tuple[float, float]:
    """The threshold (0.001 steps; the highest of tied optima) that maximises the mean of
    the subjects' Dice, and that mean. Subjects without a WMH voxel are left out (their
    Dice is 0 or 1, by a single false positive); with none left, the pooled optimum
    (:func:`wmh.evaluation.metrics.exact_best_threshold`)."""
    from wmh.evaluation import metrics

    keep = [index for index, truth in enumerate(truths)
            if np.any(metrics.split_truth(truth)[0])]
    if not keep:
        return metrics.exact_best_threshold(scores, truths, brains)
    curve = metrics.dice_threshold_curve([scores[i] for i in keep], [truths[i] for i in keep],
                                         MEAN_OBJECTIVE_THRESHOLDS, [brains[i] for i in keep],
                                         [subject_ids[i] for i in keep])
    mean = curve.mean_dice
    best = int(np.flatnonzero(mean >= np.nanmax(mean))[-1])
    return float(curve.thresholds[best]), float(mean[best])


def calibrated_threshold(subjects, probabilities, subject_ids, method: str,
                         sample_positive_share: Optional[float] = None,
                         adaptation: str = "none",
                         objective: str = "pooled") -> ThresholdChoice:
    """Fits the calibration on the validation subjects' native brain voxels (the arrays
    :func:`choose_threshold` scores, built once), then chooses the threshold on the
    calibrated probabilities, each subject's adapted to its own prevalence when
    ``adaptation`` is "prevalence" (as ``wmh segment`` will adapt every scan's).

    Args:
        subjects, probabilities, subject_ids: as :func:`choose_threshold`.
        method: "platt", "prior" or "none" (``train.calibration``).
        sample_positive_share: WMH share of the training samples (needed by "prior").
        adaptation: "none" or "prevalence" (``train.adapt_prevalence``).
        objective: "pooled" (the Dice of all validation voxels) or "mean" (the mean of the
            subjects' Dice, :func:`mean_dice_threshold`): what the threshold maximises
            (``train.threshold_objective``); ``dice`` is then that figure.

    Raises:
        WMHError: non-finite probabilities, "prior" without a sample share, or an unknown
            objective.
    """
    from wmh import calibration as calibration_module
    from wmh.evaluation import metrics

    if objective not in THRESHOLD_OBJECTIVES:
        raise WMHError(f"train.threshold_objective {objective!r}: must be one of "
                       f"{', '.join(THRESHOLD_OBJECTIVES)}")
    scores, truths, brains = native_validations(subjects, probabilities, subject_ids)
    inside = np.concatenate([score[brain] for score, brain in zip(scores, brains)])
    labels = np.concatenate([truth[brain] for truth, brain in zip(truths, brains)])
    try:
        calibration = calibration_module.fit_calibration(method, inside, labels,
                                                         sample_positive_share)
    except ValueError as error:
        raise WMHError(f"train.calibration {method}: {error}") from None
    if adaptation != "none":
        try:  # Calibration checks that it has a prevalence to adapt from
            calibration = dataclasses.replace(calibration, adaptation=adaptation)
        except ValueError:  # none: say so rather than fail after the training
            print(f"warning: train.adapt_prevalence: the validation subjects' WMH prevalence "
                  f"is {calibration.validation_prevalence}, so scans are not adapted",
                  file=sys.stderr)
    uncalibrated, _ = metrics.exact_best_threshold(scores, truths, brains)
    calibrated = [calibration.apply(score, brain) for score, brain in zip(scores, brains)]
    threshold, dice, curve = threshold_curve(calibrated, truths, brains, subject_ids)
    if objective == "mean":
        threshold, dice = mean_dice_threshold(calibrated, truths, brains, subject_ids)
    corrected = np.concatenate([score[brain] for score, brain in zip(calibrated, brains)])
    ece = calibration_module.expected_calibration_error(corrected, labels)
    calibration = dataclasses.replace(calibration,
                                      validation_ece_after=ece if math.isfinite(ece) else None)
    reliability = {"uncalibrated": calibration_module.reliability(inside, labels),
                   "calibrated": calibration_module.reliability(corrected, labels)}
    return ThresholdChoice(threshold, dice, curve.auc(), uncalibrated, calibration, curve,
                           reliability)


def log_calibration(choice: ThresholdChoice, title: str) -> None:
    """Records the calibration in the active MLflow run: param ``calibration``, metrics
    ``val_ece`` / ``val_ece_uncalibrated`` / ``uncalibrated_threshold`` and the figure
    ``figures/reliability.png``."""
    import mlflow

    from wmh.evaluation.figures import reliability_figure

    calibration = choice.calibration
    mlflow.log_param("calibration", calibration.label())
    values = {"val_ece": calibration.validation_ece_after,
              "val_ece_uncalibrated": calibration.validation_ece_before,
              "uncalibrated_threshold": choice.uncalibrated_threshold}
    mlflow.log_metrics({name: float(value) for name, value in values.items()
                        if value is not None and math.isfinite(value)})
    figure = reliability_figure(choice.reliability, title=f"{title}: reliability")
    mlflow.log_figure(figure, "figures/reliability.png")


def load_prepared(prepared_dir: Path, subject_id: str):
    """A sample set's subject from its prepared folder.

    Raises:
        WMHError: the subject's file is missing (named).
    """
    from wmh.preprocess import PreparedSubject

    path = Path(prepared_dir) / f"{subject_id}.h5"
    if not path.is_file():
        raise WMHError(f"{path}: prepared subject of the sample set not found (pass the "
                       "prepared folder the samples were built from)")
    return PreparedSubject.load(path)


def predict_validation(predict, samples_dir: Path, prepared_dir: Path):
    """The validation subjects of a sample set and a model's P(WMH) volume for each.

    Args:
        predict: PreparedSubject -> (X, Y, Z) working-grid P(WMH), the CNN's or the
            forest's.
        samples_dir: the sample set (its ``splits.json`` names the validation subjects).
        prepared_dir: the prepared subjects the samples came from.

    Returns:
        (subject ids, PreparedSubjects, probability volumes), in ``splits.json`` order.

    Raises:
        WMHError: a validation subject missing from ``prepared_dir`` (named).
    """
    from wmh import sampling

    subject_ids = sampling.load_splits(samples_dir)["validation"]
    subjects, probabilities = [], []
    for subject_id in subject_ids:
        prepared = load_prepared(prepared_dir, subject_id)
        probabilities.append(predict(prepared))
        subjects.append(prepared)
    return subject_ids, subjects, probabilities


def logged_choice(subjects, probabilities, subject_ids, method: str, samples_dir: Path,
                  title: str, adaptation: str = "none",
                  objective: str = "pooled") -> ThresholdChoice:
    """:func:`calibrated_threshold` of the validation subjects (the prior shift reads the
    training samples' positive share), recorded in the active MLflow run: the ROC and
    Dice-vs-threshold figures (``figures/roc.png``, ``figures/dice_vs_threshold.png``)
    and the calibration (:func:`log_calibration`)."""
    import mlflow

    from wmh import data
    from wmh.evaluation.figures import validation_figures

    choice = calibrated_threshold(subjects, probabilities, subject_ids, method,
                                  data.positive_share(samples_dir), adaptation, objective)
    figures = validation_figures(choice.curve, choice.threshold, title=title)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"figures/{name}.png")
    log_calibration(choice, title)
    return choice
