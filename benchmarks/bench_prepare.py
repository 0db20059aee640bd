"""Preprocessing: speed and accuracy against synthetic ground truth; prints one JSON object.

Usage: ``.venv/bin/python benchmarks/bench_prepare.py [--subjects 3 --seed 100 --out DIR]``

Generates small synthetic cohorts (the ``default`` RUN DMC-like profile with T1; the
``clinical-thick`` profile skull-stripped and FLAIR-only; the ``flair-3d`` profile) and
prepares each subject with the default :class:`wmh.config.PreprocessConfig` (2 SimpleITK
threads, one subject at a time). All figures are on **synthetic** data:

* ``seconds_per_subject``: median wall time of ``prepare_subject`` on the default
  profile with T1 (the atlas is loaded once beforehand and timed apart as
  ``atlas_load_seconds``); ``cpu_seconds_per_subject``: the same in CPU time, which does
  not depend on what else the machine runs (``load_average_1min`` says how busy it was);
* ``registration_error_mm_median``: median over default-profile subjects of the median,
  inside the true brain, of |estimated - true MNI coordinate| (mm) per working voxel;
* ``brain_mask_dice``, ``ventricle_dice`` (mean of left and right): mean Dice against
  the true masks on the working grid, default profile with T1;
* ``disk_mb_per_subject``: size of the PreparedSubject HDF5 file;
* ``profiles``: the same figures per profile and channel set, including ``mixed`` (a
  scanner profile drawn per subject) as a robustness check; ``failures`` counts the
  subjects the pipeline rejected (their reasons are listed).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def dice(first: np.ndarray, second: np.ndarray) -> float:
    total = first.sum() + second.sum()
    return float(2.0 * np.logical_and(first, second).sum() / total) if total else 1.0


def evaluate(subject, use_t1: bool, config) -> dict:
    """Prepares one subject and compares it with its truth/ folder."""
    from wmh.io import load_image
    from wmh.preprocess import prepare_subject, to_working_grid

    wall, cpu = time.perf_counter(), cpu_seconds()
    prepared = prepare_subject(subject, config, use_t1)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    folder = Path(subject.flair).parent.parent
    _, grid = load_image(subject.flair)

    def truth(name, order=0):
        data = np.asarray(nib.load(folder / "truth" / f"{name}.nii.gz").dataobj)
        return to_working_grid(grid.to_working(data), grid, prepared.shape, prepared.affine,
                               order)

    saved = prepared.save(Path(tempfile.mkdtemp(prefix="bench_prepared_")) / "subject.h5")
    disk_mb = saved.stat().st_size / 1e6
    saved.unlink()
    brain = truth("brainmask") > 0
    error = np.linalg.norm(truth("mni_coordinates", 1) - prepared.mni_coordinates, axis=-1)
    ventricles = truth("ventricles")
    return {"seconds": wall, "cpu_seconds": cpu,
            "registration_error_mm_median": float(np.median(error[brain])),
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
    return {"subjects": len(rows), "failures": len(failures), "failure_reasons": failures,
            "seconds_per_subject": round(float(np.median([r["seconds"] for r in rows])), 1),
            "cpu_seconds_per_subject": round(float(np.median([r["cpu_seconds"] for r in rows])), 1),
            "registration_error_mm_median": round(float(np.median(
                [r["registration_error_mm_median"] for r in rows])), 2),
            "brain_mask_dice": round(float(np.mean([r["brain_mask_dice"] for r in rows])), 4),
            "ventricle_dice": round(float(np.mean([r["ventricle_dice"] for r in rows])), 3),
            "disk_mb_per_subject": round(float(np.median([r["disk_mb"] for r in rows])), 1),
            "brain_mask_method": sorted({str(r["brain_mask_method"]) for r in rows})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=3, help="default-profile subjects")
    parser.add_argument("--seed", type=int, default=100, help="cohort seed")
    parser.add_argument("--out", type=Path, default=None, help="keep the cohorts here")
    parser.add_argument("--mixed", type=int, default=6, help="mixed-profile subjects")
    parser.add_argument("--quick", action="store_true", help="default profile only")
    arguments = parser.parse_args()

    from wmh.config import PreprocessConfig
    from wmh.errors import WMHError
    from wmh.io import discover
    from wmh.preprocess import load_atlas
    from wmh.synth import synthesize_cohort

    config = PreprocessConfig()
    work = arguments.out or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    cases = [("default", dict(profile="default"), True, arguments.subjects),
             ("default FLAIR-only", dict(profile="default"), False, arguments.subjects)]
    if not arguments.quick:
        cases += [("clinical-thick skull-stripped FLAIR-only",
                   dict(profile="clinical-thick", flair_only=True, skull_stripped=True),
                   False, 1),
                  ("flair-3d", dict(profile="flair-3d"), True, 1),
                  ("mixed", dict(profile="mixed"), True, arguments.mixed)]
    start = time.perf_counter()
    load_atlas(1.0), load_atlas(config.atlas_spacing_mm)
    atlas_seconds = time.perf_counter() - start
    profiles = {}
    for name, options, use_t1, count in cases:
        folder = work / options["profile"] / ("stripped" if options.get("skull_stripped")
                                              else "head")
        if not (folder / "cohort.json").exists():
            synthesize_cohort(folder, count, arguments.seed, cache_dir=str(work / "cache"),
                              **options)
        rows, failures = [], []
        for subject in discover(folder)[:count]:
            try:
                rows.append(evaluate(subject, use_t1, config))
            except WMHError as error:
                failures.append(str(error))
        profiles[name] = summarise(rows, failures)
    main_case = profiles["default"]
    result = {
        "benchmark": "prepare", "data": "synthetic",
        "seconds_per_subject": main_case["seconds_per_subject"],
        "cpu_seconds_per_subject": main_case["cpu_seconds_per_subject"],
        "registration_error_mm_median": main_case["registration_error_mm_median"],
        "brain_mask_dice": main_case["brain_mask_dice"],
        "ventricle_dice": main_case["ventricle_dice"],
        "disk_mb_per_subject": main_case["disk_mb_per_subject"],
        "atlas_load_seconds": round(atlas_seconds, 1),
        "profiles": profiles,
        "threads": config.threads, "cpu": cpu_model(), "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
