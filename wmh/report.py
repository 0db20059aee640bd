"""The paper's comparison tables and figures, next to the paper's published numbers.

Input: one :class:`MethodResult` per method (and one for observer 2 where a second
rater exists), built from arrays (:func:`method_result_from_arrays`), prediction
folders (:func:`method_result_from_predictions`, :func:`observer_result`) or MLflow runs
(:func:`method_result_from_mlflow`, which reads what :func:`log_method_result` stored).

Output of :func:`write_report`, in a folder and, when requested or when an MLflow run
is active, as artifacts under ``report/``:

* ``report.md``: the tables in the shapes of the paper's Tables 2-6, each with the
  paper's numbers alongside (:data:`PAPER_RESULTS`, the paper's results as published,
  not expected values of this code);
* ``table2_methods.csv``, ``table3_observers.csv``, ``table4_pvalues.csv``,
  ``table5_location_layer.csv``, ``table6_training_size.csv`` (those that apply);
* ``roc.png`` (Fig. 4a), ``dice_vs_threshold.png`` with 95% patient-bootstrap bands
  (Fig. 4b), ``training_size.png`` (Fig. 5).

Every number is labelled with ``data_label``; "synthetic" adds a warning that the
numbers come from synthetic data and are not comparable with the paper's.

Dice here is the paper's: counted inside the brain mask, label 2 ignored, "overall"
(TP, FP, FN summed over the test cases) at the method's operating threshold; the mean
of per-case Dice is given beside it. TensorFlow is never imported; matplotlib and
MLflow only inside the functions that draw or log.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from wmh import metrics
from wmh.errors import WMHError

REPORT_THRESHOLDS = np.linspace(0.0, 1.0, 1001)  # fine grid: ROC at low FPR needs it
METHOD_RESULT_ARTIFACT = "evaluation/method_result.json"
REPORT_EXPERIMENT = "wmh-reports"  # MLflow experiment of reports made outside a run
OBSERVER_NAME = "observer 2"

# The paper's published results (Ghafoorian et al. 2017, Scientific Reports 7:5110).
# Dice: test set (50 cases), observer 1 or observer 2 as reference; Az: validation set.
PAPER_RESULTS = {
    "table2": {  # CNN architectures without and with the 8 location features
        "SS": {"validation_az": 0.9939, "dice_obs1": 0.731, "dice_obs2": 0.729},
        "MSEF": {"validation_az": 0.9947, "dice_obs1": 0.762, "dice_obs2": 0.752},
        "MSIW": {"validation_az": 0.9966, "dice_obs1": 0.778, "dice_obs2": 0.768},
        "MSWS": {"validation_az": 0.9965, "dice_obs1": 0.773, "dice_obs2": 0.760},
        "SS + Loc": {"validation_az": 0.9972, "dice_obs1": 0.781, "dice_obs2": 0.778},
        "MSEF + Loc": {"validation_az": 0.9966, "dice_obs1": 0.777, "dice_obs2": 0.769},
        "MSIW + Loc": {"validation_az": 0.9972, "dice_obs1": 0.795, "dice_obs2": 0.787},
        "MSWS + Loc": {"validation_az": 0.9973, "dice_obs1": 0.792, "dice_obs2": 0.783},
    },
    "table3": {  # conventional method, best CNN and the two human observers
        "Conventional": {"dice_obs1": 0.716, "dice_obs2": 0.699},
        "MSWS + Loc": {"dice_obs1": 0.792, "dice_obs2": 0.783},
        "observer 1": {"dice_obs1": None, "dice_obs2": 0.805},
        "observer 2": {"dice_obs1": 0.805, "dice_obs2": None},
    },
    "table4": {  # p_ij for the null hypothesis "method i is better than method j"
        "SS": {"MSWS": "<0.01", "SS + Loc": "<0.01", "MSWS + Loc": "<0.01",
               "observer 2": "<0.01"},
        "MSWS": {"SS + Loc": "<0.01", "MSWS + Loc": "<0.01", "observer 2": "<0.01"},
        "SS + Loc": {"MSWS + Loc": "0.03", "observer 2": "0.03"},
        "MSWS + Loc": {"observer 2": "0.06"},
    },
    "table5": {  # single-scale network, location features added at another layer
        "LCL": {"validation_az": 0.9964, "dice_obs1": 0.763},
        "FFCL": {"validation_az": 0.9971, "dice_obs1": 0.781},
        "SFCL": {"validation_az": 0.9967, "dice_obs1": 0.778},
    },
    "table6": {  # MSWS + Loc test Dice by number of training images
        23: 0.753, 47: 0.756, 94: 0.770, 189: 0.788, 378: 0.792,
    },
}

_ALIASES = {  # normalised spelling -> the paper's method name
    "conventional": "Conventional", "randomforest": "Conventional", "rf": "Conventional",
    "baseline": "Conventional", "observer2": OBSERVER_NAME, "indobs": OBSERVER_NAME,
    "independentobserver": OBSERVER_NAME, "observer1": "observer 1",
    "lcl": "LCL", "sslcl": "LCL", "ssloclcl": "LCL",
    "ffcl": "FFCL", "ssffcl": "FFCL", "sslocffcl": "FFCL",
    "sfcl": "SFCL", "sssfcl": "SFCL", "sslocsfcl": "SFCL",
}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_method_name(name: str) -> Optional[str]:
    """The paper's name for a method name as users write it ('msws_loc' -> 'MSWS + Loc').

    Returns:
        A key of the paper's tables, or None for a method the paper does not have.
    """
    key = _normalise(name)
    if key in _ALIASES:
        return _ALIASES[key]
    for paper_name in PAPER_RESULTS["table2"]:
        if _normalise(paper_name) == key:
            return paper_name
    return None


# --------------------------------------------------------------------------- results

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
        """JSON-ready form (what :func:`log_method_result` stores)."""
        curve = None
        if self.curve is not None:
            curve = {"thresholds": self.curve.thresholds, "counts": self.curve.counts,
                     "case_ids": list(self.curve.case_ids)}
        return metrics.to_json_safe({
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
            :func:`wmh.metrics.best_threshold`).
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
                     case_ids: Optional[Sequence[str]] = None) -> list[metrics.CaseFiles]:
    """Observer 2 files paired with the truths of the cases both raters labelled (only
    ``case_ids`` when given, e.g. the test cases of a cohort)."""
    truths = metrics.find_cases(truth, "--truth")
    if case_ids is not None:
        truths = {case_id: truths[case_id] for case_id in case_ids if case_id in truths}
    observers = metrics.find_cases(observer2, "--observer2",
                                   metrics.OBSERVER2_FILE_NAMES + metrics.TRUTH_FILE_NAMES)
    masks = (metrics.find_cases(brain_mask, "--brain-mask", metrics.BRAIN_MASK_FILE_NAMES)
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
    return [metrics.CaseFiles(case_id, observers[case_id], truths[case_id],
                              masks.get(case_id)) for case_id in common]


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
        prediction, truth, brain_mask: as :func:`wmh.metrics.evaluate_cases`.
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
    metrics.check_threshold(threshold)
    cases, _ = metrics.match_cases(prediction, truth, brain_mask,
                                   metrics.PROBABILITY_FILE_NAMES)
    differing: list[str] = []
    used = sorted({metrics.case_threshold(files.prediction, threshold, differing)
                   for files in cases})
    if len(used) > 1:
        raise WMHError(f"--method {name}={prediction}: its cases were segmented at "
                       f"different thresholds ({', '.join(f'{t:g}' for t in used)}); "
                       "give one with --threshold")
    threshold = used[0] if used else (0.5 if threshold is None else threshold)
    if differing and notes is not None:
        notes.append(f"{name}: thresholding wmh_probability at {threshold:g}, not the "
                     f"segmentation's {metrics.recorded_threshold(cases[0].prediction):g}")
    loaded = [metrics.load_case(files) for files in cases]
    case_ids = [case.files.case_id for case in loaded]
    observer2_labels = {}
    if observer2 is not None:
        grids = {case.files.case_id: case.grid for case in loaded}
        for files in _observer2_cases(observer2, truth, brain_mask, case_ids):
            observer2_labels[files.case_id], _ = metrics.load_label_map(
                files.prediction, grids[files.case_id])
    predictions = [case.prediction for case in loaded]
    truths = [case.truth for case in loaded]
    masks = [case.brain_mask for case in loaded]
    for case_id, labels_file in sorted(failed_cases.items()):  # no prediction: empty
        labels, _ = metrics.load_label_map(labels_file)
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
    loaded = [metrics.load_case(files, prediction_is_labels=True) for files in cases]
    result = observer_result_from_arrays(
        [case.prediction for case in loaded], [case.truth for case in loaded],
        masks_per_case=[case.brain_mask for case in loaded],
        case_ids=[files.case_id for files in cases], name=name)
    result.source = str(observer2)
    return result


def collect_results(methods: Sequence[tuple[str, str | Path]],
                    runs: Sequence[tuple[str, str]] = (), truth: str | Path | None = None,
                    observer2: str | Path | None = None,
                    brain_mask: str | Path | None = None,
                    threshold: Optional[float] = None,
                    notes: Optional[list] = None) -> list[MethodResult]:
    """Results of prediction folders and MLflow runs, plus observer 2 when given.

    Args:
        methods: (name, prediction folder) pairs; they need ``truth``.
        runs: (name, MLflow run id) pairs.
        truth, observer2, brain_mask: label files/folders matched by case id.
        threshold: operating threshold of the prediction folders; None = each
            segmentation's recorded threshold.
        notes: collects a line for each method scored at another threshold than the
            one its segmentation recorded.

    Raises:
        WMHError: nothing to compare, folders without ``truth``, bad files.
    """
    if not methods and not runs:
        raise WMHError("--method/--run: give at least one method to compare")
    if methods and truth is None:
        raise WMHError("--truth: needed to score --method folders")
    results = [method_result_from_predictions(
        name, folder, truth, brain_mask=brain_mask, observer2=observer2, threshold=threshold,
        notes=notes) for name, folder in methods]
    results += [method_result_from_mlflow(run_id, name) for name, run_id in runs]
    if observer2 is not None and truth is not None:
        results.append(observer_result(observer2, truth, brain_mask=brain_mask))
    return results


UNSPECIFIED_DATA = "unspecified"  # data label when nothing says what the data are


def infer_data_label(truth: str | Path | None) -> str:
    """What the truth labels are, for reports that were not told: "synthetic" when they
    lie in a cohort written by ``wmh synth`` (its ``cohort.json`` in the truth folder or
    one of its parents), else :data:`UNSPECIFIED_DATA`."""
    if truth is None:
        return UNSPECIFIED_DATA
    folder = Path(truth).resolve()
    folder = folder if folder.is_dir() else folder.parent
    for candidate in (folder, *folder.parents):
        if (candidate / "cohort.json").is_file():
            return "synthetic"
    return UNSPECIFIED_DATA


# ---------------------------------------------------------------------------- MLflow

_RUN_METRIC_NAMES = {  # what a training run may have logged, first match wins
    # the paper's validation Az counts whole-volume voxels inside the brain
    "validation_az": ("validation_az", "val_volume_auc", "best_val_auc", "val_auc"),
    "threshold": ("threshold", "best_threshold", "validation_threshold"),
    "dice_obs1": ("test_dice_obs1", "test_dice"),
    "dice_obs2": ("test_dice_obs2",),
    "test_az": ("test_az", "test_auc"),
    "training_size": ("training_size", "train_subjects", "num_training_images"),
}


def _run_method_name(run) -> str:
    """The paper's name of a training run's model from its params, else the run name."""
    arch = run.data.params.get("model.arch")
    if arch is None:
        return run.info.run_name or run.info.run_id
    return _method_name(arch, run.data.params.get("model.loc"))


def method_display_name(model) -> str:
    """The paper's name of a :class:`wmh.config.ModelConfig` ("MSWS + Loc", "LCL", ...)."""
    return _method_name(model.arch, model.loc)


def _method_name(arch: str, location: Optional[str]) -> str:
    if arch == "rf":  # the forest always uses the location features; model.loc is unused
        return "Conventional"
    name = arch.upper()
    if location in (None, "", "none"):
        return name
    if location == "ffcl":  # the paper's default place for the location features
        return f"{name} + Loc"
    if arch == "ss":  # the paper's Table 5 compares the layers on the single-scale net
        return location.upper()
    return f"{name} + Loc ({location.upper()})"


def log_method_result(result: MethodResult, run_id: Optional[str] = None) -> None:
    """Stores a result in an MLflow run (the active one when ``run_id`` is None).

    Writes the artifact ``evaluation/method_result.json`` (per-case counts and the
    threshold curve) and the metrics ``test_dice_obs1``/``test_dice_obs2``/``test_az``.
    """
    import mlflow

    values = {"test_dice_obs1": result.dice(1), "test_dice_obs2": result.dice(2),
              "test_az": result.test_az()}
    values = {key: value for key, value in values.items() if not math.isnan(value)}
    text = json.dumps(result.to_dict())
    if run_id is None:
        if mlflow.active_run() is None:
            raise WMHError("log_method_result: no active MLflow run and no run id given")
        mlflow.log_text(text, METHOD_RESULT_ARTIFACT)
        mlflow.log_metrics(values)
        return
    client = mlflow.MlflowClient()
    client.log_text(run_id, text, METHOD_RESULT_ARTIFACT)
    for key, value in values.items():
        client.log_metric(run_id, key, value)


def method_result_from_mlflow(run_id: str, name: Optional[str] = None) -> MethodResult:
    """A method's results from an MLflow run (tracking URI from :mod:`wmh.tracking`).

    Uses the run's ``evaluation/method_result.json`` when present (full tables and
    figures); otherwise the run's metrics (a summary-only row: no p-values, no curves).

    Args:
        run_id: the MLflow run.
        name: display name; default the stored name, else the paper's name of the
            run's ``model.arch``/``model.loc`` params ("MSWS + Loc"), else the run name.

    Raises:
        WMHError: unknown run.
    """
    import tempfile

    import mlflow

    from wmh.tracking import require_store

    client = mlflow.MlflowClient(tracking_uri=require_store(f"--run {run_id}"))
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise WMHError(f"--run {run_id}: no such MLflow run "
                       f"({str(error).splitlines()[0]})") from None
    text = None
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run_id, METHOD_RESULT_ARTIFACT, folder)
            text = Path(local).read_text()
        except (mlflow.exceptions.MlflowException, OSError):
            text = None  # no stored evaluation: fall back to the run's metrics
    if text is not None:
        result = MethodResult.from_dict(json.loads(text))
    else:
        found = {}
        for field, candidates in _RUN_METRIC_NAMES.items():
            for candidate in candidates:
                value = run.data.metrics.get(candidate, run.data.params.get(candidate))
                if value is not None:
                    found[field] = float(value)
                    break
        result = MethodResult(
            name=_run_method_name(run), threshold=found.get("threshold"),
            validation_az=found.get("validation_az"),
            training_size=(int(found["training_size"]) if "training_size" in found else None),
            reported={key: found[key] for key in ("dice_obs1", "dice_obs2", "test_az")
                      if key in found})
    for field in ("validation_az", "threshold"):  # training logs them, evaluation not
        if getattr(result, field) is None:
            for candidate in _RUN_METRIC_NAMES[field]:
                if candidate in run.data.metrics:
                    setattr(result, field, float(run.data.metrics[candidate]))
                    break
    result.source = f"mlflow run {run_id}"
    if name is not None:
        result.name = name
    return result


# ------------------------------------------------------------------------- the report

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


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """Paths written by :func:`write_report` (None where a table or figure did not apply)."""

    markdown: Path
    tables: dict
    figures: dict


def _format(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _format_pvalue(value: float, resamples: int) -> str:
    if math.isnan(value):
        return "—"
    floor = 1.0 / resamples
    return f"<{floor:g}" if value < floor else f"{value:.2f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if cell is None or (isinstance(cell, float) and math.isnan(cell))
                             else cell for cell in row])
    return path


def paper_value(method: MethodResult, field: str, tables=("table2", "table3", "table5")):
    """The paper's published ``field`` for a method (first of ``tables`` that has it), or None."""
    if method.is_observer:
        return PAPER_RESULTS["table3"]["observer 2"].get(field)
    paper_name = paper_method_name(method.name)
    for table in tables:
        row = PAPER_RESULTS[table].get(paper_name)
        if row is not None and field in row:
            return row[field]
    return None


def _dice_interval(method: MethodResult, options: ReportOptions) -> tuple[float, float]:
    if method.counts_obs1 is None or len(method.counts_obs1) == 0:
        return math.nan, math.nan
    return metrics.bootstrap_dice_ci(method.counts_obs1, options.ci_resamples,
                                     options.confidence, options.seed, options.statistic)


def _table_methods(results: Sequence[MethodResult]) -> dict[str, list[MethodResult]]:
    """Which results go into which of the paper's table shapes."""
    methods = [result for result in results if not result.is_observer]
    observers = [result for result in results if result.is_observer]
    table5 = [m for m in methods if paper_method_name(m.name) in PAPER_RESULTS["table5"]]
    # A training-size run without a paper name ("MSWS + Loc (50%)") belongs to Table 6 only.
    table2 = [m for m in methods if m not in table5
              and paper_method_name(m.name) != "Conventional"
              and not (m.training_size and paper_method_name(m.name) is None)]
    in_table3 = any(paper_method_name(m.name) in ("Conventional", "MSWS + Loc")
                    for m in methods)
    table3 = methods + observers if (observers or in_table3) else []
    table6 = sorted((m for m in methods if m.training_size), key=lambda m: m.training_size)
    compared = [m for m in methods + observers if m.counts_obs1 is not None]
    return {"table2": table2, "table3": table3, "table4": compared, "table5": table5,
            "table6": table6}


def _chosen_methods(candidates: Sequence[MethodResult], names: Sequence[str], table: str
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


def _common_cases(results: Sequence[MethodResult]) -> list[str]:
    common = list(results[0].case_ids)
    for result in results[1:]:
        present = set(result.case_ids)
        common = [case_id for case_id in common if case_id in present]
    return common


def _pvalue_block(methods: Sequence[MethodResult], options: ReportOptions):
    """(header, markdown rows, csv rows, number of cases) of the Table 4 shape."""
    cases = _common_cases(methods)
    if len(cases) < 2:
        return None
    values = [method.counts_for(cases) for method in methods]
    matrix = metrics.pvalue_matrix(values, options.pvalue_resamples, options.seed,
                                   options.statistic)
    names = [method.name for method in methods]
    paper_names = [OBSERVER_NAME if m.is_observer else paper_method_name(m.name)
                   for m in methods]
    markdown_rows, csv_rows = [], []
    for row, name in enumerate(names):
        cells = []
        for column in range(len(names)):
            if row == column:
                cells.append("—")
                continue
            paper = PAPER_RESULTS["table4"].get(paper_names[row] or "", {}).get(
                paper_names[column] or "")
            ours = _format_pvalue(matrix[row, column], options.pvalue_resamples)
            cells.append(ours if paper is None else f"{ours} (paper {paper})")
            csv_rows.append([name, names[column], matrix[row, column], paper, len(cases),
                             options.pvalue_resamples])
        markdown_rows.append([name] + cells)
    return ["Method"] + names, markdown_rows, csv_rows, len(cases)


def _paper_table6_value(size: int, largest: int) -> Optional[float]:
    table = PAPER_RESULTS["table6"]
    if size in table:
        return table[size]
    fraction = size / largest
    for paper_size, value in table.items():
        if abs(paper_size / max(table) - fraction) < 0.01:
            return value
    return None


def write_report(results: Sequence[MethodResult], output_dir: str | Path, data_label: str,
                 options: ReportOptions = ReportOptions(),
                 log_to_mlflow: Optional[bool] = None) -> ReportFiles:
    """Writes the paper's tables (Markdown + CSV) and figures (PNG) for several methods.

    Args:
        results: one per method, plus observer 2 (``is_observer=True``) where available.
        output_dir: folder for ``report.md``, the CSV tables and the PNG figures.
        data_label: what the numbers come from, e.g. "synthetic" or "MICCAI WMH 2017";
            shown on every table and figure ("synthetic" adds a warning).
        options: bootstrap and plotting settings.
        log_to_mlflow: log the folder as artifacts under ``report/`` of the active MLflow
            run, or of a new run in the "wmh-reports" experiment when none is active;
            None = only when a run is active; False = never.

    Returns:
        The written paths.

    Raises:
        WMHError: no results, duplicate names, or an empty data label.
    """
    if not results:
        raise WMHError("report: no methods to compare")
    names = [result.name for result in results]
    if len(set(names)) != len(names):
        raise WMHError(f"report: duplicate method names: {', '.join(names)}")
    if not data_label or not data_label.strip():
        raise WMHError("--data-label: say what the data are, e.g. 'synthetic'")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    synthetic = "synth" in data_label.lower()
    grouped = _table_methods(results)
    tables: dict = {}
    sections = ["# WMH segmentation: comparison with Ghafoorian et al. 2017",
                "", f"Data: **{data_label}**."]
    if synthetic:
        sections.append("**Synthetic data**: these numbers measure the code on synthetic "
                        "images; they are not comparable with the paper's, which are shown "
                        "beside them for reference only.")
    sections += ["", "Dice: inside the brain mask, label 2 ignored, overall Dice (TP, FP, "
                 f"FN summed over cases) at each method's threshold; {options.confidence:.0%}"
                 f" intervals from {options.ci_resamples} patient-bootstrap resamples "
                 f"(seed {options.seed}). Paper columns: the paper's published results.", ""]

    intervals = {result.name: _dice_interval(result, options) for result in results}

    if grouped["table2"]:
        header = ["Method", "Cases", "Threshold", "Validation Az", "Test Az",
                  "Test Dice (obs1)", "95% CI", "Mean case Dice (obs1)", "Test Dice (obs2)",
                  "Paper validation Az", "Paper Dice (obs1)", "Paper Dice (obs2)"]
        rows = []
        for method in grouped["table2"]:
            low, high = intervals[method.name]
            rows.append([method.name, len(method.case_ids), method.threshold,
                         method.validation_az, method.test_az(), method.dice(1),
                         f"{_format(low)}–{_format(high)}" if not math.isnan(low) else None,
                         method.dice(1, "mean") if method.counts_obs1 is not None else None,
                         method.dice(2), paper_value(method, "validation_az"),
                         paper_value(method, "dice_obs1"), paper_value(method, "dice_obs2")])
        sections += ["## Table 2 shape: methods (validation Az, test Dice)", "",
                     _markdown_table(header, [[row[0], row[1]] + [
                         _format(cell, 4 if "Az" in header[index + 2] else 3)
                         for index, cell in enumerate(row[2:])] for row in rows]), ""]
        tables["table2"] = _write_csv(output_dir / "table2_methods.csv", ["data"] + header,
                                      [[data_label] + row for row in rows])

    if grouped["table3"]:
        header = ["Method", "Test Dice (obs1)", "Test Dice (obs2)", "Paper Dice (obs1)",
                  "Paper Dice (obs2)"]
        rows = []
        chosen = _chosen_methods([m for m in grouped["table3"] if not m.is_observer],
                                 options.table3_methods, "Table 3")
        for method in chosen + [m for m in grouped["table3"] if m.is_observer]:
            rows.append([method.name, method.dice(1), method.dice(2),
                         paper_value(method, "dice_obs1", ("table3", "table2", "table5")),
                         paper_value(method, "dice_obs2", ("table3", "table2", "table5"))])
        observer = next((m for m in grouped["table3"] if m.is_observer), None)
        if observer is not None:  # observer 1 rated against observer 2: the same overlap
            rows.append(["observer 1", None, observer.dice(1), None,
                         PAPER_RESULTS["table3"]["observer 1"]["dice_obs2"]])
        sections += ["## Table 3 shape: methods and human observers", "",
                     _markdown_table(header, [[row[0]] + [_format(c) for c in row[1:]]
                                              for row in rows]), ""]
        if observer is not None:
            sections += ["Observer rows: observer 2's labels scored against observer 1 "
                         "(Dice is symmetric, so observer 1 vs observer 2 shows the same "
                         "overlap).", ""]
        tables["table3"] = _write_csv(output_dir / "table3_observers.csv", ["data"] + header,
                                      [[data_label] + row for row in rows])

    compared = _chosen_methods(grouped["table4"], options.pvalue_methods, "Table 4")
    if len(compared) >= 2:
        block = _pvalue_block(compared, options)
        if block is None:
            sections += ["## Table 4 shape: paired bootstrap p-values", "",
                         "Not computed: the methods share fewer than 2 test cases "
                         "(p-values pair each case's results).", ""]
        else:
            header, markdown_rows, csv_rows, case_count = block
            sections += ["## Table 4 shape: paired bootstrap p-values", "",
                         f"p_ij = share of {options.pvalue_resamples} paired patient-level "
                         f"bootstrap resamples of the {case_count} common test cases in "
                         f"which method i (row) has a higher {options.statistic} Dice than "
                         "method j (column): the p-value of the null hypothesis \"method i "
                         "is better than method j\"; small values mean the column method is "
                         f"significantly better (seed {options.seed}).", "",
                         _markdown_table(header, markdown_rows), ""]
            tables["table4"] = _write_csv(
                output_dir / "table4_pvalues.csv",
                ["data", "row_method", "column_method", "p_value", "paper_p_value",
                 "cases", "resamples"], [[data_label] + row for row in csv_rows])

    if grouped["table5"]:
        header = ["Method", "Validation Az", "Test Dice (obs1)", "Paper validation Az",
                  "Paper Dice (obs1)"]
        rows = [[m.name, m.validation_az, m.dice(1), paper_value(m, "validation_az"),
                 paper_value(m, "dice_obs1")] for m in grouped["table5"]]
        sections += ["## Table 5 shape: where location features enter the network", "",
                     _markdown_table(header, [[row[0], _format(row[1], 4), _format(row[2]),
                                               _format(row[3], 4), _format(row[4])]
                                              for row in rows]), ""]
        tables["table5"] = _write_csv(output_dir / "table5_location_layer.csv",
                                      ["data"] + header, [[data_label] + row for row in rows])

    if grouped["table6"]:
        largest = max(m.training_size for m in grouped["table6"])
        header = ["Method", "Training images", "Test Dice (obs1)", "95% CI",
                  "Paper Dice (same share of training set)"]
        rows = []
        for method in grouped["table6"]:
            low, high = intervals[method.name]
            rows.append([method.name, method.training_size, method.dice(1),
                         f"{_format(low)}–{_format(high)}" if not math.isnan(low) else None,
                         _paper_table6_value(method.training_size, largest)])
        sections += ["## Table 6 shape: test Dice by training-set size", "",
                     _markdown_table(header, [[r[0], r[1], _format(r[2]), _format(r[3]),
                                               _format(r[4])] for r in rows]), "",
                     "Paper (MSWS + Loc): " + ", ".join(
                         f"{size} images {dice:.3f}"
                         for size, dice in PAPER_RESULTS["table6"].items()), ""]
        tables["table6"] = _write_csv(output_dir / "table6_training_size.csv",
                                      ["data"] + header, [[data_label] + row for row in rows])

    figures = _draw_figures(results, grouped, output_dir, data_label, options)
    if figures:
        sections += ["## Figures", ""]
        sections += [f"![{name}]({path.name})" for name, path in figures.items()]
        sections.append("")
    sections += ["## Sources", ""] + [f"- {r.name}: {r.source or 'in memory'}" for r in results]
    markdown = output_dir / "report.md"
    markdown.write_text("\n".join(sections) + "\n")
    files = ReportFiles(markdown=markdown, tables=tables, figures=figures)
    if _mlflow_run_is_active() and log_to_mlflow is not False:
        sys.modules["mlflow"].log_artifacts(str(output_dir), artifact_path="report")
    elif log_to_mlflow:
        from wmh.tracking import configure_mlflow

        mlflow = configure_mlflow(REPORT_EXPERIMENT)
        with mlflow.start_run(run_name=f"report ({data_label})"):
            mlflow.set_tag("data_label", data_label)
            mlflow.log_artifacts(str(output_dir), artifact_path="report")
    return files


def _mlflow_run_is_active() -> bool:
    """True when MLflow is already imported and a run is active (never imports it)."""
    mlflow = sys.modules.get("mlflow")
    return mlflow is not None and mlflow.active_run() is not None


# --------------------------------------------------------------------------- figures

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def _data_suffix(data_label: str) -> str:
    return f" ({data_label} data)" if data_label else ""


def _new_figure(width: float, height: float):
    """A matplotlib Figure outside pyplot (no global state, freed when dropped)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    return figure, figure.add_subplot()


def roc_figure(results: Sequence[MethodResult], data_label: str,
               max_false_positive_rate: float = 0.02, title: str = "Test-set ROC"):
    """ROC curves of the methods with curves, observers as points (paper Fig. 4a).

    Args:
        results: methods (with ``curve``) and observers (with ``counts_obs1``).
        data_label: shown in the title ("" for none).
        max_false_positive_rate: x-axis cut (widened to show every observer).
        title: title before the data label.

    Returns:
        A matplotlib Figure.
    """
    figure, axis = _new_figure(6, 5)
    low_tpr, right = 1.0, max_false_positive_rate
    for index, result in enumerate(r for r in results if r.curve is not None):
        fpr, tpr = result.curve.roc()
        axis.plot(fpr, tpr, color=_COLOURS[index % len(_COLOURS)],
                  label=f"{result.name} (Az {result.test_az():.4f})")
        shown = tpr[fpr <= max_false_positive_rate]
        low_tpr = min(low_tpr, float(np.nanmin(shown)) if shown.size else 0.0)
    for result in results:
        if result.is_observer and result.counts_obs1 is not None:
            tp, fp, fn, tn = np.asarray(result.counts_obs1).sum(axis=0)
            observer_fpr, observer_tpr = fp / max(fp + tn, 1), tp / max(tp + fn, 1)
            axis.plot([observer_fpr], [observer_tpr], "k*", markersize=12, label=result.name)
            low_tpr = min(low_tpr, observer_tpr)
            right = max(right, 1.1 * observer_fpr)  # never cut an observer off
    axis.set_xlim(0, right)
    axis.set_ylim(max(0.0, low_tpr - 0.05), 1.0)
    axis.set_xlabel("False positive rate (voxels inside the brain mask)")
    axis.set_ylabel("True positive rate")
    axis.set_title(f"{title}, observer 1 as reference{_data_suffix(data_label)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def dice_threshold_figure(results: Sequence[MethodResult], data_label: str,
                          options: ReportOptions = ReportOptions(),
                          title: str = "Test Dice vs threshold"):
    """Dice against the binarisation threshold with patient-bootstrap bands (Fig. 4b).

    Observers are a dashed level with their own band; a dot marks each method's
    operating threshold.

    Returns:
        A matplotlib Figure.
    """
    figure, axis = _new_figure(6, 5)
    for index, result in enumerate(r for r in results if r.curve is not None):
        colour = _COLOURS[index % len(_COLOURS)]
        curve = result.curve
        if len(curve.case_ids) > 1:
            low, high = metrics.bootstrap_dice_curve_ci(curve, options.ci_resamples,
                                                        options.confidence, options.seed,
                                                        options.statistic)
            axis.fill_between(curve.thresholds, low, high, color=colour, alpha=0.2,
                              linewidth=0)
        dice_curve = curve.dice(options.statistic)
        axis.plot(curve.thresholds, dice_curve, color=colour, label=result.name)
        if result.threshold is not None:
            index_at = int(np.argmin(np.abs(curve.thresholds - result.threshold)))
            axis.plot([curve.thresholds[index_at]], [dice_curve[index_at]], "o",
                      color=colour, markersize=5)
    for result in results:
        if result.is_observer and result.counts_obs1 is not None:
            low, high = _dice_interval(result, options)
            axis.axhspan(low, high, color="grey", alpha=0.2, linewidth=0)
            axis.axhline(result.dice(1, options.statistic), color="black", linestyle="--",
                         label=f"{result.name} vs observer 1")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("Binary masking threshold")
    axis.set_ylabel(f"Dice ({options.statistic}, observer 1 as reference)")
    axis.set_title(f"{title}, {options.confidence:.0%} patient-bootstrap bands"
                   f"{_data_suffix(data_label)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower center", fontsize=8)
    figure.tight_layout()
    return figure


def training_size_figure(results: Sequence[MethodResult], data_label: str,
                         options: ReportOptions = ReportOptions()):
    """Test Dice by number of training images, with the paper's Table 6 (Fig. 5).

    Returns:
        A matplotlib Figure.
    """
    figure, axis = _new_figure(6, 4)
    ordered = sorted((r for r in results if r.training_size), key=lambda r: r.training_size)
    sizes = [result.training_size for result in ordered]
    dice = np.array([result.dice(1) for result in ordered], dtype=np.float64)
    bounds = np.array([_dice_interval(result, options) for result in ordered]).reshape(-1, 2)
    errors = np.nan_to_num(np.abs(np.stack([dice - bounds[:, 0], bounds[:, 1] - dice])))
    axis.errorbar(sizes, dice, yerr=errors, marker="o", capsize=3,
                  label=f"this code ({data_label} data)")
    paper = PAPER_RESULTS["table6"]
    axis.plot(list(paper), list(paper.values()), "k--", marker="s", alpha=0.6,
              label="paper, MSWS + Loc (Table 6)")
    axis.set_xscale("log", base=2)
    ticks = sorted(set(sizes) | set(paper))
    axis.set_xticks(ticks, [str(tick) for tick in ticks])
    axis.minorticks_off()
    axis.set_xlabel("Training images")
    axis.set_ylabel("Test Dice (observer 1)")
    axis.set_title(f"Test Dice by training-set size{_data_suffix(data_label)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def validation_figures(curve: metrics.DiceCurve, threshold: float,
                       title: str = "validation") -> dict:
    """ROC and Dice-vs-threshold figures of one model's validation cases (for training).

    Args:
        curve: the validation cases' counts over thresholds.
        threshold: the chosen (Dice-maximising) threshold, marked on the Dice curve.
        title: what the curves are, e.g. "msws+ffcl (validation)".

    Returns:
        {"roc": Figure, "dice_vs_threshold": Figure}, ready for ``mlflow.log_figure``.
    """
    result = MethodResult(name=title, case_ids=curve.case_ids, threshold=threshold,
                          curve=curve)
    options = ReportOptions(ci_resamples=200)
    roc = roc_figure([result], "", max_false_positive_rate=0.05, title=f"{title}: ROC")
    dice = dice_threshold_figure([result], "", options, title=f"{title}: Dice")
    return {"roc": roc, "dice_vs_threshold": dice}


def reliability_figure(curves: dict, title: str = "validation: reliability"):
    """Reliability diagram: observed WMH fraction against mean P per bin, one line per
    :class:`wmh.calibration.Reliability` (e.g. {"uncalibrated": ..., "calibrated": ...}),
    with each curve's ECE in the legend and the diagonal of perfect calibration.

    Returns:
        A matplotlib Figure.
    """
    figure, axis = _new_figure(5, 5)
    axis.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    for index, (name, curve) in enumerate(curves.items()):
        filled = curve.counts > 0
        axis.plot(curve.mean_probability[filled], curve.observed[filled], marker="o",
                  color=_COLOURS[index % len(_COLOURS)], label=f"{name} (ECE {curve.ece():.4f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("Mean P(WMH) in bin (brain voxels)")
    axis.set_ylabel("Observed WMH fraction")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def _draw_figures(results: Sequence[MethodResult], grouped: dict, output_dir: Path,
                  data_label: str, options: ReportOptions) -> dict[str, Path]:
    """Draws the report's figures that apply and saves them as PNGs."""
    figures = {}
    drawn = _chosen_methods([r for r in results if not r.is_observer], options.figure_methods,
                            "figure") + [r for r in results if r.is_observer]
    if any(result.curve is not None and not result.is_observer for result in drawn):
        figures["roc"] = roc_figure(drawn, data_label, options.max_false_positive_rate)
        figures["dice_vs_threshold"] = dice_threshold_figure(drawn, data_label, options)
    if grouped["table6"]:
        figures["training_size"] = training_size_figure(grouped["table6"], data_label,
                                                        options)
    paths = {}
    for name, figure in figures.items():
        paths[name] = output_dir / f"{name}.png"
        figure.savefig(paths[name])
    return paths


# ------------------------------------------------------------------ evaluate printing

def format_evaluation(evaluation: dict) -> str:
    """A plain-text table of :func:`wmh.metrics.evaluate_cases` output for the terminal."""
    columns = [("id", "case", "{}"), ("dice", "Dice", "{:.3f}"), ("hd95", "HD95 mm", "{:.2f}"),
               ("avd", "AVD %", "{:.1f}"), ("lesion_recall", "recall", "{:.3f}"),
               ("lesion_f1", "F1", "{:.3f}")]
    cases = evaluation["cases"]
    if cases and "dice_brain" in cases[0]:
        columns.append(("dice_brain", "Dice brain", "{:.3f}"))
    if cases and all("auc" in case for case in cases):
        columns.append(("auc", "Az", "{:.4f}"))

    def cell(value, pattern):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return pattern.format(value)

    rows = [[cell(case.get(key), pattern) for key, _, pattern in columns] for case in cases]
    summary = evaluation["summary"]
    rows.append(["mean"] + [cell(summary["mean"].get(key), pattern)
                            for key, _, pattern in columns[1:]])
    header = [title for _, title, _ in columns]
    widths = [max(len(str(row[index])) for row in rows + [header])
              for index in range(len(header))]
    lines = ["  ".join(str(value).rjust(width) for value, width in zip(row, widths))
             for row in [header] + rows]
    lines.append(f"{summary['num_cases']} cases; overall Dice {summary['pooled_dice']:.3f}"
                 if cases else "no cases")
    used = sorted({case["threshold"] for case in cases if "threshold" in case})
    if used:
        whose = ("as given with --threshold" if evaluation.get("threshold") is not None
                 else "each segmentation's own; probability maps without one at 0.5")
        lines.append(f"threshold {', '.join(f'{t:g}' for t in used)} ({whose})")
    undefined = {key: count for key, count in summary.get("undefined", {}).items() if count}
    if undefined:
        lines.append("undefined (empty masks, left out of means): " + ", ".join(
            f"{key} {count}" for key, count in undefined.items()))
    if evaluation.get("unmatched_predictions"):
        lines.append("predictions without truth (not evaluated): "
                     + ", ".join(evaluation["unmatched_predictions"][:10]))
    return "\n".join(lines)
