"""Prepared cohorts for the sampling and pipeline tests: the phantom of ``cohorts.py`` plus
what sampling must handle (other pathology, sites, fixed splits, unlabelled subjects) and
the ``manifest.json`` that ``wmh prepare`` writes beside the subject files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
from cohorts import tiny_prepared_subject

SHAPE = (40, 44, 5)  # working grid (X, Y, Z)


def fake_subject(subject_id: str, seed: int, shape=SHAPE, site: Optional[str] = None,
                 split: Optional[str] = None, labelled: bool = True):
    """``cohorts.tiny_prepared_subject`` with a disc of other pathology (label 2, e.g. a
    lacune) in normal-looking tissue on every slice."""
    subject = tiny_prepared_subject(subject_id, shape, seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = ((x - shape[0] // 2) ** 2 + (y - shape[1] // 2 + 9) ** 2 <= 3)[..., None]
    labels = subject.labels.copy()
    labels[disc & (labels == 0) & subject.brain_mask] = 2
    return dataclasses.replace(subject, labels=labels if labelled else None, site=site,
                               split=split)


def write_cohort(folder: Path, count: int = 10, seed: int = 0, sites: int = 0) -> Path:
    """Writes ``count`` subjects and a manifest.json (the layout of
    ``wmh.preprocess.write_manifest``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for number in range(count):
        subject_id = f"sub-{number:02d}"
        site = f"site{number % sites}" if sites else None
        subject = fake_subject(subject_id, seed * 1000 + number, site=site)
        subject.save(folder / f"{subject_id}.h5")
        entries.append({"subject_id": subject_id, "file": f"{subject_id}.h5",
                        "cache_key": subject.cache_key, "site": site, "split": None})
    (folder / "manifest.json").write_text(json.dumps({"subjects": entries, "failed": {}}))
    return folder
