"""Evaluation cases: finding, pairing and loading predictions and truths; `wmh evaluate`.

Job: turn files and folders (``<id>.nii.gz``, ``<id>/`` folders of ``wmh segment``
outputs, challenge or BIDS-like cohorts, CSV manifests) into matched cases
(:func:`match_cases`), load them on the truth's grid (:func:`load_case`, through
:mod:`wmh.io`), choose the threshold each prediction is scored at, and apply the metrics
of :mod:`wmh.evaluation.metrics` to them (:func:`evaluate_cases`, the API behind
``wmh evaluate``); its JSON form (:func:`to_json`).
Must not: hold metric maths (that is :mod:`wmh.evaluation.metrics`), draw, or talk to
MLflow. Bad files and folders are a one-line :class:`wmh.errors.WMHError` naming the
option.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from wmh.errors import WMHError
from wmh.evaluation.metrics import (challenge_metrics, confusion_counts, dice_from_counts,
                                    roc_auc, split_truth, summarize_cases)

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
        The :func:`~wmh.evaluation.metrics.challenge_metrics` entries with ``id``; with a
        brain mask also ``dice_brain`` (Dice inside the mask, the paper's Dice) and
        ``brain_tp``, ``brain_fp``, ``brain_fn``; for probabilistic predictions ``auc``
        (inside the brain mask when given, else over the whole image; label 2 excluded).
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
