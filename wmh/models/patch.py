"""The patch classifiers of the paper (Fig. 3): SS, MSEF, MSIW and MSWS, with location.

Every builder is a pure function of a :class:`wmh.config.ModelConfig` and the number of
input channels; it returns an uncompiled Keras functional model made of stock layers only,
so a saved ``.keras`` file loads with ``safe_mode=True`` and executes no code.

Inputs (every architecture declares all four, so one data pipeline feeds them all):

* ``"s1"``, ``"s2"``, ``"s3"``: (batch, 32, 32, n_channels) float32 patches at scales 1, 2
  and 4 (see :mod:`wmh.data`); channel 0 FLAIR, channel 1 T1 when present.
* ``"loc"``: (batch, 8) float32 location features in [0, 1] (order in ``DESIGN.md``).

SS reads only ``s1``; a model with ``loc='none'`` never reads ``loc``; an unread input is
accepted and ignored. Output: (batch, 2) softmax, column 1 = P(WMH).

The network (paper, "Network architectures"; sizes at ``width=1``):

* Tower: convolutions 20@7x7, 40@5x5, 80@3x3, 110@3x3, valid, stride 1, ReLU, no
  pooling: 32x32 -> 26 -> 22 -> 20 -> 18x18x110 = 35,640 features.
* SS: tower(s1) -> FC 300 -> FC 200 -> softmax 2.
* MSEF: s1, s2, s3 stacked as 3 x n_channels input channels into one tower, then as SS.
* MSIW: a tower per scale, each with its own first fully connected layer of
  ``SCALE_FC_UNITS`` = 100 units; the three are concatenated (300, the width of the SS
  first layer) and feed the joint FC 200 -> softmax 2. *Paper is silent on the per-scale
  size*: 100 keeps the fused layer as wide as SS's and makes the per-scale layers cost a
  third of one 300-unit layer on the merged maps, the saving the paper gives as their
  rationale.
* MSWS: as MSIW, but one tower (one set of weights, the nested model ``"tower"``) is run
  on the three scales; the per-scale fully connected layers stay independent.
* Dropout (``dropout_rate``, paper 0.3) on the output of every hidden fully connected
  layer (the per-scale/first one and the second one). *Choice*: not on the 35,640
  convolution features, so that in whole-slice inference a dropout mask is drawn per voxel
  exactly as in patch-wise inference (Monte Carlo dropout stays exact in distribution).
* Location (``loc``): the 8 features times ``alpha`` are concatenated with
  ``'lcl'``: the flattened last-convolution responses (for MSIW/MSWS: of every scale, i.e.
  each per-scale first layer sees them); ``'ffcl'``: the output of the first fully
  connected layer (after its dropout; location is never dropped); ``'sfcl'``: the output of
  the second fully connected layer.
* Glorot-uniform kernels, zero biases.
* Precision: layers take the global Keras dtype policy, so a model built inside
  ``wmh.models.precision.precision_scope("bf16")`` runs the towers and the first fully
  connected layer(s) in bfloat16 (float32 weights: ``mixed_bfloat16``). Everything after
  the first layer, and the scaled location features, is always float32
  (``HEAD_DTYPE``): the second layer and softmax cost < 1 % of the work, location then
  enters at full precision for ``ffcl``/``sfcl``, and the probabilities and the loss are
  float32. (For ``lcl`` location is part of the first layer's bf16 input.) So is the
  first convolution (``FLOAT32_TOWER_LAYERS``), which reads the raw intensities.

Layer names are part of the contract with :mod:`wmh.models.dense`: ``tower`` or
``tower_s1``..``tower_s3`` (nested models holding ``conv1``..``conv4``), ``fc1`` or
``fc1_s1``..``fc1_s3``, ``fc2``, ``output``.
"""

from __future__ import annotations

import keras

from wmh.config import ModelConfig
from wmh.patches import PATCH_SIZE, SCALE_NAMES
from wmh.location import N_LOCATION_FEATURES
from wmh.errors import WMHError

ARCHITECTURES = ("ss", "msef", "msiw", "msws")
LOCATION_INJECTIONS = ("none", "lcl", "ffcl", "sfcl")
INPUT_NAMES = ("s1", "s2", "s3", "loc")

CONV_FILTERS = (20, 40, 80, 110)  # paper: 20, 40, 80, 110 filters
CONV_KERNEL_SIZES = (7, 5, 3, 3)  # paper: 7x7, 5x5, 3x3, 3x3
FC_UNITS = (300, 200)  # paper: fully connected 300, 200, then the 2-way softmax
SCALE_FC_UNITS = 100  # MSIW/MSWS per-scale first fully connected layer (paper silent)
N_CLASSES = 2
TOWER_OUTPUT_SIDE = PATCH_SIZE - sum(size - 1 for size in CONV_KERNEL_SIZES)  # 18
HEAD_DTYPE = "float32"  # location and the layers after the first FC one, in any precision
# Tower layers that stay float32 in bf16: conv1 reads the raw intensities, whose bf16
# rounding (8-bit mantissa) doubled the probability error (max |bf16 - fp32| 0.021 ->
# 0.013 on demo-trained weights, BENCHMARKS.md) for 1.5 % of the tower's work.
FLOAT32_TOWER_LAYERS = ("conv1",)


def scaled_width(units: int, width: float) -> int:
    """A layer width multiplied by ``config.width``, rounded, at least 1."""
    return max(1, round(units * width))


def validate_config(config: ModelConfig, n_channels: int) -> None:
    """Raises WMHError naming the option when the model cannot be built."""
    if config.arch not in ARCHITECTURES:
        raise WMHError(f"model.arch: {config.arch!r} is not one of {', '.join(ARCHITECTURES)}")
    if config.loc not in LOCATION_INJECTIONS:
        raise WMHError(f"model.loc: {config.loc!r} is not one of "
                       f"{', '.join(LOCATION_INJECTIONS)}")
    if not 0.0 <= config.dropout_rate < 1.0:
        raise WMHError(f"model.dropout_rate: {config.dropout_rate} is not in [0, 1)")
    if not config.width > 0:
        raise WMHError(f"model.width: {config.width} must be positive")
    if int(n_channels) != n_channels or n_channels < 1:
        raise WMHError(f"n_channels: {n_channels} must be a positive integer (2 = FLAIR + T1, "
                       f"1 = FLAIR only)")


def model_input_names(config: ModelConfig) -> tuple[str, ...]:
    """The input names every model declares: ``("s1", "s2", "s3", "loc")``.

    The same for every architecture (unread inputs are ignored), so the data pipeline
    never depends on the config; see :func:`used_input_names` for the ones read.
    """
    del config  # every architecture declares the same inputs
    return INPUT_NAMES


def used_input_names(config: ModelConfig) -> tuple[str, ...]:
    """The inputs a model of this config actually reads."""
    scales = ("s1",) if config.arch == "ss" else SCALE_NAMES
    return scales + (() if config.loc == "none" else ("loc",))


def build_tower(n_channels: int, width: float, name: str) -> keras.Model:
    """The four valid ReLU convolutions, as a nested model of any spatial size.

    Args:
        n_channels: input channels.
        width: multiplies the filter counts.
        name: the nested model's name.

    Returns:
        A model mapping (batch, H, W, n_channels) to (batch, H-14, W-14, 110*width).
    """
    inputs = keras.Input((None, None, n_channels), name=f"{name}_input")
    features = inputs
    for index, (filters, size) in enumerate(zip(CONV_FILTERS, CONV_KERNEL_SIZES), start=1):
        layer_name = f"conv{index}"
        features = keras.layers.Conv2D(
            scaled_width(filters, width), size, padding="valid", activation="relu",
            kernel_initializer="glorot_uniform", name=layer_name,
            dtype=HEAD_DTYPE if layer_name in FLOAT32_TOWER_LAYERS else None)(features)
    return keras.Model(inputs, features, name=name)


def _dense(units: int, name: str, activation: str = "relu", dtype=None) -> keras.layers.Dense:
    return keras.layers.Dense(units, activation=activation,
                              kernel_initializer="glorot_uniform", name=name, dtype=dtype)


def build_model(config: ModelConfig, n_channels: int) -> keras.Model:
    """Builds the patch classifier of ``config.arch`` with location at ``config.loc``.

    Args:
        config: architecture, location injection, alpha, dropout_rate, width.
        n_channels: 2 (FLAIR, T1) or 1 (FLAIR only).

    Returns:
        An uncompiled model: inputs {"s1", "s2", "s3": (batch, 32, 32, n_channels),
        "loc": (batch, 8)}, output (batch, 2) softmax (column 1 = WMH).

    Raises:
        WMHError: unknown architecture or injection, bad dropout_rate, width or n_channels.
    """
    validate_config(config, n_channels)
    patch_shape = (PATCH_SIZE, PATCH_SIZE, n_channels)
    inputs = {name: keras.Input(patch_shape, name=name) for name in SCALE_NAMES}
    inputs["loc"] = keras.Input((N_LOCATION_FEATURES,), name="loc")
    location = keras.layers.Rescaling(config.alpha, name="loc_scaled",
                                      dtype=HEAD_DTYPE)(inputs["loc"])

    def with_location(features, where: str, name: str):
        if config.loc != where:
            return features
        dtype = None if where == "lcl" else HEAD_DTYPE  # lcl: part of the first layer
        return keras.layers.Concatenate(name=name, dtype=dtype)([features, location])

    width = config.width
    if config.arch in ("ss", "msef"):
        if config.arch == "ss":
            stacked, tower_channels = inputs["s1"], n_channels
        else:  # early fusion: the scales become input channels of one tower
            stacked = keras.layers.Concatenate(name="scales_stacked")(
                [inputs[name] for name in SCALE_NAMES])
            tower_channels = len(SCALE_NAMES) * n_channels
        tower = build_tower(tower_channels, width, "tower")
        flat = keras.layers.Flatten(name="flatten")(tower(stacked))
        flat = with_location(flat, "lcl", "flatten_loc")
        first = _dense(scaled_width(FC_UNITS[0], width), "fc1")(flat)
    else:
        shared = build_tower(n_channels, width, "tower") if config.arch == "msws" else None
        per_scale = []
        for name in SCALE_NAMES:
            tower = shared if shared is not None else build_tower(n_channels, width,
                                                                  f"tower_{name}")
            flat = keras.layers.Flatten(name=f"flatten_{name}")(tower(inputs[name]))
            flat = with_location(flat, "lcl", f"flatten_loc_{name}")
            per_scale.append(_dense(scaled_width(SCALE_FC_UNITS, width), f"fc1_{name}")(flat))
        first = keras.layers.Concatenate(name="fc1", dtype=HEAD_DTYPE)(per_scale)

    first = keras.layers.Dropout(config.dropout_rate, name="fc1_dropout",
                                 dtype=HEAD_DTYPE)(first)
    first = with_location(first, "ffcl", "fc1_loc")
    second = _dense(scaled_width(FC_UNITS[1], width), "fc2", dtype=HEAD_DTYPE)(first)
    second = keras.layers.Dropout(config.dropout_rate, name="fc2_dropout",
                                  dtype=HEAD_DTYPE)(second)
    second = with_location(second, "sfcl", "fc2_loc")
    outputs = _dense(N_CLASSES, "output", activation="softmax", dtype=HEAD_DTYPE)(second)
    return keras.Model(inputs, outputs, name=f"wmh_{config.arch}_{config.loc}")
