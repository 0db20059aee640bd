"""Synthetic cohort: generation speed and realism of the default cohort; prints JSON.

Usage: ``.venv/bin/python benchmarks/bench_synth.py [--subjects 40 --seed 0 --workers 2]``

Generates the default cohort (40 subjects, seed 0, profile ``default``) into a temporary
folder (or ``--out``) and measures, on the files written (all figures are on
**synthetic** data):

* ``seconds_per_subject``: cohort wall time / subjects with ``--workers`` processes
  (the anatomy cache is warmed first and timed apart as ``anatomy_seconds``);
  ``cpu_seconds_per_subject``: CPU time (all processes) / subjects, which does not
  depend on what else the machine runs (``load_average_1min`` says how busy it was);
  ``single_process_seconds_per_subject``: median over 3 subjects generated one by one;
* ``observer2_dice``: mean per-subject Dice of observer 2 against observer 1;
* ``periventricular_fraction``: share of WMH voxels within 10 mm of a lateral ventricle;
* ``hard_negative_ratio``: look-alike voxels / WMH voxels, over the cohort;
* ``best_threshold_dice``: mean per-subject Dice of the best single global threshold on
  FLAIR / brain median; ``oracle_dice``: the same with the best exclusion of voxels near
  the cortex and near both ventricles (septum) added, i.e. knowing location.

With ``--profile randomised`` the realism measures (made for the SVD-like profiles) are
skipped and the JSON says what the data span instead: ``coverage`` over the rendered
cohort (spacing, thickness, gap, plane, 2D/3D, orientations, SNR, contrast, gamma, bias,
target and labelled lesion volume, skull and neck fractions: min/median/max and
histograms) and ``sampler_coverage`` over ``--draws`` parameter draws (nothing rendered),
plus ``peak_rss_megabytes`` of the generation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished worker processes."""
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_rss_megabytes() -> dict:
    """Largest resident set of this process and of its largest finished worker."""
    import resource
    return {"main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="cohort folder (default: a temporary folder, removed after)")
    parser.add_argument("--cache-dir", default="data_cache")
    parser.add_argument("--flair-only", action="store_true", help="write no T1 images")
    parser.add_argument("--draws", type=int, default=2000,
                        help="randomised profile: parameter draws for sampler_coverage")
    args = parser.parse_args()

    import numpy as np

    from wmh.io import discover
    from wmh.config import SynthConfig
    from wmh.synth import synthesize_cohort, synthesize_subject
    from wmh.synth.anatomy import get_anatomy
    from wmh.synth.randomised import RANDOMISED, coverage, coverage_row, sampler_coverage
    from wmh.synth.realism import cohort_realism
    randomised = args.profile == RANDOMISED

    start = time.perf_counter()
    anatomy = get_anatomy(args.cache_dir)
    anatomy_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="bench_synth_") as scratch:
        single = []
        for index in range(3):
            start = time.perf_counter()
            synthesize_subject(Path(scratch) / "single", index,
                               SynthConfig(seed=args.seed + 1000, profile=args.profile,
                                           flair_only=args.flair_only), cache_dir=args.cache_dir)
            single.append(time.perf_counter() - start)

        out = args.out or Path(scratch) / "cohort"
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        synthesize_cohort(out, SynthConfig(subjects=args.subjects, seed=args.seed,
                                           profile=args.profile, flair_only=args.flair_only),
                          workers=args.workers, cache_dir=args.cache_dir)
        cohort_seconds = time.perf_counter() - start
        cohort_cpu_seconds = _cpu_seconds() - cpu_before

        start = time.perf_counter()
        cohort = json.loads((out / "cohort.json").read_text())
        if randomised:
            measures = {"coverage": coverage([
                coverage_row(r["acquisition"], r["randomisation"], r["lesion_volume_ml"])
                for r in cohort["subjects"]]),
                "sampler_coverage": sampler_coverage(args.draws, args.seed)}
        else:
            folders = [subject.flair.parent.parent for subject in discover(out)]
            measures = cohort_realism(folders, anatomy)
        measure_seconds = time.perf_counter() - start
        loads = np.array([record["lesion_volume_ml"] for record in cohort["subjects"]])
        bytes_written = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())

    result = {
        "benchmark": "synth",
        "data": "synthetic",
        "subjects": args.subjects, "seed": args.seed, "profile": args.profile,
        "flair_only": args.flair_only,
        "workers": args.workers,
        "seconds_per_subject": round(cohort_seconds / args.subjects, 3),
        "single_process_seconds_per_subject": round(float(np.median(single)), 3),
        "cpu_seconds_per_subject": round(cohort_cpu_seconds / args.subjects, 3),
        "cohort_seconds": round(cohort_seconds, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "anatomy_seconds": round(anatomy_seconds, 2),
        "measure_seconds": round(measure_seconds, 2),
        "megabytes_per_subject": round(bytes_written / args.subjects / 1e6, 2),
        "peak_rss_megabytes": _peak_rss_megabytes(),
        "lesion_volume_ml": {"min": round(float(loads.min()), 2),
                             "median": round(float(np.median(loads)), 2),
                             "max": round(float(loads.max()), 2)},
        **{key: (round(value, 4) if isinstance(value, float) else value)
           for key, value in measures.items()},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": "none",
                    "python": platform.python_version()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
