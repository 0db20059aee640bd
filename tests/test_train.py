"""Training end to end on a tiny prepared cohort: learns, logs everything, resumes."""

import json

import mlflow
import numpy as np
import pytest

from cohorts import make_config, write_prepared_cohort
from wmh.errors import WMHError
from wmh.lifecycle import RunOptions
from wmh.loader import load_model_dir


def tiny_config(tmp_path, epochs=3, **overrides):
    return make_config(tmp_path, {
        "train.epochs": epochs, "train.batch_size": 32, "train.learning_rate": 1e-3,
        "model.width": 0.15, "model.arch": "msws", "model.loc": "ffcl",
        "sampling.validation_fraction": 0.25, "sampling.test_fraction": 0.125,
        "train.experiment": "tiny"}, overrides)


@pytest.fixture(scope="module")
def tiny_samples(tmp_path_factory):
    from wmh import sampling

    root = tmp_path_factory.mktemp("tiny")
    prepared = write_prepared_cohort(root / "prepared", n_subjects=8)
    cfg = tiny_config(root)
    samples = sampling.build_samples(prepared, root / "samples", cfg.sampling)
    return prepared, samples


def test_training_learns_logs_and_saves_a_loadable_model(tmp_path, mlflow_tmp, tf_seeded,
                                                         tiny_samples):
    from wmh import train
    from wmh.models import build_dense_model

    prepared, samples = tiny_samples
    cfg = tiny_config(tmp_path, epochs=3)
    result = train.train(cfg, samples, prepared, options=RunOptions(data_label="synthetic"))
    assert result.validation_auc > 0.9
    assert 0.0 < result.threshold < 1.0
    assert result.validation_dice > 0.3
    assert 1 <= result.best_epoch <= 3

    run = mlflow.get_run(result.run_id)
    assert run.data.params["model.arch"] == "msws"
    assert run.data.tags["data_label"] == "synthetic"
    assert run.data.tags["dataset_hash"] and run.data.tags["git_commit"]
    assert run.data.metrics["threshold"] == pytest.approx(result.threshold)
    history = mlflow.tracking.MlflowClient().get_metric_history(result.run_id, "val_auc")
    assert [m.step for m in history] == [1, 2, 3]
    assert max(m.value for m in history) == pytest.approx(result.validation_auc)
    check_logged_model(result, samples, prepared)
    figures = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(result.run_id,
                                                                             "figures")}
    assert {"figures/roc.png", "figures/dice_vs_threshold.png",
            "figures/reliability.png"} <= figures

    # the saved model (safe_mode) is the best epoch's, and carries its input contract
    model, contract = load_model_dir(f"runs:/{result.run_id}/model")
    assert contract.channels == ("FLAIR", "T1")
    assert contract.threshold == pytest.approx(result.threshold)
    check_calibration(run, contract, samples)
    assert contract.model == cfg.model
    from wmh.preprocess import PreparedSubject
    subject = PreparedSubject.load(next(prepared.glob("*.h5")))
    probabilities = train.predict_volume(build_dense_model(model, cfg.model, 2), cfg.model,
                                         subject.images, subject.location, subject.brain_mask)
    assert probabilities.shape == subject.shape
    assert np.all(probabilities[~subject.brain_mask] == 0)
    wmh = probabilities[subject.labels == 1].mean()
    background = probabilities[subject.brain_mask & (subject.labels == 0)].mean()
    assert wmh > background + 0.3


def check_calibration(run, contract, samples):
    """train.calibration platt (the default): fitted on the validation voxels, recorded in
    the contract and the run; the sample share is the real one of the training samples."""
    from wmh import sampling

    calibration = contract.calibrator()
    assert calibration.method == "platt" and run.data.params["calibration"] == "platt"
    labels = sampling.load_index(samples, "train").label
    assert calibration.sample_positive_share == pytest.approx(np.mean(labels == 1))
    assert 0.0 < calibration.validation_prevalence < 0.5
    assert run.data.metrics["val_ece"] == pytest.approx(calibration.validation_ece_after)
    assert run.data.metrics["val_ece_uncalibrated"] == pytest.approx(
        calibration.validation_ece_before)
    assert calibration.validation_ece_after <= calibration.validation_ece_before
    assert 0.0 < contract.uncalibrated_threshold <= 1.0


def check_logged_model(result, samples, prepared):
    """The run's model is an MLflow 3 logged model (pyfunc wrapping the model folder) with
    a signature, an input example and the final metrics; the run has its three datasets
    and system metrics."""
    from wmh import registry, sampling, train

    client = mlflow.tracking.MlflowClient()
    model_id = registry.run_model_id(result.run_id)
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == result.run_id and logged.name == "model"
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["threshold"] == pytest.approx(result.threshold)
    assert linked["val_volume_dice"] == pytest.approx(result.validation_dice)
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert "python_function" in info.flavors
    folder = registry.model_folder(f"models:/{model_id}")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in result.model_dir.iterdir())
    _, contract = load_model_dir(f"models:/{model_id}")
    assert contract.threshold == pytest.approx(result.threshold)
    # MLflow's own pyfunc loader (from code, no pickle) predicts P(WMH) from the example
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
    example = mlflow.models.Model.load(f"models:/{model_id}").load_input_example(
        mlflow.artifacts.download_artifacts(f"models:/{model_id}"))
    scores = np.asarray(pyfunc.predict(example))
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))

    run = client.get_run(result.run_id)
    contexts = {}
    for dataset_input in run.inputs.dataset_inputs:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        contexts[tags["mlflow.data.context"]] = dataset_input.dataset
    assert sorted(contexts) == ["test", "training", "validation"]
    splits = sampling.load_splits(samples)
    assert json.loads(contexts["validation"].profile) == {
        "subjects": len(splits["validation"])}
    assert len({d.digest for d in contexts.values()}) == 3
    assert contexts["training"].name == f"{prepared.name}-train"
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
    assert any(key.startswith("system/system_memory_usage") for key in run.data.metrics)


class Interrupted(Exception):
    pass


def test_killed_run_resumes_from_its_last_epoch(tmp_path, mlflow_tmp, tf_seeded, tiny_samples):
    import keras

    from wmh import train

    prepared, samples = tiny_samples
    cfg = tiny_config(tmp_path, epochs=2, **{"model.arch": "ss", "model.loc": "none"})

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            assert 0.0 <= logs["val_auc"] <= 1.0  # the tracker ran before this callback
            raise Interrupted()

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(epoch + 1)

    with pytest.raises(Interrupted):
        train.train(cfg, samples, prepared, callbacks=[KillAfterFirstEpoch()])
    state_files = list((tmp_path / "cache" / "runs").glob("*/state.json"))
    assert len(state_files) == 1
    assert json.loads(state_files[0].read_text())["epoch"] == 1
    first_run = json.loads(state_files[0].read_text())["run_id"]

    record = Record()
    result = train.train(cfg, samples, prepared, callbacks=[record])
    assert record.epochs == [2]
    assert result.run_id == first_run
    client = mlflow.tracking.MlflowClient()
    assert [m.step for m in client.get_metric_history(result.run_id, "val_auc")] == [1, 2]
    assert client.get_run(result.run_id).data.tags["resumed_from_epoch"] == "1"
    # the resumed run logged its datasets again: still one input per split
    assert len(client.get_run(result.run_id).inputs.dataset_inputs) == 3


def test_model_folder_errors(tmp_path):
    from wmh import train

    with pytest.raises(WMHError, match=r"--model .*nothing: missing model\.keras"):
        load_model_dir(tmp_path / "nothing")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.keras").write_bytes(b"not a zip")
    (tmp_path / "m" / "wmh_model.json").write_text("{}")
    with pytest.raises(WMHError, match=r"wmh_model\.json: not a valid wmh_model\.json"):
        load_model_dir(tmp_path / "m")
