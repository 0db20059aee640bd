"""The patch classifiers: sizes from the paper, weight sharing, save/load, every variant."""

import itertools

import keras
import numpy as np
import pytest

from wmh.config import ModelConfig
from wmh.errors import WMHError
from wmh.models import build_model, model_input_names, used_input_names

ARCHS = ("ss", "msef", "msiw", "msws")
LOCS = ("none", "lcl", "ffcl", "sfcl")


def conv_params(in_channels):
    """Paper tower: 20@7x7, 40@5x5, 80@3x3, 110@3x3 (kernel weights + biases)."""
    return (7 * 7 * in_channels * 20 + 20) + (5 * 5 * 20 * 40 + 40) \
        + (3 * 3 * 40 * 80 + 80) + (3 * 3 * 80 * 110 + 110)


def hand_count(arch, loc, channels):
    """Parameter count written out from the layer sizes (width 1.0)."""
    features = 18 * 18 * 110  # 32 - 6 - 4 - 2 - 2 = 18
    lcl, ffcl, sfcl = (8 * (loc == name) for name in ("lcl", "ffcl", "sfcl"))
    if arch in ("ss", "msef"):
        towers = conv_params(channels if arch == "ss" else 3 * channels)
        first = (features + lcl) * 300 + 300
    else:
        towers = (3 if arch == "msiw" else 1) * conv_params(channels)
        first = 3 * ((features + lcl) * 100 + 100)  # a 100-unit layer per scale
    second = (300 + ffcl) * 200 + 200
    output = (200 + sfcl) * 2 + 2
    return towers + first + second + output


def random_inputs(batch, channels, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {name: rng.random((batch, 32, 32, channels), dtype=np.float32)
              for name in ("s1", "s2", "s3")}
    inputs["loc"] = rng.random((batch, 8), dtype=np.float32)
    return inputs


def test_single_scale_has_the_papers_sizes(tf_seeded):
    model = build_model(ModelConfig(arch="ss", loc="none"), n_channels=2)
    assert model.get_layer("flatten").output.shape[-1] == 35_640 == 18 * 18 * 110
    assert model.count_params() == 1_980 + 20_040 + 28_880 + 79_310 \
        + 35_640 * 300 + 300 + 300 * 200 + 200 + 200 * 2 + 2 == 10_883_112
    assert model.output.shape[-1] == 2


@pytest.mark.parametrize("arch,loc,channels", [
    ("ss", "none", 1), ("ss", "lcl", 2), ("ss", "ffcl", 2), ("ss", "sfcl", 2),
    ("msef", "ffcl", 2), ("msef", "none", 1), ("msiw", "none", 2), ("msiw", "lcl", 2),
    ("msws", "ffcl", 2), ("msws", "sfcl", 1)])
def test_parameter_counts_equal_hand_computed(tf_seeded, arch, loc, channels):
    model = build_model(ModelConfig(arch=arch, loc=loc), n_channels=channels)
    assert model.count_params() == hand_count(arch, loc, channels)


def test_msws_towers_are_one_set_of_weights(tf_seeded):
    model = build_model(ModelConfig(arch="msws", loc="none", width=0.1), 2)
    towers = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert [tower.name for tower in towers] == ["tower"]
    flat = keras.Model(model.inputs, [model.get_layer(f"flatten_{name}").output
                                      for name in ("s1", "s2", "s3")])
    same = random_inputs(2, 2)
    same["s2"] = same["s3"] = same["s1"]
    outputs = [np.asarray(o) for o in flat(same)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])
    # The per-scale fully connected layers are not shared.
    kernels = [model.get_layer(f"fc1_{name}").kernel.numpy() for name in ("s1", "s2", "s3")]
    assert not np.array_equal(kernels[0], kernels[1])


def test_msiw_towers_are_independent(tf_seeded):
    model = build_model(ModelConfig(arch="msiw", loc="none", width=0.1), 2)
    first_kernels = [model.get_layer(f"tower_{name}").get_layer("conv1").kernel.numpy()
                     for name in ("s1", "s2", "s3")]
    assert not np.array_equal(first_kernels[0], first_kernels[1])
    assert model.count_params() > build_model(
        ModelConfig(arch="msws", loc="none", width=0.1), 2).count_params()


@pytest.mark.parametrize("arch", ARCHS)
def test_keras_file_round_trip_gives_identical_outputs(tf_seeded, tmp_path, arch):
    config = ModelConfig(arch=arch, loc="ffcl" if arch != "msef" else "lcl", width=0.1,
                         alpha=2.5)
    model = build_model(config, 2)
    path = tmp_path / f"{arch}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    inputs = random_inputs(5, 2)
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(loaded(inputs)))


@pytest.mark.parametrize("arch,loc", list(itertools.product(ARCHS, LOCS)))
def test_every_architecture_and_injection_builds_and_runs(tf_seeded, arch, loc):
    model = build_model(ModelConfig(arch=arch, loc=loc, width=0.1), 2)
    assert tuple(sorted(tensor.name for tensor in model.inputs)) == tuple(sorted(
        model_input_names(ModelConfig(arch=arch, loc=loc))))
    inputs = random_inputs(3, 2)
    probabilities = np.asarray(model(inputs))
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    moved = dict(inputs, loc=inputs["loc"][::-1].copy())
    reads_location = not np.allclose(np.asarray(model(moved)), probabilities)
    assert reads_location == (loc != "none")
    assert ("loc" in used_input_names(ModelConfig(arch=arch, loc=loc))) == (loc != "none")


def test_flair_only_models_take_one_channel(tf_seeded):
    model = build_model(ModelConfig(arch="msiw", loc="sfcl", width=0.1), n_channels=1)
    assert np.asarray(model(random_inputs(2, 1))).shape == (2, 2)


def test_single_scale_reads_only_the_small_patch(tf_seeded):
    model = build_model(ModelConfig(arch="ss", loc="ffcl", width=0.1), 2)
    inputs = random_inputs(2, 2)
    changed = dict(inputs, s2=inputs["s2"] * 0, s3=inputs["s3"] + 1)
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(model(changed)))
    assert used_input_names(ModelConfig(arch="ss", loc="ffcl")) == ("s1", "loc")


def test_alpha_scales_the_location_features(tf_seeded):
    model = build_model(ModelConfig(arch="ss", loc="sfcl", alpha=3.0, width=0.1), 2)
    scaled = keras.Model(model.inputs, model.get_layer("loc_scaled").output)
    inputs = random_inputs(2, 2)
    np.testing.assert_allclose(np.asarray(scaled(inputs)), 3.0 * inputs["loc"], rtol=1e-6)


def test_dropout_is_active_only_in_training(tf_seeded):
    model = build_model(ModelConfig(arch="ss", loc="none", width=0.2, dropout_rate=0.5), 2)
    inputs = random_inputs(4, 2)
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(model(inputs)))
    assert not np.allclose(np.asarray(model(inputs, training=True)),
                           np.asarray(model(inputs, training=True)))


@pytest.mark.parametrize("changes,channels,message", [
    ({"arch": "unet"}, 2, "model.arch"),
    ({"loc": "everywhere"}, 2, "model.loc"),
    ({"dropout_rate": 1.0}, 2, "model.dropout_rate"),
    ({"width": 0.0}, 2, "model.width"),
    ({}, 0, "n_channels"),
])
def test_bad_options_raise_one_line_errors(changes, channels, message):
    with pytest.raises(WMHError, match=message):
        build_model(ModelConfig(**changes), channels)
