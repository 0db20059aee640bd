"""The report's data model: one method's test-set results, and how they are built.

Job: :class:`MethodResult` (per-case confusion counts at the operating threshold, the
threshold curve, observer 2 counts, validation Az, training size) and its JSON form;
building it from in-memory arrays, from prediction folders and truths (through
:mod:`wmh.evaluation.cases`) and for a second human observer; :class:`ReportOptions`
(bootstrap and plotting settings) and the per-method Dice interval.
Must not: talk to MLflow (:mod:`wmh.evaluation.tracking_io`), format tables
(:mod:`wmh.evaluation.tables`) or draw (:mod:`wmh.evaluation.figures`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from wmh.errors import WMHError
from wmh.evaluation import metrics
from wmh.evaluation.bootstrap import bootstrap_dice_ci
from wmh.evaluation.cases import (BRAIN_MASK_FILE_NAMES, OBSERVER2_FILE_NAMES,
                                  PROBABILITY_FILE_NAMES, TRUTH_FILE_NAMES, CaseFiles,
                                  case_threshold, check_threshold, find_cases, load_case,
                                  load_label_map, match_cases, recorded_threshold,
                                  to_json_safe)
from wmh.evaluation.paper import OBSERVER_NAME

REPORT_THRESHOLDS = np.linspace(0.0, 1.0, 1001)  # fine grid: ROC at low FPR needs it


@dataclasses.dataclass(eq=False)
class MethodResult:
    """One method's test-set results, enough for every table and figure.

    Attributes:
        name: method name as shown ("SS + Loc", "observer 2", ...).
        case_ids: (n_cases,) test cases, in the order of ``counts_obs1``.
        counts_obs1: (n_cases, 4) int tp, fp, fn, tn at the operating threshold, inside
            the brain mask, observer 1 as reference; None for summary-only results.
        threshold: operating threshold (chosen on validation), None for binary masks.
        curve: test-set counts over thresholds vs observer 1 (ROC, Dice vs threshold).
        counts_obs2: (n_cases_obs2, 4) the same against observer 2, or None.
        case_ids_obs2: the cases of ``counts_obs2``.
        validation_az: validation-set Az, when known (e.g. from training).
        training_size: number of training images, for the Table 6 curve.
        is_observer: True for a human rater (drawn as a point and a level line).
        source: where the result came from (folder or MLflow run id).
        reported: summary numbers without per-case counts (``dice_obs1``, ``dice_obs2``,
            ``test_az``), e.g. from an MLflow run's metrics.
    """

    name: str
    case_ids: tuple[str, ...] = ()
    counts_obs1: Optional[np.ndarray] = None
    threshold: Optional[float] = None
    curve: Optional[metrics.DiceCurve] = None
    counts_obs2: Optional[np.ndarray] = None
    case_ids_obs2: tuple[str, ...] = ()
    validation_az: Optional[float] = None
    training_size: Optional[int] = None
    is_observer: bool = False
    source: str = ""
    reported: dict = dataclasses.field(default_factory=dict)

    def dice(self, observer: int = 1, statistic: str = "pooled") -> float:
        """Test Dice against observer 1 or 2 (NaN when unknown)."""
        counts = self.counts_obs1 if observer == 1 else self.counts_obs2
        if counts is None or len(counts) == 0:
            value = self.reported.get(f"dice_obs{observer}")
            return math.nan if value is None else float(value)
        if statistic == "pooled":
            tp, fp, fn = np.asarray(counts)[:, :3].sum(axis=0)
            return float(metrics.dice_from_counts(tp, fp, fn))
        counts = np.asarray(counts)
        return float(np.mean(metrics.dice_from_counts(counts[:, 0], counts[:, 1],
                                                      counts[:, 2])))

    def test_az(self) -> float:
        """Test-set Az from the threshold curve (NaN without a curve)."""
        if self.curve is not None:
            return self.curve.auc()
        value = self.reported.get("test_az")
        return math.nan if value is None else float(value)

    def counts_for(self, case_ids: Sequence[str]) -> np.ndarray:
        """(len(case_ids), 4) counts vs observer 1 of the given cases, in that order."""
        position = {case_id: index for index, case_id in enumerate(self.case_ids)}
        return np.asarray(self.counts_obs1)[[position[case_id] for case_id in case_ids]]

    def to_dict(self) -> dict:
        """JSON-ready form (what :func:`wmh.evaluation.tracking_io.log_method_result` stores)."""
        curve = None
        if self.curve is not None:
            curve = {"thresholds": self.curve.thresholds, "counts": self.curve.counts,
                     "case_ids": list(self.curve.case_ids)}
        return to_json_safe({
            "name": self.name, "case_ids": list(self.case_ids),
            "counts_obs1": self.counts_obs1, "threshold": self.threshold, "curve": curve,
            "counts_obs2": self.counts_obs2, "case_ids_obs2": list(self.case_ids_obs2),
            "validation_az": self.validation_az, "training_size": self.training_size,
            "is_observer": self.is_observer, "source": self.source,
            "reported": self.reported})

    @classmethod
    def from_dict(cls, values: dict) -> "MethodResult":
        """Inverse of :meth:`to_dict`."""
        def counts(key):
            value = values.get(key)
            return None if value is None else np.asarray(value, dtype=np.int64).reshape(-1, 4)

        curve = values.get("curve")
        if curve is not None:
            curve = metrics.DiceCurve(np.asarray(curve["thresholds"], dtype=np.float64),
                                      np.asarray(curve["counts"], dtype=np.int64),
                                      tuple(curve["case_ids"]))
        return cls(name=values["name"], case_ids=tuple(values.get("case_ids", ())),
                   counts_obs1=counts("counts_obs1"), threshold=values.get("threshold"),
                   curve=curve, counts_obs2=counts("counts_obs2"),
                   case_ids_obs2=tuple(values.get("case_ids_obs2", ())),
                   validation_az=values.get("validation_az"),
                   training_size=values.get("training_size"),
                   is_observer=bool(values.get("is_observer", False)),
                   source=values.get("source", ""), reported=values.get("reported") or {})


def method_result_from_arrays(name: str, probs_per_case: Sequence[np.ndarray],
                              truths_per_case: Sequence[np.ndarray], *,
                              masks_per_case: Optional[Sequence[np.ndarray]] = None,
                              observer2_per_case: Optional[Sequence[Optional[np.ndarray]]] = None,
                              case_ids: Optional[Sequence[str]] = None,
                              threshold: float = 0.5, validation_az: Optional[float] = None,
                              training_size: Optional[int] = None) -> MethodResult:
    """A method's results from in-memory test-set probabilities (e.g. in training code).

    Args:
        name: method name.
        probs_per_case: one probability array per case.
        truths_per_case: observer 1 labels (0, 1, 2) of the same shapes.
        masks_per_case: brain masks (only voxels inside are counted), or None.
        observer2_per_case: observer 2 labels per case (None for cases without), or None.
        case_ids: case names; default "0", "1", ...
        threshold: operating threshold (chosen on validation, e.g. by
            :func:`wmh.evaluation.metrics.best_threshold`).
        validation_az: validation-set Az for Table 2.
        training_size: number of training images, for Table 6.
    """
    count = len(truths_per_case)
    case_ids = tuple(str(c) for c in (range(count) if case_ids is None else case_ids))
    masks = list(masks_per_case) if masks_per_case is not None else [None] * count
    curve = metrics.dice_threshold_curve(probs_per_case, truths_per_case, REPORT_THRESHOLDS,
                                         masks, case_ids)
    counts_obs1 = np.stack([
        metrics.confusion_counts(np.asarray(probabilities, dtype=np.float64), truth, mask,
                                 threshold)
        for probabilities, truth, mask in zip(probs_per_case, truths_per_case, masks)])
    counts_obs2, ids_obs2 = [], []
    for index, observer2 in enumerate(observer2_per_case or []):
        if observer2 is not None:
            counts_obs2.append(metrics.confusion_counts(
                np.asarray(probs_per_case[index], dtype=np.float64), observer2, masks[index],
                threshold))
            ids_obs2.append(case_ids[index])
    return MethodResult(name=name, case_ids=case_ids, counts_obs1=counts_obs1,
                        threshold=threshold, curve=curve,
                        counts_obs2=np.stack(counts_obs2) if counts_obs2 else None,
                        case_ids_obs2=tuple(ids_obs2), validation_az=validation_az,
                        training_size=training_size)


def observer_result_from_arrays(observer2_per_case: Sequence[np.ndarray],
                                truths_per_case: Sequence[np.ndarray], *,
                                masks_per_case: Optional[Sequence[np.ndarray]] = None,
                                case_ids: Optional[Sequence[str]] = None,
                                name: str = OBSERVER_NAME) -> MethodResult:
    """Observer 2 as a "method" against observer 1 (only its label 1 is a prediction)."""
    count = len(truths_per_case)
    case_ids = tuple(str(c) for c in (range(count) if case_ids is None else case_ids))
    masks = list(masks_per_case) if masks_per_case is not None else [None] * count
    counts = np.stack([metrics.confusion_counts(np.asarray(observer2) == 1, truth, mask)
                       for observer2, truth, mask in zip(observer2_per_case, truths_per_case,
                                                          masks)])
    return MethodResult(name=name, case_ids=case_ids, counts_obs1=counts, is_observer=True)


def _observer2_cases(observer2: str | Path, truth: str | Path,
                     brain_mask: str | Path | None,
                     case_ids: Optional[Sequence[str]] = None) -> list[CaseFiles]:
    """Observer 2 files paired with the truths of the cases both raters labelled (only
    ``case_ids`` when given, e.g. the test cases of a cohort)."""
    truths = find_cases(truth, "--truth")
    if case_ids is not None:
        truths = {case_id: truths[case_id] for case_id in case_ids if case_id in truths}
    observers = find_cases(observer2, "--observer2", OBSERVER2_FILE_NAMES + TRUTH_FILE_NAMES)
    masks = (find_cases(brain_mask, "--brain-mask", BRAIN_MASK_FILE_NAMES)
             if brain_mask is not None else {})
    if Path(truth).is_file():  # two single files form one case, whatever their names
        observers = {case_id: next(iter(observers.values())) for case_id in truths}
        masks = {case_id: next(iter(masks.values())) for case_id in truths} if masks else {}
    common = [case_id for case_id in truths if case_id in observers]
    if not common:
        raise WMHError(f"--observer2 {observer2}: no case matches the truth cases")
    if brain_mask is not None:
        missing = [case_id for case_id in common if case_id not in masks]
        if missing:
            raise WMHError(f"--brain-mask {brain_mask}: no brain mask for "
                           f"{', '.join(missing[:5])}")
    return [CaseFiles(case_id, observers[case_id], truths[case_id], masks.get(case_id))
            for case_id in common]


def method_result_from_predictions(name: str, prediction: str | Path, truth: str | Path, *,
                                   brain_mask: str | Path | None = None,
                                   observer2: str | Path | None = None,
                                   threshold: Optional[float] = None,
                                   validation_az: Optional[float] = None,
                                   training_size: Optional[int] = None,
                                   notes: Optional[list] = None,
                                   failed_cases: Optional[dict] = None) -> MethodResult:
    """A method's results from a folder of probability maps (or masks) and the truths.

    Args:
        name: method name.
        prediction, truth, brain_mask: as :func:`wmh.evaluation.cases.evaluate_cases`.
        observer2: a second rater's labels (file/folder matched by id), or None.
        threshold: operating threshold, chosen on the validation set; None = the one
            the segmentation recorded (``<id>/report.json``; 0.5 for maps without one).
        validation_az, training_size: as :func:`method_result_from_arrays`.
        notes: lines are appended when ``threshold`` differs from the recorded one.
        failed_cases: case id -> labels file of test cases with no prediction (failed
            preparation or segmentation): scored as an empty prediction (Dice 0).

    Raises:
        WMHError: without ``threshold``, cases segmented at different thresholds.
    """
    failed_cases = failed_cases or {}
    check_threshold(threshold)
    cases, _ = match_cases(prediction, truth, brain_mask, PROBABILITY_FILE_NAMES)
    differing: list[str] = []
    used = sorted({case_threshold(files.prediction, threshold, differing)
                   for files in cases})
    if len(used) > 1:
        raise WMHError(f"--method {name}={prediction}: its cases were segmented at "
                       f"different thresholds ({', '.join(f'{t:g}' for t in used)}); "
                       "give one with --threshold")
    threshold = used[0] if used else (0.5 if threshold is None else threshold)
    if differing and notes is not None:
        notes.append(f"{name}: thresholding wmh_probability at {threshold:g}, not the "
                     f"segmentation's {recorded_threshold(cases[0].prediction):g}")
    loaded = [load_case(files) for files in cases]
    case_ids = [case.files.case_id for case in loaded]
    observer2_labels = {}
    if observer2 is not None:
        grids = {case.files.case_id: case.grid for case in loaded}
        for files in _observer2_cases(observer2, truth, brain_mask, case_ids):
            observer2_labels[files.case_id], _ = load_label_map(
                files.prediction, grids[files.case_id])
    predictions = [case.prediction for case in loaded]
    truths = [case.truth for case in loaded]
    masks = [case.brain_mask for case in loaded]
    for case_id, labels_file in sorted(failed_cases.items()):  # no prediction: empty
        labels, _ = load_label_map(labels_file)
        predictions.append(np.zeros(labels.shape, np.float32))
        truths.append(labels)
        masks.append(np.ones(labels.shape, bool))
        case_ids.append(case_id)
    result = method_result_from_arrays(
        name, predictions, truths, masks_per_case=masks,
        observer2_per_case=[observer2_labels.get(case_id) for case_id in case_ids],
        case_ids=case_ids, threshold=threshold, validation_az=validation_az,
        training_size=training_size)
    result.source = str(prediction)
    return result


def observer_result(observer2: str | Path, truth: str | Path, *,
                    brain_mask: str | Path | None = None,
                    name: str = OBSERVER_NAME,
                    case_ids: Optional[Sequence[str]] = None) -> MethodResult:
    """Observer 2 against observer 1 from label files/folders, for the cases both rated
    (restricted to ``case_ids`` when given, e.g. a cohort's test cases).

    Raises:
        WMHError: no common case, bad labels, grids that differ from the truth's.
    """
    cases = _observer2_cases(observer2, truth, brain_mask, case_ids)
    loaded = [load_case(files, prediction_is_labels=True) for files in cases]
    result = observer_result_from_arrays(
        [case.prediction for case in loaded], [case.truth for case in loaded],
        masks_per_case=[case.brain_mask for case in loaded],
        case_ids=[files.case_id for files in cases], name=name)
    result.source = str(observer2)
    return result


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """How the statistics are computed and drawn."""

    ci_resamples: int = 1000  # patient-bootstrap resamples for 95% bands and intervals
    pvalue_resamples: int = 100  # paired bootstrap resamples for p-values (the paper: 100)
    seed: int = 0  # seeds every bootstrap; same seed, same report
    statistic: str = "pooled"  # Dice per resample: "pooled" (overall, paper) or "mean"
    confidence: float = 0.95  # confidence level of bands and intervals
    max_false_positive_rate: float = 0.02  # ROC x-axis cut (the paper shows low FPR only)
    table3_methods: tuple[str, ...] = ()  # Table 3's methods besides observer 2; () = all
    pvalue_methods: tuple[str, ...] = ()  # Table 4's methods (e.g. the paper's five); () = all
    figure_methods: tuple[str, ...] = ()  # methods drawn in the ROC and Dice figures; () = all


def dice_interval(method: MethodResult, options: ReportOptions) -> tuple[float, float]:
    """Bootstrap interval of a method's Dice vs observer 1 (NaNs without per-case counts)."""
    if method.counts_obs1 is None or len(method.counts_obs1) == 0:
        return math.nan, math.nan
    return bootstrap_dice_ci(method.counts_obs1, options.ci_resamples,
                             options.confidence, options.seed, options.statistic)


def chosen_methods(candidates: Sequence[MethodResult], names: Sequence[str], table: str
                   ) -> list[MethodResult]:
    """The methods of a table in the order of ``names`` (all ``candidates`` when empty)."""
    if not names:
        return list(candidates)
    by_name = {method.name: method for method in candidates}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise WMHError(f"report: {table} method(s) {', '.join(missing)} not among the "
                       f"results that fit it ({', '.join(by_name)})")
    return [by_name[name] for name in names]
