"""The prior stage: location feature 8 from the training split's labels only (no test label
reaches a test feature), the model folder carrying that prior, keys following the split."""

import dataclasses
import json

import h5py
import mlflow
import numpy as np
import pytest

from cohorts import make_config, tiny_prepared_subject
from wmh import location, pipeline
from wmh.preprocess import PreparedSubject
from wmh import prior as prior_stage
from wmh.tracking import content_hash

SHAPE = (40, 40, 5)
MM_PER_VOXEL = 4.0  # the phantom's working grid maps onto MNI at 4 mm per voxel


def mni_of(voxel):
    return np.asarray(voxel, np.float64) * MM_PER_VOXEL - np.array([80.0, 80.0, 0.0])


def subject_with_mni(subject_id, seed, split=None, far_lesion=False):
    """The tiny phantom with MNI coordinates; ``far_lesion``: its only WMH is a blob at the
    front of the brain (``FAR_VOXEL``), about 40 mm from every periventricular lesion."""
    subject = tiny_prepared_subject(subject_id, SHAPE, seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    labels = subject.labels
    if far_lesion:
        labels = np.zeros_like(labels)
        labels[tuple(np.array(FAR_VOXEL)[:, None] + np.array([[0, 1, 0, 0, -1],
                                                              [0, 0, 1, -1, 0],
                                                              [0, 0, 0, 0, 0]]))] = 1
    return dataclasses.replace(subject, split=split, labels=labels,
                               mni_coordinates=mni_of(grid).astype(np.float32))


FAR_VOXEL = (19, 34, 2)  # in the brain, far from the ventricles where the phantom's WMH lie


def write_split_cohort(folder, lesion_trainers=3, splits=True, count=None):
    """Fixed splits: ``lesion_trainers`` training subjects with periventricular WMH (and
    the others of 3 without WMH), one validation subject, one test subject whose only lesion
    lies far from every training lesion. ``splits=False``: ``count`` subjects, no fixed
    split."""
    folder.mkdir(parents=True, exist_ok=True)
    if not splits:
        subjects = [subject_with_mni(f"s{i:02d}", i) for i in range(count)]
    else:
        subjects = [subject_with_mni(f"train{i}", i, "train") for i in range(3)]
        for index in range(lesion_trainers, 3):
            subjects[index] = dataclasses.replace(
                subjects[index], labels=np.zeros_like(subjects[index].labels))
        subjects += [subject_with_mni("valid0", 7, "validation"),
                     subject_with_mni("test0", 8, "test", far_lesion=True)]
    entries = []
    for subject in subjects:
        subject.save(folder / f"{subject.subject_id}.h5")
        entries.append({"subject_id": subject.subject_id, "file": f"{subject.subject_id}.h5",
                        "cache_key": subject.cache_key, "site": subject.site,
                        "split": subject.split})
    (folder / "manifest.json").write_text(json.dumps({"subjects": entries, "failed": {}}))
    return folder


def prior_config(tmp_path, prepared, **overrides):
    return make_config(tmp_path, {
        "data.root": str(prepared), "train.epochs": 1, "train.batch_size": 32,
        "train.learning_rate": 1e-3, "model.width": 0.15, "model.arch": "msws",
        "model.loc": "ffcl", "train.experiment": "prior-stage",
        "train.max_train_samples": 400, "train.max_validation_samples": 200}, overrides)


def test_the_prior_is_built_from_the_training_split_only(tmp_path):
    prepared = write_split_cohort(tmp_path / "prepared")
    config = prior_config(tmp_path, prepared)
    stage = pipeline.ensure_prior(config, prepared, prepared)
    assert stage.mode == "training" and not stage.warning
    assert stage.prior == stage.prepared / prior_stage.PRIOR_FILE
    far = mni_of(FAR_VOXEL)[None]

    # leak-free: no training subject has a lesion near the test subject's, so the prior is 0
    # there; the old prior over every labelled subject (test included) is not.
    split_prior = location.load_prior(stage.prior)
    assert split_prior.sample(far)[0] == 0.0
    every_subject = prior_stage.build_prior_from_files(sorted(prepared.glob("*.h5")))
    assert every_subject.sample(far)[0] > 0.01
    info = prior_stage.read_info(stage.prepared)
    assert info["train"] == ["train0", "train1", "train2"]
    assert (info["subjects"], info["lesion_subjects"]) == (3, 3)
    assert info["prior_sha256"] == content_hash(stage.prior)
    assert split_prior.sample(mni_of((12, 20, 2))[None])[0] > 0.05  # beside the ventricles

    # every subject's feature 8 is recomputed with that prior; the other features and the
    # volumes are the prepared file's (linked, not copied)
    for subject_id in ("train0", "valid0", "test0"):
        original = PreparedSubject.load(prepared / f"{subject_id}.h5")
        viewed = PreparedSubject.load(stage.prepared / f"{subject_id}.h5")
        expected = location.prior_feature(original.mni_coordinates, original.brain_mask,
                                          split_prior)
        np.testing.assert_array_equal(viewed.location[..., 7], expected)
        np.testing.assert_array_equal(viewed.location[..., :7], original.location[..., :7])
        np.testing.assert_array_equal(viewed.images, original.images)
        assert viewed.cache_key != original.cache_key
        assert viewed.provenance["prior_sha256"] == info["prior_sha256"]
    test = PreparedSubject.load(stage.prepared / "test0.h5")
    assert test.location[FAR_VOXEL + (7,)] == 0.0
    with h5py.File(stage.prepared / "test0.h5", "r") as file:
        assert file.get("images", getlink=True).__class__ is h5py.ExternalLink

    # a rerun reuses the stage
    again = pipeline.ensure_prior(config, prepared, prepared)
    assert again == stage
    assert (stage.prepared / "test0.h5").stat().st_mtime_ns == \
        (again.prepared / "test0.h5").stat().st_mtime_ns


def test_prior_stage_key_follows_the_split(tmp_path):
    prepared = write_split_cohort(tmp_path / "prepared", splits=False, count=8)
    base = {"sampling.validation_fraction": 0.125, "sampling.test_fraction": 0.25}
    folders = {}
    for seed in (0, 1, 0):
        config = prior_config(tmp_path, prepared, **base, **{"sampling.seed": seed})
        stage = pipeline.ensure_prior(config, prepared, prepared)
        train = prior_stage.read_info(stage.prepared)["train"]
        folders.setdefault(seed, (stage.prepared, train))
        assert folders[seed] == (stage.prepared, train)  # same split: same stage
    assert folders[0][1] != folders[1][1]  # the seeds split differently...
    assert folders[0][0] != folders[1][0]  # ...so the stage (and its prior) is another


def test_prior_smoothing_is_the_stages_and_leaves_prepared_keys_alone(tmp_path):
    """preprocess.prior_smoothing_mm: a broader prior reaches the far lesion's place (zero
    at 4 mm), in another stage folder; preparation's keys do not change with it."""
    from wmh.preprocess import config_hash

    prepared = write_split_cohort(tmp_path / "prepared")
    narrow = prior_config(tmp_path, prepared)
    broad = prior_config(tmp_path, prepared, **{"preprocess.prior_smoothing_mm": 12.0})
    assert config_hash(narrow.preprocess, False) == config_hash(broad.preprocess, False)
    stages = [pipeline.ensure_prior(config, prepared, prepared) for config in (narrow, broad)]
    assert stages[0].prepared != stages[1].prepared
    assert [prior_stage.read_info(stage.prepared)["smoothing_mm"] for stage in stages] == \
        [4.0, 12.0]
    far = mni_of(FAR_VOXEL)[None]
    priors = [location.load_prior(stage.prior) for stage in stages]
    assert priors[0].sample(far)[0] == 0.0 < priors[1].sample(far)[0]
    with pytest.raises(Exception, match="prior_smoothing_mm"):
        prior_config(tmp_path, prepared, **{"preprocess.prior_smoothing_mm": 0})


def test_other_prior_choices_skip_the_stage(tmp_path):
    prepared = write_split_cohort(tmp_path / "prepared")
    shipped = pipeline.ensure_prior(
        prior_config(tmp_path, prepared, **{"preprocess.prior": "shipped"}), prepared, prepared)
    assert shipped == pipeline.PriorStage(prepared, None, "shipped")
    path = pipeline.ensure_prior(prior_config(
        tmp_path, prepared, **{"preprocess.prior_path": str(location.default_prior_path())}),
        prepared, prepared)
    assert path == pipeline.PriorStage(prepared, None, "path")
    assert not (tmp_path / "cache" / "prior").exists()


def test_too_few_training_lesions_fall_back_to_the_shipped_prior(tmp_path, mlflow_tmp,
                                                                   capsys):
    prepared = write_split_cohort(tmp_path / "prepared", lesion_trainers=2)
    stage = pipeline.ensure_prior(prior_config(tmp_path, prepared), prepared, prepared)
    assert (stage.prepared, stage.prior, stage.mode) == (prepared, None, "shipped")
    assert "2 of 3 training subjects hold WMH" in stage.warning
    assert "shipped synthetic prior" in capsys.readouterr().err
    mlflow.set_experiment("fallback")
    with mlflow.start_run() as run:
        pass
    stages = pipeline.DataStages(prepared, False, prepared, tmp_path, stage.prior, stage.mode,
                                 stage.warning)
    pipeline.record_prior(run.info.run_id, stages)
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["prior"] == "shipped" and tags["prior_warning"] == stage.warning


def test_the_model_folder_carries_the_training_split_prior(tmp_path, mlflow_tmp, tf_seeded):
    from wmh.preprocess import plan as plans

    prepared = write_split_cohort(tmp_path / "prepared")
    config = prior_config(tmp_path, prepared)
    stages = pipeline.ensure_data(config)
    assert stages.prepared.parent == tmp_path / "cache" / "prior"
    result = pipeline.train_model(config, stages)
    sha = content_hash(stages.prior)
    plan = plans.read_plan(result.model_dir)
    assert plan["prior_sha256"] == sha
    assert content_hash(result.model_dir / plans.PRIOR_FILE) == sha
    assert plan["preprocess"]["prior"] == "training"
    # what `wmh segment` rebuilds from the plan keys a subject like the view's file
    rebuilt = plans.plan_config(plan, result.model_dir)
    assert location.load_prior(rebuilt.prior_path).probability.tobytes() == \
        location.load_prior(stages.prior).probability.tobytes()
    tags = mlflow.get_run(result.run_id).data.tags
    assert (tags["prior"], tags["prior_sha256"]) == ("training", sha)
    assert "prior_warning" not in tags


def test_missing_mni_coordinates_are_named(tmp_path):
    prepared = write_split_cohort(tmp_path / "prepared")
    with h5py.File(prepared / "valid0.h5", "a") as file:
        del file["mni_coordinates"]
    with pytest.raises(Exception, match=r"valid0\.h5: no MNI coordinates"):
        pipeline.ensure_prior(prior_config(tmp_path, prepared), prepared, prepared)
    assert not list((tmp_path / "cache" / "prior").iterdir())  # nothing half-written
