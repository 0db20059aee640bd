"""Logged models and the registry without training: a tiny saved model logged in hand-made
runs; the `best` alias rule; URIs that resolve to nothing."""

import mlflow
import numpy as np
import pytest

from segment_helpers import save_tiny_model
from wmh import registry
from wmh.cli import main
from wmh.errors import WMHError


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
        registry.log_model(model_dir, patches(), {"val_volume_dice": dice, "threshold": 0.4})
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
        _, contract = train.load_model_dir(uri)
        assert contract.threshold == pytest.approx(0.4)

    # the logged model predicts P(WMH) through MLflow's pyfunc (signature from the example)
    model = mlflow.pyfunc.load_model("models:/tiny@best")
    scores = np.asarray(model.predict(patches(rows=3)))
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))
    loaded, _ = train.load_model_dir(tiny_model)
    expected = np.asarray(loaded(patches(rows=3), training=False))[:, 1]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    with pytest.raises(WMHError, match=r"^--model models:/tiny@nope: cannot download \("):
        registry.model_folder("models:/tiny@nope")
    with pytest.raises(WMHError, match=r"^--model models:/m-0123: cannot download \("):
        registry.model_folder("models:/m-0123")


def test_models_uri_without_a_store_is_one_line_and_creates_none(tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # unset (restored after the test)
    monkeypatch.setenv("WMH_HOME", str(tmp_path / "home"))
    import nibabel as nib

    flair = tmp_path / "FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), flair)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--model", "models:/wmh-demo@best", str(flair), "--out",
              str(tmp_path / "seg")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("wmh: error: --model models:/wmh-demo@best: no MLflow store at "
                          f"{tmp_path / 'home' / 'mlflow.db'}")
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command", ["train", "tune", "reproduce"])
def test_bad_register_name_is_one_line_before_any_work(tmp_path, mlflow_tmp, capsys, command):
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
