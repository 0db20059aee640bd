"""Whole-volume segmentation of new scans with a trained model, and what users need from it.

For each subject: the same preprocessing as training (:func:`wmh.preprocess.prepare_subject`
with the model's in-plane spacing), every brain voxel classified by the dense twin of the
patch network (:func:`wmh.train.predict_volume`; equal to the sliding window), then, on the
native FLAIR grid with the input's affine and header:

* ``wmh_probability.nii.gz``: P(WMH) (float32, 0 outside the brain);
* ``wmh_mask.nii.gz``: probability >= threshold (uint8), the model's validation-optimal
  threshold unless ``--threshold`` is given;
* ``brain_mask.nii.gz``: the brain mask the voxels were classified in (uint8), so
  ``wmh evaluate --brain-mask`` and ROC/Az can count inside the brain as the paper does;
* ``wmh_uncertainty.nii.gz`` with ``--mc-samples N``: the standard deviation of P(WMH)
  over N Monte Carlo dropout passes (the probability map is then their mean);
* ``qc.png``: the mask over FLAIR on the slices with most lesion;
* ``report.json``: total WMH volume in mL, periventricular (within
  ``periventricular_mm`` = 10 mm, 3D, of the lateral ventricles) vs deep volume, lesion
  count (26-connected), model and threshold, and challenge metrics when labels exist.

A cohort's rows are gathered in ``volumes.csv``. A subject that fails (bad file, missing T1
the model needs) stops the command with a one-line error before anything of it is written;
outputs of a subject are written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from wmh import io
from wmh.config import PreprocessConfig, SegmentConfig
from wmh.errors import WMHError

REPORT_COLUMNS = ("subject_id", "total_ml", "periventricular_ml", "deep_ml", "lesion_count",
                  "threshold", "model", "dice", "hd95", "avd", "lesion_recall", "lesion_f1")


def resolve_inputs(inputs: Sequence[str | Path]) -> list[io.Subject]:
    """Subjects from ``wmh segment`` arguments: FLAIR [T1] files, or folders/CSV manifests.

    Raises:
        WMHError: nothing given, more than two image files, or a bad path.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise WMHError("wmh segment: give a subject folder, a cohort, or FLAIR [T1] files")
    images = [p for p in paths if p.name.endswith(io.NIFTI_SUFFIXES)]
    if images:
        if len(images) != len(paths) or len(images) > 2:
            raise WMHError("wmh segment: give either FLAIR [T1] image files or folders, "
                           f"not {len(paths)} mixed inputs")
        for path in images:
            if not path.is_file():
                raise WMHError(f"{path}: file not found")
        return [io.Subject(subject_id=io.strip_nifti_suffix(images[0].name), flair=images[0],
                           t1=images[1] if len(images) == 2 else None)]
    subjects = [subject for path in paths for subject in io.discover(path)]
    seen = set()
    for subject in subjects:
        if subject.subject_id in seen:
            raise WMHError(f"wmh segment: duplicate subject id '{subject.subject_id}' "
                           "among the inputs")
        seen.add(subject.subject_id)
    return subjects


def check_inputs_match(contract, subject: io.Subject) -> bool:
    """Whether the model uses T1; raises when it needs a T1 the subject lacks."""
    needs_t1 = "T1" in contract.channels
    if needs_t1 and subject.t1 is None:
        raise WMHError(f"{subject.flair}: the model needs FLAIR and T1 "
                       f"(channels {', '.join(contract.channels)}) but subject "
                       f"'{subject.subject_id}' has no T1; use a FLAIR-only model")
    return needs_t1


def lesion_volumes(mask: np.ndarray, ventricles: np.ndarray, spacing: np.ndarray,
                   periventricular_mm: float) -> dict:
    """Total, periventricular and deep WMH volume (mL) and the lesion count.

    Args:
        mask: (X, Y, Z) bool lesion mask on a grid with voxel size ``spacing`` (mm).
        ventricles: same grid, nonzero inside the lateral ventricles.
        periventricular_mm: lesion voxels within this 3D distance of a ventricle count as
            periventricular, the rest as deep.

    Returns:
        {"total_ml", "periventricular_ml", "deep_ml", "lesion_count"}.
    """
    mask = np.asarray(mask, bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if np.any(ventricles):
        distance = ndimage.distance_transform_edt(~np.asarray(ventricles, bool),
                                                  sampling=np.asarray(spacing, float))
        periventricular = mask & (distance <= periventricular_mm)
    else:
        periventricular = np.zeros_like(mask)
    _, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    total = int(mask.sum())
    near = int(periventricular.sum())
    return {"total_ml": total * voxel_ml, "periventricular_ml": near * voxel_ml,
            "deep_ml": (total - near) * voxel_ml, "lesion_count": int(count)}


def qc_figure(flair: np.ndarray, mask: np.ndarray, title: str, n_slices: int = 6):
    """A montage of axial slices (most lesion first, in slice order) with the mask in red.

    Args:
        flair: (X, Y, Z) FLAIR in working orientation; mask: (X, Y, Z) bool.
    """
    from matplotlib.figure import Figure

    per_slice = mask.sum(axis=(0, 1))
    if per_slice.any():
        chosen = np.sort(np.argsort(per_slice)[::-1][:n_slices])
    else:
        chosen = np.linspace(0, flair.shape[2] - 1, n_slices + 2).round().astype(int)[1:-1]
    figure = Figure(figsize=(2.6 * len(chosen), 3.0), dpi=100)
    low, high = np.percentile(flair[flair > 0], [1, 99.5]) if np.any(flair > 0) else (0, 1)
    for index, z in enumerate(chosen):
        axis = figure.add_subplot(1, len(chosen), index + 1)
        # working orientation is RAS: transpose so anterior is up, flip for radiological
        # display (the patient's right on the viewer's left).
        axis.imshow(flair[::-1, :, z].T[::-1], cmap="gray", vmin=low, vmax=high)
        overlay = np.ma.masked_where(~mask[::-1, :, z].T[::-1], np.ones(mask.shape[:2]).T)
        axis.imshow(overlay, cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        axis.set_title(f"z={z}", fontsize=8)
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


@dataclasses.dataclass(frozen=True)
class SegmentOptions:
    """How ``wmh segment`` runs (from the CLI or SegmentConfig)."""

    threshold: Optional[float] = None  # None: the model's validation-optimal threshold
    mc_samples: int = 0  # Monte Carlo dropout passes for the uncertainty map
    periventricular_mm: float = 10.0  # periventricular vs deep boundary

    @classmethod
    def from_config(cls, config: SegmentConfig) -> "SegmentOptions":
        return cls(config.threshold, config.mc_samples, config.periventricular_mm)


def segment_subject(model, contract, subject: io.Subject, out_dir: Path,
                    options: SegmentOptions, model_name: str = "", network=None,
                    prepared=None) -> dict:
    """Segments one subject; writes its outputs under ``out_dir/<subject_id>/``.

    Args:
        model: the trained patch model; ``network`` its dense twin if already built.
        contract: the model's :class:`wmh.train.ModelContract`.
        subject: the subject's files.
        out_dir: cohort output folder.
        options: threshold, MC samples, periventricular distance.
        model_name: recorded in the report.
        prepared: the subject's PreparedSubject when already prepared with the model's
            preprocessing (e.g. from the pipeline cache); None prepares it here.

    Returns:
        The subject's report row (see ``REPORT_COLUMNS``).
    """
    from wmh import metrics, preprocess
    from wmh.train import predict_volume

    use_t1 = check_inputs_match(contract, subject)
    threshold = contract.threshold if options.threshold is None else options.threshold
    if not 0.0 <= threshold <= 1.0:
        raise WMHError(f"--threshold {threshold}: must lie in [0, 1]")
    if prepared is None:
        prepared = preprocess.prepare_subject(
            subject, PreprocessConfig(inplane_spacing_mm=contract.inplane_spacing_mm),
            use_t1=use_t1)
    if tuple(prepared.channels[:len(contract.channels)]) != tuple(contract.channels):
        raise WMHError(f"{subject.flair}: prepared channels {prepared.channels} do not match "
                       f"the model's {contract.channels}")
    images = prepared.images[..., :len(contract.channels)]
    prediction = predict_volume(network if network is not None else model, contract.model,
                                images, prepared.location, prepared.brain_mask,
                                mc_samples=options.mc_samples, spacing=prepared.spacing)
    probability, uncertainty = prediction if options.mc_samples else (prediction, None)

    grid = prepared.native_grid()
    native_probability = np.clip(prepared.to_native_working(probability, order=1), 0, 1)
    native_brain = prepared.to_native_working(prepared.brain_mask.astype(np.uint8), 0) > 0
    native_mask = native_probability >= threshold
    if threshold == 0.0:  # P >= 0 everywhere: keep the mask to the brain
        native_mask &= native_brain
    native_ventricles = prepared.to_native_working(prepared.ventricles, order=0)
    row = {"subject_id": subject.subject_id, "threshold": threshold, "model": model_name}
    row.update(lesion_volumes(native_mask, native_ventricles, grid.working_spacing,
                              options.periventricular_mm))
    if subject.labels is not None:
        truth, _ = io.load_labels(subject.labels, grid)
        row.update(metrics.challenge_metrics(native_mask, truth, grid.working_affine))

    final = out_dir / subject.subject_id
    staging = Path(tempfile.mkdtemp(prefix=f".{subject.subject_id}.", dir=out_dir))
    try:
        io.save_like(native_probability.astype(np.float32), grid,
                     staging / "wmh_probability.nii.gz", np.float32)
        io.save_like(native_mask.astype(np.uint8), grid, staging / "wmh_mask.nii.gz", np.uint8)
        io.save_like(native_brain.astype(np.uint8), grid, staging / "brain_mask.nii.gz",
                     np.uint8)
        if uncertainty is not None:
            io.save_like(prepared.to_native_working(uncertainty, order=1).astype(np.float32),
                         grid, staging / "wmh_uncertainty.nii.gz", np.float32)
        flair, _ = io.load_image(subject.flair)
        figure = qc_figure(flair, native_mask,
                           f"{subject.subject_id}: {row['total_ml']:.1f} mL WMH, "
                           f"{row['lesion_count']} lesions (threshold {threshold:.2f})")
        figure.savefig(staging / "qc.png")
        (staging / "report.json").write_text(json.dumps(
            {key: _json_value(value) for key, value in row.items()}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return row


def _json_value(value):
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def segment(model_source: str | Path, inputs: Sequence[str | Path | io.Subject],
            out_dir: str | Path, options: SegmentOptions = SegmentOptions(),
            progress: bool = True, prepared_dir: Optional[Path] = None) -> list[dict]:
    """Segments every subject of ``inputs`` with the model; writes ``volumes.csv``.

    Every input is checked (files exist, the model's channels are available) before the
    first subject is processed, so a bad input costs no computation.

    Args:
        model_source: a model folder, its ``model.keras`` or ``runs:/<id>/model``.
        inputs: paths as ``wmh segment`` takes them, or :class:`wmh.io.Subject` records.
        out_dir: output folder (created).
        options: threshold, Monte Carlo samples, periventricular distance.
        prepared_dir: a ``wmh prepare`` folder made with the model's preprocessing; a
            subject found there (``<id>.h5``) is not prepared again.

    Returns:
        The report rows, one per subject.
    """
    from tqdm import tqdm

    from wmh.models import build_dense_model
    from wmh.preprocess import PreparedSubject
    from wmh.train import load_model_dir

    if options.mc_samples < 0:
        raise WMHError(f"--mc-samples {options.mc_samples}: must be 0 or more")
    if inputs and all(isinstance(item, io.Subject) for item in inputs):
        subjects = list(inputs)
    else:
        subjects = resolve_inputs(inputs)
    model, contract = load_model_dir(model_source)
    for subject in subjects:
        check_inputs_match(contract, subject)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    network = model if contract.model.arch in ("msef", "rf") else build_dense_model(
        model, contract.model, len(contract.channels))
    rows = []
    for subject in tqdm(subjects, desc="segment", unit="subject", disable=not progress):
        cached = Path(prepared_dir) / f"{subject.subject_id}.h5" if prepared_dir else None
        prepared = PreparedSubject.load(cached) if cached and cached.exists() else None
        rows.append(segment_subject(model, contract, subject, out_dir, options,
                                    model_name=str(model_source), network=network,
                                    prepared=prepared))
    write_volumes_csv(rows, out_dir / "volumes.csv")
    return rows


def write_volumes_csv(rows: list[dict], path: Path) -> Path:
    """One row per subject, the columns of ``REPORT_COLUMNS`` (empty where not known)."""
    with io.atomic_output(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if _json_value(row.get(key)) is None
                                   else _json_value(row.get(key))) for key in REPORT_COLUMNS})
    return path
