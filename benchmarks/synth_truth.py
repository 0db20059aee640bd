"""A prepared synthetic subject against the truth its generator wrote (``truth/`` beside
``orig/`` or ``pre/``): the shared code of bench_prepare.py and
bench_registration_quality.py (imported by the scripts, like machine.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def truth_on_working_grid(prepared, flair_path: str | Path, name: str,
                          order: int = 0) -> np.ndarray:
    """``truth/<name>.nii.gz`` of the subject whose FLAIR is ``flair_path``, resampled to
    ``prepared``'s working grid (order 0: labels, 1: linear)."""
    from wmh.io import load_image
    from wmh.preprocess import to_working_grid

    _, grid = load_image(flair_path)
    folder = Path(flair_path).parent.parent / "truth"
    data = np.asarray(nib.load(folder / f"{name}.nii.gz").dataobj)
    return to_working_grid(grid.to_working(data), grid, prepared.shape, prepared.affine, order)


def registration_error_mm(prepared, flair_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """|estimated - true MNI coordinate| (mm) of every working voxel inside the true brain,
    and the true brain mask (working grid)."""
    brain = truth_on_working_grid(prepared, flair_path, "brainmask") > 0
    truth = truth_on_working_grid(prepared, flair_path, "mni_coordinates", 1)
    error = np.linalg.norm(truth - prepared.mni_coordinates, axis=-1)
    return error[brain], brain


def dice(first: np.ndarray, second: np.ndarray) -> float:
    total = first.sum() + second.sum()
    return float(2.0 * np.logical_and(first, second).sum() / total) if total else 1.0
