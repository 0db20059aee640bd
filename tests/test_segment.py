"""Segmentation outputs: native grid, mask at the threshold, volumes, errors."""

import csv
import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from cohorts import tiny_prepared_subject
from wmh.config import ModelConfig
from wmh.segment import SegmentOptions, lesion_volumes, segment
from wmh.contract import ModelContract
from wmh.loader import load_model_dir


def test_lesion_volumes_hand_computed():
    mask = np.zeros((20, 20, 5), bool)
    mask[2:4, 2:4, 1] = True        # 4 voxels, far from the ventricle
    mask[10, 10:12, 2] = True       # 2 voxels next to it
    mask[12, 13, 3] = True          # touches the previous one diagonally? no: separate
    ventricles = np.zeros_like(mask, dtype=np.uint8)
    ventricles[9, 10, 2] = 1
    spacing = np.array([1.0, 1.0, 5.0])
    volumes = lesion_volumes(mask, ventricles, spacing, periventricular_mm=3.0)
    assert volumes["total_ml"] == pytest.approx(7 * 5 / 1000)
    # (10,10,2), (10,11,2) are 1 and 1.41 mm away; (12,13,3) is sqrt(9+9+25) > 3 mm
    assert volumes["periventricular_ml"] == pytest.approx(2 * 5 / 1000)
    assert volumes["deep_ml"] == pytest.approx(5 * 5 / 1000)
    assert volumes["lesion_count"] == 3


@pytest.fixture
def model_and_subject(tmp_path, tf_seeded):
    from wmh import train
    from wmh.models import build_model

    config = ModelConfig(arch="msws", loc="ffcl", width=0.1)
    model = build_model(config, 2)
    contract = ModelContract(model=config, channels=("FLAIR", "T1"),
                                   inplane_spacing_mm=1.0, threshold=0.5)
    model_dir = train.save_model_dir(model, contract, tmp_path / "model")
    prepared = tiny_prepared_subject("case1", shape=(36, 36, 4), seed=3)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    folder = tmp_path / "cohort" / "site" / "case1"
    (folder / "pre").mkdir(parents=True)
    nib.save(nib.Nifti1Image(prepared.images[..., 0], affine), folder / "pre" / "FLAIR.nii.gz")
    nib.save(nib.Nifti1Image(prepared.images[..., 1], affine), folder / "pre" / "T1.nii.gz")
    nib.save(nib.Nifti1Image(prepared.labels, affine), folder / "wmh.nii.gz")
    (tmp_path / "prepared").mkdir()
    prepared.save(tmp_path / "prepared" / "case1.h5")
    return model_dir, tmp_path / "cohort", tmp_path / "prepared", prepared


def test_segment_writes_native_outputs_and_report(tmp_path, model_and_subject):
    from wmh import train

    model_dir, cohort, prepared_dir, prepared = model_and_subject
    threshold = 0.45
    rows = segment(model_dir, [cohort], tmp_path / "out", SegmentOptions(threshold=threshold),
                   progress=False, prepared_dir=prepared_dir)
    assert len(rows) == 1
    folder = tmp_path / "out" / "case1"
    probability = nib.load(folder / "wmh_probability.nii.gz")
    mask = nib.load(folder / "wmh_mask.nii.gz")
    flair = nib.load(cohort / "site" / "case1" / "pre" / "FLAIR.nii.gz")
    np.testing.assert_allclose(probability.affine, flair.affine)
    assert probability.shape == flair.shape == mask.shape
    model, contract = load_model_dir(model_dir)
    expected = train.predict_volume(model, contract.model, prepared.images, prepared.location,
                                    prepared.brain_mask)
    np.testing.assert_allclose(probability.get_fdata(), expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected >= threshold)
    brain = nib.load(folder / "brain_mask.nii.gz")  # where the voxels were classified
    np.testing.assert_allclose(brain.affine, flair.affine)
    np.testing.assert_array_equal(np.asarray(brain.dataobj), prepared.brain_mask)
    # wmh evaluate finds it in the output folder: Az counted inside the brain only.
    from wmh.evaluation import metrics
    from wmh.evaluation.cases import match_cases
    cases, _ = match_cases(tmp_path / "out", cohort, tmp_path / "out")
    assert cases[0].brain_mask == folder / "brain_mask.nii.gz"
    report = json.loads((folder / "report.json").read_text())
    assert report["total_ml"] == pytest.approx((expected >= threshold).sum() / 1000)
    assert report["threshold"] == threshold
    assert 0.0 <= report["dice"] <= 1.0
    assert report["status"] == "ok" and report["hd95_mm"] >= 0 and report["avd_percent"] >= 0
    scores = metrics.challenge_metrics(np.asarray(mask.dataobj) > 0,
                                       np.asarray(nib.load(cohort / "site" / "case1" /
                                                           "wmh.nii.gz").dataobj),
                                       flair.affine)
    assert report["dice"] == pytest.approx(scores["dice"])
    assert report["hd95_mm"] == pytest.approx(scores["hd95"])
    assert report["avd_percent"] == pytest.approx(scores["avd"])
    assert (folder / "qc.png").stat().st_size > 1000
    with open(tmp_path / "out" / "volumes.csv") as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["subject_id"] == "case1"
    assert float(table[0]["total_ml"]) == pytest.approx(report["total_ml"])


def test_segment_mc_dropout_writes_uncertainty(tmp_path, model_and_subject):
    model_dir, cohort, prepared_dir, prepared = model_and_subject
    segment(model_dir, [cohort], tmp_path / "out", SegmentOptions(mc_samples=3),
            progress=False, prepared_dir=prepared_dir)
    uncertainty = nib.load(tmp_path / "out" / "case1" / "wmh_uncertainty.nii.gz").get_fdata()
    assert uncertainty[prepared.brain_mask].max() > 0
    assert np.all(uncertainty[~prepared.brain_mask] == 0)


@pytest.fixture
def calibrated_models(tmp_path, model_and_subject):
    """The fixture's model folder twice: as it is (a contract from before calibration)
    and with a Platt calibration, its threshold and an uncalibrated threshold."""
    import dataclasses
    import shutil

    from wmh import train
    from wmh.calibration import Calibration

    model_dir = model_and_subject[0]
    calibration = Calibration("platt", {"slope": 0.8, "intercept": -1.5})
    calibrated = tmp_path / "calibrated"
    shutil.copytree(model_dir, calibrated)
    contract = ModelContract.from_json((model_dir / "wmh_model.json").read_text(), "x")
    contract = dataclasses.replace(contract, threshold=0.3, uncalibrated_threshold=0.6,
                                   calibration=calibration.to_dict())
    (calibrated / "wmh_model.json").write_text(contract.to_json())
    return model_dir, calibrated, calibration


def _outputs(folder):
    return (nib.load(folder / "wmh_probability.nii.gz").get_fdata(dtype=np.float32),
            np.asarray(nib.load(folder / "wmh_mask.nii.gz").dataobj),
            json.loads((folder / "report.json").read_text()))


def test_segment_applies_the_model_calibration(tmp_path, model_and_subject, calibrated_models):
    _, cohort, prepared_dir, prepared = model_and_subject
    old_model, calibrated_model, calibration = calibrated_models
    runs = {"old": (old_model, SegmentOptions()),
            "calibrated": (calibrated_model, SegmentOptions()),
            "uncalibrated": (calibrated_model, SegmentOptions(calibration="none"))}
    results = {}
    for name, (model_dir, options) in runs.items():
        segment(model_dir, [cohort], tmp_path / name, options, progress=False,
                prepared_dir=prepared_dir)
        results[name] = _outputs(tmp_path / name / "case1")
    old, calibrated, uncalibrated = results["old"], results["calibrated"], results["uncalibrated"]
    brain = prepared.brain_mask
    # The calibrated map is exactly the transform of the network's output.
    np.testing.assert_array_equal(calibrated[0], calibration.apply(old[0], brain))
    assert not np.allclose(calibrated[0][brain], old[0][brain])
    np.testing.assert_array_equal(calibrated[1], calibrated[0] >= 0.3)
    assert calibrated[2]["calibration"] == "platt" and calibrated[2]["threshold"] == 0.3
    # --calibration none: the old output and the contract's uncalibrated threshold.
    np.testing.assert_array_equal(uncalibrated[0], old[0])
    np.testing.assert_array_equal(uncalibrated[1], old[0] >= 0.6)
    assert uncalibrated[2]["calibration"] == "none" and uncalibrated[2]["threshold"] == 0.6
    # A model from before calibration: as before (its threshold, no transform).
    assert old[2]["calibration"] == "none" and old[2]["threshold"] == 0.5
    np.testing.assert_array_equal(old[1], old[0] >= 0.5)


def test_segment_adapts_each_scan_to_its_prevalence(tmp_path, model_and_subject,
                                                   calibrated_models):
    from wmh.calibration import adapt_prevalence

    _, cohort, prepared_dir, prepared = model_and_subject
    old_model, calibrated_model, calibration = calibrated_models
    adapted = dataclasses.replace(calibration, validation_prevalence=0.002,
                                  adaptation="prevalence")
    contract = ModelContract.from_json((calibrated_model / "wmh_model.json").read_text(), "x")
    (calibrated_model / "wmh_model.json").write_text(
        dataclasses.replace(contract, calibration=adapted.to_dict()).to_json())
    results = {}
    for name, model_dir in (("old", old_model), ("adapted", calibrated_model)):
        segment(model_dir, [cohort], tmp_path / name, SegmentOptions(), progress=False,
                prepared_dir=prepared_dir)
        results[name] = _outputs(tmp_path / name / "case1")
    old, result = results["old"], results["adapted"]
    brain = prepared.brain_mask
    plain = calibration.apply(old[0], brain)
    shifted, estimate = adapt_prevalence(plain[brain], 0.002)
    np.testing.assert_allclose(result[0][brain], shifted, atol=1e-6)
    assert not np.allclose(result[0][brain], plain[brain], atol=1e-3)
    assert 0.0 < estimate <= 0.5  # the tiny untrained model reads most voxels as WMH
    assert result[2]["calibration"] == "platt+prevalence"
    np.testing.assert_array_equal(result[1], result[0] >= 0.3)


def test_mc_dropout_calibrates_every_pass(model_and_subject):
    """The transform runs on each pass before the mean: with an indicator transform the
    mean over n passes is a multiple of 1/n and the spread matches it exactly."""
    from wmh import train

    model_dir, _, _, prepared = model_and_subject
    model, contract = load_model_dir(model_dir)
    passes = 3
    mean, spread = train.predict_volume(
        model, contract.model, prepared.images, prepared.location, prepared.brain_mask,
        mc_samples=passes, transform=lambda p: (p >= np.median(p)).astype(np.float32))
    counts = mean[prepared.brain_mask] * passes
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)
    share = mean[prepared.brain_mask]
    np.testing.assert_allclose(spread[prepared.brain_mask], np.sqrt(share * (1 - share)),
                               atol=1e-3)


def test_segment_calibration_option_is_checked(tmp_path, capsys):
    from wmh import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["segment", "--model", str(tmp_path), str(tmp_path / "f.nii.gz"), "--out",
                  str(tmp_path / "out"), "--calibration", "isotonic"])
    assert exit_info.value.code == 2
    assert "Invalid value for '--calibration'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
