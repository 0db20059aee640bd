"""The preprocessing plan in every model folder, and `wmh segment` following it."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from cohorts import write_prepared_cohort
from segment_helpers import tiny_model, write_subject  # noqa: F401
from wmh.config import PreprocessConfig, to_dict
from wmh.errors import WMHError
from wmh.preprocess import plan as plans


def test_plan_holds_config_prior_code_geometry_and_channel_statistics(tmp_path):
    from wmh import location
    from wmh.preprocess import PreparedSubject, code_version, config_hash
    from wmh.tracking import content_hash

    prepared = write_prepared_cohort(tmp_path / "prepared", n_subjects=3)
    files = sorted(prepared.glob("*.h5"))
    config = PreprocessConfig(inplane_spacing_mm=1.0, normalise_percentiles=(1.0, 98.0))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    plan = plans.write_plan(model_dir, config, True, files)
    assert json.loads((model_dir / plans.PLAN_FILE).read_text()) == plan
    expected = to_dict(config)
    expected["prior_path"] = plans.PRIOR_FILE
    assert plan["preprocess"] == json.loads(json.dumps(expected))
    assert plan["prior_sha256"] == content_hash(location.default_prior_path())
    assert content_hash(model_dir / plans.PRIOR_FILE) == plan["prior_sha256"]
    assert plan["code_version"] == code_version()
    assert plan["config_hash"] == config_hash(config, True)
    assert plan["training"] == {"subjects": 3, "inplane_spacing_mm": [1.0, 1.0],
                                "slice_thickness_mm": [1.0, 1.0]}
    subjects = [PreparedSubject.load(path) for path in files]
    flair = np.concatenate([s.images[..., 0][s.brain_mask] for s in subjects])
    assert plan["channels"]["FLAIR"]["mean"] == pytest.approx(flair.mean(), rel=1e-5)
    assert plan["channels"]["FLAIR"]["p99"] == pytest.approx(np.percentile(flair, 99), rel=1e-5)
    assert set(plan["channels"]) == {"FLAIR", "T1"}

    # the config rebuilt from the folder: the prior is the copy, and it keys the same
    rebuilt = plans.plan_config(plans.read_plan(model_dir), model_dir)
    assert rebuilt == dataclasses.replace(config, prior_path=str(model_dir / plans.PRIOR_FILE))
    assert config_hash(rebuilt, True) == plan["config_hash"]
    (model_dir / plans.PRIOR_FILE).unlink()
    with pytest.raises(WMHError, match=r"prior\.nii\.gz: the model's WMH prior is missing"):
        plans.plan_config(plan, model_dir)
    (model_dir / plans.PLAN_FILE).write_text("{not json")
    with pytest.raises(WMHError, match=r"plan\.json: not a preprocessing plan"):
        plans.read_plan(model_dir)
    assert plans.read_plan(tmp_path) is None


def test_geometry_outside_the_training_range_warns():
    plan = {"training": {"inplane_spacing_mm": [0.9, 1.0], "slice_thickness_mm": [3.0, 8.0]}}
    thin = np.diag([1.0, 1.0, 1.0, 1.0])
    assert plans.geometry_warnings(plan, (1.0, 1.0, 1.0), thin) == [
        "slice thickness 1 mm outside the model's training range 3-8 mm"]
    assert plans.geometry_warnings(plan, (1.0, 1.0, 5.0), np.diag([0.95, 0.95, 5.0, 1])) == []
    assert plans.geometry_warnings(plan, (1.0, 1.0, 5.0), np.diag([0.4, 0.4, 5.0, 1])) == [
        "in-plane spacing 0.4 mm outside the model's training range 0.9-1 mm"]
    assert plans.geometry_warnings(None, (1.0, 1.0, 1.0), thin) == []


def test_segment_rebuilds_the_plans_preprocessing(tmp_path, tiny_model, monkeypatch):
    from wmh import io, preprocess
    from wmh.segment import SegmentOptions, segment

    cohort, prepared_dir = tmp_path / "cohort", tmp_path / "prepared"
    write_subject(cohort, prepared_dir, "a1")
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    config = PreprocessConfig(normalise_percentiles=(2.0, 97.0), n4_iterations=7)
    plans.write_plan(model_dir, config, True, [prepared_dir / "a1.h5"])
    plan = plans.read_plan(model_dir)
    plan["training"]["slice_thickness_mm"] = [3.0, 8.0]  # the tiny scan has 1 mm slices
    (model_dir / plans.PLAN_FILE).write_text(json.dumps(plan))

    seen = []

    def prepare(subject, used, use_t1=True):
        seen.append(used)
        return preprocess.PreparedSubject.load(prepared_dir / f"{subject.subject_id}.h5")

    monkeypatch.setattr(preprocess, "prepare_subject", prepare)
    subjects = io.discover(cohort)
    rows = segment(model_dir, subjects, tmp_path / "out", SegmentOptions(),
                   prepared_dir=prepared_dir, progress=False)
    # the cached file was not made with the plan (its key differs): prepared again, by it
    assert [row["status"] for row in rows] == ["ok"]
    assert seen == [plans.plan_config(plan, model_dir)]
    report = json.loads((tmp_path / "out" / "a1" / "report.json").read_text())
    assert "slice thickness 1 mm outside the model's training range 3-8 mm" in report["warnings"]

    # a prepared file whose key is the plan's is reused as it is
    subject = preprocess.PreparedSubject.load(prepared_dir / "a1.h5")
    subject.cache_key = preprocess.cache_key(subjects[0], plans.plan_config(plan, model_dir),
                                             True)
    subject.save(prepared_dir / "a1.h5")
    seen.clear()
    segment(model_dir, subjects, tmp_path / "out2", SegmentOptions(),
            prepared_dir=prepared_dir, progress=False)
    assert seen == []
