"""Every run records its resolved config, dataset hash, git commit and library versions."""

import mlflow

from wmh import config, tracking


def test_tracking_uri_default_and_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


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
