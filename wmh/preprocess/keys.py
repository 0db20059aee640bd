"""Cache keys and provenance: what a PreparedSubject was made from."""

from __future__ import annotations

import json
from pathlib import Path

from wmh import __version__
from wmh.config import PreprocessConfig, to_dict
from wmh.errors import WMHError
from wmh.io import Subject
from wmh.tracking import content_hash, hash_files


_CACHE_IRRELEVANT = ("workers", "threads")  # change speed, not results
# Chosen by the pipeline, not by preparation: a subject is prepared with prior_path (or the
# shipped prior); the training-split prior replaces feature 8 afterwards (prior.py).
_PIPELINE_ONLY = ("prior", "prior_smoothing_mm")


def code_version() -> str:
    """The package version plus a hash of the preprocessing code (the modules of the
    ``prepare`` stage, :data:`wmh.tracking.STAGE_CODE`) and the packaged prior."""
    from wmh import location
    from wmh.tracking import stage_code_hash

    prior = location.default_prior_path()
    return (f"{__version__}+{stage_code_hash('prepare')}"
            + (f"+{hash_files([prior])}" if prior else ""))


def config_hash(config: PreprocessConfig, use_t1: bool) -> str:
    """Hash of the options that change a PreparedSubject (not workers or threads)."""
    from wmh import location

    values = {k: v for k, v in to_dict(config).items()
              if k not in _CACHE_IRRELEVANT + _PIPELINE_ONLY and k != "prior_path"}
    values["use_t1"] = bool(use_t1)
    # The prior by content, not by path: a model folder's copy keys like the original.
    prior = config.prior_path or location.default_prior_path()
    values["prior_file"] = content_hash(prior) if prior else ""
    return hash_files([], extra=json.dumps(values, sort_keys=True))


def _input_files(subject: Subject, use_t1: bool) -> dict[str, Path]:
    files = {"flair": subject.flair, "t1": subject.t1 if use_t1 else None,
             "labels": subject.labels, "labels_observer2": subject.labels_observer2,
             "brain_mask": subject.brain_mask}
    return {role: Path(path) for role, path in files.items() if path is not None}


def cache_key(subject: Subject, config: PreprocessConfig, use_t1: bool) -> str:
    """Hash of the subject's input bytes, the relevant config and the code version.

    Raises:
        WMHError: an input file cannot be read.
    """
    files = _input_files(subject, use_t1)
    description = json.dumps({"roles": sorted(files), "subject": subject.subject_id,
                              "site": subject.site, "split": subject.split,
                              "participant": subject.participant,
                              "coregistered": subject.coregistered,
                              "config": config_hash(config, use_t1),
                              "code": code_version()}, sort_keys=True)
    try:
        return hash_files([files[role] for role in sorted(files)], extra=description)
    except OSError as error:
        raise WMHError(f"{error.filename}: cannot read ({error.strerror})") from None


def provenance(subject: Subject, config: PreprocessConfig, use_t1: bool, quality: dict,
               prior_source: str) -> dict:
    """What a PreparedSubject was made from: code, config, inputs, quality figures."""
    return {"code_version": code_version(), "config_hash": config_hash(config, use_t1),
            "config": to_dict(config), "use_t1": bool(use_t1), "prior": str(prior_source),
            "inputs": {role: {"path": str(path), "hash": hash_files([path])}
                       for role, path in _input_files(subject, use_t1).items()},
            "quality": quality}
