"""The one training lifecycle (``wmh.lifecycle``): both architectures implement its
``Learner`` protocol with values, and the lifecycle itself (run key and folder, the
validation of a learner fitted once, resume, reuse) holds for any learner."""

import json
import math

import mlflow
import numpy as np
import pytest

from cohorts import make_config, write_prepared_cohort
from wmh import lifecycle
from wmh.contract import CONTRACT_FILE, ModelContract, read_model_folder
from wmh.lifecycle import Fitted, Learner, RunContext, RunOptions

SETTINGS = {"sampling.validation_fraction": 0.25, "sampling.test_fraction": 0.125,
            "train.precision": "fp32", "train.experiment": "lifecycle"}
ARCHS = {"rf": {"model.arch": "rf", "baseline.n_trees": 8, "baseline.n_jobs": 1},
         "msws": {"model.arch": "msws", "model.loc": "ffcl", "model.width": 0.15,
                  "train.epochs": 2, "train.batch_size": 32, "train.learning_rate": 1e-3}}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny prepared cohort (8 subjects: 5 train, 2 validation, 1 test) and its samples."""
    from wmh import sampling

    root = tmp_path_factory.mktemp("lifecycle")
    prepared = write_prepared_cohort(root / "prepared", n_subjects=8)
    samples = sampling.build_samples(prepared, root / "samples",
                                     make_config(root, SETTINGS).sampling)
    return prepared, samples


# the CNN case is slow (test_train trains a CNN through the lifecycle in the default suite)
@pytest.mark.parametrize("arch", ["rf", pytest.param("msws", marks=pytest.mark.slow)])
def test_each_architecture_fits_saves_loads_and_predicts_through_the_protocol(
        arch, cohort, tmp_path, mlflow_tmp, request):
    from wmh import baseline, data, loader, train
    from wmh.preprocess import PreparedSubject

    if arch != "rf":
        request.getfixturevalue("tf_seeded")
    prepared, samples = cohort
    config = make_config(tmp_path, {**SETTINGS, **ARCHS[arch]})
    learner = loader.learner(config)
    assert type(learner) is {"rf": baseline.ForestLearner, "msws": train.CNNLearner}[arch]
    assert isinstance(learner, Learner) and learner.model is None
    assert learner.name == {"rf": "rf", "msws": "msws+ffcl"}[arch]
    channels = tuple(data.sample_channels(samples, True))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mlflow.set_experiment("protocol")
    with mlflow.start_run():
        fitted = learner.fit(RunContext(config, samples, prepared, run_dir, channels,
                                        {"run_id": "r"}, True))
    assert fitted.best_epoch >= 1
    if arch == "rf":  # fitted once: the lifecycle reads its sample AUC from the volumes
        assert fitted.validation_auc is None and fitted.metrics["train_samples"] > 100
        assert learner.contract_fields() == {"patch": baseline.describe_features(True)}
        assert list(fitted.example.columns) == baseline.feature_names(True)
    else:  # per-epoch validation AUC, checkpoints in the run folder
        assert 0.5 < fitted.validation_auc <= 1.0 and fitted.metrics == {}
        assert learner.contract_fields() == {"precision": "fp32", "init_model": "",
                                             "init_model_sha256": ""}
        state = json.loads((run_dir / lifecycle.STATE_FILE).read_text())
        assert state["epoch"] == 2 and state["run_id"] == "r"
        assert set(fitted.example) == {"s1", "s2", "s3", "loc"}

    subject = PreparedSubject.load(prepared / "t07.h5")
    in_memory = learner.predict_volume(subject)
    assert in_memory.shape == subject.shape and in_memory.dtype == np.float32
    assert np.all(in_memory[~subject.brain_mask] == 0)
    lesion = in_memory[subject.labels == 1].mean()
    assert lesion > in_memory[subject.brain_mask & (subject.labels == 0)].mean() + 0.2

    contract = ModelContract(model=config.model, channels=channels, inplane_spacing_mm=1.0,
                             threshold=0.25, **learner.contract_fields())
    folder = learner.save(tmp_path / "model", contract)
    assert learner.contract == contract
    loaded = type(learner).load(folder)
    assert isinstance(loaded, Learner) and loaded.config is None
    assert loaded.contract == contract and loaded.name == learner.name
    if arch == "rf":
        np.testing.assert_array_equal(loaded.predict_volume(subject), in_memory)
    else:
        np.testing.assert_allclose(loaded.predict_volume(subject), in_memory, atol=1e-6)
    # what the loader of any model folder gives is the learner's model
    model, read = loader.load_model_dir(folder)
    assert read == contract and type(model) is type(loaded.model)


# ------------------------------------------------- the lifecycle with a learner of its own

class FlairModel:
    """P(WMH) = the FLAIR intensity (the first feature column)."""

    def predict_features(self, features):
        return np.asarray(features, np.float32)[:, 0]


class FlairLearner:
    """A learner with nothing to learn (P(WMH) = FLAIR inside the brain), to run the
    lifecycle alone; ``crash`` raises inside ``fit`` after recording progress."""

    name = "flair"
    weights = "flair.json"

    def __init__(self, config, checkpoints=False, crash=False):
        self.config, self.checkpoints, self.crash = config, checkpoints, crash
        self.model = self.contract = None
        self.runs = []

    @classmethod
    def load(cls, folder):
        learner = cls(None)
        learner.model = FlairModel()
        learner.contract = read_model_folder(folder, cls.weights, "by the test")
        return learner

    def fit(self, run):
        self.runs.append((run.new, dict(run.state)))
        run.state["fits"] = run.state.get("fits", 0) + 1
        if self.checkpoints:
            (run.run_dir / lifecycle.STATE_FILE).write_text(json.dumps(run.state))
        if self.crash:
            raise RuntimeError("killed")
        self.model = FlairModel()
        return Fitted(best_epoch=1, validation_auc=None,
                      example=np.array([[0.2], [0.9]], np.float32), metrics={"fits": 1.0})

    def predict_volume(self, prepared):
        return (prepared.images[..., 0] * prepared.brain_mask).astype(np.float32)

    def contract_fields(self):
        return {"patch": "FLAIR intensity"}

    def save(self, folder, contract):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.weights).write_text("{}")
        (folder / CONTRACT_FILE).write_text(contract.to_json())
        self.contract = contract
        return folder


def flair_config(root):
    return make_config(root, {**SETTINGS, "model.arch": "rf", "train.calibration": "none"})


def test_a_learner_fitted_once_is_validated_keyed_and_published_by_the_lifecycle(
        cohort, tmp_path, mlflow_tmp):
    from wmh import data, registry, sampling
    from wmh.evaluation import metrics
    from wmh.preprocess import PreparedSubject
    from wmh.threshold import sample_loss

    prepared, samples = cohort
    learner = FlairLearner(flair_config(tmp_path))
    assert isinstance(learner, Learner)
    result = lifecycle.train_run(learner, samples, prepared,
                                 RunOptions(data_label="synthetic", reuse_finished=True))
    # the sample AUC and loss are read from the validation volumes at the samples
    index = sampling.load_index(samples, "validation")
    scores = np.array([PreparedSubject.load(prepared / f"{index.subject_ids[s]}.h5")
                       .images[r, c, z, 0] for s, r, c, z in
                       zip(index.subject, index.row, index.col, index.slice)])
    assert result.validation_auc == pytest.approx(metrics.roc_auc(scores, index.label))
    assert result.best_epoch == 1 and learner.runs == [(True, {"run_id": result.run_id})]
    run = mlflow.get_run(result.run_id)
    key = lifecycle.run_key(learner.config, data.dataset_hash(samples))
    assert run.info.run_name == "flair" and run.data.tags["run_key"] == key
    assert run.data.tags["data_label"] == "synthetic" and run.data.tags["channels"] == \
        "FLAIR,T1"
    assert run.data.metrics["val_loss"] == pytest.approx(sample_loss(scores, index.label))
    assert run.data.metrics["validation_seconds"] > 0 and run.data.metrics["fits"] == 1
    assert run.data.metrics["threshold"] == pytest.approx(result.threshold)
    assert result.model_dir == tmp_path / "cache" / "runs" / key / "model"
    assert sorted(path.name for path in result.model_dir.iterdir()) == [
        "flair.json", "plan.json", "prior.nii.gz", "wmh_model.json"]
    contract = read_model_folder(result.model_dir, "flair.json", "by the test")
    assert contract.patch == "FLAIR intensity" and contract.threshold == result.threshold
    assert contract.calibrator().method == "none" and contract.channels == ("FLAIR", "T1")
    assert 0 < result.threshold < 1 and result.validation_dice > 0.3
    logged = mlflow.MlflowClient().get_logged_model(registry.run_model_id(result.run_id))
    assert {m.key for m in logged.metrics} >= {"threshold", "validation_seconds", "fits"}
    # no checkpoints: no state file, and a finished run is never reused
    assert not (result.model_dir.parent / lifecycle.STATE_FILE).exists()
    learner.crash = True  # stops the second run inside fit: it is a new one
    with pytest.raises(RuntimeError, match="killed"):
        lifecycle.train_run(learner, samples, prepared, RunOptions(reuse_finished=True))
    assert learner.runs[1][0] and learner.runs[1][1]["run_id"] != result.run_id


def test_a_checkpointing_learner_resumes_its_run_and_a_finished_run_is_reused(
        cohort, tmp_path, mlflow_tmp):
    prepared, samples = cohort
    config = flair_config(tmp_path)
    crashing = FlairLearner(config, checkpoints=True, crash=True)
    with pytest.raises(RuntimeError, match="killed"):
        lifecycle.train_run(crashing, samples, prepared)
    (new, state), = crashing.runs
    assert new and set(state) == {"run_id"}
    run_id = state["run_id"]
    assert mlflow.get_run(run_id).info.status == "FAILED"

    learner = FlairLearner(config, checkpoints=True)
    result = lifecycle.train_run(learner, samples, prepared, RunOptions(run_name="ignored"))
    assert learner.runs == [(False, {"run_id": run_id, "fits": 1})]  # resumed, progress kept
    assert result.run_id == run_id and mlflow.get_run(run_id).info.status == "FINISHED"
    assert mlflow.get_run(run_id).info.run_name == "flair"  # the resumed run keeps its name
    state = json.loads((result.model_dir.parent / lifecycle.STATE_FILE).read_text())
    assert state["finished"] and state["fits"] == 2
    assert state["result"]["threshold"] == result.threshold

    reused = lifecycle.train_run(learner, samples, prepared, RunOptions(reuse_finished=True))
    assert reused == result and len(learner.runs) == 1  # not fitted again
    with pytest.raises(RuntimeError, match="killed"):  # without reuse: a new run
        lifecycle.train_run(crashing, samples, prepared)
    assert crashing.runs[1][0] and crashing.runs[1][1]["run_id"] != run_id
    assert math.isfinite(result.validation_auc)
