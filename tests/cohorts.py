"""Tiny prepared cohorts written straight to the PreparedSubject format, for fast tests
of sampling, training and segmentation without running registration."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def tiny_prepared_subject(subject_id: str, shape=(40, 40, 5), seed: int = 0, with_t1=True):
    """A head-like phantom on the working grid: an elliptical brain, two dark 'ventricles',
    bright WMH blobs next to them (label 1) and a few bright cortical mimics (label 0)."""
    from wmh.preprocess import PreparedSubject

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    cx, cy = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    brain = ((x - cx) / (0.45 * shape[0])) ** 2 + ((y - cy) / (0.45 * shape[1])) ** 2 <= 1
    ventricles = np.zeros(shape, np.uint8)
    ventricles[(np.abs(x - cx + 4) < 2) & (np.abs(y - cy) < 6)] = 1
    ventricles[(np.abs(x - cx - 4) < 2) & (np.abs(y - cy) < 6)] = 2
    ventricles &= brain.astype(np.uint8) * 3
    labels = np.zeros(shape, np.uint8)
    for _ in range(6 + seed % 3):
        px = int(cx + rng.choice([-7, 7]) + rng.integers(-1, 2))
        py = int(cy + rng.integers(-6, 7))
        pz = int(rng.integers(0, shape[2]))
        ball = (x - px) ** 2 + (y - py) ** 2 + ((z - pz) * 2) ** 2 <= rng.uniform(4, 10)
        labels[ball & brain & (ventricles == 0)] = 1
    flair = np.where(brain, 0.45, 0.0).astype(np.float32)
    flair[ventricles > 0] = 0.1
    flair[labels == 1] = 0.85
    mimics = brain & ~ndimage.binary_erosion(brain, iterations=2) & (rng.random(shape) < 0.05)
    flair[mimics] = 0.8
    flair = np.where(brain, np.clip(flair + rng.normal(0, 0.04, shape), 0, 1), 0)
    t1 = np.where(brain, 0.7 - 0.3 * (labels == 1) - 0.5 * (ventricles > 0), 0)
    images = np.stack([flair, t1] if with_t1 else [flair], axis=-1).astype(np.float32)
    location = np.stack([x / shape[0], y / shape[1], z / shape[2]]
                        + [rng.random(shape) * 0.1 + 0.5] * 5, axis=-1).astype(np.float32)
    location *= brain[..., None]
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_sform(np.eye(4), code=1)
    return PreparedSubject(
        subject_id=subject_id, site="tiny", split=None, images=images,
        channels=("FLAIR", "T1") if with_t1 else ("FLAIR",), brain_mask=brain,
        labels=labels, labels_observer2=None, location=location, ventricles=ventricles,
        spacing=np.ones(3), affine=np.eye(4), native_shape=shape, native_affine=np.eye(4),
        native_header=header.binaryblock, cache_key=f"tiny-{subject_id}-{seed}")


def write_prepared_cohort(folder: Path, n_subjects: int = 6, shape=(40, 40, 5), seed: int = 0,
                          with_t1: bool = True) -> Path:
    """Writes ``<folder>/<id>.h5`` for ``n_subjects`` tiny subjects; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n_subjects):
        subject = tiny_prepared_subject(f"t{index:02d}", shape, seed * 100 + index, with_t1)
        subject.save(folder / f"{subject.subject_id}.h5")
    return folder


def make_config(root, values: dict, overrides: dict | None = None):
    """An ExperimentConfig from dotted ``key: value`` pairs, caching under ``root/cache``."""
    from wmh.config import load_config

    merged = {"data.cache_dir": str(Path(root) / "cache"), **values, **(overrides or {})}
    return load_config(None, [f"{key}={value}" for key, value in merged.items()])
