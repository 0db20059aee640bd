"""Fine-tuning (train.init_model): starts from the source's weights, checks compatibility,
prepares data with the source's plan, and records the source everywhere."""

import json

import keras
import mlflow
import numpy as np
import pytest

from cohorts import make_config, write_prepared_cohort
from segment_helpers import save_tiny_model
from wmh import finetune, lifecycle
from wmh.errors import WMHError
from wmh.loader import load_model_dir


def tiny_config(root, **overrides):
    """Matches save_tiny_model's network: MSWS + FFCL, width 0.1, FLAIR + T1."""
    return make_config(root, {
        "train.epochs": 1, "train.batch_size": 32, "train.learning_rate": 1e-3,
        "train.max_train_samples": 256, "model.width": 0.1, "model.arch": "msws",
        "model.loc": "ffcl", "sampling.validation_fraction": 0.25,
        "sampling.test_fraction": 0.125, "train.experiment": "tiny"}, overrides)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A prepared cohort, its samples, and a source model whose plan matches them."""
    from wmh import sampling
    from wmh.preprocess.plan import training_files, write_plan

    root = tmp_path_factory.mktemp("finetune")
    prepared = write_prepared_cohort(root / "prepared", n_subjects=8)
    config = tiny_config(root)
    samples = sampling.build_samples(prepared, root / "samples", config.sampling)
    source = save_tiny_model(root / "source")
    # weights no seeded initialisation gives (save_tiny_model builds with seed 0, as
    # training does): a fine-tune starts from these, a from-scratch run never
    from wmh import train

    model, contract = load_model_dir(source)
    generator = np.random.default_rng(7)
    model.set_weights([w + generator.normal(0, 0.01, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    train.save_model_dir(model, contract, source)
    write_plan(source, config.preprocess, True, training_files(samples, prepared))
    return prepared, samples, source


class StartingWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [w.copy() for w in self.model.get_weights()]


def test_fine_tune_starts_from_the_source_weights_and_records_it(tmp_path, mlflow_tmp,
                                                                tf_seeded, tiny_data):
    from wmh import train
    from wmh.io import sha256_file

    prepared, samples, source = tiny_data
    config = tiny_config(tmp_path, **{"train.init_model": str(source)})
    start = StartingWeights()
    result = train.train(config, samples, prepared, callbacks=[start])
    expected = load_model_dir(source)[0].get_weights()
    assert len(start.weights) == len(expected)
    for ours, theirs in zip(start.weights, expected):
        assert (ours == theirs).all()

    _, contract = load_model_dir(result.model_dir)
    digest = sha256_file(source / "model.keras")
    assert contract.init_model == str(source) and contract.init_model_sha256 == digest
    params = mlflow.get_run(result.run_id).data.params
    assert params["train.init_model"] == str(source)
    assert params["train.init_model_sha256"] == digest
    # a fine-tune never resumes (or is) the from-scratch run of the same config
    scratch = tiny_config(tmp_path)
    assert lifecycle.run_key(config, "d") != lifecycle.run_key(scratch, "d")
    assert json.loads((result.model_dir / "wmh_model.json").read_text())["init_model"]


def test_from_scratch_does_not_start_from_the_source(tmp_path, mlflow_tmp, tf_seeded,
                                                     tiny_data):
    from wmh import train

    prepared, samples, source = tiny_data
    start = StartingWeights()
    result = train.train(tiny_config(tmp_path), samples, prepared, callbacks=[start])
    expected = load_model_dir(source)[0].get_weights()
    assert any(not (ours == theirs).all() for ours, theirs in zip(start.weights, expected))
    assert load_model_dir(result.model_dir)[1].init_model == ""


@pytest.mark.parametrize("override, message", [
    ({"model.width": 0.15}, r"model\.width is 0\.1 in that model but 0\.15 in this config"),
    ({"model.arch": "msiw"}, r"model\.arch is msws in that model but msiw in this config"),
    ({"model.loc": "none"}, r"model\.loc is ffcl in that model but none in this config"),
    ({"data.use_t1": False}, r"data\.use_t1 \(channels\) is FLAIR\+T1 in that model but "
                             r"FLAIR in this config"),
    ({"preprocess.n4_iterations": 3}, r"the config's preprocess differs from that "
                                      r"model's plan\.json"),
])
def test_incompatible_source_is_one_line_before_training(tmp_path, tiny_data, override,
                                                         message):
    from wmh import train

    prepared, samples, source = tiny_data
    config = tiny_config(tmp_path, **{"train.init_model": str(source), **override})
    with pytest.raises(WMHError, match=rf"^train\.init_model .*source: {message}"):
        train.train(config, samples, prepared)
    assert not (tmp_path / "cache" / "runs").exists()


def test_missing_source_and_plan_adoption(tmp_path, tiny_data, capsys):
    _, _, source = tiny_data
    config = tiny_config(tmp_path, **{"train.init_model": str(tmp_path / "none")})
    with pytest.raises(WMHError, match=r"^train\.init_model .*none: missing model\.keras"):
        finetune.init_source(config)
    # wmh train adopts the source's preprocessing (keeping workers) and says so
    config = tiny_config(tmp_path, **{"train.init_model": str(source),
                                      "preprocess.n4_iterations": 3,
                                      "preprocess.workers": 2})
    said = []
    adopted = finetune.with_source_preprocess(config, say=said.append)
    assert adopted.preprocess.n4_iterations == 30 and adopted.preprocess.workers == 2
    assert said and "preparing the data with that model's preprocessing plan" in said[0]
    finetune.check_init_source(adopted, finetune.init_source(adopted, check=False))
    assert finetune.with_source_preprocess(tiny_config(tmp_path)) == tiny_config(tmp_path)


def test_init_model_pretrained_names_the_shipped_model(tmp_path, tiny_data, monkeypatch):
    from wmh import pretrained
    from wmh.pretrained import export

    _, _, source = tiny_data
    monkeypatch.setattr(pretrained, "package_root", lambda: tmp_path)
    config = tiny_config(tmp_path, **{"train.init_model": "pretrained"})
    with pytest.raises(WMHError, match=r"^train\.init_model pretrained: no model is shipped"):
        finetune.init_source(config)
    shipped = export.export(source, "flair", root=tmp_path)
    found = finetune.init_source(config)
    assert found.folder == shipped and found.sha256 == pretrained.find().weights_sha256
