"""Realism measures of a synthetic cohort (used by tests/test_synth.py and
benchmarks/bench_synth.py): where the WMH lie, how much look-alike tissue there is, how
far intensity alone gets, and how much the two observers agree.

All measures read the written files (challenge layout + ``truth/``), so they check what
users get. Intensity thresholds work on the FLAIR divided by its median inside the brain.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from wmh.io import load_image, load_labels

PERIVENTRICULAR_MM = 10.0
THRESHOLDS = np.round(np.arange(1.0, 3.0, 0.02), 3)  # FLAIR / brain median
CORTEX_EXCLUSION_MM = (0.0, 2.0, 4.0, 6.0)  # oracle: ignore voxels this close to cortex
SEPTUM_EXCLUSION_MM = (0.0, 4.0, 6.0, 8.0)  # oracle: ignore voxels this close to both ventricles


@dataclasses.dataclass
class TruthCase:
    """One subject's FLAIR and truth maps on the FLAIR grid (working orientation)."""

    subject_id: str
    flair: np.ndarray  # FLAIR / median FLAIR inside the brain
    observer1: np.ndarray  # uint8 labels 0/1/2
    observer2: np.ndarray
    brain: np.ndarray  # bool
    ventricles: np.ndarray  # uint8 1 left, 2 right
    hard_negatives: np.ndarray  # bool
    mni_mm: np.ndarray  # (x, y, z, 3) float32
    spacing: np.ndarray  # (3,) mm


def load_case(folder: str | Path) -> TruthCase:
    folder = Path(folder)
    flair, grid = load_image(folder / "orig" / "FLAIR.nii.gz")
    labels1, _ = load_labels(folder / "wmh.nii.gz", grid)
    labels2, _ = load_labels(folder / "wmh_observer2.nii.gz", grid)
    brain, _ = load_labels(folder / "truth" / "brainmask.nii.gz", grid)
    ventricles, _ = load_labels(folder / "truth" / "ventricles.nii.gz", grid)
    hard, _ = load_labels(folder / "truth" / "hard_negatives.nii.gz", grid)
    import nibabel as nib
    coordinates = nib.load(str(folder / "truth" / "mni_coordinates.nii.gz"))
    mni = grid.to_working(np.asarray(coordinates.dataobj, dtype=np.float32))
    brain = brain.astype(bool)
    median = float(np.median(flair[brain])) if brain.any() else 1.0
    return TruthCase(folder.name, flair / median, labels1, labels2, brain, ventricles,
                     hard.astype(bool), mni, grid.working_spacing)


def ventricle_distances(case: TruthCase) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm, 3D, anisotropic voxels) to the left and to the right ventricle."""
    return tuple(ndi.distance_transform_edt(case.ventricles != side, sampling=case.spacing)
                 .astype(np.float32) for side in (1, 2))


def cortex_distance(case: TruthCase, anatomy) -> np.ndarray:
    """True distance to cortex (mm in MNI space), looked up through the true MNI coordinates."""
    voxel = np.moveaxis(case.mni_mm, -1, 0) - anatomy.affine[:3, 3].reshape(3, 1, 1, 1)
    return ndi.map_coordinates(anatomy.d_cortex, voxel, order=1, mode="nearest",
                               output=np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def observer_dice(case: TruthCase) -> float:
    """Observer 2 against observer 1 (WMH, label 1; other pathology ignored)."""
    keep = case.observer1 != 2
    return dice((case.observer2 == 1) & keep, case.observer1 == 1)


def periventricular_counts(case: TruthCase, distances=None) -> tuple[int, int]:
    """(WMH voxels within PERIVENTRICULAR_MM of a ventricle, all WMH voxels)."""
    left, right = distances if distances is not None else ventricle_distances(case)
    wmh = case.observer1 == 1
    near = np.minimum(left, right) <= PERIVENTRICULAR_MM
    return int((wmh & near).sum()), int(wmh.sum())


def deep_lesion_count(case: TruthCase, distances=None) -> int:
    """Connected WMH components lying entirely beyond PERIVENTRICULAR_MM of the ventricles."""
    left, right = distances if distances is not None else ventricle_distances(case)
    labels, count = ndi.label(case.observer1 == 1, np.ones((3, 3, 3), bool))
    if count == 0:
        return 0
    closest = ndi.minimum(np.minimum(left, right), labels, index=np.arange(1, count + 1))
    return int((np.asarray(closest) > PERIVENTRICULAR_MM).sum())


def threshold_dice(cases_values: Sequence[np.ndarray], cases_truth: Sequence[np.ndarray],
                   thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Per-case Dice (cases, thresholds) of ``value >= threshold`` against the truth.

    Args:
        cases_values: per case, a value for each counted voxel; -inf where a rule may never
            predict (such truth voxels count as misses).
        cases_truth: per case, bool truth of the same voxels.
    """
    dices = np.zeros((len(cases_values), len(thresholds)))
    edges = np.append(thresholds, np.inf)
    for i, (values, truth) in enumerate(zip(cases_values, cases_truth)):
        positives = np.histogram(values[truth], bins=edges)[0][::-1].cumsum()[::-1]
        negatives = np.histogram(values[~truth], bins=edges)[0][::-1].cumsum()[::-1]
        total_truth = int(truth.sum())
        denominator = positives + negatives + total_truth
        dices[i] = np.where(denominator > 0, 2 * positives / np.maximum(denominator, 1), 1.0)
    return dices


def _candidates(case: TruthCase, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and truth of the voxels a rule may predict; WMH outside ``keep`` are kept as
    unreachable truth (value -inf) so they count as misses."""
    wmh = case.observer1 == 1
    counted = case.brain & (case.observer1 != 2)
    values = np.where(keep, case.flair, -np.inf)[counted | wmh]
    truth = wmh[counted | wmh]
    return values, truth


def best_threshold(cases: Sequence[TruthCase]) -> dict:
    """The single global FLAIR threshold (on FLAIR / brain median) that maximises the
    mean per-subject Dice against observer 1, inside the brain (label 2 ignored)."""
    prepared = [_candidates(case, np.ones(case.flair.shape, bool)) for case in cases]
    dices = threshold_dice([v for v, _ in prepared], [t for _, t in prepared])
    mean = dices.mean(axis=0)
    best = int(np.argmax(mean))
    pooled = _pooled_dice(prepared, THRESHOLDS[best])
    return {"threshold": float(THRESHOLDS[best]), "mean_dice": float(mean[best]),
            "pooled_dice": pooled}


def oracle_threshold(cases: Sequence[TruthCase], anatomy, distances=None) -> dict:
    """A global threshold that also knows location: voxels closer than c mm to cortex, or
    closer than s mm to both ventricles (septum pellucidum), are never WMH; the best
    (threshold, c, s) by mean per-subject Dice."""
    distances = distances or [ventricle_distances(case) for case in cases]
    cortex = [cortex_distance(case, anatomy) for case in cases]
    best = {"mean_dice": -1.0}
    for c in CORTEX_EXCLUSION_MM:
        for s in SEPTUM_EXCLUSION_MM:
            prepared = []
            for case, (left, right), d_cortex in zip(cases, distances, cortex):
                keep = d_cortex >= c
                if s > 0:
                    keep &= ~((left < s) & (right < s))
                prepared.append(_candidates(case, keep))
            mean = threshold_dice([v for v, _ in prepared], [t for _, t in prepared]).mean(axis=0)
            index = int(np.argmax(mean))
            if mean[index] > best["mean_dice"]:
                best = {"threshold": float(THRESHOLDS[index]), "mean_dice": float(mean[index]),
                        "cortex_exclusion_mm": c, "septum_exclusion_mm": s,
                        "pooled_dice": _pooled_dice(prepared, THRESHOLDS[index])}
    return best


def _pooled_dice(prepared, threshold: float) -> float:
    tp = fp = fn = 0
    for values, truth in prepared:
        predicted = values >= threshold
        tp += int((predicted & truth).sum())
        fp += int((predicted & ~truth).sum())
        fn += int((~predicted & truth).sum())
    return float(2 * tp / max(2 * tp + fp + fn, 1))


def cohort_realism(folders: Sequence[str | Path], anatomy) -> dict:
    """Every realism measure over a cohort's subject folders."""
    cases = [load_case(folder) for folder in folders]
    distances = [ventricle_distances(case) for case in cases]
    near = total = 0
    for case, d in zip(cases, distances):
        n, t = periventricular_counts(case, d)
        near, total = near + n, total + t
    hard = sum(int(case.hard_negatives.sum()) for case in cases)
    per_subject_hard = [int(c.hard_negatives.sum()) / max(int((c.observer1 == 1).sum()), 1)
                        for c in cases]
    observer = [observer_dice(case) for case in cases]
    threshold = best_threshold(cases)
    oracle = oracle_threshold(cases, anatomy, distances)
    deep = [deep_lesion_count(case, d) for case, d in zip(cases, distances)]
    return {
        "subjects": len(cases),
        "observer2_dice": float(np.mean(observer)),
        "observer2_dice_median": float(np.median(observer)),
        "periventricular_fraction": near / max(total, 1),
        "deep_lesions_per_subject": float(np.mean(deep)),
        "subjects_with_deep_lesions": int(sum(d > 0 for d in deep)),
        "hard_negative_ratio": hard / max(total, 1),
        "hard_negative_ratio_median_subject": float(np.median(per_subject_hard)),
        "best_threshold_dice": threshold["mean_dice"],
        "best_threshold": threshold,
        "oracle_dice": oracle["mean_dice"],
        "oracle": oracle,
    }
