"""`mlflow run . --env-manager local -P arch=msiw` trains through `wmh train` for real."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from cohorts import write_prepared_cohort

ROOT = Path(__file__).resolve().parents[1]


def test_mlflow_run_main_entry_point_trains_msiw(tmp_path):
    prepared = write_prepared_cohort(tmp_path / "prepared", n_subjects=6)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("MLFLOW_")}  # no run/experiment from other tests
    environment.update(MLFLOW_TRACKING_URI=uri,
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    overrides = (f"data.root={prepared} data.cache_dir={tmp_path / 'cache'} train.epochs=1 "
                 "model.width=0.1 sampling.validation_fraction=0.34 sampling.test_fraction=0.17")
    completed = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
         "--experiment-name", "mlproject-test", "-P", "arch=msiw", "-P", "alpha=0.5",
         "-P", f"set={overrides}"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["mlproject-test"], output_format="list")
    assert len(runs) == 1  # wmh train logged into the run `mlflow run` created
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "msiw"
    assert run.data.params["model.alpha"] == "0.5"
    assert run.data.params["train.epochs"] == "1"
    assert run.data.tags["data_label"] == "real"  # a prepared folder of unknown origin
    assert 0.0 <= run.data.metrics["threshold"] <= 1.0
    from wmh import registry  # the model is the run's logged model (models:/<model id>)

    folder = registry.model_folder(f"models:/{registry.run_model_id(run.info.run_id)}")
    assert (folder / "model.keras").is_file()


# slow: a whole `mlflow run -e reproduce` (about 65 s); the default suite keeps the tiny
# reproduction (tests/test_reproduce.py) and the entry point's rendered command (below).
@pytest.mark.slow
def test_mlflow_run_reproduce_entry_point(tmp_path, tiny_synthetic_cache):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("MLFLOW_")}
    environment.update(MLFLOW_TRACKING_URI=uri,
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    overrides = (f"data.cache_dir={tiny_synthetic_cache} synth.subjects=6 synth.profile=test "
                 "sampling.validation_fraction=0.15 sampling.test_fraction=0.3 "
                 "baseline.n_trees=5 train.max_train_samples=1000")
    completed = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
         "--experiment-name", "reproduce-test", "-e", "reproduce", "-P", "experiments=rf",
         "-P", f"out={tmp_path / 'out'}", "-P", f"set={overrides}"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Conventional" in completed.stdout and "SYNTHETIC data" in completed.stdout

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["reproduce-test"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    # The run `mlflow run` created is the parent; the forest is its child.
    assert len(parents) == 1 and len(children) == 1
    assert children[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert children[0].data.params["model.arch"] == "rf"
    assert 0.0 <= children[0].data.metrics["test_dice_obs1"] <= 1.0
    client = mlflow.MlflowClient()
    assert "report/report.md" in {
        a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert (tmp_path / "out" / "demo" / "report" / "table3_observers.csv").is_file()


# --- MLproject parameters, rendered with MLflow's own project loader -----------------

import shlex  # noqa: E402

from mlflow.projects._project_spec import load_project  # noqa: E402

from wmh.config import load_config  # noqa: E402


class _Captured(Exception):
    """Stops a command once it has resolved its config."""


def _render(entry_point, **parameters):
    """The argv after `wmh` that `mlflow run . -e ENTRY -P k=v ...` executes."""
    command = load_project(str(ROOT)).get_entry_point(entry_point).compute_command(
        {key: str(value) for key, value in parameters.items()}, storage_dir=None)
    argv = shlex.split(command)
    assert argv[0] == "wmh"
    return argv[1:]


def _resolved_config(monkeypatch, argv):
    """Runs `wmh <argv>` up to the point where train or tune receives its config."""
    from wmh import cli, pipeline, tune

    seen = {}

    def capture(config, *args, **kwargs):
        seen["config"] = config
        raise _Captured

    monkeypatch.setattr(pipeline, "run_training", capture)
    monkeypatch.setattr(tune, "tune", capture)
    with pytest.raises(_Captured):
        cli.main(argv)
    return seen["config"]


@pytest.mark.parametrize("experiment, arch, loc", [("ss", "ss", "none"),
                                                   ("ss_loc", "ss", "ffcl")])
def test_main_entry_point_keeps_the_configs_model(monkeypatch, experiment, arch, loc):
    config_path = ROOT / "experiments" / f"{experiment}.yaml"
    argv = _render("main", config=config_path)
    config = _resolved_config(monkeypatch, argv)
    assert (config.name, config.model.arch, config.model.loc) == (experiment, arch, loc)
    assert config == load_config(config_path)  # nothing else was overridden either


def test_main_entry_point_parameters_override_when_given(monkeypatch):
    argv = _render("main", config=ROOT / "experiments" / "ss.yaml", arch="msiw",
                   alpha="0.25", set="train.epochs=2 model.alpha=0.5")
    config = _resolved_config(monkeypatch, argv)
    # loc stays ss.yaml's; `set` comes last, after alpha
    assert (config.model.arch, config.model.loc) == ("msiw", "none")
    assert (config.model.alpha, config.train.epochs) == (0.5, 2)


def test_main_entry_point_without_config_is_the_defaults(monkeypatch):
    assert _resolved_config(monkeypatch, _render("main")) == load_config(None)
    config = _resolved_config(monkeypatch, _render("main", arch="rf"))
    assert config.model.arch == "rf" and config.model.loc == load_config(None).model.loc


def test_main_entry_point_bad_alpha_is_one_line(monkeypatch, capsys):
    from wmh import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(_render("main", alpha="big"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "wmh: error: config key 'model.alpha': expected a number, got 'big'")


def test_tune_entry_point_takes_the_config_and_an_integer_n_trials(monkeypatch, capsys):
    project = load_project(str(ROOT))
    assert project.get_entry_point("tune").parameters["n_trials"].type == "int"
    config_path = ROOT / "experiments" / "ss_loc.yaml"
    config = _resolved_config(monkeypatch, _render("tune", config=config_path))
    assert config == load_config(config_path)  # tune.n_trials, storage, study: the config's
    config = _resolved_config(monkeypatch, _render("tune", config=config_path, n_trials=7,
                                                   study="s1"))
    assert (config.tune.n_trials, config.tune.study) == (7, "s1")
    from wmh import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(_render("tune", n_trials="2.5"))
    assert exit_info.value.code == 2
    assert "'2.5' is not a valid integer" in capsys.readouterr().err


def test_segment_and_reproduce_entry_points_parse():
    from wmh.cli import cli

    argv = _render("segment", model="runs:/abc/model", inputs="data/s1")
    context = cli.make_context("wmh", list(argv), resilient_parsing=True)
    assert argv[0] == "segment"
    segment = cli.get_command(context, "segment")
    parsed = segment.make_context("segment", argv[1:], resilient_parsing=True).params
    assert parsed["model_source"] == "runs:/abc/model"
    assert parsed["inputs"] == ("data/s1",) and str(parsed["out_dir"]) == "outputs/segment"
    assert parsed["calibration"] == "model"
    argv = _render("segment", model="m", inputs="d", calibration="none")
    assert segment.make_context("segment", argv[1:],
                                resilient_parsing=True).params["calibration"] == "none"
    argv = _render("segment", inputs="data/s1")  # no model: the one shipped with wmh
    parsed = segment.make_context("segment", argv[1:], resilient_parsing=True).params
    assert parsed["model_source"] == "" and parsed["inputs"] == ("data/s1",)
    argv = _render("reproduce", experiments="ss,ss_loc")
    assert argv[0] == "reproduce"
    reproduce = cli.get_command(context, "reproduce")
    parsed = reproduce.make_context("reproduce", argv[1:], resilient_parsing=True).params
    assert (parsed["scale"], parsed["experiments"], parsed["override_list"],
            parsed["alphas"]) == ("demo", "ss,ss_loc", "", "")
    argv = _render("reproduce", alphas="0.5,2")
    parsed = reproduce.make_context("reproduce", argv[1:], resilient_parsing=True).params
    assert parsed["alphas"] == "0.5,2"


def test_precision_parameter_empty_keeps_the_config_and_given_overrides(monkeypatch):
    config_path = ROOT / "experiments" / "ss.yaml"
    assert _resolved_config(monkeypatch, _render("main", config=config_path)).train.precision \
        == load_config(config_path).train.precision
    config = _resolved_config(monkeypatch, _render("main", config=config_path,
                                                   precision="bf16"))
    assert config.train.precision == "bf16"
    config = _resolved_config(monkeypatch, _render("tune", precision="fp32"))
    assert config.train.precision == "fp32"
    from wmh.cli import cli

    argv = _render("segment", model="m", inputs="s", precision="fp32")
    segment = cli.get_command(cli.make_context("wmh", list(argv), resilient_parsing=True),
                              "segment")
    assert segment.make_context("segment", argv[1:]).params["precision"] == "fp32"


def test_register_parameter_reaches_train_and_tune():
    from wmh.cli import cli

    for entry, extra in (("main", {}), ("tune", {"n_trials": 2})):
        argv = _render(entry, register="my-model", **extra)
        command = cli.get_command(cli.make_context("wmh", list(argv), resilient_parsing=True),
                                  argv[0])
        assert command.make_context(argv[0], argv[1:]).params["register_name"] == "my-model"
        argv = _render(entry, **extra)  # empty: nothing registered
        assert command.make_context(argv[0], argv[1:]).params["register_name"] == ""
