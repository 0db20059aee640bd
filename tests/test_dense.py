"""Whole-slice inference equals the patch-wise sliding window, for every variant."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from wmh.config import ModelConfig
from wmh.errors import WMHError
from wmh.models import (InferenceOptions, build_dense_model, build_model, predict_patchwise,
                        predict_slices)
from wmh.models.dense import BatchToSpace, FFTConv2D, SpaceToBatch

ARCHS = ("ss", "msef", "msiw", "msws")
LOCS = ("none", "lcl", "ffcl", "sfcl")


def spread_weights(model, seed=0):
    """He-normal kernels and random biases, so probabilities vary a lot between voxels."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if len(shape) == 1:
            variable.assign(rng.normal(0.0, 0.3, shape).astype(np.float32))
        else:
            fan_in = int(np.prod(shape[:-1]))
            variable.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))
    return model


def small_case(depth=2, height=40, width=44, channels=2, seed=0):
    """Random slices and an irregular brain mask that touches the slice borders."""
    rng = np.random.default_rng(seed)
    images = rng.random((depth, height, width, channels), dtype=np.float32)
    images[:, 5:12, 20:30] += 2.0  # a bright blob, to get contrast at every scale
    loc_maps = rng.random((depth, height, width, 8), dtype=np.float32)
    rows, cols = np.mgrid[:height, :width]
    mask = np.zeros((depth, height, width), bool)
    mask[0] = ((rows - 20) / 16) ** 2 + ((cols - 22) / 19) ** 2 < 1
    mask[-1] = ((rows - 15) / 9) ** 2 + ((cols - 28) / 13) ** 2 < 1
    mask[-1, 0, 0] = mask[-1, height - 1, width - 1] = mask[0, height - 1, 10] = True
    return images, loc_maps, mask


def patchwise_volume(model, images, loc_maps, mask):
    probabilities = np.zeros(mask.shape, np.float32)
    for z in range(mask.shape[0]):
        rows, cols = np.nonzero(mask[z])
        probabilities[z, rows, cols] = predict_patchwise(model, images[z], loc_maps[z],
                                                         rows, cols)
    return probabilities


@pytest.mark.parametrize("height,width", [(70, 101), (18, 20), (64, 111), (40, 33)])
def test_fft_convolution_equals_direct_convolution(tf_seeded, height, width):
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(18, 18, 5, 7)).astype(np.float32)
    bias = rng.normal(size=7).astype(np.float32)
    inputs = rng.normal(size=(3, height, width, 5)).astype(np.float32)
    layer = FFTConv2D(7, 18, fft_size=64)  # 47 x 47 outputs per tile
    layer(inputs)
    layer.set_kernel(kernel, bias)
    result = np.asarray(layer(inputs))
    expected = np.asarray(tf.nn.conv2d(inputs, kernel, 1, "VALID")) + bias
    assert result.shape == expected.shape == (3, height - 17, width - 17, 7)
    np.testing.assert_allclose(result, expected, atol=2e-4 * np.abs(expected).max())


def test_polyphase_split_and_interleave_are_inverse(tf_seeded):
    maps = np.arange(2 * 8 * 12 * 3, dtype=np.float32).reshape(2, 8, 12, 3)
    phases = np.asarray(SpaceToBatch(4)(maps))
    assert phases.shape == (32, 2, 3, 3)
    np.testing.assert_array_equal(phases[1 * 4 * 2 + 3 * 2 + 1], maps[1, 1::4, 3::4])
    np.testing.assert_array_equal(np.asarray(BatchToSpace(4)(phases)), maps)


@pytest.mark.parametrize("arch,loc", list(itertools.product(ARCHS, LOCS)))
def test_dense_equals_patchwise_on_every_brain_voxel(tf_seeded, arch, loc):
    config = ModelConfig(arch=arch, loc=loc, width=0.1, alpha=2.0)
    model = spread_weights(build_model(config, 2))
    images, loc_maps, mask = small_case()
    dense = predict_slices(model, config, images, loc_maps, mask, InferenceOptions(batch_size=2))
    reference = patchwise_volume(model, images, loc_maps, mask)
    assert np.ptp(reference[mask]) > 0.2  # the comparison is not between constants
    np.testing.assert_allclose(dense[mask], reference[mask], atol=1e-4, rtol=0)
    assert not dense[~mask].any()


def test_flair_only_dense_equals_patchwise(tf_seeded):
    config = ModelConfig(arch="msws", loc="ffcl", width=0.1)
    model = spread_weights(build_model(config, 1), seed=3)
    images, loc_maps, mask = small_case(channels=1, height=37, width=29, seed=2)
    np.testing.assert_allclose(predict_slices(model, config, images, loc_maps, mask)[mask],
                               patchwise_volume(model, images, loc_maps, mask)[mask], atol=1e-4)


def test_a_prebuilt_dense_model_gives_the_same_result(tf_seeded, tmp_path):
    config = ModelConfig(arch="msiw", loc="lcl", width=0.1)
    model = spread_weights(build_model(config, 2))
    images, loc_maps, mask = small_case()
    dense = build_dense_model(model, config, 2)
    path = tmp_path / "dense.keras"
    dense.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    from_patch = predict_slices(model, config, images, loc_maps, mask)
    np.testing.assert_array_equal(predict_slices(dense, config, images, loc_maps, mask),
                                  from_patch)
    np.testing.assert_array_equal(predict_slices(loaded, config, images, loc_maps, mask),
                                  from_patch)


def test_monte_carlo_dropout_gives_mean_and_spread(tf_seeded):
    config = ModelConfig(arch="msws", loc="ffcl", width=0.1, dropout_rate=0.3)
    model = spread_weights(build_model(config, 2))
    images, loc_maps, mask = small_case()
    mean, std = predict_slices(model, config, images, loc_maps, mask,
                               InferenceOptions(mc_samples=6))
    assert mean.shape == std.shape == mask.shape
    assert (std[mask] > 0).mean() > 0.9 and not std[~mask].any()
    plain = predict_slices(model, config, images, loc_maps, mask)
    assert np.abs(mean - plain)[mask].mean() < 0.2


def test_monte_carlo_without_dropout_is_the_plain_prediction(tf_seeded):
    config = ModelConfig(arch="ss", loc="sfcl", width=0.1, dropout_rate=0.0)
    model = spread_weights(build_model(config, 2))
    images, loc_maps, mask = small_case()
    mean, std = predict_slices(model, config, images, loc_maps, mask,
                               InferenceOptions(mc_samples=2))
    np.testing.assert_allclose(mean, predict_slices(model, config, images, loc_maps, mask),
                               atol=1e-6)
    assert np.abs(std).max() < 1e-6


def test_msef_has_no_dense_form_and_runs_patchwise(tf_seeded):
    config = ModelConfig(arch="msef", loc="ffcl", width=0.1)
    model = build_model(config, 2)
    with pytest.raises(WMHError, match="msef"):
        build_dense_model(model, config, 2)


def test_empty_slices_and_bad_shapes(tf_seeded):
    config = ModelConfig(arch="ss", loc="none", width=0.1)
    model = build_model(config, 2)
    images, loc_maps, mask = small_case()
    mask[0] = False
    probabilities = predict_slices(model, config, images, loc_maps, mask)
    assert not probabilities[0].any() and probabilities[1][mask[1]].all()
    with pytest.raises(WMHError, match="brain_mask"):
        predict_slices(model, config, images, loc_maps, mask[:, :-1])
    with pytest.raises(WMHError, match="loc_maps"):
        predict_slices(model, config, images, loc_maps[..., :7], mask)
