"""The faster code paths of issue 15 (speed) give what the plain computations give."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wmh.location import analytic_prior, inplane_distance, raw_location_features
from wmh.segment.measures import lesion_table


def small_head(shape=(50, 56, 12)):
    """A brain ellipsoid well inside the volume (so the distance box crops), ventricles
    in a few slices only (so other slices use the 3D distance), MNI = voxel mm."""
    x, y, z = np.indices(shape)
    brain = ((x - 22) / 14.0) ** 2 + ((y - 30) / 17.0) ** 2 + ((z - 6) / 5.0) ** 2 < 1
    ventricles = np.zeros(shape, np.uint8)
    ventricles[16:20, 26:34, 5:8] = 1
    ventricles[24:28, 26:34, 6:8] = 2
    mni = np.stack([x - 22.0, y - 30.0, (z - 6) * 3.0], axis=-1).astype(np.float32)
    return mni, ventricles, brain


def test_distance_features_inside_the_brain_equal_whole_volume_distances():
    spacing = np.array([1.0, 1.0, 3.0])
    mni, ventricles, brain = small_head()
    raw = raw_location_features(mni, ventricles, brain, spacing, analytic_prior())
    for feature, target in ((3, ventricles == 1), (4, ventricles == 2), (5, ~brain)):
        whole = inplane_distance(target, spacing)
        np.testing.assert_array_equal(raw[..., feature][brain], whole[brain])
        if feature < 5:  # the box really cropped: far from the brain, 0 instead of > 0
            assert whole[0, 0, 0] > 0 and raw[0, 0, 0, feature] == 0


def test_distance_features_along_another_axial_axis():
    spacing = np.array([1.0, 3.0, 1.0])
    mni, ventricles, brain = (np.moveaxis(array, 2, 1) for array in small_head())
    raw = raw_location_features(mni, ventricles, brain, spacing, analytic_prior(),
                                axial_axis=1)
    whole = np.moveaxis(inplane_distance(np.moveaxis(~brain, 1, 2), spacing[[0, 2, 1]]),
                        2, 1)
    np.testing.assert_array_equal(raw[..., 5][brain], whole[brain])


def test_lesion_table_equals_scipy_per_label_statistics():
    rng = np.random.default_rng(4)
    mask = ndimage.gaussian_filter(rng.random((40, 44, 30)), 1.5) > 0.53
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    probability = rng.random(mask.shape).astype(np.float32)
    zone = ndimage.gaussian_filter(rng.random(mask.shape), 2) > 0.5
    affine = np.array([[-0.9, 0, 0, 90], [0, 0.9, 0.1, -126], [0, 0, 5.5, -72], [0, 0, 0, 1]])
    table = lesion_table(labels, probability, zone, affine)
    assert count > 20 and [row["label"] for row in table] == list(range(1, count + 1))
    index = np.arange(1, count + 1)
    ones = np.ones(labels.shape)
    voxels = ndimage.sum_labels(ones, labels, index)
    centroids = np.array(ndimage.center_of_mass(ones, labels, index))
    world = (np.c_[centroids, np.ones(count)] @ affine.T)[:, :3]
    near = ndimage.mean(zone.astype(float), labels, index)
    peak = ndimage.maximum(probability, labels, index)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    np.testing.assert_array_equal([row["volume_ml"] for row in table], voxels * voxel_ml)
    np.testing.assert_allclose([[row[f"centroid_{axis}_mm"] for axis in "xyz"]
                                for row in table], world, rtol=0, atol=1e-9)
    assert [row["region"] for row in table] == \
        ["periventricular" if value >= 0.5 else "deep" for value in near]
    np.testing.assert_array_equal([row["max_probability"] for row in table], peak)
    assert lesion_table(np.zeros((3, 3, 3), int), probability[:3, :3, :3],
                        zone[:3, :3, :3], affine) == []


def test_graph_trunk_equals_the_eager_trunk_in_both_precisions(tf_seeded):
    import keras

    from wmh.config import ModelConfig
    from wmh.models import InferenceOptions, build_dense_model, build_model, predict_slices
    from wmh.models.inference import _compiled
    from wmh.models.precision import tower_precision

    config = ModelConfig(arch="msws", loc="ffcl", width=0.1)
    dense = build_dense_model(build_model(config, 2), config, 2)
    trunk = dense.get_layer("trunk")
    rng = np.random.default_rng(0)
    image = rng.random((2, 36 + 127, 40 + 127, 2), dtype=np.float32)
    loc = rng.random((2, 36, 40, 8), dtype=np.float32)
    for precision in ("fp32", "bf16", "fp32"):
        with tower_precision(dense, precision):
            eager = keras.ops.convert_to_numpy(trunk({"image": image, "loc": loc},
                                                     training=False))
            graph = keras.ops.convert_to_numpy(_compiled(trunk)(image, loc))
        np.testing.assert_allclose(graph, eager, rtol=0, atol=1e-5 * np.abs(eager).max())
    assert len(trunk.__dict__["_wmh_graphs"]) == 2  # one graph per precision
    images = rng.random((3, 30, 34, 2), dtype=np.float32)
    mask = np.zeros((3, 30, 34), bool)
    mask[:, 5:25, 4:30] = True
    fp32 = predict_slices(dense, config, images, rng.random((3, 30, 34, 8), np.float32),
                          mask, InferenceOptions(precision="fp32"))
    assert np.ptp(fp32[mask]) > 0
