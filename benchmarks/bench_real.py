"""Segmentation quality on real scans with manual masks (issue 17); prints a table, then JSON.

Usage: ``.venv/bin/python benchmarks/bench_real.py MANIFEST [--model M] [--out DIR]``
or ``... MANIFEST --floor-only``.

Segments every case of a CSV manifest (``wmh.io.discover_manifest``; every case needs a
``mask``) through :func:`wmh.segment.run_cohort` into ``--out`` (default: a temporary
folder, removed after), and prints per case, against the manual mask on the FLAIR grid
(label 2 ignored), with :func:`wmh.evaluation.metrics.challenge_metrics`: Dice, HD95 (mm),
AVD (%), lesion recall and F1, true and predicted volume (mL) and the seconds the segmentation
took. Without ``--model``, the model shipped with wmh (``pretrained``, :mod:`wmh.pretrained`).

Beside it, the **floor**: the best single global FLAIR threshold chosen with the truth.
The FLAIR is divided by its median inside the brain mask (the one the segmentation wrote,
``brain_mask.nii.gz``; with ``--floor-only``, the manifest's ``brain_mask`` column, else
the FLAIR's non-zero voxels, which suits skull-stripped data), voxels outside the mask are
never lesion, and thresholds ``FLOOR_THRESHOLDS`` (1.0 to 4.0 x median, step 0.02) are swept;
``floor_dice`` is the best Dice of the case and ``floor_threshold`` where it was reached.
``shared_floor`` is one threshold for all cases (best mean Dice). A model worth shipping
beats ``floor_dice`` on every case.

The JSON last line: ``mean_dice``, ``cases``, ``failed``, ``seconds_per_case``,
``mean_floor_dice``, ``shared_floor``, the per-case rows, the model and the machine.
Bad input (a missing manifest, a case without a mask, no ``--model`` while no model is
shipped, a bad ``--out``) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model, vector_isa  # noqa: E402  benchmarks/machine.py

FLOOR_THRESHOLDS = np.round(np.arange(1.0, 4.0 + 1e-9, 0.02), 3)


def load_native(path: Path, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """An image's array and affine as stored (no reorientation: every map of a case lies
    on its FLAIR's grid)."""
    import nibabel as nib
    image = nib.load(str(path))
    return np.asarray(image.dataobj, dtype=dtype), np.asarray(image.affine, dtype=np.float64)


def truth_labels(path: Path, shape: tuple) -> np.ndarray:
    """Manual labels 0/1/2 (values are rounded; anything above 2 is refused)."""
    from wmh.errors import WMHError
    labels, _ = load_native(path)
    if labels.shape != tuple(shape):
        raise WMHError(f"{path}: mask shape {labels.shape} differs from the FLAIR's {shape}")
    labels = np.rint(labels).astype(np.int16)
    if labels.min() < 0 or labels.max() > 2:
        raise WMHError(f"{path}: mask values must be 0, 1 or 2")
    return labels.astype(np.uint8)


def floor_curve(flair: np.ndarray, brain: np.ndarray, truth: np.ndarray,
                thresholds: np.ndarray = FLOOR_THRESHOLDS) -> np.ndarray:
    """Dice of ``flair / median(flair in brain) >= t`` (inside ``brain``) against the
    truth's label 1 (label 2 ignored) for every threshold t."""
    from wmh.evaluation.metrics import dice_from_counts, threshold_counts
    brain = brain.astype(bool)
    median = float(np.median(flair[brain])) if brain.any() else 1.0
    values = np.where(brain, flair / (median if median > 0 else 1.0), -np.inf)
    counts = threshold_counts(values, truth, thresholds)
    return dice_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis across the slices, for HD95: the one with the largest spacing, or on
    a near-isotropic grid (spacings within 20 %) the one closest to superior-inferior."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if spacing.max() > 1.2 * spacing.min():
        return int(np.argmax(spacing))
    return int(np.argmax(np.abs(affine[2, :3]) / spacing))


def evaluate_case(subject, segmentation: Optional[Path]) -> dict:
    """One case's metrics (with a segmentation folder) and its floor curve."""
    from wmh.evaluation.metrics import challenge_metrics
    flair, affine = load_native(subject.flair)
    flair = np.nan_to_num(flair)
    truth = truth_labels(subject.labels, flair.shape)
    row: dict = {"subject_id": subject.subject_id}
    if segmentation is not None:
        predicted, _ = load_native(segmentation / "wmh_mask.nii.gz", np.uint8)
        brain, _ = load_native(segmentation / "brain_mask.nii.gz", np.uint8)
        metrics = challenge_metrics(predicted > 0, truth, affine, slice_axis=slice_axis(affine))
        row.update({key: metrics[key] for key in (
            "dice", "hd95", "avd", "lesion_recall", "lesion_f1", "truth_volume_ml",
            "predicted_volume_ml")})
        row["brain_mask"] = "segmentation"
    elif subject.brain_mask is not None:
        brain = truth_labels(subject.brain_mask, flair.shape) > 0
        row["brain_mask"] = "manifest"
        row["truth_volume_ml"] = _volume_ml(truth == 1, affine)
    else:
        brain = flair > 0
        row["brain_mask"] = "flair>0"
        row["truth_volume_ml"] = _volume_ml(truth == 1, affine)
    curve = floor_curve(flair, brain > 0, truth)
    best = int(np.argmax(curve))
    row.update({"floor_dice": float(curve[best]), "floor_threshold": float(FLOOR_THRESHOLDS[best]),
                "floor_curve": curve})
    return row


def _volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    return float(mask.sum()) * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def _format(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


COLUMNS = ("subject_id", "status", "dice", "hd95", "avd", "lesion_recall", "lesion_f1",
           "truth_volume_ml", "predicted_volume_ml", "seconds", "floor_dice",
           "floor_threshold")


def run(manifest: Path, model: Optional[str], out: Optional[Path], floor_only: bool,
        data: str = "real") -> dict:
    """Segments (unless ``floor_only``) and measures every case; returns the summary."""
    from wmh import io
    from wmh.errors import WMHError

    if not manifest.is_file():
        raise WMHError(f"{manifest}: manifest not found")
    subjects = io.discover_manifest(manifest)
    for subject in subjects:
        if subject.labels is None:
            raise WMHError(f"{manifest}: case {subject.subject_id} has no mask")
    reports: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_real_") as scratch:
        out_dir = Path(out) if out is not None else Path(scratch) / "segmentation"
        if not floor_only:
            from wmh.segment import run_cohort
            result = run_cohort(model, subjects, out_dir, progress=False)
            reports = {row["subject_id"]: row for row in result.rows}
        rows = []
        for subject in subjects:
            report = reports.get(subject.subject_id, {})
            failed = not floor_only and report.get("status") != "ok"
            folder = None if floor_only or failed else out_dir / subject.subject_id
            row = evaluate_case(subject, folder)
            row["status"] = "floor-only" if floor_only else ("failed" if failed else "ok")
            if report:
                row["seconds"] = report.get("seconds")
                if failed:
                    row["error"] = report.get("error")
            rows.append(row)
    summary = summarise(rows, None if floor_only else (model or "pretrained"), floor_only, data)
    summary["model_version"] = next((report.get("model_version") for report in
                                     reports.values() if report.get("model_version")), None)
    return summary


def summarise(rows: list[dict], model: Optional[str], floor_only: bool,
              data: str = "real") -> dict:
    curves = np.stack([row.pop("floor_curve") for row in rows])
    shared = int(np.argmax(curves.mean(axis=0)))
    ok = [row for row in rows if row["status"] == "ok"]
    seconds = [row["seconds"] for row in ok if row.get("seconds") is not None]
    return {
        "benchmark": "real",
        "data": data,
        "model": model,
        "floor_only": floor_only,
        "cases": len(rows),
        "failed": sum(row["status"] == "failed" for row in rows),
        "mean_dice": float(np.mean([row["dice"] for row in ok])) if ok else None,
        "seconds_per_case": float(np.mean(seconds)) if seconds else None,
        "mean_floor_dice": float(np.mean([row["floor_dice"] for row in rows])),
        "shared_floor": {"threshold": float(FLOOR_THRESHOLDS[shared]),
                         "mean_dice": float(curves.mean(axis=0)[shared]),
                         "dice": [float(v) for v in curves[:, shared]]},
        "rows": rows,
        "machine": {"cpu": cpu_model(), "isa": vector_isa(), "cores": os.cpu_count(), "gpu": "none",
                    "python": platform.python_version()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--model", default=None,
                        help="model folder, runs:/ URI or pretrained[:NAME] (default: the "
                             "shipped model)")
    parser.add_argument("--out", type=Path, default=None,
                        help="segmentation folder (default: temporary, removed after)")
    parser.add_argument("--floor-only", action="store_true",
                        help="only the global-threshold floor (no model, no segmentation)")
    parser.add_argument("--data", choices=("real", "synthetic"), default="real",
                        help="what the manifest's scans are, as the JSON's 'data' says "
                             "(synthetic: e.g. a run's held-out SYNTHETIC test subjects)")
    args = parser.parse_args(argv)
    from wmh.launch import quiet_tensorflow

    quiet_tensorflow()  # as the wmh command does: no TensorFlow start-up lines on stderr

    from wmh import io
    from wmh.errors import WMHError

    try:
        if args.out is not None:
            io.check_output_dir(args.out, "--out")
        summary = run(args.manifest, args.model, args.out, args.floor_only, args.data)
    except WMHError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("  ".join(f"{c:>10}" for c in COLUMNS))
    for row in summary["rows"]:
        print("  ".join(f"{_format(row.get(c)):>10}" for c in COLUMNS))
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
