"""``wmh calibrate``: a new model folder recalibrated on labelled scans; the source is
never touched; bad input is one line with exit 2 and leaves nothing behind."""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest

from segment_helpers import prepare_from_files, save_tiny_model, write_subject
from wmh import cli
from wmh.contract import ModelContract
from wmh.loader import load_model_dir
from wmh.threshold import calibrated_threshold


def run(argv, capsys):
    """(exit code, stdout, stderr) of `wmh argv`."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def digests(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A tiny model folder and a cohort of three labelled subjects (prepared files)."""
    root = tmp_path_factory.mktemp("recalibrate")
    model = save_tiny_model(root / "model", threshold=0.5)
    for index, name in enumerate(("c1", "c2", "c3")):
        write_subject(root / "cohort", root / "prepared", name, seed=3 + index)
    return root


def test_calibrate_writes_a_new_folder_and_leaves_the_source(labelled, tmp_path, capsys,
                                                             monkeypatch):
    from wmh import train
    from wmh.calibration import Calibration

    source = labelled / "model"
    # As in a shipped model's folder: its record and card must not follow into the copy.
    (source / "pretrained.json").write_text("{}")
    (source / "MODEL_CARD.md").write_text("# the source's card\n")
    before = digests(source)
    prepare_from_files(monkeypatch, labelled / "prepared")
    out = tmp_path / "recalibrated"
    code, stdout, err = run(["calibrate", source, "--data", labelled / "cohort", "--out", out,
                             "--subjects", "c1,c2", "--quiet"], capsys)
    assert code == 0, err
    assert digests(source) == before  # the source folder is byte for byte the same
    copied = digests(out)
    assert set(copied) == set(before) - {"pretrained.json", "MODEL_CARD.md"}
    assert copied["model.keras"] == before["model.keras"]
    assert copied["wmh_model.json"] != before["wmh_model.json"]
    summary = json.loads(stdout.splitlines()[0])
    assert summary["subjects"] == ["c1", "c2"] and summary["method"] == "platt"
    contract = ModelContract.from_json((out / "wmh_model.json").read_text(), "x")
    calibration = contract.calibrator()
    assert calibration.method == "platt" and calibration == Calibration.from_dict(
        {key: summary[key] for key in ("method", "parameters")} | {
            "validation_prevalence": summary["prevalence"],
            "validation_ece_before": summary["ece_uncalibrated"],
            "validation_ece_after": summary["ece_calibrated"]})
    assert contract.threshold == pytest.approx(summary["threshold"])
    assert contract.uncalibrated_threshold == pytest.approx(summary["uncalibrated_threshold"])
    assert summary["previous_threshold"] == 0.5 and summary["previous_method"] == "none"
    assert summary["ece_calibrated"] <= summary["ece_uncalibrated"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    # The threshold is the Dice-optimal one of the calibrated native probabilities.
    from wmh.preprocess import PreparedSubject

    model, _ = load_model_dir(source)
    subjects = [PreparedSubject.load(labelled / "prepared" / f"{n}.h5") for n in ("c1", "c2")]
    volumes = [train.predict_volume(model, contract.model, s.images, s.location,
                                    s.brain_mask) for s in subjects]
    choice = calibrated_threshold(subjects, volumes, ["c1", "c2"], "platt")
    assert choice.threshold == pytest.approx(contract.threshold)
    assert choice.calibration.parameters == pytest.approx(calibration.parameters)


def test_calibrate_accepts_a_prepared_folder_made_with_the_plan(labelled, tmp_path, capsys):
    from wmh.config import PreprocessConfig
    from wmh.preprocess import PreparedSubject
    from wmh.preprocess.keys import config_hash

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for name in ("c1", "c2"):
        subject = PreparedSubject.load(labelled / "prepared" / f"{name}.h5")
        dataclasses.replace(subject, provenance={
            "config_hash": config_hash(PreprocessConfig(), True)}).save(prepared / f"{name}.h5")
    code, stdout, err = run(["calibrate", labelled / "model", "--data", prepared, "--out",
                             tmp_path / "out", "--method", "none", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(stdout.splitlines()[0])
    assert summary["method"] == "none"
    assert summary["threshold"] == pytest.approx(summary["uncalibrated_threshold"])

    other = tmp_path / "other"
    other.mkdir()
    subject = PreparedSubject.load(prepared / "c1.h5")
    dataclasses.replace(subject, provenance={"config_hash": "elsewhere", "use_t1": True,
                                             "config": {"inplane_spacing_mm": 0.5}}
                        ).save(other / "c1.h5")
    code, _, err = run(["calibrate", labelled / "model", "--data", other, "--out",
                        tmp_path / "out2", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "prepared with other preprocessing than the model's plan" in err
    assert not (tmp_path / "out2").exists()


def test_calibrate_refuses_prepared_files_whose_feature_8_used_another_prior(labelled,
                                                                            tmp_path, capsys):
    """A training run's prepared folder holds feature 8 from the shipped prior, while its
    model was trained (and segments) with the training split's prior: calibrating on
    those files would fit the calibration to probabilities no segmentation gives."""
    import nibabel as nib

    from wmh import location
    from wmh.preprocess import PreparedSubject
    from wmh.preprocess.keys import config_hash
    from wmh.preprocess.plan import plan_config, write_plan
    from wmh.config import PreprocessConfig
    from wmh.tracking import content_hash

    model = tmp_path / "model"
    shutil.copytree(labelled / "model", model)
    shipped = location.default_prior_path()
    image = nib.load(shipped)
    trained = tmp_path / "training_prior.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32) * 0.5, image.affine),
             trained)
    names = ("c1", "c2")
    plan = write_plan(model, PreprocessConfig(prior_path=str(trained)), True,
                      [labelled / "prepared" / f"{n}.h5" for n in names])
    assert plan["prior_sha256"] == content_hash(trained) != content_hash(shipped)
    planned = config_hash(plan_config(plan, model), True)
    for folder, prior in (("as_prepared", {"prior": str(shipped)}),
                          ("prior_view", {"prior": "/gone/prior.nii.gz",
                                          "prior_sha256": plan["prior_sha256"]})):
        (tmp_path / folder).mkdir()
        for name in names:
            subject = PreparedSubject.load(labelled / "prepared" / f"{name}.h5")
            dataclasses.replace(subject, provenance={"config_hash": planned, **prior}).save(
                tmp_path / folder / f"{name}.h5")
    code, _, err = run(["calibrate", model, "--data", tmp_path / "as_prepared", "--out",
                        tmp_path / "out", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"wmh: error: --data {tmp_path / 'as_prepared'}/c1.h5: location "
                          f"feature 8 was computed with another WMH prior "
                          f"({content_hash(shipped)}) than the model's "
                          f"({plan['prior_sha256']})"), err
    assert not (tmp_path / "out").exists()
    code, stdout, err = run(["calibrate", model, "--data", tmp_path / "prior_view", "--out",
                             tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(stdout.splitlines()[0])["subjects"] == ["c1", "c2"]


def _errors(labelled, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    write_subject(unlabelled, tmp_path / "prep", "u1", labels=False)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.keras").write_bytes(b"not a model")
    (broken / "wmh_model.json").write_text("{not json")
    model, cohort, out = labelled / "model", labelled / "cohort", tmp_path / "out"
    return {
        "no labels": ([model, "--data", unlabelled, "--out", out],
                      f"wmh: error: --data {unlabelled}: "),
        "out not empty": ([model, "--data", cohort, "--out", full],
                          f"wmh: error: --out {full}: exists and is not empty"),
        "unreadable model": ([broken, "--data", cohort, "--out", out],
                             f"wmh: error: {broken / 'wmh_model.json'}: not a valid "
                             "wmh_model.json"),
        "missing model": ([tmp_path / "nowhere", "--data", cohort, "--out", out],
                          "wmh: error: --model "),
        "unknown subject": ([model, "--data", cohort, "--out", out, "--subjects", "zz"],
                            "wmh: error: --subjects: zz not found in "),
        "prior on an old model": ([model, "--data", cohort, "--out", out, "--method",
                                   "prior"], "wmh: error: --method prior: "),
    }


@pytest.mark.parametrize("case", ["no labels", "out not empty", "unreadable model",
                                  "missing model", "unknown subject",
                                  "prior on an old model"])
def test_calibrate_errors_are_one_line(case, labelled, tmp_path, capsys):
    argv, start = _errors(labelled, tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["calibrate", *argv, "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(start), err
    if case == "no labels":
        assert "has no labels" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_calibrate_bad_method_is_a_usage_error(labelled, tmp_path, capsys):
    code, _, err = run(["calibrate", labelled / "model", "--data", labelled / "cohort",
                        "--out", tmp_path / "out", "--method", "isotonic"], capsys)
    assert code == 2 and "Invalid value for '--method'" in err
    assert not (tmp_path / "out").exists()


def test_calibrate_bad_threshold_objective_is_one_line(labelled, tmp_path, capsys):
    code, _, err = run(["calibrate", labelled / "model", "--data", labelled / "cohort",
                        "--out", tmp_path / "out", "--threshold-objective", "median",
                        "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err == "wmh: error: --threshold-objective median: must be one of pooled, mean\n"
    assert not (tmp_path / "out").exists()


def _predicted(labelled, contract):
    """The three labelled subjects, the tiny model's P(WMH) volumes and their ids."""
    from wmh import train
    from wmh.preprocess import PreparedSubject

    model, _ = load_model_dir(labelled / "model")
    names = ["c1", "c2", "c3"]
    subjects = [PreparedSubject.load(labelled / "prepared" / f"{n}.h5") for n in names]
    volumes = [train.predict_volume(model, contract.model, s.images, s.location,
                                    s.brain_mask) for s in subjects]
    return subjects, volumes, names


def test_calibrate_mean_objective_records_the_mean_subject_dice_threshold(labelled, tmp_path,
                                                                         capsys, monkeypatch):
    prepare_from_files(monkeypatch, labelled / "prepared")
    out = tmp_path / "mean"
    code, stdout, err = run(["calibrate", labelled / "model", "--data", labelled / "cohort",
                             "--out", out, "--threshold-objective", "mean", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(stdout.splitlines()[0])
    contract = ModelContract.from_json((out / "wmh_model.json").read_text(), "x")
    subjects, volumes, names = _predicted(labelled, contract)
    mean = calibrated_threshold(subjects, volumes, names, "platt", objective="mean")
    assert summary["threshold_objective"] == "mean"
    assert contract.threshold == pytest.approx(mean.threshold)
    assert summary["dice"] == pytest.approx(mean.dice)


def test_calibrate_adapt_prevalence_chooses_the_threshold_on_adapted_maps(labelled, tmp_path,
                                                                          capsys, monkeypatch):
    prepare_from_files(monkeypatch, labelled / "prepared")
    out = tmp_path / "adapted"
    code, stdout, err = run(["calibrate", labelled / "model", "--data", labelled / "cohort",
                             "--out", out, "--adapt-prevalence", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(stdout.splitlines()[0])
    contract = ModelContract.from_json((out / "wmh_model.json").read_text(), "x")
    calibration = contract.calibrator()
    assert summary["adaptation"] == calibration.adaptation == "prevalence"
    assert calibration.label() == "platt+prevalence"

    subjects, volumes, names = _predicted(labelled, contract)
    adapted = calibrated_threshold(subjects, volumes, names, "platt", adaptation="prevalence")
    plain = calibrated_threshold(subjects, volumes, names, "platt")
    assert contract.threshold == pytest.approx(adapted.threshold)
    assert calibration.validation_ece_after == pytest.approx(
        adapted.calibration.validation_ece_after)
    # The same Platt fit; only each subject's prevalence shift differs.
    assert adapted.calibration.parameters == pytest.approx(plain.calibration.parameters)
    assert adapted.calibration.validation_ece_after != plain.calibration.validation_ece_after
