"""A sample set's splits as MLflow datasets: what every training run (CNN or forest)
logs as its inputs, so the MLflow UI shows which subjects trained and validated a model.

Kept out of :mod:`wmh.sampling` so that the sample stage's code key
(:data:`wmh.tracking.STAGE_CODE`) does not follow MLflow logging code.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from wmh.sampling import load_splits, open_samples
from wmh.tracking import SYNTH_TAGS, synthetic_cohort


DATASET_CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}


def split_datasets(samples_dir: str | Path, prepared_dir: str | Path) -> dict[str, Any]:
    """The training, validation and test data of a sample set as MLflow datasets.

    Each dataset's digest hashes its split name and subject ids, the sample set's key
    (which hashes the prepared cohort and the sampling config), the prepared folder and
    the synthetic cohort's version (0 for real data); its source is the sample set
    folder and its profile the subject count.

    Returns:
        {"training", "validation", "test"} -> :class:`mlflow.data.meta_dataset.MetaDataset`.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    samples_dir, prepared_dir = Path(samples_dir), Path(prepared_dir)
    key = open_samples(samples_dir).key
    synth_version = int(synthetic_cohort(prepared_dir).get("synth_version", 0))
    with warnings.catch_warnings():  # MLflow registers the local source twice and says so
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(samples_dir.resolve()))

    class SplitDataset(MetaDataset):
        def __init__(self, subjects: int, **kwargs):
            self._subjects = subjects
            super().__init__(**kwargs)

        @property
        def profile(self):
            return {"subjects": self._subjects}

        def to_dict(self):  # MetaDataset records no profile
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    datasets = {}
    for split, subjects in load_splits(samples_dir).items():
        context = DATASET_CONTEXTS.get(split, split)
        text = json.dumps({"split": split, "subjects": sorted(subjects), "samples_key": key,
                           "prepared": prepared_dir.name, "synth_version": synth_version})
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        datasets[context] = SplitDataset(len(subjects), source=source, digest=digest,
                                         name=f"{prepared_dir.name}-{split}")
    return datasets


def log_datasets(samples_dir: str | Path, prepared_dir: str | Path) -> dict[str, Any]:
    """Logs :func:`split_datasets` as the active run's inputs, each in its context
    ("training", "validation", "test"), and for a synthetic cohort the generator version,
    seed, subject count and profile it was made with (tags ``synth_version``,
    ``synth_seed``, ``synth_subjects``, ``synth_profile``: a shipped model's card
    reads them); returns the datasets."""
    import mlflow

    datasets = split_datasets(samples_dir, prepared_dir)
    for context, dataset in datasets.items():
        mlflow.log_input(dataset, context=context)
    cohort = synthetic_cohort(prepared_dir)
    mlflow.set_tags({("" if name == "synth_version" else "synth_") + name: cohort[name]
                     for name in SYNTH_TAGS if name in cohort})
    return datasets
