"""Training edge cases: a NaN validation AUC, no validation subject, one validation subject."""

import math

import numpy as np
import pytest

from cohorts import write_prepared_cohort
from test_train import tiny_config
from wmh.errors import WMHError


def edge_config(tmp_path, **overrides):
    """test_train's tiny config with one validation subject of 8 and a plain network."""
    return tiny_config(tmp_path, epochs=2, **{
        "model.arch": "ss", "model.loc": "none", "sampling.validation_fraction": 0.1,
        "train.experiment": "edges", **overrides})


@pytest.fixture(scope="module")
def one_validation_subject(tmp_path_factory):
    from wmh import sampling

    root = tmp_path_factory.mktemp("edges")
    prepared = write_prepared_cohort(root / "prepared", n_subjects=8)
    samples = sampling.build_samples(prepared, root / "samples", edge_config(root).sampling)
    return prepared, samples


def test_better_epoch_rule_skips_nan_but_keeps_a_model():
    from wmh.train import finite_auc, is_better_epoch

    state = {"best_auc": -1.0}
    assert is_better_epoch(math.nan, state)  # no finite AUC yet: keep this epoch
    assert is_better_epoch(0.4, state)
    state["best_auc"] = 0.7
    assert not is_better_epoch(math.nan, state)
    assert not is_better_epoch(math.inf * 0, state)
    assert not is_better_epoch(0.6, state) and is_better_epoch(0.8, state)
    assert math.isnan(finite_auc(-1.0)) and finite_auc(0.7) == 0.7


def test_nan_validation_auc_still_writes_best_keras(tmp_path, mlflow_tmp, tf_seeded,
                                                    one_validation_subject, monkeypatch):
    from wmh import sampling, train
    from wmh.evaluation import metrics

    prepared, samples = one_validation_subject
    assert len(sampling.load_splits(samples)["validation"]) == 1
    monkeypatch.setattr(metrics, "roc_auc", lambda scores, labels: math.nan)
    result = train.train(edge_config(tmp_path), samples, prepared)
    assert result.best_epoch == 2  # no finite AUC: the last epoch is kept
    assert math.isnan(result.validation_auc)
    assert (result.model_dir / "model.keras").is_file()
    assert 0.0 < result.threshold < 1.0


def test_single_validation_subject_chooses_a_threshold(tmp_path, mlflow_tmp, tf_seeded,
                                                       one_validation_subject):
    from wmh import train

    prepared, samples = one_validation_subject
    result = train.train(edge_config(tmp_path, **{"train.epochs": 1}), samples, prepared)
    assert 0.0 < result.threshold < 1.0
    assert 0.0 < result.validation_dice <= 1.0
    assert np.isfinite(result.validation_auc)
    # every model folder carries its preprocessing plan (training split only)
    import json

    from wmh import sampling
    plan = json.loads((result.model_dir / "plan.json").read_text())
    assert plan["training"]["subjects"] == len(sampling.load_splits(samples)["train"])
    assert plan["use_t1"] is True and (result.model_dir / "prior.nii.gz").is_file()


def test_validation_fraction_zero_is_a_one_line_error():
    from wmh.config import SamplingConfig
    from wmh.splits import make_splits
    from test_sampling import records

    with pytest.raises(WMHError, match=r"^option sampling\.validation_fraction: 0\.0 leaves "
                                       r"no validation subject[^\n]*$"):
        make_splits(records(), SamplingConfig(validation_fraction=0.0))
    fixed = make_splits(records(fixed={"sub-01": "validation"}),
                        SamplingConfig(validation_fraction=0.0))
    assert fixed["validation"] == ["sub-01"]
