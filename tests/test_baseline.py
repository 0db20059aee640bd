"""The random-forest baseline: hand-checked feature values, training, model folder, MLflow."""

import pickle

import mlflow
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from cohorts import make_config, tiny_prepared_subject, write_prepared_cohort
from wmh import baseline
from wmh.errors import WMHError
from wmh.loader import load_model_dir

ISOTROPIC = (1.0, 1.0, 6.0)  # 1 mm in-plane, thick slices: filters are 2D anyway


def grid(shape=(64, 64)):
    x, y = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return x - shape[0] // 2, y - shape[1] // 2


def maps_of(flair_slice, spacing=ISOTROPIC, slices=3):
    """Feature maps of a FLAIR-only volume made of ``slices`` copies of a 2D image."""
    flair = np.repeat(np.asarray(flair_slice, np.float32)[..., None], slices, axis=2)
    images = flair[..., None]
    location = np.zeros(flair.shape + (8,), np.float32)
    names = baseline.feature_names(use_t1=False)
    return dict(zip(names, baseline.feature_maps(images, location, spacing, use_t1=False)))


def at_centre(volume):
    return float(volume[volume.shape[0] // 2, volume.shape[1] // 2, 1])


# ------------------------------------------------------------------------ feature values

def test_feature_names_count_22_with_t1_and_21_without():
    with_t1, flair_only = baseline.feature_names(True), baseline.feature_names(False)
    assert len(with_t1) == 22 and len(flair_only) == 21
    assert with_t1[:2] == ["flair", "t1"] and "t1" not in flair_only
    assert with_t1[-8:] == flair_only[-8:] and with_t1[-1] == "wmh_prior"
    subject = tiny_prepared_subject("s", shape=(24, 20, 3))
    assert baseline.compute_features(subject, use_t1=True).shape == (24, 20, 3, 22)
    features = baseline.compute_features(subject, use_t1=False)
    assert features.shape == (24, 20, 3, 21) and features.dtype == np.float32
    np.testing.assert_array_equal(features[..., 0], subject.images[..., 0])
    np.testing.assert_array_equal(features[..., -8:], subject.location)
    flair_only_subject = tiny_prepared_subject("f", shape=(24, 20, 3), with_t1=False)
    with pytest.raises(WMHError, match="needs FLAIR and T1"):
        baseline.compute_features(flair_only_subject, use_t1=True)


@pytest.mark.parametrize("sigma", [0.2, 1.0, 2.5, 4.0])
def test_gaussian_kernels_have_exact_moments_and_match_scipy(sigma):
    smoothing, first, second = baseline.gaussian_kernels(sigma)
    offsets = np.arange(len(smoothing)) - len(smoothing) // 2
    assert smoothing.sum() == pytest.approx(1.0)
    assert np.sum(first * offsets) == pytest.approx(1.0)
    assert np.sum(first) == pytest.approx(0.0, abs=1e-12)
    assert np.sum(second) == pytest.approx(0.0, abs=1e-12)
    assert np.sum(second * offsets ** 2) == pytest.approx(2.0)
    if sigma >= 1:  # away from the finite-difference limit: close to scipy's kernels
        signal = np.random.default_rng(0).random(200)
        for order, kernel in ((1, first), (2, second)):
            ours = ndimage.correlate1d(signal, kernel)[50:150]
            scipy_result = ndimage.gaussian_filter1d(signal, sigma, order=order)[50:150]
            np.testing.assert_allclose(ours, scipy_result, atol=0.02 * np.abs(
                scipy_result).max())


def test_log_and_doh_of_a_gaussian_blob_match_the_closed_form():
    # f = exp(-r^2 / 2 b^2) smoothed at s: s^2 L_xx = s^2 L_yy = -b^2 s^2 / (b^2 + s^2)^2
    # at the centre, so LoG = 2 x that (extremal at s = b) and DoH = its square.
    x, y = grid()
    blob_sigma = 2.0
    maps = maps_of(np.exp(-(x ** 2 + y ** 2) / (2 * blob_sigma ** 2)))
    for scale in (1, 2, 4):
        eigenvalue = -blob_sigma ** 2 * scale ** 2 / (blob_sigma ** 2 + scale ** 2) ** 2
        assert at_centre(maps[f"log_{scale}mm"]) == pytest.approx(2 * eigenvalue, abs=2e-3)
        assert at_centre(maps[f"doh_{scale}mm"]) == pytest.approx(eigenvalue ** 2, abs=2e-3)
        log = maps[f"log_{scale}mm"][..., 1]
        assert np.unravel_index(np.argmin(log), log.shape) == (32, 32)  # most negative there
    assert at_centre(maps["log_2mm"]) < min(at_centre(maps["log_1mm"]),
                                            at_centre(maps["log_4mm"]))


def test_doh_is_negative_on_a_saddle():
    x, y = grid()
    maps = maps_of(0.5 + 0.001 * (x ** 2 - y ** 2))  # L_xx = 0.002, L_yy = -0.002, L_xy = 0
    for scale in (1, 2, 4):
        assert at_centre(maps[f"doh_{scale}mm"]) == pytest.approx(
            -(0.002 * scale ** 2) ** 2, rel=1e-4)
        assert at_centre(maps[f"log_{scale}mm"]) == pytest.approx(0.0, abs=1e-6)


def test_vesselness_is_high_on_a_bright_tube_and_low_on_blobs_planes_and_dark_tubes():
    x, y = grid()
    tube = 0.2 + 0.4 * np.exp(-x ** 2 / 2.0)  # a 1 mm tube lying in the slice along y
    blob = 0.2 + 0.4 * np.exp(-(x ** 2 + y ** 2) / 2.0)
    plane = np.where(np.abs(x) < 20, 0.6, 0.2)  # a thick bright slab: flat at its centre
    dark_tube = 0.6 - 0.4 * np.exp(-x ** 2 / 2.0)
    assert at_centre(maps_of(tube)["vesselness_1mm"]) > 0.9
    assert at_centre(maps_of(blob)["vesselness_1mm"]) < 0.15  # exp(-2) for a round blob
    assert at_centre(maps_of(plane)["vesselness_1mm"]) < 1e-3
    assert at_centre(maps_of(dark_tube)["vesselness_1mm"]) == 0.0
    assert baseline.vesselness(*[np.zeros(3, np.float32)] * 3).tolist() == [0.0, 0.0, 0.0]


def test_annular_filter_responds_to_a_disk_positively_and_to_a_ring_negatively():
    x, y = grid()
    radius = np.hypot(x, y)
    disk = np.where(radius <= 2, 0.9, 0.3)
    ring = np.where((radius > 2) & (radius <= 4), 0.9, 0.3)
    assert at_centre(maps_of(disk)["annular_2mm"]) == pytest.approx(0.6, abs=1e-5)
    assert at_centre(maps_of(ring)["annular_2mm"]) == pytest.approx(-0.6, abs=1e-5)
    assert at_centre(maps_of(np.full(x.shape, 0.3))["annular_4mm"]) == pytest.approx(
        0.0, abs=1e-5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 6.0), (0.5, 1.0, 3.0)])
def test_annular_filter_equals_a_direct_disk_minus_ring_mean(spacing):
    image = np.random.default_rng(1).random((30, 36)).astype(np.float32)
    maps = maps_of(image, spacing)
    for t in (1, 2, 4):
        disk, ring = [], []
        for dx in range(-17, 18):
            for dy in range(-17, 18):
                r = np.hypot(dx * spacing[0], dy * spacing[1])
                value = image[15 + dx, 18 + dy] if 0 <= 15 + dx < 30 and 0 <= 18 + dy < 36 \
                    else 0.0
                if r <= t:
                    disk.append(value)
                elif r <= 2 * t:
                    ring.append(value)
        expected = np.mean(disk) - np.mean(ring)
        assert maps[f"annular_{t}mm"][15, 18, 1] == pytest.approx(expected, abs=1e-5)


def test_mean_and_std_in_the_16mm_window_equal_a_direct_computation():
    image = np.random.default_rng(2).random((40, 44)).astype(np.float32)
    maps = maps_of(image)
    window = image[20 - 8:20 + 8, 25 - 8:25 + 8]
    assert maps["flair_mean_16mm"][20, 25, 1] == pytest.approx(window.mean(), abs=1e-6)
    assert maps["flair_std_16mm"][20, 25, 1] == pytest.approx(window.std(), abs=1e-5)
    padded = np.zeros((16, 16), np.float32)  # near the edge, outside the volume counts as 0
    padded[5:, 6:] = image[:11, :10]
    assert maps["flair_mean_16mm"][3, 2, 1] == pytest.approx(padded.mean(), abs=1e-6)
    # 2 x 0.5 mm voxels: the 16 mm window is 8 x 32 voxels
    wide = maps_of(image, (2.0, 0.5, 6.0))
    assert wide["flair_mean_16mm"][20, 22, 1] == pytest.approx(
        image[16:24, 6:38].mean(), abs=1e-6)


def test_anisotropic_spacing_sets_sigma_per_axis_in_mm():
    image = np.random.default_rng(3).random((48, 48)).astype(np.float32)
    volume = np.repeat(image[..., None], 3, axis=2)
    maps = maps_of(image, (2.0, 1.0, 6.0))
    # sigma 2 mm = 1 voxel along x (2 mm voxels) and 2 voxels along y; scale-normalised
    smooth_x, _, second_x = baseline.gaussian_kernels(1.0)
    smooth_y, _, second_y = baseline.gaussian_kernels(2.0)

    def separable(kernel_x, kernel_y):
        along_x = ndimage.correlate1d(volume, kernel_x, axis=0, mode="constant")
        return ndimage.correlate1d(along_x, kernel_y, axis=1, mode="constant")

    expected = separable(second_x, smooth_y) * 1 + separable(smooth_x, second_y) * 4
    np.testing.assert_allclose(maps["log_2mm"], expected, atol=1e-5)
    # the same physical blob on a 1 x 1 mm and a 2 x 1 mm grid gives the same response
    x1, y1 = grid((64, 64))
    fine = maps_of(np.exp(-(x1 ** 2 + y1 ** 2) / 8.0))
    coarse = maps_of(np.exp(-((2 * grid((32, 64))[0]) ** 2 + grid((32, 64))[1] ** 2) / 8.0),
                     (2.0, 1.0, 6.0))
    for name in ("log_4mm", "doh_4mm", "annular_4mm"):
        assert at_centre(coarse[name]) == pytest.approx(at_centre(fine[name]), abs=0.02)


def test_filters_never_mix_slices():
    rng = np.random.default_rng(4)
    images = rng.random((30, 30, 4, 2)).astype(np.float32)
    location = rng.random((30, 30, 4, 8)).astype(np.float32)
    whole = np.stack(list(baseline.feature_maps(images, location, (1, 1, 1))), -1)
    single = np.stack(list(baseline.feature_maps(images[:, :, 2:3], location[:, :, 2:3],
                                                 (1, 1, 1))), -1)
    np.testing.assert_allclose(whole[:, :, 2], single[:, :, 0], atol=1e-6)


def test_features_at_picks_rows_of_compute_features():
    subject = tiny_prepared_subject("s", shape=(24, 20, 3))
    everything = baseline.compute_features(subject)
    voxels = np.nonzero(subject.brain_mask)
    picked = baseline.features_at(subject.images, subject.location, subject.spacing, voxels)
    np.testing.assert_array_equal(picked, everything[voxels])


# ------------------------------------------------------------------- training and models

def rf_config(root, **overrides):
    return make_config(root, {"model.arch": "rf", "sampling.validation_fraction": 0.25,
                              "sampling.test_fraction": 0.125, "train.experiment": "tiny-rf",
                              "baseline.n_trees": 20, "baseline.n_jobs": 2}, overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One MLflow-tracked forest, trained through ``pipeline.run_training``."""
    from wmh import pipeline, sampling

    root = tmp_path_factory.mktemp("rf")
    prepared = write_prepared_cohort(root / "prepared", n_subjects=8)
    config = rf_config(root)
    samples = sampling.build_samples(prepared, root / "samples", config.sampling)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setattr(pipeline, "ensure_data", lambda _: pipeline.DataStages(
        root / "cohort", True, prepared, samples))
    try:
        result = pipeline.run_training(config)
        yield {"root": root, "prepared": prepared, "samples": samples, "config": config,
               "result": result, "run": mlflow.get_run(result.run_id),
               "client": mlflow.MlflowClient()}
    finally:
        monkeypatch.undo()


def test_forest_learns_the_tiny_cohort(trained):
    result = trained["result"]
    assert result.validation_auc > 0.9
    assert 0.0 < result.threshold < 1.0
    assert result.validation_dice > 0.3
    assert result.validation_volume_auc > 0.9
    assert result.best_epoch == 1


def test_train_adapt_prevalence_reaches_the_contract_and_the_run(trained, monkeypatch):
    """train.adapt_prevalence: the same Platt fit, each validation subject's map shifted
    to its own prevalence before the threshold; recorded in the contract and the run."""
    from wmh import pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained['root'] / 'mlflow.db'}")
    monkeypatch.setattr(pipeline, "ensure_data", lambda _: pipeline.DataStages(
        trained["root"] / "cohort", True, trained["prepared"], trained["samples"]))
    config = rf_config(trained["root"], **{"train.adapt_prevalence": True})
    result = pipeline.run_training(config)
    _, contract = load_model_dir(result.model_dir)
    _, plain = load_model_dir(trained["result"].model_dir)
    calibration, before = contract.calibrator(), plain.calibrator()
    assert calibration.adaptation == "prevalence" and before.adaptation == "none"
    assert calibration.parameters == pytest.approx(before.parameters)  # same forest, same fit
    run = mlflow.get_run(result.run_id)
    assert run.data.params["calibration"] == "platt+prevalence"
    assert run.data.metrics["val_ece"] == pytest.approx(calibration.validation_ece_after)
    assert calibration.validation_ece_after != pytest.approx(before.validation_ece_after)


def test_arch_rf_run_logs_like_the_cnns(trained):
    run, client, result = trained["run"], trained["client"], trained["result"]
    assert run.info.run_name == "rf"
    assert run.data.params["model.arch"] == "rf"
    assert run.data.params["baseline.n_trees"] == "20"
    assert run.data.tags["data_label"] == "synthetic"
    assert run.data.tags["dataset_hash"] and run.data.tags["git_commit"]
    assert run.data.tags["channels"] == "FLAIR,T1"
    metrics = run.data.metrics
    assert metrics["threshold"] == pytest.approx(result.threshold)
    assert metrics["val_auc"] == pytest.approx(result.validation_auc)
    assert metrics["val_volume_dice"] == pytest.approx(result.validation_dice)
    assert metrics["feature_seconds_per_case"] > 0 and metrics["train_samples"] > 100
    paths = {a.path for folder in ("", "figures")
             for a in client.list_artifacts(result.run_id, folder)}
    assert {"figures/roc.png", "figures/dice_vs_threshold.png", "figures/reliability.png",
            "feature_importances.json", "config.yaml"} <= paths
    # calibrated as the CNNs are (train.calibration, default platt), before the threshold
    from wmh import train
    _, contract = load_model_dir(result.model_dir)
    calibration = contract.calibrator()
    assert calibration.method == "platt" and run.data.params["calibration"] == "platt"
    assert metrics["val_ece"] == pytest.approx(calibration.validation_ece_after)
    assert metrics["val_ece"] <= metrics["val_ece_uncalibrated"]
    assert contract.uncalibrated_threshold is not None
    # the forest is a logged model: its folder as artifacts, feature rows in, P(WMH) out
    from wmh import registry

    model_id = registry.run_model_id(result.run_id)
    logged = client.get_logged_model(model_id)
    assert {m.key: m.value for m in logged.metrics}["threshold"] == pytest.approx(
        result.threshold)
    assert sorted(p.name for p in registry.model_folder(f"models:/{model_id}").iterdir()) == [
        "forest.skops", "plan.json", "prior.nii.gz", "wmh_model.json"]  # the plan travels
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    assert info.signature.inputs.input_names() == baseline.feature_names(True)
    assert {d.dataset.name.rsplit("-", 1)[1] for d in run.inputs.dataset_inputs} == {
        "train", "validation", "test"}
    importances = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/feature_importances.json")
    assert list(importances) == baseline.feature_names(True)
    assert sum(importances.values()) == pytest.approx(1.0)


def test_model_folder_round_trip_is_exact_and_pickle_free(trained, monkeypatch):
    from wmh import train
    from wmh.preprocess import PreparedSubject

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a model")

    result = trained["result"]
    subject = PreparedSubject.load(next(trained["prepared"].glob("*.h5")))
    original, _ = baseline.load_model_dir(result.model_dir)
    expected = original.predict_volume(subject.images, subject.location, subject.brain_mask,
                                       subject.spacing)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    assert not [p for p in result.model_dir.iterdir() if p.suffix in (".pkl", ".joblib")]
    for source in (result.model_dir, result.model_dir / "forest.skops",
                   f"runs:/{result.run_id}/model"):
        model, contract = load_model_dir(source)
        assert isinstance(model, baseline.RandomForestBaseline)
        assert contract.model.arch == "rf" and contract.channels == ("FLAIR", "T1")
        assert contract.threshold == pytest.approx(result.threshold)
        probabilities = train.predict_volume(model, contract.model, subject.images,
                                             subject.location, subject.brain_mask,
                                             spacing=subject.spacing)
        np.testing.assert_array_equal(probabilities, expected)
    assert np.all(expected[~subject.brain_mask] == 0)
    assert expected[subject.labels == 1].mean() > \
        expected[subject.brain_mask & (subject.labels == 0)].mean() + 0.3
    mean, spread = model.predict_volume(subject.images, subject.location, subject.brain_mask,
                                        subject.spacing, mc_samples=1)
    np.testing.assert_allclose(mean, expected, atol=1e-5)
    assert spread.max() > 0 and np.all(spread[~subject.brain_mask] == 0)


def test_model_folder_errors(trained, tmp_path):
    import shutil

    from wmh import train

    folder = tmp_path / "model"
    shutil.copytree(trained["result"].model_dir, folder)
    contract = (folder / "wmh_model.json").read_text()
    (folder / "wmh_model.json").write_text(contract.replace("features v1", "features v0"))
    with pytest.raises(WMHError, match="trained with other features"):
        load_model_dir(folder)
    (folder / "wmh_model.json").write_text(contract)
    (folder / "forest.skops").write_bytes(b"not a zip file")
    with pytest.raises(WMHError, match=r"forest\.skops: cannot load the forest"):
        load_model_dir(folder)
    (folder / "forest.skops").unlink()
    with pytest.raises(WMHError, match=r"missing model\.keras"):  # no longer a forest folder
        load_model_dir(folder)
    with pytest.raises(WMHError, match=r"option baseline\.n_trees: must be at least 1"):
        baseline.make_forest(rf_config(tmp_path, **{"baseline.n_trees": 0}).baseline, 0)


def test_untrusted_types_in_a_forest_file_are_refused(trained, tmp_path):
    import shutil

    import skops.io

    folder = tmp_path / "model"
    shutil.copytree(trained["result"].model_dir, folder)
    skops.io.dump({"payload": ndimage.gaussian_filter}, folder / "forest.skops")
    with pytest.raises(WMHError, match="refusing to load untrusted types"):
        baseline.load_model_dir(folder)


def test_wmh_segment_with_a_forest_model(trained, tmp_path):
    from wmh.segment import SegmentOptions, segment

    prepared = tiny_prepared_subject("case1", shape=(40, 40, 5), seed=11)
    folder = tmp_path / "cohort" / "site" / "case1"
    (folder / "pre").mkdir(parents=True)
    for index, name in enumerate(("FLAIR", "T1")):
        nib.save(nib.Nifti1Image(prepared.images[..., index], np.eye(4)),
                 folder / "pre" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(prepared.labels, np.eye(4)), folder / "wmh.nii.gz")
    (tmp_path / "prepared").mkdir()
    # as if prepared with the model's plan (a cached file made otherwise is prepared again)
    from wmh import io, preprocess
    from wmh.preprocess.plan import plan_config, read_plan
    model_dir = trained["result"].model_dir
    prepared.cache_key = preprocess.cache_key(io.discover(tmp_path / "cohort")[0],
                                              plan_config(read_plan(model_dir), model_dir), True)
    prepared.save(tmp_path / "prepared" / "case1.h5")
    rows = segment(trained["result"].model_dir, [tmp_path / "cohort"], tmp_path / "out",
                   SegmentOptions(mc_samples=1), progress=False,
                   prepared_dir=tmp_path / "prepared")
    assert rows[0]["dice"] > 0.5 and rows[0]["calibration"] == "platt"
    outputs = {path.name for path in (tmp_path / "out" / "case1").iterdir()}
    assert {"wmh_probability.nii.gz", "wmh_mask.nii.gz", "wmh_uncertainty.nii.gz",
            "qc.png", "report.json"} <= outputs


def test_mlproject_command_with_arch_rf_trains_a_flair_only_forest(trained, tmp_path,
                                                                  monkeypatch, capsys):
    from wmh import pipeline, train
    from wmh.cli import main

    # the MLproject main entry: wmh train --config "" --set model.arch={arch} ... --set-list
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(pipeline, "ensure_data", lambda _: pipeline.DataStages(
        tmp_path / "cohort", False, trained["prepared"], trained["samples"]))
    overrides = (f"data.cache_dir={tmp_path / 'cache'} data.use_t1=false "
                 "baseline.n_trees=3 train.max_train_samples=300 "
                 "sampling.validation_fraction=0.25 sampling.test_fraction=0.125")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "", "--set", "model.arch=rf", "--set", "model.loc=ffcl",
              "--set", "model.alpha=1.0", "--set-list", overrides])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert "best epoch 1, validation AUC" in output
    run_id = output.split("runs:/")[1].split("/model")[0]
    run = mlflow.get_run(run_id)
    assert run.data.tags["data_label"] == "real" and run.data.tags["channels"] == "FLAIR"
    assert run.data.metrics["train_samples"] == 300
    model, contract = load_model_dir(f"runs:/{run_id}/model")
    assert contract.channels == ("FLAIR",)
    assert model.forest.n_features_in_ == 21 and model.forest.n_estimators == 3
    with pytest.raises(WMHError, match="callbacks"):
        baseline.ForestLearner(rf_config(tmp_path), callbacks=[object()])
    with pytest.raises(WMHError, match="option model.arch: the random forest trains 'rf'"):
        baseline.ForestLearner(rf_config(tmp_path, **{"model.arch": "msws"}))
