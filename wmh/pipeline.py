"""The stages in sequence, each cached: cohort -> prepared -> samples -> model -> results.

``wmh train``, ``mlflow run .``, ``wmh demo`` and ``wmh reproduce`` all start here so that
they do the same thing. Each stage is keyed by a hash of its inputs and config, so a rerun
reuses what is up to date and an interrupted run resumes at the stage it stopped in.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from wmh.config import ExperimentConfig, SynthConfig, dump_yaml
from wmh.errors import WMHError

DEFAULT_COHORT = "data_cache/synth/default"  # data.root placeholder: the synthetic default


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def synthetic_root(config: ExperimentConfig) -> Path:
    """Where the synthetic cohort described by ``config.synth`` lives in the cache."""
    synth = config.synth
    return (Path(config.data.cache_dir) / "synth"
            / f"{synth.profile}-n{synth.subjects}-seed{synth.seed}-{_key(dump_yaml(synth))}")


def ensure_cohort(config: ExperimentConfig) -> tuple[Path, bool]:
    """The cohort folder, synthesising it when ``data.root`` is the synthetic default.

    Returns:
        (cohort path, whether the cohort is synthetic).
    """
    if config.data.root in (DEFAULT_COHORT, "synthetic"):
        from wmh import synth

        root = synthetic_root(config)
        synth_config: SynthConfig = config.synth
        synth.synthesize_cohort(root, subjects=synth_config.subjects, seed=synth_config.seed,
                                profile=synth_config.profile,
                                flair_only=synth_config.flair_only,
                                skull_stripped=synth_config.skull_stripped,
                                workers=config.preprocess.workers)
        return root, True
    root = Path(config.data.root)
    if not root.exists():
        raise WMHError(f"data.root {root}: no such file or folder")
    return root, (root / "cohort.json").exists()


def ensure_prepared(config: ExperimentConfig, cohort: Path) -> Path:
    """Prepared subjects of ``cohort`` under ``<cache>/prepared/<key>``; raises when a
    subject failed (named with its reason)."""
    from wmh import preprocess

    key = _key(str(cohort.resolve()), dump_yaml(config.preprocess), str(config.data.use_t1))
    out = Path(config.data.cache_dir) / "prepared" / f"{cohort.name}-{key}"
    report = preprocess.prepare_cohort(cohort, out, config.preprocess,
                                       use_t1=config.data.use_t1,
                                       workers=config.preprocess.workers)
    if report.failures:
        subject_id, reason = next(iter(report.failures.items()))
        raise WMHError(f"{cohort}: {len(report.failures)} subject(s) failed preparation, "
                       f"first {subject_id}: {reason}")
    return out


def ensure_samples(config: ExperimentConfig, prepared: Path) -> Path:
    """Balanced samples and splits of the prepared cohort, under ``<cache>/samples/``."""
    from wmh import sampling

    key = _key(str(prepared.resolve()), dump_yaml(config.sampling))
    out = Path(config.data.cache_dir) / "samples" / f"{prepared.name}-{key}"
    return sampling.build_samples(prepared, out, config.sampling)


@dataclasses.dataclass(frozen=True)
class DataStages:
    cohort: Path
    synthetic: bool
    prepared: Path
    samples: Path


def ensure_data(config: ExperimentConfig) -> DataStages:
    """Runs (or reuses) every data stage for ``config``."""
    cohort, synthetic = ensure_cohort(config)
    prepared = ensure_prepared(config, cohort)
    samples = ensure_samples(config, prepared)
    return DataStages(cohort, synthetic, prepared, samples)


def run_training(config: ExperimentConfig, **train_kwargs):
    """Data stages, then training (``wmh train`` and the MLproject ``main`` entry)."""
    from wmh import train

    stages = ensure_data(config)
    return train.train(config, stages.samples, stages.prepared,
                       data_label="synthetic" if stages.synthetic else "real", **train_kwargs)

