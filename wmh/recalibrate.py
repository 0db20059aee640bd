"""``wmh calibrate``: a trained model recalibrated on labelled scans, as a new model folder.

A model's calibration (:mod:`wmh.calibration`) and threshold are fitted on its own
validation subjects when it is trained. This refits both on other labelled scans (a
researcher's few manual masks, or the validation subjects of a model trained before
calibration existed), without training:

1. the labelled scans are prepared with the model's own preprocessing plan
   (``plan.json``; a ``wmh prepare`` folder is accepted when it was prepared with that
   plan), as ``wmh segment`` does;
2. every brain voxel is classified (the network's uncalibrated output), resampled to the
   native FLAIR grid as the test is scored (:func:`wmh.threshold.native_validation`);
3. the calibration is fitted on those voxels and the threshold chosen on the calibrated
   probabilities (:func:`wmh.threshold.calibrated_threshold`);
4. the model folder is copied to a new folder with the updated ``wmh_model.json``
   (calibration, threshold, uncalibrated threshold), written under a temporary name and
   renamed into place; the source is never modified.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from wmh import io
from wmh.errors import WMHError


@dataclasses.dataclass(frozen=True)
class Recalibration:
    """What ``wmh calibrate`` did.

    Attributes:
        out_dir: the new model folder.
        subject_ids: the scans it was fitted on.
        choice: the :class:`wmh.threshold.ThresholdChoice` (calibration, thresholds, Dice).
        previous_threshold: the source contract's threshold.
        previous_method: the source contract's calibration method.
        objective: what the threshold maximised ("pooled" or "mean" Dice).
    """

    out_dir: Path
    subject_ids: tuple[str, ...]
    choice: object
    previous_threshold: float
    previous_method: str
    objective: str = "pooled"


def check_new_folder(path: str | Path, option: str = "--out") -> Path:
    """``path`` can become a new folder: :func:`wmh.io.check_output_dir`, and not an
    existing folder with anything in it."""
    path = io.check_output_dir(path, option)
    if path.is_dir() and any(path.iterdir()):
        raise WMHError(f"{option} {path}: exists and is not empty (a new model folder is "
                       "written there; choose a new path)")
    return path


def is_prepared_folder(path: Path) -> bool:
    """Whether ``path`` is a ``wmh prepare`` output (``*.h5`` subject files)."""
    return path.is_dir() and any(p for p in path.glob("*.h5") if not p.name.startswith("."))


def _chosen(items: list, ids_of: Callable, subject_ids: Optional[Sequence[str]],
            data: Path) -> list:
    if not subject_ids:
        return items
    by_id = {ids_of(item): item for item in items}
    missing = [name for name in subject_ids if name not in by_id]
    if missing:
        raise WMHError(f"--subjects: {', '.join(missing)} not found in {data}")
    return [by_id[name] for name in subject_ids]


def labelled_inputs(data: str | Path, subject_ids: Optional[Sequence[str]] = None) -> list:
    """The labelled scans of ``--data``: PreparedRecords of a ``wmh prepare`` folder, or
    :class:`wmh.io.Subject` records of a cohort folder or CSV manifest; ``subject_ids``
    keeps those subjects only.

    Raises:
        WMHError: nothing found, an unknown id, or a scan without labels (naming it).
    """
    from wmh.splits import read_prepared_cohort

    data = Path(data)
    if is_prepared_folder(data):
        records = _chosen(read_prepared_cohort(data), lambda r: r.subject_id,
                          subject_ids, data)
        unlabelled = [record.path for record in records if not record.labelled]
    else:
        records = _chosen(io.discover(data), lambda s: s.subject_id, subject_ids, data)
        unlabelled = [record.flair for record in records if record.labels is None]
    if unlabelled:
        raise WMHError(f"--data {data}: {unlabelled[0]} has no labels (wmh calibrate needs "
                       f"manual WMH masks for every scan; {len(unlabelled)} without)")
    return records


def prepared_with(provenance: dict, config, use_t1: bool) -> bool:
    """Whether a PreparedSubject's provenance shows the preprocessing ``config``: the same
    config hash, or (files from an older version, whose hash covered fewer options) the
    same channels and the same value of every option both know, speed options aside."""
    from wmh.config import to_dict
    from wmh.preprocess.keys import _CACHE_IRRELEVANT, config_hash

    if provenance.get("config_hash") == config_hash(config, use_t1):
        return True
    recorded = provenance.get("config") or {}
    if not recorded or bool(provenance.get("use_t1")) != use_t1:
        return False
    ignored = (*_CACHE_IRRELEVANT, "prior_path")
    return all(recorded[key] == value for key, value in to_dict(config).items()
               if key in recorded and key not in ignored)


def prior_of(provenance: dict) -> Optional[str]:
    """The content hash (:func:`wmh.tracking.content_hash`) of the WMH prior a prepared
    file's location feature 8 was computed with: as recorded, else of the prior file it
    names while that file exists; None when neither is known."""
    from wmh.tracking import content_hash

    if provenance.get("prior_sha256"):
        return str(provenance["prior_sha256"])
    path = provenance.get("prior")
    return content_hash(path) if path and Path(path).is_file() else None


def _prepare(record, config, use_t1: bool, prior_sha256: str = ""):
    """One scan as the model expects it: prepared with the plan's config, or a prepared
    file checked to have been made with it, its location feature 8 from the plan's WMH
    prior (``prior_sha256``; "" = not checked)."""
    from wmh import preprocess
    from wmh.splits import PreparedRecord

    if isinstance(record, PreparedRecord):
        prepared = preprocess.PreparedSubject.load(record.path)
        provenance = prepared.provenance or {}
        if not prepared_with(provenance, config, use_t1):
            raise WMHError(f"--data {record.path}: prepared with other preprocessing than the "
                           "model's plan; pass the cohort folder (the scans) instead")
        found = prior_of(provenance)
        if prior_sha256 and found != prior_sha256:
            # e.g. a training run's prepared folder, whose feature 8 used the shipped prior,
            # where the model was trained on its prior view (<cache>/prior/...)
            raise WMHError(f"--data {record.path}: location feature 8 was computed with "
                           f"another WMH prior ({found or 'unknown'}) than the model's "
                           f"({prior_sha256}); pass the cohort folder (the scans), or the "
                           "training run's prior view of the prepared folder")
        return prepared
    return preprocess.prepare_subject(record, config, use_t1=use_t1)


def predict_labelled(folder: Path, contract, model, records: Sequence,
                     progress: bool = True, precision: str = "auto"):
    """Prepares (with the model's plan) and predicts every labelled scan.

    Returns:
        (PreparedSubjects, working-grid uncalibrated probabilities, subject ids).
    """
    from tqdm import tqdm

    from wmh.models import build_dense_model
    from wmh.segment.subject import preparation
    from wmh.train import predict_volume

    config, use_t1, plan = preparation(folder, contract)
    channels = tuple(contract.channels)
    network = model if contract.model.arch in ("msef", "rf") else \
        build_dense_model(model, contract.model, len(channels))
    subjects, probabilities, ids = [], [], []
    for record in tqdm(records, desc="calibrate", unit="subject", disable=not progress):
        prepared = _prepare(record, config, use_t1, (plan or {}).get("prior_sha256", ""))
        if tuple(prepared.channels[:len(channels)]) != channels:
            raise WMHError(f"--data {prepared.subject_id}: prepared channels "
                           f"{prepared.channels} do not match the model's {channels}")
        probabilities.append(predict_volume(
            network, contract.model, prepared.images[..., :len(channels)], prepared.location,
            prepared.brain_mask, spacing=prepared.spacing, precision=precision))
        subjects.append(prepared)
        ids.append(prepared.subject_id)
    return subjects, probabilities, ids


def write_model_copy(source: Path, out_dir: Path, contract) -> Path:
    """Copies the model folder ``source`` to the new folder ``out_dir`` with ``contract``
    as its ``wmh_model.json``: built in a hidden sibling folder and renamed into place
    (onto nothing or an empty folder), so ``out_dir`` is whole or absent."""
    from wmh.segment.outputs import current_umask
    from wmh.contract import CONTRACT_FILE
    from wmh.pretrained import CARD_FILE, RECORD_FILE

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".staging",
                                    dir=out_dir.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        # a shipped model's record and card describe it, not this recalibrated copy
        shutil.copytree(source, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(RECORD_FILE, CARD_FILE))
        (staging / CONTRACT_FILE).write_text(contract.to_json())
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked): the rename takes its place
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def recalibrate(model_source: str | Path, data: str | Path, out_dir: str | Path,
                method: str = "platt", subject_ids: Optional[Sequence[str]] = None,
                progress: bool = True, precision: str = "auto",
                adapt_prevalence: bool = False, objective: str = "pooled") -> Recalibration:
    """Refits a model's calibration and threshold on labelled scans into a new folder.

    Args:
        model_source: a model folder, its weights file, or an MLflow model URI.
        data: labelled scans: a cohort folder, CSV manifest or ``wmh prepare`` folder.
        out_dir: the new model folder (must not exist, or be empty).
        method: "platt", "prior" or "none".
        subject_ids: use only these subjects of ``data`` (None: all).
        progress: a progress bar over the scans.
        precision: inference precision of the whole-volume prediction.
        adapt_prevalence: each scan's probabilities shifted to its own prevalence
            (:func:`wmh.calibration.adapt_prevalence`), the threshold chosen on them.
        objective: what the threshold maximises: "pooled" Dice of all scans' voxels, or
            the "mean" of the scans' Dice (:data:`wmh.threshold.THRESHOLD_OBJECTIVES`).

    Raises:
        WMHError: a bad ``out_dir``, model or ``data`` (no labels, unknown ids), or
            "prior" for a model that does not record its training samples' share; all
            checked before the model loads, except preparation errors.
    """
    from wmh.calibration import METHODS
    from wmh.segment import resolve_model
    from wmh.contract import CONTRACT_FILE
    from wmh.loader import load_model_dir
    from wmh.threshold import THRESHOLD_OBJECTIVES, calibrated_threshold

    if method not in METHODS:
        raise WMHError(f"--method {method}: must be one of {', '.join(METHODS)}")
    if objective not in THRESHOLD_OBJECTIVES:
        raise WMHError(f"--threshold-objective {objective}: must be one of "
                       f"{', '.join(THRESHOLD_OBJECTIVES)}")
    out_dir = check_new_folder(out_dir)
    resolved = resolve_model(model_source)  # folder and contract checked, weights not read
    folder, contract = resolved.folder, resolved.contract
    share = contract.calibrator().sample_positive_share
    if method == "prior" and share is None:
        raise WMHError(f"--method prior: {folder / CONTRACT_FILE} does not record the "
                       "positive share of its training samples (a model from before "
                       "calibration); use --method platt")
    records = labelled_inputs(data, subject_ids)
    model, contract = load_model_dir(folder)
    subjects, probabilities, ids = predict_labelled(folder, contract, model, records,
                                                    progress, precision)
    choice = calibrated_threshold(subjects, probabilities, ids, method, share,
                                  "prevalence" if adapt_prevalence else "none", objective)
    calibration = choice.calibration
    if share is not None and calibration.sample_positive_share is None:
        calibration = dataclasses.replace(calibration, sample_positive_share=share)
    updated = dataclasses.replace(contract, threshold=float(choice.threshold),
                                  calibration=calibration.to_dict(),
                                  uncalibrated_threshold=float(choice.uncalibrated_threshold))
    write_model_copy(folder, out_dir, updated)
    return Recalibration(out_dir, tuple(ids), dataclasses.replace(choice,
                                                                   calibration=calibration),
                         float(contract.threshold), contract.calibrator().method, objective)


def summary(result: Recalibration) -> dict:
    """The JSON-ready figures of a recalibration (printed by ``wmh calibrate``)."""
    calibration = result.choice.calibration
    return json.loads(json.dumps({
        "out": str(result.out_dir), "subjects": list(result.subject_ids),
        "method": calibration.method, "parameters": calibration.parameters,
        "adaptation": calibration.adaptation,
        "ece_uncalibrated": calibration.validation_ece_before,
        "ece_calibrated": calibration.validation_ece_after,
        "prevalence": calibration.validation_prevalence,
        "threshold": float(result.choice.threshold),
        "threshold_objective": result.objective,
        "uncalibrated_threshold": float(result.choice.uncalibrated_threshold),
        "dice": float(result.choice.dice) if np.isfinite(result.choice.dice) else None,
        "previous_threshold": result.previous_threshold,
        "previous_method": result.previous_method}))
