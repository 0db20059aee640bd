"""wmh.location: the 8 location features on hand-made geometry, and the WMH prior."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from wmh.errors import WMHError
from wmh.location import (LOCATION_FEATURES, Prior, analytic_prior, build_prior,
                          default_prior_path, inplane_distance, load_prior,
                          location_features, midsagittal_distance, mni_grid,
                          normalise_per_case)

SPACING = np.array([1.0, 1.0, 4.0])


def phantom(shape=(61, 70, 9)):
    """A symmetric 'brain' ellipse per slice, two ventricle blocks, and MNI coordinates
    that are the voxel position in mm with x = 0 at the central column (30)."""
    x, y, z = np.indices(shape)
    brain = ((x - 30) / 28.0) ** 2 + ((y - 35) / 32.0) ** 2 < 1
    ventricles = np.zeros(shape, dtype=np.uint8)
    ventricles[20:26, 30:45, 3:6] = 1  # left: x < 0 in MNI (column < 30)
    ventricles[35:41, 30:45, 3:6] = 2  # right: its mirror image about column 30
    mni = np.stack([(x - 30) * SPACING[0], (y - 35) * SPACING[1], (z - 4) * SPACING[2]],
                   axis=-1).astype(np.float32)
    return mni, ventricles, brain


def test_feature_order_matches_the_prepared_format():
    from wmh.location import N_LOCATION_FEATURES
    from wmh.preprocess import LOCATION_FEATURES as prepared_order

    assert LOCATION_FEATURES == prepared_order and len(LOCATION_FEATURES) == N_LOCATION_FEATURES
    assert LOCATION_FEATURES[:3] == ("mni_x", "mni_y", "mni_z")
    assert LOCATION_FEATURES[-1] == "wmh_prior"


def test_inplane_distance_zero_inside_and_growing_away():
    target = np.zeros((40, 40, 3), dtype=bool)
    target[10:15, 10:15, 1] = True
    distance = inplane_distance(target, SPACING)
    assert np.all(distance[target] == 0)
    row = distance[15:35, 12, 1]
    assert np.all(np.diff(row) > 0)  # strictly growing away from the block
    assert distance[20, 12, 1] == pytest.approx(6.0)  # 6 voxels of 1 mm
    # slices without the target fall back to the 3D distance (4 mm slices)
    assert distance[12, 12, 0] == pytest.approx(4.0)
    assert distance[12, 12, 2] == pytest.approx(4.0)
    # no target at all: a large constant, not infinity
    empty = inplane_distance(np.zeros((5, 5, 2), bool), SPACING)
    assert np.all(np.isfinite(empty)) and np.all(empty == empty.flat[0])


def test_midsagittal_distance_is_symmetric_and_metric():
    mni, _, _ = phantom()
    distance = midsagittal_distance(mni[..., 0], SPACING)
    np.testing.assert_allclose(distance, distance[::-1], atol=1e-5)  # mirror about column 30
    np.testing.assert_allclose(distance[30 + 7, 20, 4], 7.0, atol=1e-5)
    assert np.all(distance[30] == 0)
    # a stretched map (2 MNI mm per subject mm) still gives subject millimetres
    np.testing.assert_allclose(midsagittal_distance(2 * mni[..., 0], SPACING), distance,
                               atol=1e-5)


def test_normalise_per_case_uses_the_brain_range():
    values = np.arange(10, dtype=np.float32).reshape(10, 1, 1)
    brain = np.zeros((10, 1, 1), bool)
    brain[2:8] = True
    scaled = normalise_per_case(values, brain)
    assert scaled[2, 0, 0] == 0 and scaled[7, 0, 0] == 1
    assert scaled.min() == 0 and scaled.max() == 1  # clipped outside the brain
    assert np.all(normalise_per_case(np.ones((3, 3, 3)), np.ones((3, 3, 3), bool)) == 0)


def test_location_features_in_unit_range_with_expected_monotonicity():
    mni, ventricles, brain = phantom()
    prior = Prior(np.full((10, 10, 10), 0.2, np.float32), np.diag([30, 30, 30, 1.0]), "flat")
    features = location_features(mni, ventricles, brain, SPACING, prior)
    assert features.shape == mni.shape[:3] + (8,) and features.dtype == np.float32
    assert features.min() >= 0 and features.max() <= 1
    left, right, cortex, midline = (features[..., k] for k in (3, 4, 5, 6))
    assert np.all(left[ventricles == 1] == 0) and np.all(right[ventricles == 2] == 0)
    # moving left (down the x axis) from the left ventricle, its distance grows ...
    assert np.all(np.diff(left[19:3:-1, 37, 4]) > 0)
    assert np.all(features[~brain] == 0)  # nothing outside the brain, like the images
    # ... and the right ventricle's distance is the mirror image of the left's
    np.testing.assert_allclose(right, left[::-1], atol=1e-6)
    np.testing.assert_allclose(midline, midline[::-1], atol=1e-6)
    # cortex distance: 0 at the brain edge, largest deep inside
    assert cortex[30, 35, 4] > cortex[30, 8, 4] > cortex[30, 4, 4]
    # MNI x rises from left to right
    assert np.all(np.diff(features[5:55, 35, 4, 0]) > 0)


def test_prior_feature_alone_equals_the_prepared_one_from_stored_coordinates():
    """Feature 8 recomputed from a prepared file's float16 MNI coordinates (the prior stage)
    is exactly the one preparing the subject with that prior gives."""
    from wmh.location import analytic_prior, prior_feature

    mni, ventricles, brain = phantom()
    mni = mni + np.random.default_rng(0).normal(0, 0.3, mni.shape)  # off the float16 grid
    prior = analytic_prior()
    features = location_features(mni, ventricles, brain, SPACING, prior)
    stored = mni.astype(np.float32).astype(np.float16)  # as PreparedSubject keeps them
    recomputed = prior_feature(stored, brain, prior)
    assert recomputed.max() == 1.0 and np.all(recomputed[~brain] == 0)
    np.testing.assert_array_equal(recomputed, features[..., 7])


def test_location_features_do_not_depend_on_the_slice_axis():
    """A coronal working grid (axes R, S, A: the superior axis second) gives the same
    features, voxel for voxel, as the axial grid it permutes: distances stay measured in
    axial planes."""
    mni, ventricles, brain = phantom()
    prior = Prior(np.full((10, 10, 10), 0.2, np.float32), np.diag([30, 30, 30, 1.0]), "flat")
    axial = location_features(mni, ventricles, brain, SPACING, prior)
    order = (0, 2, 1)  # working (R, S, A) from (R, A, S)
    coronal = location_features(np.transpose(mni, order + (3,)),
                                np.transpose(ventricles, order), np.transpose(brain, order),
                                np.asarray(SPACING)[list(order)], prior, axial_axis=1)
    np.testing.assert_allclose(coronal, np.transpose(axial, order + (3,)), atol=1e-5)


def test_build_prior_concentrates_where_lesions_are(tmp_path):
    shape, _ = mni_grid(4.0)
    rng = np.random.default_rng(0)
    subjects = []
    for _ in range(3):
        points = rng.uniform([-60, -80, -20], [60, 60, 60], size=(4000, 3))
        mni = points.reshape(40, 100, 1, 3).astype(np.float32)
        labels = (np.linalg.norm(points - [20, -10, 20], axis=1) < 12).reshape(40, 100, 1)
        subjects.append((mni, labels.astype(np.uint8), np.ones((40, 100, 1), bool)))
    prior = build_prior(subjects, spacing_mm=4.0, smoothing_mm=4.0)
    near, far = prior.sample(np.array([[20.0, -10.0, 20.0], [-40.0, 30.0, 40.0]]))
    assert near > 0.3 and far < 0.01
    assert prior.probability.shape == shape
    saved = prior.save(tmp_path / "prior.nii.gz")
    image = nib.load(saved)
    assert image.get_data_dtype() == np.uint8 and int(image.header["sform_code"]) == 4
    reloaded = load_prior(saved)
    np.testing.assert_allclose(reloaded.probability, prior.probability,
                               atol=prior.probability.max() / 255 + 1e-6)
    with pytest.raises(WMHError, match="no labelled subject"):
        build_prior([], spacing_mm=4.0)


def test_a_prior_rewritten_in_place_is_read_anew(tmp_path):
    """load_prior caches by file, not by path alone: the same path saved again (as the
    pipeline's prior stage or `wmh prior build --out` do) gives the new map."""
    shape, affine = mni_grid(8.0)
    path = tmp_path / "prior.nii.gz"
    first = np.zeros(shape, np.float32)
    first[10, 10, 10] = 0.5
    Prior(first, affine, "").save(path)
    assert load_prior(path).probability[10, 10, 10] == pytest.approx(0.5)
    second = np.zeros(shape, np.float32)
    second[5, 5, 5] = 0.25
    Prior(second, affine, "").save(path)
    reloaded = load_prior(path).probability
    assert reloaded[10, 10, 10] == 0.0 and reloaded[5, 5, 5] == pytest.approx(0.25)


def test_prior_files_are_checked(tmp_path):
    bad = tmp_path / "bad_prior.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 3.0, np.float32), np.eye(4)), bad)
    with pytest.raises(WMHError, match="bad_prior.nii.gz"):
        load_prior(bad)
    with pytest.raises(WMHError, match="missing.nii.gz"):
        load_prior(tmp_path / "missing.nii.gz")


def test_default_prior_is_packaged_small_and_periventricular():
    path = default_prior_path()
    assert path is not None and path.stat().st_size < 200_000
    prior = load_prior()
    assert prior.probability.max() <= 1 and prior.probability.min() >= 0
    # WMH are periventricular: next to the lateral ventricles beats the cortex
    beside_ventricle, cortex = prior.sample(np.array([[-22.0, -10.0, 22.0], [-55.0, -10.0, 30.0]]))
    assert beside_ventricle > cortex


def test_analytic_prior_is_periventricular():
    prior = analytic_prior()
    near, far = prior.sample(np.array([[-13.0, -15.0, 15.0 + 14.0], [-60.0, -15.0, 15.0]]))
    assert near > 0.1 > far


def save_phantom_subject(path, labels):
    """The phantom as a FLAIR-only prepared subject file with ``labels`` and MNI
    coordinates (what `wmh prior build` reads)."""
    from wmh.preprocess import PreparedSubject

    mni, ventricles, brain = phantom()
    shape = brain.shape
    PreparedSubject(
        subject_id=path.stem, site=None, split=None,
        images=np.zeros(shape + (1,), np.float32), channels=("FLAIR",),
        brain_mask=brain, labels=labels, labels_observer2=None,
        location=np.zeros(shape + (8,), np.float32), ventricles=ventricles,
        spacing=SPACING, affine=np.diag(list(SPACING) + [1.0]), native_shape=shape,
        native_affine=np.diag(list(SPACING) + [1.0]),
        native_header=nib.Nifti1Header().binaryblock, mni_coordinates=mni).save(path)


def test_prior_build_command_from_prepared_files(tmp_path, capsys):
    from wmh.cli import main as cli_main

    mni, _, brain = phantom()
    labels = np.zeros(brain.shape, np.uint8)
    labels[(np.abs(mni[..., 0] - 12) < 4) & (np.abs(mni[..., 1]) < 4)] = 1
    for number in range(2):
        save_phantom_subject(tmp_path / "prepared" / f"p{number}.h5", labels)
    out = tmp_path / "prior.nii.gz"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prior", "build", str(tmp_path / "prepared"), "--out", str(out)])
    assert exit_info.value.code == 0
    assert "2 labelled subjects" in capsys.readouterr().out
    prior = load_prior(out)
    lesion, elsewhere = prior.sample(np.array([[12.0, 0.0, 0.0], [-12.0, 0.0, 0.0]]))
    assert lesion > 5 * elsewhere

    # without --smoothing-mm the sigma is the config's (as the pipeline's prior stage)
    from wmh.prior import build_prior_from_files

    files = sorted((tmp_path / "prepared").glob("*.h5"))
    for sigma, options in ((4.0, []), (8.0, ["--set", "preprocess.prior_smoothing_mm=8"]),
                           (6.0, ["--set", "preprocess.prior_smoothing_mm=8",
                                  "--smoothing-mm", "6"])):
        built = tmp_path / f"built{len(options)}.nii.gz"  # load_prior caches by path
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["prior", "build", str(tmp_path / "prepared"), "--out", str(built),
                      "--set", f"data.cache_dir={tmp_path / 'cache'}", *options])
        assert exit_info.value.code == 0
        expected = load_prior(build_prior_from_files(files, 4.0, sigma).save(
            tmp_path / f"expected{sigma}.nii.gz"))
        np.testing.assert_array_equal(load_prior(built).probability, expected.probability)
    broad, narrow = (load_prior(tmp_path / f"expected{sigma}.nii.gz") for sigma in (8.0, 4.0))
    assert not np.array_equal(broad.probability, narrow.probability)


def test_prior_build_command_takes_a_split(tmp_path, capsys):
    """--samples (its training split) or --subjects FILE choose the subjects; without
    either the command says it uses every subject."""
    import json

    from wmh.cli import main as cli_main

    mni, _, brain = phantom()
    for number, centre in enumerate((12.0, -12.0)):  # p0's lesion on the right, p1's left
        labels = np.zeros(brain.shape, np.uint8)
        labels[(np.abs(mni[..., 0] - centre) < 4) & (np.abs(mni[..., 1]) < 4)] = 1
        save_phantom_subject(tmp_path / "prepared" / f"p{number}.h5", labels)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "splits.json").write_text(json.dumps(
        {"train": ["p1"], "validation": [], "test": ["p0"], "key": "k"}))
    listing = tmp_path / "subjects.txt"
    listing.write_text("# training subjects\np0\n\n")

    def build(*options):
        out = tmp_path / f"prior{len(list(tmp_path.glob('prior*')))}.nii.gz"
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["prior", "build", str(tmp_path / "prepared"), "--out", str(out),
                      *options])
        captured = capsys.readouterr()
        return exit_info.value.code, captured, out

    right, left = np.array([[12.0, 0.0, 0.0]]), np.array([[-12.0, 0.0, 0.0]])
    code, captured, out = build("--samples", str(samples))
    assert code == 0 and "1 labelled subjects" in captured.out and not captured.err
    assert load_prior(out).sample(right)[0] == 0.0 < load_prior(out).sample(left)[0]
    code, captured, out = build("--subjects", str(listing))
    assert code == 0 and "1 labelled subjects" in captured.out
    assert load_prior(out).sample(left)[0] == 0.0 < load_prior(out).sample(right)[0]
    code, captured, out = build()
    assert code == 0 and "2 labelled subjects" in captured.out
    assert captured.err.startswith("warning: the prior uses every labelled subject of DATA, "
                                   "test subjects included")

    listing.write_text("p0\nnobody\n")
    code, captured, out = build("--subjects", str(listing))
    assert code == 2 and not out.exists()
    assert f"--subjects {listing}: subject 'nobody' is not among the prepared subjects" \
        in captured.err
    code, captured, _ = build("--subjects", str(tmp_path / "none.txt"))
    assert code == 2 and "none.txt: cannot read" in captured.err
    code, captured, _ = build("--subjects", str(listing), "--samples", str(samples))
    assert code == 2 and "--samples and --subjects: give one of them" in captured.err
