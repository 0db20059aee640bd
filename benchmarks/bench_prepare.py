"""Preprocessing: speed and accuracy against synthetic ground truth; prints one JSON object.

Usage: ``.venv/bin/python benchmarks/bench_prepare.py [--subjects 2 --seed 100 --out DIR
--similarity --real ../shared/real-dev/manifest.csv --cases coronal,sagittal]``

Generates small synthetic cohorts, one per case of ``CASES`` (the ``default`` RUN DMC-like
profile with and without T1; skull and neck; skull-stripped LPS; coronal; sagittal;
oblique; 3D) and prepares each subject with the default
:class:`wmh.config.PreprocessConfig` (2 SimpleITK threads, one subject at a time). All
figures are on **synthetic** data except ``real`` (``--real``):

* ``seconds_per_subject``: median wall time of ``prepare_subject`` on the default
  profile with T1 (the atlas is loaded once beforehand and timed apart as
  ``atlas_load_seconds``); ``cpu_seconds_per_subject``: the same in CPU time, which does
  not depend on what else the machine runs (``load_average_1min`` says how busy it was);
* ``registration_error_mm_median``: median over default-profile subjects of the median,
  inside the true brain, of |estimated - true MNI coordinate| (mm) per working voxel;
* ``brain_mask_dice``, ``ventricle_dice`` (mean of left and right): mean Dice against
  the true masks on the working grid, default profile with T1;
* ``disk_mb_per_subject``: size of the PreparedSubject HDF5 file;
* ``profiles``: the same figures per case, with ``stage_seconds`` (median seconds per
  preprocessing stage), ``warnings`` and the lowest ``atlas_similarity``; ``failures``
  counts the subjects that raised (their reasons are listed); ``--mixed N`` adds N
  subjects of the ``mixed`` profile;
* ``similarity_study`` (``--similarity``): the normalised mutual information of each
  FLAIR-only registration found, and of the same registration spoiled by known errors,
  which sets ``PreprocessConfig.min_similarity``;
* ``real``: per real case, seconds, warnings, similarity and the Dice between the warped
  MNI brain and the case's own brain mask.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py
from synth_truth import dice, registration_error_mm, truth_on_working_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def evaluate(subject, use_t1: bool, config) -> dict:
    """Prepares one subject and compares it with its truth/ folder."""
    from wmh.preprocess import prepare_subject

    wall, cpu = time.perf_counter(), cpu_seconds()
    prepared = prepare_subject(subject, config, use_t1)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    saved = prepared.save(Path(tempfile.mkdtemp(prefix="bench_prepared_")) / "subject.h5")
    disk_mb = saved.stat().st_size / 1e6
    saved.unlink()
    error, brain = registration_error_mm(prepared, subject.flair)
    ventricles = truth_on_working_grid(prepared, subject.flair, "ventricles")
    return {"seconds": wall, "cpu_seconds": cpu,
            "registration_error_mm_median": float(np.median(error)),
            "brain_mask_dice": dice(brain, prepared.brain_mask),
            "ventricle_dice": float(np.mean([dice(ventricles == side,
                                                  prepared.ventricles == side)
                                             for side in (1, 2)])),
            "brain_mask_method": prepared.provenance["quality"].get("brain_mask"),
            "atlas_similarity": prepared.provenance["quality"].get("atlas_similarity"),
            "stage_seconds": prepared.provenance["quality"].get("seconds"),
            "warnings": list(prepared.warnings),
            "disk_mb": disk_mb}


def summarise(rows: list[dict], failures: list[str]) -> dict:
    if not rows:
        return {"subjects": 0, "failures": len(failures), "failure_reasons": failures}
    stages = sorted({stage for r in rows for stage in (r["stage_seconds"] or {})})
    return {"subjects": len(rows), "failures": len(failures), "failure_reasons": failures,
            "seconds_per_subject": round(float(np.median([r["seconds"] for r in rows])), 1),
            "cpu_seconds_per_subject": round(float(np.median([r["cpu_seconds"] for r in rows])), 1),
            "stage_seconds": {stage: round(float(np.median([(r["stage_seconds"] or {}).get(
                stage, 0.0) for r in rows])), 1) for stage in stages},
            "registration_error_mm_median": round(float(np.median(
                [r["registration_error_mm_median"] for r in rows])), 2),
            "brain_mask_dice": round(float(np.mean([r["brain_mask_dice"] for r in rows])), 4),
            "brain_mask_dice_min": round(float(np.min([r["brain_mask_dice"] for r in rows])), 4),
            "ventricle_dice": round(float(np.mean([r["ventricle_dice"] for r in rows])), 3),
            "disk_mb_per_subject": round(float(np.median([r["disk_mb"] for r in rows])), 1),
            "atlas_similarity_min": round(float(np.min([r["atlas_similarity"] for r in rows])), 4),
            "warnings": sorted({w for r in rows for w in r["warnings"]}),
            "brain_mask_method": sorted({str(r["brain_mask_method"]) for r in rows})}


# (case name, synthesize_cohort options, use T1, subjects; 0 = --subjects)
CASES = [
    ("default", dict(profile="default"), True, 0),
    ("default FLAIR-only", dict(profile="default"), False, 0),
    ("clinical-neck (skull and neck, LAS) FLAIR-only", dict(profile="clinical-neck"), False, 0),
    ("clinical-neck + T1", dict(profile="clinical-neck"), True, 1),
    ("clinical-thick skull-stripped FLAIR-only (LPS)",
     dict(profile="clinical-thick", flair_only=True, skull_stripped=True), False, 1),
    ("coronal FLAIR-only", dict(profile="coronal"), False, 0),
    ("sagittal FLAIR-only", dict(profile="sagittal"), False, 0),
    ("oblique (LPS, 15 degrees) + T1", dict(profile="oblique"), True, 1),
    ("flair-3d + T1", dict(profile="flair-3d"), True, 1),
]


def similarity_study(subject, use_t1: bool, config) -> dict:
    """Normalised mutual information (the quality figure behind
    ``PreprocessConfig.min_similarity``) of the registration found, and of the same
    registration spoiled by known errors (translations, a 15 % stretch, a 20 degree turn)."""
    import SimpleITK as sitk

    from wmh.io import load_subject
    from wmh.preprocess import load_atlas
    from wmh.preprocess import registration as reg
    from wmh.preprocess.sitk_bridge import to_sitk

    loaded = load_subject(subject, use_t1=use_t1)
    grid = loaded.flair_grid
    flair = to_sitk(loaded.flair, grid.working_affine)
    image = reg.downsample(flair, config.atlas_spacing_mm)
    centre, image, mask = reg.head_geometry(image)
    atlas = load_atlas(config.atlas_spacing_mm)
    found = reg.register_atlas_affine(image, centre, atlas, config, mask)
    figures = {"found": reg._atlas_similarity(image, found.GetInverse(), atlas)}
    spoilers = {"shift_10mm": ((10, 0, 0), 1.0, 0.0), "shift_20mm": ((0, 20, 0), 1.0, 0.0),
                "stretch_15pct": ((0, 0, 0), 1.15, 0.0), "turn_20deg": ((0, 0, 0), 1.0, 20.0)}
    for name, (shift, scale, degrees) in spoilers.items():
        spoiled = sitk.AffineTransform(found)
        spoiled.Translate([float(v) for v in shift])
        spoiled.Scale(scale)
        if degrees:
            spoiled.Rotate(0, 1, float(np.radians(degrees)))
        figures[name] = reg._atlas_similarity(image, spoiled.GetInverse(), atlas)
    return {name: round(float(value), 4) for name, value in figures.items()}


def real_cases(manifest: Path, config) -> dict:
    """The real development cases (never committed): seconds, warnings, similarity and
    how well the warped MNI brain covers each case's own (skull-stripped) brain."""
    from wmh.io import discover
    from wmh.preprocess import load_atlas, prepare_subject, sample_atlas

    atlas = load_atlas(1.0)
    out = {}
    for subject in discover(manifest):
        wall = time.perf_counter()
        prepared = prepare_subject(subject, config, True)
        wall = time.perf_counter() - wall
        warped = sample_atlas(atlas.brain, atlas.affine, prepared.mni_coordinates) > 0.5
        quality = prepared.provenance["quality"]
        out[subject.subject_id] = {
            "seconds": round(wall, 1), "stage_seconds": quality.get("seconds"),
            "warnings": list(prepared.warnings),
            "atlas_similarity": round(float(quality.get("atlas_similarity", 0)), 4),
            "atlas_affine_similarity": round(float(quality.get("atlas_affine_similarity", 0)), 4),
            "brain_mask": quality.get("brain_mask"),
            "warped_atlas_brain_dice": round(dice(warped, prepared.brain_mask), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=2, help="subjects per main case")
    parser.add_argument("--seed", type=int, default=100, help="cohort seed")
    parser.add_argument("--out", type=Path, default=None, help="keep the cohorts here")
    parser.add_argument("--mixed", type=int, default=0, help="mixed-profile subjects")
    parser.add_argument("--quick", action="store_true", help="default profile only")
    parser.add_argument("--cases", default="", help="comma-separated case-name prefixes")
    parser.add_argument("--similarity", action="store_true",
                        help="also measure NMI of found and spoiled registrations")
    parser.add_argument("--real", type=Path, default=None,
                        help="a CSV manifest of real cases to prepare (not committed)")
    arguments = parser.parse_args()

    from wmh.config import PreprocessConfig
    from wmh.errors import WMHError
    from wmh.io import discover
    from wmh.preprocess import load_atlas
    from wmh.config import SynthConfig
    from wmh.synth import synthesize_cohort

    config = PreprocessConfig()
    work = arguments.out or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    cases = CASES[:1] if arguments.quick else list(CASES)
    if arguments.cases:
        wanted = [name.strip() for name in arguments.cases.split(",")]
        cases = [case for case in cases if any(case[0].startswith(w) for w in wanted)]
    if arguments.mixed:
        cases.append(("mixed", dict(profile="mixed"), True, arguments.mixed))
    start = time.perf_counter()
    load_atlas(1.0), load_atlas(config.atlas_spacing_mm)
    atlas_seconds = time.perf_counter() - start
    profiles, similarity = {}, {}
    for name, options, use_t1, count in cases:
        count = count or arguments.subjects
        folder = work / options["profile"] / ("stripped" if options.get("skull_stripped")
                                              else "head") / f"n{count}"
        if not (folder / "cohort.json").exists():
            synthesize_cohort(folder, SynthConfig(subjects=count, seed=arguments.seed, **options),
                              cache_dir=str(work / "cache"))
        rows, failures = [], []
        for subject in discover(folder)[:count]:
            try:
                rows.append(evaluate(subject, use_t1, config))
            except WMHError as error:
                failures.append(str(error))
            if arguments.similarity and not use_t1 and not options.get("skull_stripped"):
                similarity.setdefault(name, []).append(similarity_study(subject, False, config))
        profiles[name] = summarise(rows, failures)
        print(name, json.dumps(profiles[name]), file=sys.stderr, flush=True)
    main_case = profiles[cases[0][0]]
    result = {
        "benchmark": "prepare", "data": "synthetic",
        "seconds_per_subject": main_case.get("seconds_per_subject"),
        "cpu_seconds_per_subject": main_case.get("cpu_seconds_per_subject"),
        "registration_error_mm_median": main_case.get("registration_error_mm_median"),
        "brain_mask_dice": main_case.get("brain_mask_dice"),
        "ventricle_dice": main_case.get("ventricle_dice"),
        "disk_mb_per_subject": main_case.get("disk_mb_per_subject"),
        "atlas_load_seconds": round(atlas_seconds, 1),
        "profiles": profiles,
        "threads": config.threads, "cpu": cpu_model(), "cores": os.cpu_count(),
    }
    if similarity:
        result["similarity_study"] = similarity
    if arguments.real is not None:
        result["real"] = real_cases(arguments.real, config)
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
