"""No silent drops: subjects an experiment loses are listed on its run, and a failed test
subject stops the experiment or scores Dice 0, as evaluate.on_failure says."""

import json
import types

import mlflow
import pytest

from segment_helpers import prepare_from_files, tiny_model, write_subject  # noqa: F401
from wmh.errors import WMHError
from wmh.preprocess import PreparationFailed


def experiment(tmp_path, monkeypatch, on_failure):
    from wmh import pipeline, sampling
    from wmh.config import load_config

    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for seed, name in enumerate(("a1", "a2")):
        write_subject(cohort, prepared, name, seed=seed)
    stage_dir = tmp_path / "stage-prepared"  # the experiment's prepared folder: a3 failed
    stage_dir.mkdir()
    (stage_dir / "manifest.json").write_text(json.dumps(
        {"subjects": [], "failed": {"a3": "a3: brain mask empty"}}))
    prepare_from_files(monkeypatch, prepared, fail={
        "a2": PreparationFailed("a2: atlas registration failed (NMI 0.014 < 0.02)")})
    monkeypatch.setattr(sampling, "load_splits", lambda folder: {"test": ["a1", "a2"]})
    config = load_config(None, [f"evaluate.on_failure={on_failure}"])
    stages = pipeline.DataStages(cohort, True, stage_dir, tmp_path / "samples")
    return config, stages


def trained_run(model_dir):
    with mlflow.start_run() as run:
        pass
    return types.SimpleNamespace(run_id=run.info.run_id, model_dir=model_dir, threshold=0.5,
                                 validation_volume_auc=0.9)


def test_stop_ends_the_experiment_naming_the_option(tmp_path, monkeypatch, mlflow_tmp,
                                                    tiny_model):
    from wmh import pipeline

    config, stages = experiment(tmp_path, monkeypatch, "stop")
    trained = trained_run(tiny_model)
    with pytest.raises(WMHError, match=r"test subject 'a2' failed to segment \(a2: atlas "
                                       r"registration failed .*option evaluate\.on_failure"):
        pipeline.evaluate_test_subjects(config, stages, trained, tmp_path / "out", "SS")
    tags = mlflow.get_run(trained.run_id).data.tags  # listed on the run before it stopped
    assert tags["failed_subjects"] == "2" and tags["failed_test_subjects"] == "1"


def test_zero_scores_the_failed_subject_as_dice_0_and_lists_it(tmp_path, monkeypatch,
                                                              mlflow_tmp, tiny_model):
    from wmh import pipeline

    config, stages = experiment(tmp_path, monkeypatch, "zero")
    trained = trained_run(tiny_model)
    rows, result = pipeline.evaluate_test_subjects(config, stages, trained, tmp_path / "out",
                                                   "SS")
    assert {row["subject_id"]: row["status"] for row in rows} == {"a1": "ok", "a2": "failed"}
    assert result.case_ids == ("a1", "a2")
    tp, fp, fn, _ = result.counts_obs1[1]
    assert tp == 0 and fp == 0 and fn > 0  # empty prediction against its labels
    ok_tp, ok_fp, ok_fn, _ = result.counts_obs1[0]
    assert ok_tp > 0
    assert result.dice(1, "mean") == pytest.approx(ok_tp / (2 * ok_tp + ok_fp + ok_fn))
    run = mlflow.get_run(trained.run_id)
    assert run.data.tags["failed_subjects"] == "2"
    assert run.data.tags["failed_test_subjects"] == "1"
    listing = json.loads(mlflow.artifacts.load_text(
        f"runs:/{trained.run_id}/{pipeline.FAILURES_ARTIFACT}"))
    assert listing == {"prepare": {"a3": "a3: brain mask empty"},
                       "segment": {"a2": "a2: atlas registration failed (NMI 0.014 < 0.02)"}}


def test_on_failure_is_checked():
    from wmh.config import load_config

    with pytest.raises(WMHError, match="evaluate.on_failure"):
        load_config(None, ["evaluate.on_failure=skip"])


def test_reproduce_report_lists_failed_subjects(tmp_path):
    from wmh import pipeline, reproduce

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(json.dumps({"failed": {"s9": "s9: no brain"}}))
    segment = tmp_path / "msws" / "segment"
    segment.mkdir(parents=True)
    (segment / "volumes.csv").write_text("subject_id,status,error\ns1,ok,\n"
                                         "s2,failed,s2: registration failed\n")
    stages = pipeline.DataStages(tmp_path, True, prepared, tmp_path / "samples")
    outcome = reproduce.Outcome(reproduce.Experiment("msws", "MSWS", "2"), None, "r", False,
                                1.0, stages)
    assert reproduce.failed_subjects(outcome, tmp_path) == {
        "prepare": {"s9": "s9: no brain"}, "segment": {"s2": "s2: registration failed"}}
    markdown = tmp_path / "report.md"
    markdown.write_text("# report\n")
    reproduce._append_failures(markdown, [outcome], tmp_path)
    text = markdown.read_text()
    assert "| msws | prepare | s9 | s9: no brain |" in text
    assert "| msws | segment | s2 | s2: registration failed |" in text
    (segment / "volumes.csv").write_text("subject_id,status,error\ns1,ok,\n")
    (prepared / "manifest.json").write_text(json.dumps({"failed": {}}))
    markdown.write_text("")
    reproduce._append_failures(markdown, [outcome], tmp_path)
    assert "None: every subject was prepared" in markdown.read_text()


def test_reproduce_report_states_the_suites_own_settings(tmp_path):
    from wmh import reproduce

    chosen = [e for e in reproduce.EXPERIMENTS if e.name in ("ss", "msws_loc")]
    configs = [reproduce.resolve(e, "demo") for e in chosen]
    outcomes = [reproduce.Outcome(e, None, "r", False, 1.0) for e in chosen]
    markdown = tmp_path / "report.md"
    markdown.write_text("")
    reproduce._append_choices(markdown, outcomes, configs)
    text = markdown.read_text()
    demo = reproduce.SCALES["demo"]
    assert "## Settings the paper does not give (this suite's choices)" in text
    assert (f"| ss | {demo['train.learning_rate']:g} | {demo['train.epochs']} | "
            f"{demo['train.max_train_samples']} | {demo['train.max_validation_samples']} | "
            f"{demo['model.width']:g} | - |") in text
    assert f"| msws_loc | {demo['train.learning_rate']:g} |" in text
    assert "1, fixed (not tuned on validation subjects as in the paper) |" in text
