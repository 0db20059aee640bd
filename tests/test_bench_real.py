"""benchmarks/bench_real.py on a tiny synthetic manifest with a tiny untrained model: the
JSON keys, per-case metrics, the global-threshold floor against a hand computation, and the
one-line errors (exit 2)."""

import csv
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segment_helpers import prepare_from_files, tiny_model, write_subject  # noqa: F401

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_real.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_real", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest(tmp_path, monkeypatch, ids=("a1", "b2"), mask=True) -> Path:
    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    rows = []
    for seed, subject_id in enumerate(ids):
        write_subject(cohort, prepared, subject_id, seed=seed + 1)
        folder = cohort / "site" / subject_id
        rows.append({"subject_id": subject_id, "flair": folder / "pre" / "FLAIR.nii.gz",
                     "t1": folder / "pre" / "T1.nii.gz",
                     "mask": folder / "wmh.nii.gz" if mask else ""})
    prepare_from_files(monkeypatch, prepared)
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["subject_id", "flair", "t1", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _hand_floor(flair, brain, truth):
    """Best Dice over thresholds 1.00, 1.02, ..., 4.00 of FLAIR / brain median."""
    median = np.median(flair[brain])
    wmh = truth == 1
    best = 0.0
    for step in range(151):
        predicted = (flair / median >= 1 + 0.02 * step) & brain & (truth != 2)
        total = predicted.sum() + wmh.sum()
        best = max(best, 2 * (predicted & wmh).sum() / total if total else 1.0)
    return best


def test_bench_real_reports_metrics_and_the_floor(bench, tmp_path, monkeypatch, capsys,
                                                  tiny_model):  # noqa: F811
    manifest = _manifest(tmp_path, monkeypatch)
    out = tmp_path / "seg"
    assert bench.main([str(manifest), "--model", str(tiny_model), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["subject_id", "status", "dice"]
    summary = json.loads(lines[-1])
    assert {"mean_dice", "cases", "failed", "seconds_per_case", "mean_floor_dice"} <= set(summary)
    assert summary["cases"] == 2 and summary["failed"] == 0
    rows = {row["subject_id"]: row for row in summary["rows"]}
    assert set(rows) == {"a1", "b2"}
    for subject_id, row in rows.items():
        folder = tmp_path / "cohort" / "site" / subject_id
        flair = nib.load(str(folder / "pre" / "FLAIR.nii.gz")).get_fdata()
        truth = np.rint(nib.load(str(folder / "wmh.nii.gz")).get_fdata()).astype(int)
        brain = nib.load(str(out / subject_id / "brain_mask.nii.gz")).get_fdata() > 0
        predicted = nib.load(str(out / subject_id / "wmh_mask.nii.gz")).get_fdata() > 0
        assert row["floor_dice"] == pytest.approx(_hand_floor(flair, brain, truth), abs=1e-9)
        assert row["floor_dice"] > 0.5  # the phantom's lesions are bright
        wmh = truth == 1
        predicted &= truth != 2
        dice = 2 * (predicted & wmh).sum() / max(predicted.sum() + wmh.sum(), 1)
        assert row["dice"] == pytest.approx(dice)
        assert row["truth_volume_ml"] == pytest.approx(wmh.sum() / 1000)
        assert row["predicted_volume_ml"] == pytest.approx(predicted.sum() / 1000)
        for key in ("hd95", "avd", "lesion_recall", "lesion_f1", "seconds"):
            assert key in row
    assert summary["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in rows.values()]))
    assert summary["mean_floor_dice"] == pytest.approx(
        np.mean([r["floor_dice"] for r in rows.values()]))
    assert summary["seconds_per_case"] > 0


def test_floor_only_needs_no_model(bench, tmp_path, monkeypatch, capsys):
    manifest = _manifest(tmp_path, monkeypatch, ids=("a1",))
    assert bench.main([str(manifest), "--floor-only"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    row = summary["rows"][0]
    folder = tmp_path / "cohort" / "site" / "a1"
    flair = nib.load(str(folder / "pre" / "FLAIR.nii.gz")).get_fdata()
    truth = np.rint(nib.load(str(folder / "wmh.nii.gz")).get_fdata()).astype(int)
    assert row["brain_mask"] == "flair>0"
    assert row["floor_dice"] == pytest.approx(_hand_floor(flair, flair > 0, truth), abs=1e-9)
    assert summary["mean_dice"] is None and summary["cases"] == 1
    assert summary["data"] == "real"
    assert bench.main([str(manifest), "--floor-only", "--data", "synthetic"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["data"] == "synthetic" and again["rows"][0]["floor_dice"] == row["floor_dice"]


@pytest.mark.parametrize("case, message", [
    ("no-model", "--model not given: no model is shipped"),
    ("missing", "manifest not found"),
    ("no-mask", "has no mask"),
])
def test_bad_input_is_one_line_and_exit_2(bench, tmp_path, monkeypatch, capsys, case, message):
    from wmh import pretrained

    (tmp_path / "no-models").mkdir()
    monkeypatch.setattr(pretrained, "package_root", lambda: tmp_path / "no-models")
    if case == "missing":
        argv = [str(tmp_path / "nothing.csv"), "--floor-only"]
    else:
        manifest = _manifest(tmp_path, monkeypatch, ids=("a1",), mask=case != "no-mask")
        argv = [str(manifest)] + ([] if case == "no-model" else ["--floor-only"])
    assert bench.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
    if case == "missing":
        assert "nothing.csv" in error[0]


def test_slice_axis_is_the_thick_one_or_superior_inferior(bench):
    assert bench.slice_axis(np.diag([0.5, 0.5, 6.0, 1.0])) == 2
    assert bench.slice_axis(np.diag([5.0, 0.9, 0.9, 1.0])) == 0
    sagittal_stored = np.array([[0, 0, -1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    assert bench.slice_axis(sagittal_stored) == 1  # isotropic: voxel axis 1 runs along z


def test_finetune_folds_hold_one_case_out(tmp_path):
    """bench_finetune.py's leave-one-out folds: the held-out case alone in the test manifest,
    the others fixed as train (the first) and validation, paths made absolute."""
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_finetune",
                                                  SCRIPT.parent / "bench_finetune.py")
    finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune)
    manifest = tmp_path / "cases" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject_id", "flair", "mask"])
        for case in ("a", "b", "c"):
            writer.writerow([case, f"{case}/flair.nii.gz", f"{case}/mask.nii.gz"])
    train, test = finetune.fold_manifests(manifest, "b", tmp_path)
    with open(train, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["subject_id"], r["split"]) for r in rows] == [("a", "train"),
                                                            ("c", "validation")]
    assert rows[0]["flair"] == str((manifest.parent / "a" / "flair.nii.gz").resolve())
    with open(test, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["subject_id"] for r in rows] == ["b"]
    assert rows[0]["mask"] == str((manifest.parent / "b" / "mask.nii.gz").resolve())
