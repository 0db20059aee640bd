"""Atlas registration quality of a prepared synthetic cohort against its known truth; prints
one JSON object (last line).

Usage: ``.venv/bin/python benchmarks/bench_registration_quality.py PREPARED_DIR COHORT_DIR
[--misregistered-mm 4] [--out result.json] [--cache DIR]``

``PREPARED_DIR`` holds the ``<subject_id>.h5`` files ``wmh prepare`` wrote for the
synthetic cohort ``COHORT_DIR`` (a ``wmh synth`` folder with its ``cohort.json``). All
figures are on **synthetic** data. Per subject (``subjects``):

* what the preparation recorded: ``atlas_similarity`` (the NMI kept, provenance quality),
  ``atlas_affine_similarity``, ``atlas_deformable_similarity``, ``fell_back`` (deformable
  result dropped for the affine one), ``doubtful`` (the "atlas registration doubtful"
  warning) and the ``warnings``;
* the registration error against the synthetic truth: median and 95th percentile over the
  true brain of |estimated - true MNI coordinate| (mm), and the Dice of the prepared brain
  mask with the true one;
* what may explain a low NMI: the generator's draws from ``cohort.json`` (``snr``,
  ``gamma``, ``lesion_contrast``, ``bias_amplitude``, ``skull`` and ``strip_margin_mm``,
  the FLAIR levels of grey matter and CSF relative to white matter, the plane, 2D/3D,
  slice thickness and gap, in-plane voxel size, neck, obliquity, head rotation, head
  scale, warp, atrophy, WMH load);
* the similarity recomputed from the file (``nmi_recomputed``, which should match
  ``atlas_similarity``) and with the template moved 5 and 10 mm along each axis
  (``nmi_moved_*``, ``contrast_*_ratio`` = found / best moved).

``summary``: the errors of the doubtful subjects against the others, how well "doubtful"
detects a misregistration (median error above 3, 4, 5 and 8 mm), Spearman
correlations of the kept NMI with the error and with each numeric draw, and, for every
similarity criterion, its correlations with the error and the SNR and the highest value of
a misregistered subject (median error above ``--misregistered-mm``) against the lowest of
a well registered one: the criteria recorded in the files' provenance (``atlas_*``
quality fields, so that one added later, like ``atlas_retry_similarity``, is compared
without changing this script) and the recomputed ones. ``--cache DIR`` keeps each
subject's row (keyed by the prepared file's cache key and size) for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py
from synth_truth import dice, registration_error_mm, truth_on_working_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DOUBTFUL = "atlas registration doubtful"
FELL_BACK = "atlas registration fell back"
# numeric draws of the randomised generator worth correlating with the similarity
DRAWS = ("snr", "gamma", "lesion_contrast", "bias_amplitude", "flair_gm", "flair_csf",
         "thickness_mm", "gap_mm", "inplane_mm", "oblique_degrees", "head_scale",
         "warp_amplitude_mm", "atrophy", "load_ml", "pose_rotation_deg")


class InputError(Exception):
    """A bad argument (one line naming it): exit 2."""


def cohort_records(cohort_dir: Path) -> dict[str, dict]:
    """subject id -> its cohort.json record (site, files, randomisation, acquisition)."""
    path = cohort_dir / "cohort.json"
    if not path.is_file():
        raise InputError(f"{path}: no cohort.json (COHORT_DIR must be a complete wmh synth "
                         "folder)")
    try:
        cohort = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable cohort.json ({error})") from None
    return {str(record["id"]): record for record in cohort.get("subjects", [])}


def generator_draws(record: dict) -> dict:
    """The record's draws that may explain a low similarity (randomised profile; the
    fixed profiles record the acquisition only)."""
    drawn = dict(record.get("randomisation") or {})
    acquisition = record.get("acquisition") or {}
    flair = drawn.pop("flair", {}) or {}
    out = {name: drawn.get(name) for name in ("snr", "gamma", "lesion_contrast",
                                              "bias_amplitude", "skull", "head_scale",
                                              "warp_amplitude_mm", "atrophy", "load_ml",
                                              "pattern")}
    out["flair_gm"], out["flair_csf"] = flair.get("gm"), flair.get("csf")
    out["strip_margin_mm"] = drawn.get("strip_margin_mm")
    rotation = ((record.get("transforms") or {}).get("head_pose") or {}).get("rotation_deg")
    out["pose_rotation_deg"] = float(np.max(np.abs(rotation))) if rotation else None
    inplane = acquisition.get("inplane_mm")
    out.update({"plane": acquisition.get("plane", "axial"),
                "three_d": bool(acquisition.get("three_d", False)),
                "thickness_mm": acquisition.get("thickness_mm"),
                "gap_mm": acquisition.get("gap_mm"),
                "inplane_mm": float(np.mean(inplane)) if inplane else None,
                "oblique_degrees": acquisition.get("oblique_degrees"),
                "neck": bool(acquisition.get("neck", False)),
                "orientation": acquisition.get("orientation")})
    return out


def subject_row(path: Path, cohort_dir: Path, records: dict[str, dict]) -> dict:
    from wmh.preprocess import PreparedSubject

    prepared = PreparedSubject.load(path)
    record = records.get(prepared.subject_id)
    if record is None:
        raise InputError(f"{path}: subject {prepared.subject_id} is not in "
                         f"{cohort_dir / 'cohort.json'}")
    if prepared.mni_coordinates is None:
        raise InputError(f"{path}: no MNI coordinates stored")
    flair = cohort_dir / record["files"]["flair"]
    error, brain = registration_error_mm(prepared, flair)
    quality = prepared.provenance.get("quality", {})
    row = {"subject_id": prepared.subject_id,
           "registration_error_mm_median": round(float(np.median(error)), 2),
           "registration_error_mm_p95": round(float(np.percentile(error, 95)), 2),
           "brain_mask_dice": round(dice(brain, prepared.brain_mask), 4),
           "brain_mask": quality.get("brain_mask"),
           "doubtful": any(w.startswith(DOUBTFUL) for w in prepared.warnings),
           "fell_back": any(w.startswith(FELL_BACK) for w in prepared.warnings),
           "warnings": list(prepared.warnings)}
    row.update({name: (round(float(value), 4) if isinstance(value, (int, float)) else value)
                for name, value in sorted(quality.items()) if name.startswith("atlas_")})
    ventricles = truth_on_working_grid(prepared, flair, "ventricles")
    row["ventricle_dice"] = round(float(np.mean([dice(ventricles == side,
                                                      prepared.ventricles == side)
                                                 for side in (1, 2)])), 3)
    row.update(recomputed_similarity(prepared, flair))
    row.update(generator_draws(record))
    return row


def shifted_similarities(subject: np.ndarray, mni_coordinates: np.ndarray, atlas,
                         shift_mm: float) -> tuple[float, list[float]]:
    """Normalised mutual information between ``subject`` and the atlas's T1 template
    sampled at each voxel's ``mni_coordinates`` (RAS mm), inside the template's brain there;
    and the same with the template moved ``shift_mm`` along -x, +x, -y, +y, -z and +z.

    Returns:
        The NMI of the registration as given and the six NMIs of the moved template.
    """
    from wmh.preprocess import normalised_mutual_information, sample_atlas

    def similarity(offset) -> float:
        points = mni_coordinates + np.asarray(offset, dtype=np.float64)
        brain = sample_atlas(atlas.brain, atlas.affine, points) > 0.5
        if brain.sum() < 100:
            return 0.0
        template = sample_atlas(atlas.t1, atlas.affine, points[brain])
        return normalised_mutual_information(subject[brain], template)

    moves = [sign * shift_mm * np.eye(3)[axis] for axis in range(3) for sign in (-1.0, 1.0)]
    return similarity(np.zeros(3)), [similarity(move) for move in moves]


SHIFTS_MM = (5.0, 10.0)  # the known errors the recomputed similarities compare against


def recomputed_similarity(prepared, flair_path: Path) -> dict:
    """The atlas similarity recomputed from the prepared file: the registration image
    rebuilt as the preparation built it (FLAIR only), each of its voxels' MNI coordinate
    interpolated from the stored map, then the NMI with the template there and with the
    template moved by each of ``SHIFTS_MM`` along the six axis directions
    (:func:`wmh.preprocess.registration.shifted_similarities`)."""
    import SimpleITK as sitk
    from scipy import ndimage

    from wmh.config import PreprocessConfig
    from wmh.io import load_image
    from wmh.preprocess import load_atlas
    from wmh.preprocess.registration import atlas_subject_image
    from wmh.preprocess.sitk_bridge import from_sitk, grid_affine, to_sitk

    settings = prepared.provenance.get("config", {})
    spacing = float(settings.get("atlas_spacing_mm", PreprocessConfig().atlas_spacing_mm))
    config = PreprocessConfig(atlas_spacing_mm=spacing)
    flair, grid = load_image(flair_path)
    known = prepared.provenance.get("quality", {}).get("brain_mask") != "atlas"
    image, _, _ = atlas_subject_image(to_sitk(flair, grid.working_affine), None,
                                      sitk.Transform(), prepared.brain_mask if known else None,
                                      prepared.affine, config)
    subject = from_sitk(image)
    to_working = np.linalg.inv(prepared.affine) @ grid_affine(image)
    voxels = np.indices(subject.shape, dtype=np.float64).reshape(3, -1)
    voxels = to_working[:3, :3] @ voxels + to_working[:3, 3:]
    coordinates = np.stack([ndimage.map_coordinates(prepared.mni_coordinates[..., axis],
                                                    voxels, order=1, mode="nearest")
                            for axis in range(3)], axis=-1).reshape(subject.shape + (3,))
    atlas = load_atlas(spacing)
    out = {}
    for shift in SHIFTS_MM:
        found, moved = shifted_similarities(subject, coordinates, atlas, shift)
        out["nmi_recomputed"] = round(found, 4)
        out[f"nmi_moved_{shift:g}mm_max"] = round(max(moved), 4)
        out[f"nmi_moved_{shift:g}mm_mean"] = round(float(np.mean(moved)), 4)
        out[f"contrast_{shift:g}mm_ratio"] = round(found / max(max(moved), 1e-6), 3)
    return out


def cached_row(path: Path, cohort_dir: Path, records: dict[str, dict],
               cache: Path | None) -> dict:
    """:func:`subject_row`, kept in ``cache/<file name>.json`` with the prepared file's
    cache key and size, and read back from there while both still match (a long cohort
    can be measured while it is being prepared)."""
    from wmh.preprocess import read_cache_key

    if cache is None:
        return subject_row(path, cohort_dir, records)
    stamp = {"cache_key": read_cache_key(path), "bytes": path.stat().st_size}
    kept = cache / f"{path.name}.json"
    if kept.is_file():
        try:
            saved = json.loads(kept.read_text())
            if saved.get("stamp") == stamp:
                return saved["row"]
        except (OSError, ValueError, KeyError):
            pass
    row = subject_row(path, cohort_dir, records)
    cache.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps({"stamp": stamp, "row": row}) + "\n")
    return row


def spearman(first, second) -> float | None:
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(first, second) if a is not None and b is not None]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return None
    return round(float(spearmanr(*zip(*pairs)).statistic), 3)


def detection(flagged: list[bool], misregistered: list[bool]) -> dict:
    """How well ``flagged`` finds ``misregistered`` subjects (counts, recall, precision)."""
    hits = sum(f and m for f, m in zip(flagged, misregistered))
    return {"flagged": int(sum(flagged)), "misregistered": int(sum(misregistered)),
            "flagged_and_misregistered": hits,
            "recall": round(hits / sum(misregistered), 3) if any(misregistered) else None,
            "precision": round(hits / sum(flagged), 3) if any(flagged) else None}


def best_threshold(values: list[float], misregistered: list[bool]) -> dict:
    """The threshold on a similarity (flag below it) that flags every misregistered subject
    and the fewest others: the highest similarity of a misregistered subject, and the
    lowest of a well registered one (a gap between them separates the groups)."""
    bad = [v for v, m in zip(values, misregistered) if m]
    good = [v for v, m in zip(values, misregistered) if not m]
    return {"highest_misregistered": round(max(bad), 4) if bad else None,
            "lowest_well_registered": round(min(good), 4) if good else None,
            "separates": bool(bad and good and max(bad) < min(good))}


def group(rows: list[dict]) -> dict:
    if not rows:
        return {"subjects": 0}
    medians = [r["registration_error_mm_median"] for r in rows]
    return {"subjects": len(rows),
            "error_mm_median": round(float(np.median(medians)), 2),
            "error_mm_max": round(float(np.max(medians)), 2),
            "error_p95_mm_median": round(float(np.median(
                [r["registration_error_mm_p95"] for r in rows])), 2),
            "snr_median": (round(float(np.median([r["snr"] for r in rows])), 1)
                           if all(r.get("snr") is not None for r in rows) else None),
            "atlas_similarity_median": round(float(np.median(
                [r["atlas_similarity"] for r in rows])), 4)}


def summarise(rows: list[dict], misregistered_mm: float) -> dict:
    misregistered = [r["registration_error_mm_median"] > misregistered_mm for r in rows]
    similarity = [r["atlas_similarity"] for r in rows]
    error = [r["registration_error_mm_median"] for r in rows]
    criteria = sorted({name for r in rows for name in r
                       if name.startswith("atlas_") and name.endswith("similarity")
                       or name.endswith("_ratio") or name == "nmi_recomputed"})
    return {
        "subjects": len(rows),
        "doubtful": group([r for r in rows if r["doubtful"]]),
        "others": group([r for r in rows if not r["doubtful"]]),
        "fell_back": int(sum(r["fell_back"] for r in rows)),
        "fell_back_error_mm": [r["registration_error_mm_median"] for r in rows
                               if r["fell_back"]],
        "misregistered_mm": misregistered_mm,
        "misregistered": [r["subject_id"] for r, m in zip(rows, misregistered) if m],
        "doubtful_detects_misregistration": {
            f"{limit:g}mm": detection([r["doubtful"] for r in rows],
                                      [e > limit for e in error])
            for limit in sorted({3.0, 4.0, 5.0, 8.0, misregistered_mm})},
        "spearman_similarity_error": spearman(similarity, error),
        "spearman_similarity_error_p95": spearman(
            similarity, [r["registration_error_mm_p95"] for r in rows]),
        "spearman_similarity_draws": {name: spearman(similarity, [r.get(name) for r in rows])
                                      for name in DRAWS},
        "spearman_error_draws": {name: spearman(error, [r.get(name) for r in rows])
                                 for name in DRAWS},
        "criteria": {name: {"spearman_error": spearman([r.get(name) for r in rows], error),
                            "spearman_snr": spearman([r.get(name) for r in rows],
                                                     [r.get("snr") for r in rows]),
                            **best_threshold([r[name] for r in rows if name in r],
                                             [m for r, m in zip(rows, misregistered)
                                              if name in r])}
                     for name in criteria},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="folder of prepared <subject>.h5 files")
    parser.add_argument("cohort", type=Path, help="the wmh synth cohort folder")
    parser.add_argument("--misregistered-mm", type=float, default=4.0,
                        help="a median error above this counts as misregistered")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep each subject's figures in this folder and reuse them")
    arguments = parser.parse_args(argv)
    from wmh.errors import WMHError

    start = time.perf_counter()
    try:
        if not arguments.prepared.is_dir():
            raise InputError(f"PREPARED_DIR {arguments.prepared}: not a folder")
        files = sorted(path for path in arguments.prepared.glob("*.h5")
                       if not path.name.startswith("."))  # "." : being written
        if not files:
            raise InputError(f"PREPARED_DIR {arguments.prepared}: no .h5 files")
        records = cohort_records(arguments.cohort)
        rows = [cached_row(path, arguments.cohort, records, arguments.cache)
                for path in files]
    except (InputError, WMHError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"benchmark": "registration_quality", "data": "synthetic",
              "prepared": str(arguments.prepared), "cohort": str(arguments.cohort),
              "summary": summarise(rows, arguments.misregistered_mm), "subjects": rows,
              "seconds": round(time.perf_counter() - start, 1),
              "cpu": cpu_model(), "cores": os.cpu_count(),
              "load_average_1min": round(os.getloadavg()[0], 2)}
    if arguments.out is not None:
        arguments.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
