"""Every run records its resolved config, dataset hash, git commit and library versions."""

from pathlib import Path

import mlflow
import pytest

from wmh import config, tracking
from wmh.errors import WMHError
from wmh.loader import load_model_dir


ROOT = Path(__file__).resolve().parents[1]


def test_tracking_store_is_anchored_not_relative_to_the_working_directory(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere but the project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # unset (restored after the test)
    monkeypatch.delenv("WMH_HOME", raising=False)
    # A source checkout: the folder holding MLproject beside the wmh package.
    assert tracking.project_root() == ROOT
    assert tracking.tracking_uri() == f"sqlite:///{ROOT / 'mlflow.db'}"
    assert tracking.anchored("data_cache") == ROOT / "data_cache"
    assert tracking.anchored(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("WMH_HOME", str(tmp_path / "home"))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert "(WMH_HOME)" in tracking.describe_tracking()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    # An installed package (no checkout) without WMH_HOME: ~/.wmh.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("WMH_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setattr(tracking, "project_root", lambda: None)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'user' / '.wmh' / 'mlflow.db'}"
    assert list(tmp_path.iterdir()) == []  # nothing was created by asking


def test_runs_go_to_the_anchored_store_from_any_folder(tmp_path, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # unset (restored after the test)
    monkeypatch.setenv("WMH_HOME", str(home))
    tracking.configure_mlflow("anchored")
    with mlflow.start_run() as run:
        mlflow.log_text("x", "a.txt")
    assert (home / "mlflow.db").is_file()
    assert (home / "mlruns").is_dir() and list(elsewhere.iterdir()) == []
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/a.txt") == "x"
    # Any SQLite store named by MLFLOW_TRACKING_URI keeps its artifacts beside it too.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other' / 'm.db'}")
    tracking.configure_mlflow("beside")
    with mlflow.start_run():
        mlflow.log_text("y", "b.txt")
    assert list((tmp_path / "other" / "mlruns").rglob("b.txt"))
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("uri", ["runs:/0123456789abcdef/model", "models:/wmh-demo@best",
                                 "models:/m-0123456789abcdef"])
def test_missing_run_is_one_line_and_creates_no_store(tmp_path, monkeypatch, capsys, uri):
    import nibabel as nib
    import numpy as np

    from wmh.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # unset (restored after the test)
    monkeypatch.setenv("WMH_HOME", str(tmp_path / "home"))
    flair = tmp_path / "FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), flair)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--model", uri, str(flair), "--out", str(tmp_path / "seg")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"wmh: error: --model {uri}: no MLflow store "
                          f"at {tmp_path / 'home' / 'mlflow.db'}")
    assert sorted(tmp_path.rglob("*")) == before  # no mlflow.db anywhere, no folders
    with pytest.raises(WMHError, match=r"^--run abc: no MLflow store at "):
        from wmh.evaluation.tracking_io import method_result_from_mlflow
        method_result_from_mlflow("abc")


def test_missing_run_in_an_existing_store_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # unset (restored after the test)
    monkeypatch.setenv("WMH_HOME", str(tmp_path / "home"))
    tracking.configure_mlflow("exists")
    with pytest.raises(WMHError) as error:
        load_model_dir("runs:/0123456789abcdef/model")
    assert str(error.value).startswith("--model runs:/0123456789abcdef/model: cannot download")
    assert "\n" not in str(error.value)


def test_hash_files_depends_on_content(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    first = tracking.hash_files([a, b])
    assert first == tracking.hash_files([a, b]) and len(first) == 16
    b.write_bytes(b"three")
    assert tracking.hash_files([a, b]) != first
    assert tracking.hash_files([a, b], extra="cfg") != tracking.hash_files([a, b])


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_log_context_records_config_commit_versions(mlflow_tmp):
    cfg = config.load_config(None, ["model.alpha=0.7"])
    tracking.configure_mlflow("test-context")
    with mlflow.start_run() as run:
        tracking.log_context(cfg, dataset_hash="abc123")
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.params["model.alpha"] == "0.7"
    assert logged.data.params["model.arch"] == cfg.model.arch
    assert logged.data.tags["dataset_hash"] == "abc123"
    assert logged.data.tags["version.keras"] == "3.15.1"
    assert logged.data.tags["git_commit"] != ""
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert "alpha: 0.7" in text


def test_wmh_config_names_the_store_and_journal(tmp_path, monkeypatch, capsys):
    from wmh.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("WMH_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit):
        main(["config"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"# MLflow tracking store: sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
                        " (WMH_HOME)")
    assert lines[1] == ("# Optuna journal (tune.storage empty): "
                        f"{tmp_path / 'home' / 'data_cache' / 'optuna' / 'journal.log'}")
    assert list(tmp_path.iterdir()) == []


def test_optuna_default_journal_is_anchored_like_the_store(tmp_path, monkeypatch):
    from wmh.tune.storage import open_storage

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("WMH_HOME", str(tmp_path / "home"))
    opened = open_storage(config.TuneConfig(), "data_cache")
    journal = tmp_path / "home" / "data_cache" / "optuna" / "journal.log"
    assert (opened.kind, opened.display) == ("journal-file", str(journal))
    assert list(elsewhere.iterdir()) == []
    absolute = open_storage(config.TuneConfig(), tmp_path / "mine")
    assert absolute.display == str(tmp_path / "mine" / "optuna" / "journal.log")
