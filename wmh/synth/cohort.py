"""The synthetic cohort: argument checks, subjects in the challenge layout, cohort.json.

Layout written under ``out``::

    out/cohort.json                      written last, atomically: its presence = complete
    out/prior_mni.nii.gz                 WMH prior probability on the 1 mm MNI template grid
    out/<site>/<id>/orig/FLAIR.nii.gz    int16, thick slices (per profile)
    out/<site>/<id>/orig/T1.nii.gz       int16, 1 mm, own head position (unless flair_only)
    out/<site>/<id>/wmh.nii.gz           observer 1: 0 background, 1 WMH, 2 other pathology
    out/<site>/<id>/wmh_observer2.nii.gz observer 2
    out/<site>/<id>/truth/{brainmask,ventricles,hard_negatives,mni_coordinates}.nii.gz
    out/<site>/<id>/preview.png          with preview=True
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

import nibabel as nib
import numpy as np

from wmh import __version__
from wmh.config import SynthConfig
from wmh.errors import WMHError
from wmh.io import atomic_save, atomic_write_text
from wmh.synth import pathology, subject as subject_module
from wmh.synth.anatomy import ANATOMY_VERSION, get_anatomy
from wmh.synth.profiles import (MIXED, PROFILE_NAMES, PROFILES, RANDOMISED, draw_profile,
                                profile_as_dict)
from wmh.synth.randomised import (RANDOMISED_SYNTH_VERSION, draw_randomisation,
                                  generator_ranges)

SYNTH_VERSION = 3  # bump when generated arrays change for the same seed
COHORT_FILE = "cohort.json"
PROGRESS_FILE = ".synth-in-progress.json"  # arguments of a run that has not finished


def subject_seed(cohort_seed: int, index: int) -> int:
    """The seed of subject ``index``: independent streams for every (seed, index)."""
    return int(np.random.SeedSequence([int(cohort_seed), int(index)]).generate_state(1)[0])


def subject_id(index: int) -> str:
    return f"s{index:03d}"


def synth_version(profile: str) -> int:
    """The generator version of a cohort of ``profile``: the randomised profile has its
    own (RANDOMISED_SYNTH_VERSION), so caches and records tell its data apart."""
    return RANDOMISED_SYNTH_VERSION if profile == RANDOMISED else SYNTH_VERSION


def _arguments(config: SynthConfig) -> dict:
    return {"subjects": int(config.subjects), "seed": int(config.seed),
            "profile": config.profile, "flair_only": bool(config.flair_only),
            "skull_stripped": bool(config.skull_stripped),
            "synth_version": synth_version(config.profile)}


def check_arguments(out: Path, subjects: int, seed: int, profile: str) -> None:
    """Raises WMHError (one line naming the option or path) for bad arguments."""
    if profile not in PROFILE_NAMES:
        raise WMHError(f"option --profile: unknown profile '{profile}' "
                       f"(choose from {', '.join(PROFILE_NAMES)})")
    if isinstance(subjects, bool) or not isinstance(subjects, (int, np.integer)) or subjects < 1:
        raise WMHError(f"option --subjects: expected an integer >= 1, got {subjects!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WMHError(f"option --seed: expected an integer >= 0, got {seed!r}")
    if out.exists() and not out.is_dir():
        raise WMHError(f"{out}: output exists and is not a folder")


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(data: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _state(out: Path, arguments: dict) -> str:
    """'empty', 'complete' (same arguments), 'resume' (an unfinished run of the same
    arguments); anything else raises WMHError."""
    if not out.exists() or not any(out.iterdir()):
        return "empty"
    cohort = _read_json(out / COHORT_FILE)
    if cohort is not None:
        if cohort.get("arguments") == arguments:
            return "complete"
        raise WMHError(f"{out}: holds a different synthetic cohort "
                       f"({_describe(cohort.get('arguments'))}); choose another folder")
    progress = _read_json(out / PROGRESS_FILE)
    if progress is not None and progress.get("arguments") == arguments:
        return "resume"
    raise WMHError(f"{out}: folder is not empty and is not a synthetic cohort of the same "
                   "arguments; choose an empty or new folder")


def _describe(arguments: Optional[dict]) -> str:
    if not isinstance(arguments, dict):
        return "unknown arguments"
    return ", ".join(f"{k}={v}" for k, v in arguments.items())


def synthesize_subject(out: Path, index: int, config: SynthConfig, *, preview: bool = False,
                       cache_dir: Optional[str] = "data_cache") -> dict:
    """Generates and writes subject ``index`` of the cohort ``config`` under
    ``out/<site>/<id>/``.

    Args:
        out: the cohort folder.
        index: subject index (its id is ``s<index:03d>``).
        config: the cohort: its seed (the subject's own seed is derived from it and the
            index), acquisition profile (or 'mixed', 'randomised'), ``flair_only`` (write
            no T1) and ``skull_stripped`` (zero everything outside the brain);
            ``subjects`` is not used.
        preview: also write ``preview.png``.
        cache_dir: where the derived anatomy is cached on disk (None: memory only).

    Returns:
        The subject's cohort.json entry (seed, profile, volumes, counts, transforms, files).
    """
    profile = config.profile
    own_seed = subject_seed(config.seed, index)
    rng = np.random.default_rng([own_seed, 1])  # the acquisition draw, apart from the anatomy
    randomisation = draw_randomisation(rng) if profile == RANDOMISED else None
    acquisition = (draw_profile(profile, rng) if randomisation is None
                   else randomisation.acquisition)
    anatomy = get_anatomy(cache_dir)
    result = subject_module.generate_subject(subject_id(index), own_seed, acquisition, anatomy,
                                             flair_only=config.flair_only,
                                             skull_stripped=config.skull_stripped,
                                             randomisation=randomisation)
    folder = Path(out) / acquisition.site / result.subject_id
    files = subject_module.write_subject(result, folder)
    record = result.record
    record["acquisition"] = profile_as_dict(acquisition,
                                            resolved_from=MIXED if profile == MIXED else None)
    if randomisation is not None:
        record["randomisation"] = randomisation.as_dict()
    record["files"] = {name: f"{acquisition.site}/{result.subject_id}/{path}"
                       for name, path in files.items()}
    if preview:
        from wmh.synth.preview import write_preview
        path = write_preview(result, folder / "preview.png")
        record["files"]["preview"] = f"{acquisition.site}/{result.subject_id}/{path.name}"
    return record


def _subject_job(arguments: tuple) -> dict:
    out, index, config, preview, cache_dir = arguments
    return synthesize_subject(out, index, config, preview=preview, cache_dir=cache_dir)


def synthesize_cohort(out: Path, config: SynthConfig, *, preview: bool = False,
                      workers: int = 1, cache_dir: Optional[str] = "data_cache",
                      progress: bool = False) -> Path:
    """Writes a synthetic cohort in the MICCAI WMH 2017 challenge layout.

    Same seed, arguments and version give identical arrays. ``cohort.json`` is written
    last and atomically, so a folder holding it is complete; rerunning with the same
    arguments on a complete folder does nothing (except writing missing previews), and
    on an interrupted run of the same arguments regenerates it.

    Args:
        out: output folder (created; must be empty, or this cohort).
        config: the cohort: ``subjects`` (>= 1), ``seed`` (>= 0), ``profile`` (see
            PROFILES, 'mixed' or 'randomised'), ``flair_only`` (write no T1 images) and
            ``skull_stripped`` (zero everything outside the brain in the images).
        preview: write a PNG montage per subject.
        workers: subjects generated in parallel processes.
        cache_dir: where the derived anatomy is cached on disk (None: memory only).
        progress: show a tqdm progress bar.

    Returns:
        ``out``.

    Raises:
        WMHError: bad option (unknown profile, subjects < 1, ...), ``out`` is a file, or a
            non-empty folder that is not this cohort.
    """
    out = Path(out)
    subjects, profile = config.subjects, config.profile
    check_arguments(out, subjects, config.seed, profile)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise WMHError(f"option --workers: expected an integer >= 1, got {workers!r}")
    arguments = _arguments(config)
    state = _state(out, arguments)
    if state == "complete":
        if preview:
            _write_missing_previews(out, _read_json(out / COHORT_FILE), cache_dir)
        return out
    out.mkdir(parents=True, exist_ok=True)
    _write_json({"arguments": arguments}, out / PROGRESS_FILE)
    anatomy = get_anatomy(cache_dir)  # derive (and cache on disk) before workers start
    prior_path = out / "prior_mni.nii.gz"
    prior = nib.Nifti1Image(anatomy.full_grid(anatomy.prior), anatomy.full_affine)
    prior.header.set_sform(anatomy.full_affine, code="mni")
    prior.header.set_qform(anatomy.full_affine, code="mni")
    atomic_save(prior, prior_path)

    jobs = [(out, index, config, preview, cache_dir) for index in range(subjects)]
    records = list(_run(jobs, workers, progress))
    cohort = {
        "format": "wmh-synth", "synth_version": synth_version(profile),
        "wmh_version": __version__,
        "nilearn_version": _nilearn_version(), "anatomy_version": ANATOMY_VERSION,
        "arguments": arguments,
        "labels": {"0": "background", "1": "WMH", "2": "other pathology (territorial infarct)"},
        "prior": "prior_mni.nii.gz",
        "generator": _generator_parameters(profile),
        "subjects": records,
    }
    _write_json(cohort, out / COHORT_FILE)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    return out


def _run(jobs: list, workers: int, progress: bool) -> Iterable[dict]:
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc="synth", unit="subject", disable=not progress)
    try:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                yield _subject_job(job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                for record in pool.map(_subject_job, jobs):
                    bar.update()
                    yield record
    finally:
        bar.close()


def _nilearn_version() -> str:
    import nilearn
    return nilearn.__version__


def _generator_parameters(profile: str) -> dict:
    return {
        "templates": "MNI ICBM152 2009 (nilearn wheel, 1 mm)",
        "profile": (profile_as_dict(PROFILES[profile]) if profile in PROFILES
                    else {"randomised": generator_ranges()} if profile == RANDOMISED
                    else {"mixed_from": list(p for p in PROFILES if p != "test")}),
        "wmh_load_ml": {"lognormal_median": pathology.LOAD_MEDIAN_ML,
                        "lognormal_log_sd": pathology.LOAD_LOG_SD,
                        "clip": list(pathology.LOAD_RANGE_ML)},
        "infarct_probability": pathology.INFARCT_PROBABILITY,
        "observer1_fraction_threshold": subject_module.OBSERVER1_THRESHOLD,
        "pose": {"rotation_deg_max": 10, "scale_range": [0.9, 1.1], "translation_mm_max": 10},
        "warp": {"control_spacing_mm": subject_module.WARP_CONTROL_MM,
                 "control_amplitude_mm": subject_module.WARP_AMPLITUDE_MM,
                 "lattice_mm": subject_module.LATTICE_MM},
        "mni_coordinates_step_mm": subject_module.COORDINATE_STEP_MM,
    }


def _write_missing_previews(out: Path, cohort: dict, cache_dir: Optional[str]) -> None:
    from wmh.synth.preview import preview_from_files
    for record in cohort.get("subjects", []):
        folder = out / record["site"] / record["id"]
        if not (folder / "preview.png").exists():
            preview_from_files(folder, folder / "preview.png")
