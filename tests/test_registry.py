"""Logged models and the registry without training: a tiny saved model logged in hand-made
runs; the `best` alias rule; URIs that resolve to nothing."""

import mlflow
import numpy as np
import pytest

from segment_helpers import save_tiny_model
from wmh import registry, train
from wmh.cli import main
from wmh.errors import WMHError
from wmh.loader import load_model_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "model", threshold=0.4)


def patches(rows=2, channels=2):
    rng = np.random.default_rng(0)
    return {"s1": rng.random((rows, 32, 32, channels), np.float32),
            "s2": rng.random((rows, 32, 32, channels), np.float32),
            "s3": rng.random((rows, 32, 32, channels), np.float32),
            "loc": rng.random((rows, 8), np.float32)}


def logged_run(model_dir, dice: float, dataset_hash: str = "data-a") -> str:
    with mlflow.start_run() as run:
        mlflow.set_tag("dataset_hash", dataset_hash)
        registry.log_model(model_dir, train.load_network_dir(model_dir), patches(),
                           {"val_volume_dice": dice, "threshold": 0.4})
    return run.info.run_id


def test_best_alias_moves_only_on_a_better_validation_dice_on_the_same_data(
        tmp_path, mlflow_tmp, tiny_model):
    from wmh import tracking

    tracking.configure_mlflow("registry-test")
    first = logged_run(tiny_model, 0.50)
    worse = logged_run(tiny_model, 0.40)
    other_data = logged_run(tiny_model, 0.90, dataset_hash="data-b")
    better = logged_run(tiny_model, 0.60)
    steps = [registry.register(run_id, "tiny") for run_id in (first, worse, other_data, better)]
    assert [step["version"] for step in steps] == [1, 2, 3, 4]
    assert [step["aliases"] for step in steps] == [
        ["newest", "best"], ["newest"], ["newest"], ["newest", "best"]]
    by_version = {v["version"]: v for v in registry.registered_versions("tiny")}
    assert sorted(by_version[4]["aliases"]) == ["best", "newest"]
    assert by_version[4]["source"] == f"models:/{registry.run_model_id(better)}"
    assert all(not by_version[v]["aliases"] for v in (1, 2, 3))
    assert registry.best_run([first, worse, other_data, better]) == other_data

    # every URI form gives the same model folder and contract
    model_id = registry.run_model_id(better)
    for uri in ("models:/tiny@best", "models:/tiny@newest", "models:/tiny/4",
                "models:/tiny/latest",
                f"models:/{model_id}", f"runs:/{better}/model"):
        folder = registry.model_folder(uri)
        assert sorted(path.name for path in folder.iterdir()) == ["model.keras",
                                                                   "wmh_model.json"]
        from wmh import train
        _, contract = load_model_dir(uri)
        assert contract.threshold == pytest.approx(0.4)

    # the logged model predicts P(WMH) through MLflow's pyfunc (signature from the example)
    model = mlflow.pyfunc.load_model("models:/tiny@best")
    scores = np.asarray(model.predict(patches(rows=3)))
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))
    loaded, _ = load_model_dir(tiny_model)
    expected = np.asarray(loaded(patches(rows=3), training=False))[:, 1]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    with pytest.raises(WMHError, match=r"^--model models:/tiny@nope: cannot download \("):
        registry.model_folder("models:/tiny@nope")
    with pytest.raises(WMHError, match=r"^--model models:/m-0123: cannot download \("):
        registry.model_folder("models:/m-0123")


@pytest.mark.parametrize("command", ["train", "tune", "reproduce"])
def test_bad_register_name_is_one_line_before_any_work(tmp_path, mlflow_tmp, capsys, command):
    (tmp_path / "mlflow.db").unlink()  # mlflow_tmp's empty store: no store may appear either
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--register", "a/b", "--set", f"data.cache_dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("wmh: error: --register 'a/b': a model name is 1-100 letters")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_register_needs_a_logged_model(tmp_path, mlflow_tmp):
    from wmh import tracking

    tracking.configure_mlflow("registry-test")
    with mlflow.start_run() as run:
        mlflow.log_text("old", "model/wmh_model.json")  # a run from before logged models
    with pytest.raises(WMHError, match=rf"^run {run.info.run_id}: no logged model 'model'"):
        registry.register(run.info.run_id, "tiny")


def test_tune_and_reproduce_register_their_best_run(tmp_path, mlflow_tmp, tiny_model,
                                                    monkeypatch, capsys):
    """The CLI wiring: tune registers the study's best trial, reproduce the experiment
    with the best validation Dice (the studies themselves are replaced by stand-ins)."""
    from types import SimpleNamespace

    from wmh import reproduce, tracking, tune

    tracking.configure_mlflow("registry-test")
    weaker, stronger = logged_run(tiny_model, 0.3), logged_run(tiny_model, 0.7)
    monkeypatch.setattr(tune, "tune", lambda *a, **k: SimpleNamespace(best_run_id=weaker))
    monkeypatch.setattr(tune, "format_summary", lambda summary: "study summary")
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--register", "tuned", "--set", f"data.cache_dir={tmp_path / 'c'}"])
    assert exit_info.value.code == 0
    assert "registered tuned version 1 (aliases newest, best)" in capsys.readouterr().out
    assert registry.registered_versions("tuned")[0]["run_id"] == weaker

    done = SimpleNamespace(outcomes=[SimpleNamespace(run_id=weaker),
                                     SimpleNamespace(run_id=stronger)],
                           report=SimpleNamespace(markdown="report.md"), data_label="synthetic",
                           parent_run_id="parent", seconds=1.0)
    monkeypatch.setattr(reproduce, "reproduce", lambda *a, **k: done)
    monkeypatch.setattr(reproduce, "summary_table", lambda done: "table")
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--register", "tuned", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 0
    assert "registered tuned version 2 (aliases newest, best)" in capsys.readouterr().out
    assert [v["run_id"] for v in registry.registered_versions("tuned")] == [stronger, weaker]
