"""wmh segment outputs: values recomputed from the written files, provenance, the
probability map's support, permissions, warnings, and the README's list of outputs."""

import csv
import datetime
import hashlib
import json
import os
import re
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segment_helpers import prepare_from_files, tiny_model, write_subject  # noqa: F401
from wmh import __version__
from wmh.segment import OUTPUT_FILES, REPORT_COLUMNS, SegmentOptions, segment
from wmh.segment import outputs
from wmh.segment.subject import MASK_RULE

README = Path(__file__).resolve().parents[1] / "README.md"


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _data(path):
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, tiny_model):
    """One subject on a FLAIR grid finer than the working grid (0.5 mm in-plane), so
    every output is resampled; segmented with MC dropout and a given threshold."""
    root = tmp_path_factory.mktemp("segmented")
    cohort, prepared_dir = root / "cohort", root / "prepared"
    prepared = write_subject(cohort, prepared_dir, "case1", seed=5, zoom=0.5,
                             shape=(36, 36, 4))
    monkeypatch = pytest.MonkeyPatch()
    prepare_from_files(monkeypatch, prepared_dir,
                       warnings={"case1": ("atlas registration fell back to affine",)})
    umask = os.umask(0o027)
    try:
        rows = segment(tiny_model, [cohort], root / "out",
                       SegmentOptions(threshold=0.45, mc_samples=2), progress=False)
    finally:
        os.umask(umask)
        monkeypatch.undo()
    return {"root": root, "out": root / "out", "folder": root / "out" / "case1",
            "row": rows[0], "prepared": prepared, "model": tiny_model,
            "flair": cohort / "site" / "case1" / "pre" / "FLAIR.nii.gz"}


def test_probability_is_zero_outside_the_brain_mask(segmented):
    folder, prepared = segmented["folder"], segmented["prepared"]
    probability = _data(folder / "wmh_probability.nii.gz")
    brain = _data(folder / "brain_mask.nii.gz") > 0
    uncertainty = _data(folder / "wmh_uncertainty.nii.gz")
    assert probability.shape == brain.shape == (72, 72, 4)
    assert np.all(probability[~brain] == 0) and np.all(uncertainty[~brain] == 0)
    assert probability[brain].min() > 0
    # Without the brain mask, linear resampling would have leaked probability outside it.
    working = np.where(prepared.brain_mask, 0.5, 0).astype(np.float32)
    leaked = prepared.to_native_working(working, order=1)
    assert np.count_nonzero(leaked[~brain]) > 0


def test_mask_is_probability_at_the_recorded_threshold(segmented):
    folder = segmented["folder"]
    report = json.loads((folder / "report.json").read_text())
    assert report["threshold"] == 0.45 and report["mask_rule"] == MASK_RULE
    probability = _data(folder / "wmh_probability.nii.gz")
    brain = _data(folder / "brain_mask.nii.gz") > 0
    mask = _data(folder / "wmh_mask.nii.gz")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask > 0, (probability >= 0.45) & brain)


def test_lesion_map_and_table_from_the_files(segmented):
    folder = segmented["folder"]
    report = json.loads((folder / "report.json").read_text())
    image = nib.load(folder / "wmh_lesions.nii.gz")
    lesions = np.asarray(image.dataobj)
    assert lesions.dtype == np.int32
    mask = _data(folder / "wmh_mask.nii.gz") > 0
    expected, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert count == report["lesion_count"] > 0
    np.testing.assert_array_equal(lesions > 0, mask)
    with open(folder / "lesions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [int(row["label"]) for row in table] == list(range(1, count + 1))
    voxel_ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000
    assert sum(float(row["volume_ml"]) for row in table) == pytest.approx(report["total_ml"])
    probability = _data(folder / "wmh_probability.nii.gz")
    for row in table:
        voxels = np.argwhere(lesions == int(row["label"]))
        assert float(row["volume_ml"]) == pytest.approx(len(voxels) * voxel_ml)
        centroid = image.affine @ np.r_[voxels.mean(axis=0), 1]
        assert [float(row[f"centroid_{axis}_mm"]) for axis in "xyz"] == \
            pytest.approx(list(centroid[:3]), abs=1e-6)
        assert float(row["max_probability"]) == pytest.approx(
            probability[lesions == int(row["label"])].max(), abs=1e-6)
        assert row["region"] in ("periventricular", "deep")
    periventricular = sum(float(r["volume_ml"]) for r in table
                          if r["region"] == "periventricular")
    # Region by majority: within one lesion's volume of the voxel-wise split.
    assert periventricular == pytest.approx(report["periventricular_ml"],
                                            abs=max(float(r["volume_ml"]) for r in table))


def test_report_volumes_provenance_and_csv(segmented):
    folder, out = segmented["folder"], segmented["out"]
    report = json.loads((folder / "report.json").read_text())
    brain_image = nib.load(folder / "brain_mask.nii.gz")
    voxel_ml = abs(np.linalg.det(brain_image.affine[:3, :3])) / 1000
    assert report["brain_ml"] == pytest.approx(_data(folder / "brain_mask.nii.gz").sum()
                                               * voxel_ml)
    assert report["total_ml"] == pytest.approx(
        (_data(folder / "wmh_mask.nii.gz") > 0).sum() * voxel_ml)
    assert report["status"] == "ok" and report["error"] == ""
    assert report["flair"] == str(segmented["flair"].resolve())
    assert report["flair_sha256"] == _sha256(segmented["flair"])
    assert report["t1_sha256"] == _sha256(segmented["flair"].with_name("T1.nii.gz"))
    assert report["model_sha256"] == _sha256(segmented["model"] / "model.keras")
    assert report["model"] == str(segmented["model"]) and report["model_arch"] == "msws+ffcl"
    assert report["wmh_version"] == __version__
    when = datetime.datetime.fromisoformat(report["date_utc"])
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).days) < 1
    assert report["mc_samples"] == 2 and report["periventricular_mm"] == 10.0
    assert report["warnings"] == ["atlas registration fell back to affine"]
    assert {"hd95", "avd"}.isdisjoint(report)  # units in the names
    scalars = {key for key, value in report.items() if not isinstance(value, (list, dict))}
    assert scalars <= set(REPORT_COLUMNS)
    with open(out / "volumes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(REPORT_COLUMNS)
    for key in scalars:
        value = report[key]
        written = rows[0][key]
        if isinstance(value, float):
            assert float(written) == pytest.approx(value)
        else:
            assert written == ("" if value is None else str(value))
    assert rows[0]["warnings"] == "atlas registration fell back to affine"


def test_outputs_follow_the_umask(segmented):
    out, folder = segmented["out"], segmented["folder"]  # written under umask 027
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    for path in [*folder.iterdir(), out / "volumes.csv", out / ".wmh.lock"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path.name


def test_staging_folder_follows_another_umask(tmp_path):
    umask = os.umask(0o002)
    try:
        folder = outputs.write_subject_folder(
            tmp_path / "out", "s", lambda f: outputs.write_report(f, {"subject_id": "s"}))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o775
    assert stat.S_IMODE((folder / "report.json").stat().st_mode) == 0o664


def _readme_section() -> str:
    text = README.read_text()
    start = text.index("## Outputs of `wmh segment`")
    end = text.find("\n## ", start + 3)
    return text[start:end if end > 0 else None]


def test_every_written_file_is_listed_and_documented(segmented):
    written = {path.name for path in segmented["folder"].iterdir()}
    written |= {path.name for path in segmented["out"].iterdir()
                if path.is_file() and not path.name.startswith(".")}
    assert written == set(OUTPUT_FILES)  # this run writes every optional file too
    section = _readme_section()
    for name in OUTPUT_FILES:
        assert f"`{name}`" in section, name
    for column in REPORT_COLUMNS:
        assert re.search(rf"`{column}`", section), column
    for column in ("label", "volume_ml", "centroid_x_mm", "region", "max_probability"):
        assert f"`{column}`" in section, column
