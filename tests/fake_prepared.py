"""Tiny seeded prepared cohorts (wmh.preprocess.PreparedSubject files) for the sampling
and data-pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from wmh.preprocess import PreparedSubject

SHAPE = (40, 44, 5)  # working grid (X, Y, Z)


def fake_subject(subject_id: str, seed: int, shape=SHAPE, channels=("FLAIR", "T1"),
                 site: Optional[str] = None, split: Optional[str] = None,
                 labelled: bool = True, lesions: int = 4) -> PreparedSubject:
    """An ellipsoidal brain with bright WMH blobs (label 1), one other-pathology blob
    (label 2) and random location maps; images are 0 outside the brain."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = [(n - 1) / 2 for n in shape]
    brain = (((x - centre[0]) / (0.42 * shape[0])) ** 2
             + ((y - centre[1]) / (0.45 * shape[1])) ** 2 <= 1.0) & (z < shape[2] - 1)
    labels = np.zeros(shape, np.uint8)
    for _ in range(lesions):
        cx, cy = rng.integers(12, shape[0] - 12), rng.integers(12, shape[1] - 12)
        cz = rng.integers(0, shape[2] - 1)
        labels[(x - cx) ** 2 + (y - cy) ** 2 <= rng.integers(4, 10)] = 0
        labels[((x - cx) ** 2 + (y - cy) ** 2 <= rng.integers(4, 10)) & (z == cz)] = 1
    ox, oy = int(centre[0]) + 6, int(centre[1]) - 6
    labels[(x - ox) ** 2 + (y - oy) ** 2 <= 3] = 2
    labels[~brain] = 0
    flair = np.where(brain, 0.2 + 0.3 * rng.random(shape), 0.0)
    flair[labels == 1] = 0.8 + 0.2 * rng.random(int((labels == 1).sum()))
    flair[brain & (rng.random(shape) < 0.01)] = 0.95  # bright non-lesion voxels
    images = [flair]
    if len(channels) > 1:
        images.append(np.where(brain, 0.3 + 0.5 * rng.random(shape), 0.0))
    location = rng.random(shape + (8,)).astype(np.float32)
    return PreparedSubject(
        subject_id=subject_id, site=site, split=split,
        images=np.stack(images, axis=-1).astype(np.float32), channels=tuple(channels),
        brain_mask=brain, labels=labels if labelled else None, labels_observer2=None,
        location=location, ventricles=np.zeros(shape, np.uint8),
        spacing=np.array([1.0, 1.0, 3.0]), affine=np.diag([1.0, 1.0, 3.0, 1.0]),
        native_shape=shape, native_affine=np.diag([1.0, 1.0, 3.0, 1.0]),
        native_header=nib.Nifti1Header().binaryblock, cache_key=f"key-{subject_id}-{seed}",
        provenance={})


def write_cohort(folder: Path, count: int = 10, seed: int = 0, sites: int = 0,
                 **kwargs) -> Path:
    """Writes ``count`` fake subjects and a manifest.json into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for number in range(count):
        subject_id = f"sub-{number:02d}"
        site = f"site{number % sites}" if sites else None
        subject = fake_subject(subject_id, seed * 1000 + number, site=site, **kwargs)
        subject.save(folder / f"{subject_id}.h5")
        entries.append({"subject_id": subject_id, "file": f"{subject_id}.h5",
                        "cache_key": subject.cache_key, "site": site, "split": None})
    # The layout of wmh.preprocess.write_manifest.
    (folder / "manifest.json").write_text(json.dumps({"subjects": entries, "failed": {}}))
    return folder
