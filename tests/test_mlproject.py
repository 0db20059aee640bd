"""`mlflow run . --env-manager local -P arch=msiw` trains through `wmh train` for real."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow

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
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "model")}
    assert "model/model.keras" in artifacts


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
