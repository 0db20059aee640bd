"""Optuna studies on the local journal file: static space, nested MLflow trials, figures,
failures, pruning, resume, bad options. Real training on a tiny cohort where it matters,
a stand-in ``wmh.train.train`` where only the study mechanics are under test."""

import math
import subprocess
import sys

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from cohorts import make_config, write_prepared_cohort
from wmh import config as config_module
from wmh.errors import WMHError

SEARCHED = {"model.arch", "model.loc", "model.alpha", "train.learning_rate",
            "model.dropout_rate"}


def tune_config(tmp_path, experiment, **overrides):
    return make_config(tmp_path, {
        "train.epochs": 1, "train.batch_size": 32, "train.learning_rate": 1e-3,
        "model.width": 0.1, "train.max_train_samples": 512,
        "train.max_validation_samples": 256, "sampling.validation_fraction": 0.2,
        "sampling.test_fraction": 0.0, "train.experiment": experiment, "tune.n_trials": 2,
        "tune.pruner": "none", "tune.study": "s"}, overrides)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    from wmh import sampling
    from wmh.pipeline import DataStages

    root = tmp_path_factory.mktemp("tune-data")
    prepared = write_prepared_cohort(root / "prepared", n_subjects=6)
    samples = sampling.build_samples(prepared, root / "samples",
                                     tune_config(root, "unused").sampling)
    return DataStages(cohort=prepared, synthetic=True, prepared=prepared, samples=samples)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One SQLite MLflow store for the module (creating one takes seconds); tests keep
    apart through their experiment names."""
    folder = tmp_path_factory.mktemp("tune-mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(folder)  # artifacts of a SQLite store go to ./mlruns
        yield uri


def load_study(config):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(config.data.cache_dir + "/optuna/journal.log")))
    return optuna.load_study(study_name=config.tune.study, storage=storage)


class FakeTraining:
    """Stands in for wmh.train.train: a nested MLflow run, the callbacks' hooks with
    scripted validation AUCs, then a result; or an exception for chosen calls."""

    def __init__(self, failures=(), auc=0.8, dice=0.4, epochs=1):
        self.failures = dict(failures)
        self.auc, self.dice, self.epochs = auc, dice, epochs
        self.configs = []

    def __call__(self, config, samples_dir, prepared_dir, callbacks=(), options=None):
        from wmh.contract import TrainResult

        call = len(self.configs)
        self.configs.append(config)
        with mlflow.start_run(run_name=options.run_name, nested=options.nested) as run:
            for callback in callbacks:
                callback.on_train_begin({})
            if call in self.failures:
                raise self.failures[call]
            for epoch in range(self.epochs):
                for callback in callbacks:
                    callback.on_epoch_end(epoch, {"val_auc": self.auc})
        return TrainResult(run_id=run.info.run_id, model_dir=samples_dir, best_epoch=1,
                           validation_auc=self.auc, threshold=0.5,
                           validation_dice=self.dice, validation_volume_auc=self.auc)


def test_search_space_is_static_and_always_suggests_alpha():
    from wmh.tune.space import search_space, suggest

    settings = config_module.load_config(None, ["tune.injections=none,lcl",
                                                "tune.archs=ss,msws"]).tune
    space = search_space(settings)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    locations = set()
    for _ in range(12):
        trial = study.ask()
        params = suggest(trial, space)
        assert set(params) == SEARCHED == set(trial.params)  # alpha even with loc=none
        assert params["model.arch"] in ("ss", "msws")
        assert 0.1 <= params["model.alpha"] <= 10.0
        assert 1e-5 <= params["train.learning_rate"] <= 1e-3
        assert 0.0 <= params["model.dropout_rate"] <= 0.5
        locations.add(params["model.loc"])
        study.tell(trial, 0.5)
    assert locations == {"none", "lcl"}
    assert space["model.alpha"].log and space["train.learning_rate"].log


@pytest.mark.parametrize("override, message", [
    ("tune.archs=msws,rf", r"tune\.archs.*'rf' is not one of"),
    ("tune.injections=", r"tune\.injections.*empty"),
    ("tune.alpha_low=0", r"tune\.alpha_low.*positive"),
    ("tune.dropout_high=1.5", r"tune\.dropout_low.*tune\.dropout_high"),
    ("tune.n_trials=0", r"tune\.n_trials"),
])
def test_bad_search_settings_name_the_key(override, message):
    from wmh.tune.space import search_space

    with pytest.raises(WMHError, match=message):
        search_space(config_module.load_config(None, [override]).tune)


def test_tune_trains_nested_trials_logs_figures_and_resumes(tmp_path, stages, tracking_uri,
                                                            tf_seeded, monkeypatch):
    from wmh import tune

    config = tune_config(tmp_path, "tune-real")
    lines = []
    summary = tune.tune(config, stages, progress=lines.append)
    study = load_study(config)
    assert [t.number for t in study.trials] == [0, 1]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(set(t.params) == SEARCHED for t in study.trials)
    assert summary.trials_run == (0, 1) and summary.states == {"COMPLETE": 2}
    assert lines[0].startswith("trial 0: COMPLETE val_auc")

    client = MlflowClient()
    run_ids = [t.user_attrs["mlflow_run_id"] for t in study.trials]
    assert len(set(run_ids)) == 2
    for trial, run_id in zip(study.trials, run_ids):
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.data.tags["optuna.state"] == "COMPLETE"
        assert float(run.data.params["model.alpha"]) == pytest.approx(
            trial.params["model.alpha"])
        assert trial.value == pytest.approx(run.data.metrics["best_val_auc"])
        assert trial.intermediate_values.keys() == {1}
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.tags["optuna.study"] == "s"
    assert parent.data.tags["optuna.storage"] == "journal-file"
    best = max(study.trials, key=lambda t: t.value)
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.params["best.model.loc"] == best.params["model.loc"]
    figures = {a.path for a in client.list_artifacts(summary.parent_run_id, "figures")}
    assert figures == {"figures/optimization_history.png", "figures/param_importances.png",
                       "figures/intermediate_values.png"}
    assert [a.path for a in client.list_artifacts(summary.parent_run_id, "study")] == \
        ["study/trials.csv"]

    # resume: the same study, a total of 3 -> one more trial, numbered on, pruned at
    # its first epoch by the Keras pruning callback
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    from wmh.tune import study as tune_study

    monkeypatch.setattr(tune_study, "make_pruner", lambda settings: AlwaysPrune())
    resumed = tune.tune(config_module.replace(config, **{"tune.n_trials": 3,
                                                         "train.epochs": 2}), stages)
    study = load_study(config)
    assert resumed.trials_run == (2,)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    pruned = study.trials[2]
    assert list(pruned.intermediate_values) == [1]  # stopped after epoch 1 of 2
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.data.tags["optuna.state"] == "PRUNED" and run.info.status == "KILLED"
    assert run.data.tags["mlflow.parentRunId"] == resumed.parent_run_id != summary.parent_run_id
    assert resumed.best_number == summary.best_number

    # the study is complete: another call runs nothing
    assert tune.tune(config_module.replace(config, **{"tune.n_trials": 3}),
                     stages).trials_run == ()


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path, stages, tracking_uri,
                                                           monkeypatch):
    from wmh import train, tune

    fake = FakeTraining(failures={0: WMHError("training diverged: loss is nan at epoch 1"),
                                  1: RuntimeError("out of memory")})
    monkeypatch.setattr(train, "train", fake)
    config = tune_config(tmp_path, "tune-fail", **{"tune.n_trials": 3})
    summary = tune.tune(config, stages, progress=lambda line: None)
    study = load_study(config)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL,
                                               TrialState.COMPLETE]
    assert "diverged" in study.trials[0].user_attrs["fail_reason"]
    assert study.trials[1].user_attrs["fail_reason"] == "RuntimeError: out of memory"
    assert summary.best_number == 2 and summary.states == {"COMPLETE": 1, "FAIL": 2}
    client = MlflowClient()
    failed_run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert failed_run.info.status == "FAILED"
    assert failed_run.data.tags["optuna.state"] == "FAIL"
    # one complete trial: no importances yet, the history is there
    figures = {a.path for a in client.list_artifacts(summary.parent_run_id, "figures")}
    assert "figures/optimization_history.png" in figures
    assert "figures/param_importances.png" not in figures
    # each trial trains its own config, built from the base one
    assert [c.model.alpha for c in fake.configs] == [t.params["model.alpha"]
                                                     for t in study.trials]
    assert all(c.model.width == 0.1 and c.train.epochs == 1 for c in fake.configs)
    assert len({c.name for c in fake.configs}) == 3


def test_objective_validation_dice_and_no_mixing(tmp_path, stages, tracking_uri, monkeypatch):
    from wmh import train, tune

    monkeypatch.setattr(train, "train", FakeTraining(auc=0.9, dice=0.35))
    config = tune_config(tmp_path, "tune-dice", **{"tune.objective": "val_dice",
                                                   "tune.n_trials": 1})
    summary = tune.tune(config, stages, progress=lambda line: None)
    trial = load_study(config).trials[0]
    assert trial.value == pytest.approx(0.35) and summary.best_value == pytest.approx(0.35)
    assert trial.user_attrs["val_auc"] == pytest.approx(0.9)
    with pytest.raises(WMHError, match=r"--study s .*another search space or objective"):
        tune.tune(config_module.replace(config, **{"tune.objective": "val_auc"}), stages)

    # a NaN objective (no validation subjects) fails the trial, not the study
    monkeypatch.setattr(train, "train", FakeTraining(dice=math.nan))
    tune.tune(config_module.replace(config, **{"tune.n_trials": 2}), stages,
              progress=lambda line: None)
    trial = load_study(config).trials[1]
    assert trial.state == TrialState.FAIL and "is nan" in trial.user_attrs["fail_reason"]


def test_trials_of_a_killed_worker_are_failed_and_finished_ones_kept(tmp_path, stages,
                                                                     tracking_uri,
                                                                     monkeypatch):
    import socket

    from wmh import train, tune

    monkeypatch.setattr(train, "train", FakeTraining())
    config = tune_config(tmp_path, "tune-killed", **{"tune.n_trials": 1})
    tune.tune(config, stages, progress=lambda line: None)
    # a worker that died in its trial: RUNNING, owned by a process that no longer exists
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = load_study(config)
    orphan = study.ask()
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    summary = tune.tune(config_module.replace(config, **{"tune.n_trials": 3}), stages,
                        progress=lambda line: None)
    study = load_study(config)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                               TrialState.COMPLETE]
    assert "is gone" in study.trials[1].user_attrs["fail_reason"]
    assert summary.trials_run == (2,)


def test_timeout_stops_starting_new_trials(tmp_path, stages, tracking_uri, monkeypatch):
    import time

    from wmh import train, tune

    fake = FakeTraining()

    def slow_training(*args, **kwargs):
        time.sleep(1.5)
        return fake(*args, **kwargs)

    monkeypatch.setattr(train, "train", slow_training)
    config = tune_config(tmp_path, "tune-timeout", **{"tune.n_trials": 10,
                                                      "tune.timeout": 1.0})
    summary = tune.tune(config, stages, progress=lambda line: None)
    assert summary.trials_run == (0,) and summary.n_trials == 1  # the started one finished


class FakeTrial:
    def __init__(self, prune_at_step):
        self.prune_at_step = prune_at_step
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.reports[-1][0] >= self.prune_at_step


def test_pruning_callback_reports_epochs_and_prunes():
    from wmh.tune.trial import PruningCallback

    trial = FakeTrial(prune_at_step=3)
    callback = PruningCallback(trial)
    callback.on_epoch_end(0, {"val_auc": 0.6, "loss": 0.5})
    callback.on_epoch_end(1, {"val_auc": math.nan})  # not reported: would prune at once
    with pytest.raises(optuna.TrialPruned, match="epoch 3"):
        callback.on_epoch_end(2, {"val_auc": 0.7})
    assert trial.reports == [(1, 0.6), (3, 0.7)]


def test_median_pruner_warmup_counts_epochs():
    from wmh.tune.study import make_pruner

    pruner = make_pruner(config_module.load_config(
        None, ["tune.pruner_warmup_epochs=2", "tune.pruner_startup_trials=1"]).tune)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    good = study.ask()
    for step in (1, 2, 3):
        good.report(0.9, step)
    study.tell(good, 0.9)
    poor = study.ask()
    poor.report(0.1, 1)
    assert not poor.should_prune()  # epoch 1: warm-up
    poor.report(0.1, 2)
    assert not poor.should_prune()  # epoch 2: warm-up
    poor.report(0.1, 3)
    assert poor.should_prune()


@pytest.mark.parametrize("arguments, message", [
    (["--objective", "val_loss"], "tune.objective': 'val_loss' is not one of"),
    (["--storage", "redis://127.0.0.1:6379/0"], "--storage / tune.storage 'redis://"),
    (["--storage", "postgres://u:secret@127.0.0.1/db"], "unknown scheme 'postgres'"),
    (["--set", "tune.injections=ffcl,middle"], "'middle' is not one of"),
    (["--samples", "somewhere"], "--samples and --prepared go together"),
])
def test_cli_bad_options_exit_2_with_one_line(arguments, message, tmp_path, capsys):
    from wmh.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--set", f"data.cache_dir={tmp_path}", *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert "secret" not in error


def test_unreachable_database_is_a_user_error(tmp_path):
    from wmh.tune.storage import open_storage

    settings = config_module.load_config(
        None, ["tune.storage=postgresql://wmh:secret@127.0.0.1:9/optuna"]).tune
    with pytest.raises(WMHError, match=r"--storage postgresql://wmh:\*\*\*@127\.0\.0\.1:9/"
                                       r"optuna: cannot open") as error:
        open_storage(settings, tmp_path)
    assert "secret" not in str(error.value)


def test_mlproject_tune_entry_runs_wmh_tune(tmp_path, stages, tracking_uri, monkeypatch,
                                            capsys):
    import shlex
    from pathlib import Path

    from mlflow.projects import _project_spec

    from wmh import pipeline, train
    from wmh.cli import main

    monkeypatch.setattr(train, "train", FakeTraining())
    monkeypatch.setattr(pipeline, "ensure_data", lambda config: stages)
    entry = _project_spec.load_project(str(Path(__file__).parents[1])).get_entry_point("tune")
    command = entry.compute_command(
        {"study": "from-mlproject", "n_trials": "2",
         "set": f"data.cache_dir={tmp_path} train.experiment=tune-mlproject"}, None)
    arguments = shlex.split(command)
    assert arguments[:2] == ["wmh", "tune"]
    with pytest.raises(SystemExit) as exit_info:
        main(arguments[1:])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert "study from-mlproject (journal-file: " in output and "2 trials (2 complete)" in output
    assert "reproduce: wmh train --set model.arch=" in output
