"""benchmarks/bench_registration_quality.py on two tiny prepared subjects whose MNI maps are
off their written truth by known amounts: the errors, the groups, the detection counts,
the generator's draws, the cache, and the one-line errors (exit 2)."""

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohorts import tiny_prepared_subject

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHAPE = (36, 36, 4)


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(
        "bench_registration_quality", BENCHMARKS / "bench_registration_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cohort(tmp_path, offsets=(("a1", 6.0, 0.01), ("b2", 0.0, 0.06))):
    """cohort/cohort.json + site/<id>/{orig/FLAIR, truth/...}; prepared/<id>.h5 whose MNI
    coordinates are the truth moved ``offset`` mm along z, its NMI recorded as given."""
    cohort, prepared_dir = tmp_path / "cohort", tmp_path / "prepared"
    prepared_dir.mkdir()
    truth = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE],
                                 indexing="ij"), axis=-1)
    records = []
    for seed, (subject_id, offset, similarity) in enumerate(offsets):
        prepared = tiny_prepared_subject(subject_id, shape=SHAPE, seed=seed, with_t1=False)
        folder = cohort / "site" / subject_id
        (folder / "orig").mkdir(parents=True)
        (folder / "truth").mkdir()
        nib.save(nib.Nifti1Image(prepared.images[..., 0], np.eye(4)),
                 folder / "orig" / "FLAIR.nii.gz")
        nib.save(nib.Nifti1Image(truth, np.eye(4)), folder / "truth" / "mni_coordinates.nii.gz")
        nib.save(nib.Nifti1Image(prepared.brain_mask.astype(np.uint8), np.eye(4)),
                 folder / "truth" / "brainmask.nii.gz")
        nib.save(nib.Nifti1Image(prepared.ventricles, np.eye(4)),
                 folder / "truth" / "ventricles.nii.gz")
        prepared.mni_coordinates = truth + np.array([0.0, 0.0, offset], np.float32)
        prepared.provenance = {"quality": {"atlas_similarity": similarity,
                                           "brain_mask": "skull-stripped input"}}
        if similarity < 0.025:
            prepared.warnings = (f"atlas registration doubtful (NMI {similarity:.3f} < 0.025)",)
        prepared.save(prepared_dir / f"{subject_id}.h5")
        records.append({"id": subject_id, "site": "site",
                        "files": {"flair": f"site/{subject_id}/orig/FLAIR.nii.gz"},
                        "randomisation": {"snr": 10.0 * (seed + 1), "gamma": 1.1,
                                          "skull": "absent", "head_scale": 1.0 + seed / 10,
                                          "flair": {"gm": 1.2, "csf": 0.1}},
                        "acquisition": {"plane": "axial", "thickness_mm": 4.0,
                                        "inplane_mm": [1.0, 1.0]},
                        "transforms": {"head_pose": {"rotation_deg": [3.0, -7.0, 1.0]}}})
    (cohort / "cohort.json").write_text(json.dumps({"subjects": records}))
    return prepared_dir, cohort


def test_errors_groups_and_detection(bench, tmp_path, capsys):
    prepared_dir, cohort = _cohort(tmp_path)
    cache = tmp_path / "cache"
    assert bench.main([str(prepared_dir), str(cohort), "--cache", str(cache)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["data"] == "synthetic"
    rows = {row["subject_id"]: row for row in result["subjects"]}
    assert rows["a1"]["registration_error_mm_median"] == pytest.approx(6.0, abs=0.01)
    assert rows["a1"]["registration_error_mm_p95"] == pytest.approx(6.0, abs=0.01)
    assert rows["b2"]["registration_error_mm_median"] == pytest.approx(0.0, abs=0.01)
    assert rows["a1"]["doubtful"] and not rows["b2"]["doubtful"]
    assert rows["b2"]["brain_mask_dice"] == 1.0 and rows["b2"]["ventricle_dice"] == 1.0
    assert rows["b2"]["snr"] == 20.0 and rows["b2"]["flair_gm"] == 1.2
    assert rows["a1"]["pose_rotation_deg"] == 7.0 and rows["a1"]["thickness_mm"] == 4.0
    assert 0.0 <= rows["a1"]["nmi_recomputed"] <= 1.0
    summary = result["summary"]
    assert summary["doubtful"]["subjects"] == 1 and summary["others"]["subjects"] == 1
    assert summary["doubtful"]["error_mm_median"] == pytest.approx(6.0, abs=0.01)
    assert summary["misregistered"] == ["a1"]
    detected = summary["doubtful_detects_misregistration"]
    assert detected["5mm"] == {"flagged": 1, "misregistered": 1,
                               "flagged_and_misregistered": 1, "recall": 1.0,
                               "precision": 1.0}
    assert detected["8mm"]["misregistered"] == 0 and detected["8mm"]["precision"] == 0.0
    assert summary["criteria"]["atlas_similarity"] == {
        "spearman_error": None, "spearman_snr": None, "highest_misregistered": 0.01,
        "lowest_well_registered": 0.06, "separates": True}
    # the cache answers for files unchanged: a row edited there comes back as it is
    kept = cache / "a1.h5.json"
    saved = json.loads(kept.read_text())
    saved["row"]["registration_error_mm_median"] = 99.0
    kept.write_text(json.dumps(saved))
    assert bench.main([str(prepared_dir), str(cohort), "--cache", str(cache)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {r["subject_id"]: r for r in again["subjects"]}["a1"][
        "registration_error_mm_median"] == 99.0


def test_bad_arguments_are_one_line_errors(bench, tmp_path, capsys):
    prepared_dir, cohort = _cohort(tmp_path, offsets=(("a1", 0.0, 0.05),))
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "nocohort").mkdir()
    cases = [
        ([str(tmp_path / "missing"), str(cohort)],
         f"PREPARED_DIR {tmp_path / 'missing'}: not a folder"),
        ([str(empty), str(cohort)], f"PREPARED_DIR {empty}: no .h5 files"),
        ([str(prepared_dir), str(tmp_path / "nocohort")],
         f"{tmp_path / 'nocohort' / 'cohort.json'}: no cohort.json"),
    ]
    other = tmp_path / "other"
    other.mkdir()
    (other / "cohort.json").write_text(json.dumps({"subjects": []}))
    cases.append(([str(prepared_dir), str(other)],
                  f"{prepared_dir / 'a1.h5'}: subject a1 is not in {other / 'cohort.json'}"))
    for argv, message in cases:
        assert bench.main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error
