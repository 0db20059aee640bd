"""The fully convolutional twin of a patch classifier: one pass per slice, exact.

The patch network classifies one voxel from its three 32x32 patches. Run over a whole
slice it repeats almost all of that work for every neighbour, so whole-slice inference
reformulates it (paper, "Fully convolutional segmentation network") and gives the same
probabilities up to float rounding:

* Scale k reads ``B_k``, the k x k box mean of the zero-padded slice, at stride k
  (:mod:`wmh.data`). Box filter (``AveragePooling2D`` with stride 1), then split ``B_k``
  into its k*k polyphase components (:class:`SpaceToBatch`): on component (a, b) the
  stride-k patch grid is an ordinary unit-stride grid, so the tower and the first fully
  connected layer run undilated, and :class:`BatchToSpace` interleaves the results back.
* The tower's valid convolutions are unchanged (same layers, bigger input).
* The first fully connected layer reads the 18x18 tower output of a patch: densely it is
  an 18x18 valid convolution with 110 -> 300 channels (3 x 100 for MSIW/MSWS), ~10.7 M
  multiply-adds per voxel, ~80x a tower. :class:`FFTConv2D` does it by overlap-save FFT
  on 64x64 tiles (47x47 outputs each), where each frequency is a 110 x 300 matrix
  product: ~0.13 M real multiply-adds per voxel.
* Location features enter per voxel: for ``lcl`` as a bias map added to the first layer
  before its ReLU, for ``ffcl``/``sfcl`` by concatenation as in the patch model.
* Later fully connected layers are ``Dense`` layers on (batch, H, W, units) maps, i.e.
  1x1 convolutions; their dropout draws a mask per voxel, exactly as patch-wise.

Geometry. The dense model takes a window of slices with context: ``"image"``
(batch, h + 2c - 1, w + 2c - 1, C) where c = :func:`context` (16 for SS, 64 for the
multi-scale models), zero outside the slice, and ``"loc"`` (batch, h, w, 8); it returns
(batch, h, w, 2) softmax for the h x w voxels in the middle. h and w must be multiples of
the largest scale (4). Output (i, j) is the voxel at image-window (i + c, j + c).

MSEF has no such form: early fusion sums, in its first convolution, patch pixels that
sit k voxels apart at scale k, so no grid of first-layer responses is shared between
neighbouring voxels and every voxel needs its own tower. :func:`build_dense_model`
refuses it and :func:`wmh.models.inference.predict_slices` runs it patch-wise.

The model is split into a deterministic ``trunk`` (up to the first fully connected
layer's ReLU, >99% of the cost) and a cheap ``head`` holding every dropout, so Monte
Carlo dropout reruns only the head.

Precision (:mod:`wmh.models.precision`): with ``precision="bf16"`` the towers'
convolutions but the first compute in bfloat16 (where bf16 pays: 1.9x on AVX-512 BF16);
everything else stays float32 whatever the global Keras policy: the box means and
polyphase split, the first convolution (raw intensities), the FFT first layer (its
transforms and 110-channel frequency products sum many terms, where bf16's 8-bit
mantissa loses accuracy; at width 1 it is half of the fp32 time, which bounds the bf16
speed-up: BENCHMARKS.md), location, head, softmax and probabilities. The weights are
float32 either way.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from wmh.config import ModelConfig
from wmh.patches import SCALE_NAMES, SCALES
from wmh.location import N_LOCATION_FEATURES
from wmh.errors import WMHError
from wmh.models.patch import (
    FC_UNITS,
    N_CLASSES,
    TOWER_OUTPUT_SIDE,
    build_tower,
    scaled_width,
    validate_config,
)
from wmh.models.precision import precision_scope, resolve_precision, set_tower_precision

DEFAULT_FFT_SIZE = 64  # tile side of the FFT convolution: 47x47 outputs per 64x64 tile


def context(config: ModelConfig) -> int:
    """Voxels of context the dense model needs on each side of its output window."""
    return 16 * max(used_scales(config))


def used_scales(config: ModelConfig) -> tuple[int, ...]:
    """Scale factors the architecture reads: (1,) for SS, (1, 2, 4) otherwise."""
    return SCALES[:1] if config.arch == "ss" else SCALES


class _PolyphaseLayer(keras.layers.Layer):
    """Shared state of the polyphase split/merge layers: the scale factor k."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="wmh")
class SpaceToBatch(_PolyphaseLayer):
    """Splits maps into their k x k polyphase components, stacked on the batch axis.

    (B, H, W, C) -> (k*k*B, H/k, W/k, C); component (a, b) holds rows a, a+k, ... and
    columns b, b+k, ...; H and W must be multiples of k.
    """

    def call(self, inputs):
        k = self.factor
        if k == 1:
            return inputs
        shape = tf.shape(inputs)
        batch, height, width, channels = shape[0], shape[1], shape[2], inputs.shape[-1]
        parts = tf.reshape(inputs, (batch, height // k, k, width // k, k, channels))
        parts = tf.transpose(parts, (2, 4, 0, 1, 3, 5))
        return tf.reshape(parts, (k * k * batch, height // k, width // k, channels))

    def compute_output_shape(self, input_shape):
        return (None, None, None, input_shape[-1])


@keras.saving.register_keras_serializable(package="wmh")
class BatchToSpace(_PolyphaseLayer):
    """Inverse of :class:`SpaceToBatch`: (k*k*B, h, w, C) -> (B, h*k, w*k, C)."""

    def call(self, inputs):
        k = self.factor
        if k == 1:
            return inputs
        shape = tf.shape(inputs)
        batch, height, width, channels = (shape[0] // (k * k), shape[1], shape[2],
                                          inputs.shape[-1])
        parts = tf.reshape(inputs, (k, k, batch, height, width, channels))
        parts = tf.transpose(parts, (2, 3, 0, 4, 1, 5))
        return tf.reshape(parts, (batch, height * k, width * k, channels))

    def compute_output_shape(self, input_shape):
        return (None, None, None, input_shape[-1])


def kernel_spectrum(kernel: np.ndarray, fft_size: int) -> np.ndarray:
    """The frequency-domain weights of :class:`FFTConv2D` for a spatial kernel.

    Args:
        kernel: (K, K, C, U) valid cross-correlation kernel (Conv2D layout).
        fft_size: tile side N >= K.

    Returns:
        (2, N * (N//2 + 1), C, U) float32: real and imaginary parts of conj(rfft2(kernel
        zero-padded to N x N)), row-major over the (N, N//2 + 1) frequencies; computed in
        float64.
    """
    size, _, channels, units = kernel.shape
    bins = fft_size * (fft_size // 2 + 1)
    spectrum = np.empty((2, bins, channels, units), np.float32)
    for start in range(0, units, 16):  # chunks keep the float64 transient small
        chunk = kernel[..., start:start + 16].astype(np.float64)
        padded = np.zeros((fft_size, fft_size) + chunk.shape[2:])
        padded[:size, :size] = chunk
        transformed = np.conj(np.fft.rfft2(padded, axes=(0, 1))).reshape(bins, channels, -1)
        spectrum[0, :, :, start:start + transformed.shape[-1]] = transformed.real
        spectrum[1, :, :, start:start + transformed.shape[-1]] = transformed.imag
    return spectrum


def _inverse_dft_matrices(fft_size: int, outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Real matrices that take the four real products of a half spectrum to the first
    ``outputs`` x ``outputs`` values of its inverse 2-D real DFT (see FFTConv2D.call)."""
    size, half = fft_size, fft_size // 2 + 1
    rows = np.exp(2j * np.pi * np.outer(np.arange(outputs), np.arange(size)) / size) / size
    real, imaginary = rows.real, rows.imag
    # Y = (XrKr - XiKi) + i (XrKi + XiKr); Z = rows @ Y, laid out (output row, Re/Im).
    # Products are indexed [kernel part b][input part a]: 0 = real, 1 = imaginary.
    row_matrix = np.zeros((outputs, 2, 2, 2, size))
    row_matrix[:, 0, 0, 0], row_matrix[:, 0, 1, 1] = real, -real  # Re Z from XrKr, XiKi
    row_matrix[:, 0, 1, 0], row_matrix[:, 0, 0, 1] = -imaginary, -imaginary  # XrKi, XiKr
    row_matrix[:, 1, 1, 0], row_matrix[:, 1, 0, 1] = real, real  # Im Z from XrKi, XiKr
    row_matrix[:, 1, 0, 0], row_matrix[:, 1, 1, 1] = imaginary, -imaginary  # XrKr, XiKi
    # Columns: a real result from the half spectrum (Hermitian symmetry doubles the inner
    # frequencies).
    weights = np.where((np.arange(half) == 0) | (np.arange(half) == size // 2), 1.0, 2.0)
    columns = np.exp(2j * np.pi * np.outer(np.arange(outputs), np.arange(half)) / size) \
        * weights / size
    column_matrix = np.concatenate([columns.real, -columns.imag], axis=1)  # (out, Re|Im)
    return (row_matrix.reshape(2 * outputs, 4 * size).astype(np.float32),
            column_matrix[None].astype(np.float32))


@keras.saving.register_keras_serializable(package="wmh")
class FFTConv2D(keras.layers.Layer):
    """Valid K x K cross-correlation by overlap-save FFT on N x N tiles, plus bias.

    Equals ``Conv2D(filters, K, padding="valid")`` up to float rounding. Per N x N tile
    (S x S outputs, S = N-K+1) it costs one real FFT per input channel, then per
    frequency a (tiles x C) x (C x filters) product for each of the four real/imaginary
    pairs, then an inverse DFT done as two real matrix products that also combine the
    pairs and keep only the S x S valid outputs. Weights: ``spectrum`` (see
    :func:`kernel_spectrum`) and ``bias``, both non-trainable (inference only).

    Input (B, H, W, C) -> output (B, H-K+1, W-K+1, filters).
    """

    def __init__(self, filters: int, kernel_size: int, fft_size: int = DEFAULT_FFT_SIZE,
                 **kwargs):
        super().__init__(**kwargs)
        if fft_size < kernel_size:
            raise ValueError(f"fft_size {fft_size} is smaller than kernel_size {kernel_size}")
        self.filters, self.kernel_size, self.fft_size = (int(filters), int(kernel_size),
                                                         int(fft_size))
        self.step = self.fft_size - self.kernel_size + 1
        self._row_matrix, self._column_matrix = _inverse_dft_matrices(self.fft_size, self.step)

    def build(self, input_shape):
        bins = self.fft_size * (self.fft_size // 2 + 1)
        self.spectrum = self.add_weight(shape=(2, bins, input_shape[-1], self.filters),
                                        initializer="zeros", trainable=False, name="spectrum")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros",
                                    trainable=False, name="bias")

    def set_kernel(self, kernel: np.ndarray, bias: np.ndarray) -> None:
        """Loads a spatial (K, K, C, filters) kernel and (filters,) bias."""
        self.spectrum.assign(kernel_spectrum(kernel, self.fft_size))
        self.bias.assign(bias)

    def call(self, inputs):
        size, step, units = self.fft_size, self.step, self.filters
        half = size // 2 + 1
        shape = tf.shape(inputs)
        batch, height, width, channels = shape[0], shape[1], shape[2], inputs.shape[-1]
        out_height, out_width = height - self.kernel_size + 1, width - self.kernel_size + 1
        down, across = -(-out_height // step), -(-out_width // step)
        # Overlapping N x N tiles at stride S, gathered as (tiles, C, N, N). Tiles of the
        # last row/column reach past the input: clipping the index repeats edge values
        # there, which only reach outputs past the valid ones (cropped below), since no
        # valid output wraps around its tile.
        tile_rows = tf.minimum(tf.range(down)[:, None] * step + tf.range(size)[None, :],
                               height - 1)
        tile_cols = tf.minimum(tf.range(across)[:, None] * step + tf.range(size)[None, :],
                               width - 1)
        index = tile_rows[:, None, :, None] * width + tile_cols[None, :, None, :]
        tiles = tf.gather(tf.reshape(inputs, (batch, -1, channels)), index, axis=1)
        n_tiles = batch * down * across
        tiles = tf.transpose(tf.reshape(tiles, (n_tiles, size * size, channels)), (0, 2, 1))
        spectra = tf.signal.rfft2d(tf.reshape(tiles, (n_tiles, channels, size, size)))
        # Frequency-major real and imaginary planes: (1, 2, bins, tiles, C).
        spectra = tf.transpose(tf.reshape(spectra, (n_tiles * channels, size * half)))
        planes = tf.transpose(tf.reshape(tf.bitcast(spectra, tf.float32), (-1, 2)))
        planes = tf.reshape(planes, (1, 2, size * half, n_tiles, channels))
        # Per frequency, the four real products [kernel part][input part]: (2, 2, bins, T, U).
        products = tf.matmul(planes, self.spectrum[:, None])
        # Inverse DFT over frequency rows, combining the four products: (S, Re|Im, half, T U).
        rows = tf.matmul(self._row_matrix, tf.reshape(products, (4 * size, -1)))
        # Inverse real DFT over frequency columns: (S rows, S cols, tiles * units).
        result = tf.matmul(self._column_matrix, tf.reshape(rows, (step, 2 * half, -1)))
        result = tf.reshape(result, (step, step, batch, down, across, units))
        result = tf.transpose(result, (2, 3, 0, 4, 1, 5))
        result = tf.reshape(result, (batch, down * step, across * step, units))
        return result[:, :out_height, :out_width, :] + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "fft_size": self.fft_size}


def build_dense_model(patch_model: keras.Model, config: ModelConfig, n_channels: int,
                      fft_size: int = DEFAULT_FFT_SIZE, precision: str = "fp32",
                      ) -> keras.Model:
    """Builds the whole-slice twin of ``patch_model`` with copies of its weights.

    Args:
        patch_model: a model from :func:`wmh.models.build_model` (trained or not).
        config: the config it was built from.
        n_channels: its input channels.
        fft_size: tile side of the FFT first layer (memory ~ fft_size^2 * weights).
        precision: "fp32", "bf16" (the towers' convolutions in bfloat16) or "auto"
            (resolved for inference on this CPU); :func:`wmh.models.predict_slices`
            can switch it per call.

    Returns:
        A model with inputs {"image": (B, h+2c-1, w+2c-1, n_channels), "loc":
        (B, h, w, 8)}, c = :func:`context`, h and w multiples of max(scale), and output
        (B, h, w, 2) softmax. It holds two nested models: ``"trunk"`` (image, loc ->
        (B, h, w, units) first-layer activations) and ``"head"`` (those, loc -> softmax).

    Raises:
        WMHError: for MSEF (no fully convolutional form; predict it patch-wise).
    """
    validate_config(config, n_channels)
    if config.arch == "msef":
        raise WMHError("model.arch 'msef' has no fully convolutional form (its first "
                       "convolution mixes scales of different strides); predict patch-wise")
    precision = resolve_precision(precision, "inference")
    with precision_scope("fp32"):  # every layer float32 whatever the global policy
        dense = _build_dense(patch_model, config, n_channels, fft_size)
    set_tower_precision(dense, precision)
    return dense


def _build_dense(patch_model: keras.Model, config: ModelConfig, n_channels: int,
                 fft_size: int) -> keras.Model:
    width = config.width
    margin = context(config)
    image = keras.Input((None, None, n_channels), name="image")
    loc = keras.Input((None, None, N_LOCATION_FEATURES), name="loc")
    location = keras.layers.Rescaling(config.alpha, name="loc_scaled")(loc)

    shared_tower = None
    if config.arch == "msws":
        shared_tower = build_tower(n_channels, width, "tower")
        shared_tower.set_weights(patch_model.get_layer("tower").get_weights())
    streams = []
    for name, k in zip(SCALE_NAMES, used_scales(config)):
        suffix = "" if config.arch == "ss" else f"_{name}"
        view = image
        if margin > 16 * k:
            view = keras.layers.Cropping2D(margin - 16 * k, name=f"crop{suffix}")(view)
        if k > 1:
            view = keras.layers.AveragePooling2D(k, strides=1, padding="valid",
                                                 name=f"box_mean{suffix}")(view)
        phases = SpaceToBatch(k, name=f"phases{suffix}")(view)
        if shared_tower is not None:
            tower = shared_tower
        else:
            tower = build_tower(n_channels, width, f"tower{suffix}")
            tower.set_weights(patch_model.get_layer(f"tower{suffix}").get_weights())
        fc1_patch = patch_model.get_layer(f"fc1{suffix}")
        kernel, bias = fc1_patch.get_weights()
        units = kernel.shape[1]
        tower_features = tower(phases)
        features = FFTConv2D(units, TOWER_OUTPUT_SIDE, fft_size, name=f"fc1_conv{suffix}")
        pre_activation = BatchToSpace(k, name=f"interleave{suffix}")(features(tower_features))
        n_conv = TOWER_OUTPUT_SIDE ** 2 * tower_features.shape[-1]
        features.set_kernel(kernel[:n_conv].reshape(
            TOWER_OUTPUT_SIDE, TOWER_OUTPUT_SIDE, tower_features.shape[-1], units), bias)
        if config.loc == "lcl":
            location_term = keras.layers.Dense(units, use_bias=False,
                                               name=f"fc1_loc{suffix}")
            pre_activation = keras.layers.Add(name=f"fc1_add_loc{suffix}")(
                [pre_activation, location_term(location)])
            location_term.set_weights([kernel[n_conv:]])
        streams.append(keras.layers.ReLU(name=f"fc1_relu{suffix}")(pre_activation))
    first = streams[0] if len(streams) == 1 else keras.layers.Concatenate(name="fc1")(streams)
    trunk = keras.Model({"image": image, "loc": loc}, first, name="trunk")

    head = _build_head(patch_model, config, first.shape[-1])
    outputs = head({"features": trunk({"image": image, "loc": loc}), "loc": loc})
    return keras.Model({"image": image, "loc": loc}, outputs, name=f"dense_{patch_model.name}")


def _build_head(patch_model: keras.Model, config: ModelConfig, n_features: int) -> keras.Model:
    """Dropout, second fully connected layer and softmax, per voxel (1x1 convolutions)."""
    features = keras.Input((None, None, n_features), name="features")
    loc = keras.Input((None, None, N_LOCATION_FEATURES), name="loc")
    location = keras.layers.Rescaling(config.alpha, name="loc_scaled")(loc)

    def with_location(tensor, where: str, name: str):
        if config.loc != where:
            return tensor
        return keras.layers.Concatenate(name=name)([tensor, location])

    hidden = keras.layers.Dropout(config.dropout_rate, name="fc1_dropout")(features)
    hidden = with_location(hidden, "ffcl", "fc1_loc")
    second = keras.layers.Dense(scaled_width(FC_UNITS[1], config.width), activation="relu",
                                name="fc2")
    hidden = keras.layers.Dropout(config.dropout_rate, name="fc2_dropout")(second(hidden))
    hidden = with_location(hidden, "sfcl", "fc2_loc")
    output = keras.layers.Dense(N_CLASSES, activation="softmax", name="output")
    probabilities = output(hidden)
    second.set_weights(patch_model.get_layer("fc2").get_weights())
    output.set_weights(patch_model.get_layer("output").get_weights())
    return keras.Model({"features": features, "loc": loc}, probabilities, name="head")
