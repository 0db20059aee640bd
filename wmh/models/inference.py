"""Voxel probabilities for slices: patch-wise (the reference) and whole-slice (fast).

:func:`predict_patchwise` is the paper's sliding-window classifier: cut the three patches
of each voxel with :func:`wmh.patches.extract_patches` and run the patch model.
:func:`predict_slices` gives the same numbers (to float rounding) for every brain voxel
of a stack of slices with the dense twin of :mod:`wmh.models.dense`, one window per
group of slices around the brain; MSEF, which has no dense form, is run patch-wise.
Both take a ``precision``: "fp32", "bf16" (towers in bfloat16, the rest float32; see
:mod:`wmh.models.precision`) or "auto" (what the measurements justify on this CPU).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from wmh.config import ModelConfig
from wmh.patches import extract_patches, padded_box_means
from wmh.location import N_LOCATION_FEATURES
from wmh.errors import WMHError
from wmh.models.dense import DEFAULT_FFT_SIZE, build_dense_model, context, used_scales
from wmh.models.precision import resolve_precision, tower_precision, tower_precision_of


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How :func:`predict_slices` runs.

    Attributes:
        batch_size: slices per dense pass (memory grows with it).
        mc_samples: 0 for a plain prediction; n > 0 runs n Monte Carlo dropout samples.
        fft_size: tile side of the FFT first layer when the dense model is built here.
        precision: "auto" (default: bf16 towers where this CPU's measurements justify
            it, else fp32), "fp32" or "bf16". It applies to a given dense model too,
            for this call only; probabilities are float32 either way.
        transform: applied to every pass's brain-voxel probabilities before the mean
            and standard deviation (e.g. a calibration, :mod:`wmh.calibration`); None
            keeps them.
    """

    batch_size: int = 4
    mc_samples: int = 0
    fft_size: int = DEFAULT_FFT_SIZE
    precision: str = "auto"
    transform: Optional[Callable] = None


class _Stack(NamedTuple):
    """The slices :func:`predict_slices` classifies: (Z, H, W, C) images, (Z, H, W, 8)
    location features, (Z, H, W) brain mask."""

    images: np.ndarray
    loc_maps: np.ndarray
    brain_mask: np.ndarray


def predict_patchwise(patch_model: keras.Model, image_slice: np.ndarray, loc_map: np.ndarray,
                      rows: np.ndarray, cols: np.ndarray, *, batch_size: int = 512,
                      training: bool = False, precision: str = "fp32") -> np.ndarray:
    """P(WMH) of chosen voxels of one slice, one patch triple per voxel.

    Args:
        patch_model: a model from :func:`wmh.models.build_model`.
        image_slice: (H, W, C) float32 slice (FLAIR first, then T1).
        loc_map: (H, W, 8) float32 location features of the slice.
        rows, cols: (N,) voxel coordinates.
        batch_size: patches per forward pass.
        training: True runs dropout (one Monte Carlo sample).
        precision: "fp32" (default: the reference), "bf16" or "auto" for the towers.

    Returns:
        (N,) float32 class-1 probabilities.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    box_means = padded_box_means(image_slice)
    probabilities = np.empty(len(rows), np.float32)
    with tower_precision(patch_model, resolve_precision(precision, "inference")):
        for start in range(0, len(rows), batch_size):
            chunk = slice(start, start + batch_size)
            inputs = extract_patches(image_slice, rows[chunk], cols[chunk], box_means)
            inputs["loc"] = np.asarray(loc_map[rows[chunk], cols[chunk]], np.float32)
            probabilities[chunk] = keras.ops.convert_to_numpy(
                patch_model(inputs, training=training))[:, 1]
    return probabilities


def is_dense_model(model: keras.Model) -> bool:
    """True for a model from :func:`wmh.models.dense.build_dense_model`."""
    return any(tensor.name == "image" for tensor in model.inputs)


def predict_slices(model: keras.Model, config: ModelConfig, image_slices: np.ndarray,
                   loc_maps: np.ndarray, brain_mask: np.ndarray,
                   options: InferenceOptions = InferenceOptions()
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """P(WMH) of every brain voxel of a stack of axial slices.

    Args:
        model: a patch model (its dense twin is built here: pass the dense model from
            :func:`build_dense_model` instead when predicting many cases) or a dense model.
        config: the model's config.
        image_slices: (Z, H, W, C) float32 slices.
        loc_maps: (Z, H, W, 8) float32 location features.
        brain_mask: (Z, H, W) bool; only these voxels are classified.
        options: batch size, Monte Carlo samples, FFT tile, precision, transform
            (:class:`InferenceOptions`).

    Returns:
        (Z, H, W) float32 probabilities, 0 outside the mask; with ``mc_samples`` > 0 a
        pair (mean, standard deviation) over the samples, each (Z, H, W) float32.

    Raises:
        WMHError: arrays of inconsistent shapes, or a negative ``mc_samples``.
    """
    image_slices = np.asarray(image_slices, np.float32)
    loc_maps = np.asarray(loc_maps, np.float32)
    brain_mask = np.asarray(brain_mask, bool)
    mc_samples = options.mc_samples
    _check_slices(image_slices, loc_maps, brain_mask, mc_samples)
    transform = options.transform or (lambda probabilities: probabilities)
    precision = resolve_precision(options.precision, "inference")
    # Running sums over Monte Carlo samples (one plain sample when mc_samples == 0).
    sums = np.zeros((2,) + brain_mask.shape, np.float64)

    if config.arch == "msef":  # no dense form: the sliding window is the computation
        if is_dense_model(model):
            raise WMHError("model.arch 'msef' needs the patch model, not a dense one")
        for z in np.flatnonzero(brain_mask.any(axis=(1, 2))):
            rows, cols = np.nonzero(brain_mask[z])
            for _ in range(max(mc_samples, 1)):
                probabilities = transform(predict_patchwise(
                    model, image_slices[z], loc_maps[z], rows, cols,
                    training=mc_samples > 0, precision=precision))
                sums[0, z, rows, cols] += probabilities
                sums[1, z, rows, cols] += np.square(probabilities, dtype=np.float64)
    else:
        dense = model if is_dense_model(model) else build_dense_model(
            model, config, image_slices.shape[-1], options.fft_size)
        with tower_precision(dense, precision):
            _predict_dense(dense, config, _Stack(image_slices, loc_maps, brain_mask),
                           dataclasses.replace(options, transform=transform), sums)

    mean = sums[0] / max(mc_samples, 1) * brain_mask
    if mc_samples == 0:
        return mean.astype(np.float32)
    variance = np.maximum(sums[1] / mc_samples - mean ** 2, 0.0) * brain_mask
    return mean.astype(np.float32), np.sqrt(variance).astype(np.float32)


def _check_slices(image_slices, loc_maps, brain_mask, mc_samples) -> None:
    if image_slices.ndim != 4:
        raise WMHError(f"image_slices: expected (Z, H, W, C), got shape {image_slices.shape}")
    if brain_mask.shape != image_slices.shape[:3]:
        raise WMHError(f"brain_mask: shape {brain_mask.shape} does not match the slices "
                       f"{image_slices.shape[:3]}")
    if loc_maps.shape != image_slices.shape[:3] + (N_LOCATION_FEATURES,):
        raise WMHError(f"loc_maps: expected shape {image_slices.shape[:3] + (8,)}, got "
                       f"{loc_maps.shape}")
    if mc_samples < 0:
        raise WMHError(f"mc_samples: {mc_samples} must be >= 0")


def _predict_dense(dense, config, stack: _Stack, options: InferenceOptions, sums) -> None:
    """Adds each sample's probabilities and their squares to ``sums`` (2, Z, H, W), a
    batch of similar-sized brain windows at a time (``options.transform`` is set)."""
    image_slices, loc_maps, brain_mask = stack
    batch_size, mc_samples, transform = (options.batch_size, options.mc_samples,
                                         options.transform)
    trunk, head = dense.get_layer("trunk"), dense.get_layer("head")
    multiple, margin = max(used_scales(config)), context(config)
    boxes = {}  # slice -> (top, left, rows, cols) of its brain's bounding box
    for z in np.flatnonzero(brain_mask.any(axis=(1, 2))):
        rows = np.flatnonzero(brain_mask[z].any(axis=1))
        cols = np.flatnonzero(brain_mask[z].any(axis=0))
        boxes[z] = (rows[0], cols[0], rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
    # Slices of similar box size share a window size, so little is computed in vain.
    order = sorted(boxes, key=lambda z: boxes[z][2] * boxes[z][3])
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        out_height = _round_up(max(boxes[z][2] for z in batch), multiple)
        out_width = _round_up(max(boxes[z][3] for z in batch), multiple)
        image = np.stack([_window(image_slices[z], boxes[z][0] - margin, boxes[z][1] - margin,
                                  out_height + 2 * margin - 1, out_width + 2 * margin - 1)
                          for z in batch])
        loc = np.stack([_window(loc_maps[z], boxes[z][0], boxes[z][1], out_height, out_width)
                        for z in batch])
        inside = np.stack([_window(brain_mask[z], boxes[z][0], boxes[z][1], out_height,
                                   out_width) for z in batch])
        features = _compiled(trunk)(keras.ops.convert_to_tensor(image),
                                    keras.ops.convert_to_tensor(loc))
        # The head is per voxel: run it on the brain voxels only, as a (1, n, 1, .) map.
        positions = np.argwhere(inside)  # (n, 3): window index, row, column
        features = tf.reshape(tf.gather_nd(features, positions), (1, -1, 1, features.shape[-1]))
        loc = keras.ops.convert_to_tensor(loc[inside].reshape(1, -1, 1, N_LOCATION_FEATURES))
        slices = np.asarray(batch)[positions[:, 0]]
        rows = positions[:, 1] + np.asarray([boxes[z][0] for z in batch])[positions[:, 0]]
        cols = positions[:, 2] + np.asarray([boxes[z][1] for z in batch])[positions[:, 0]]
        for _ in range(max(mc_samples, 1)):
            probabilities = head({"features": features, "loc": loc}, training=mc_samples > 0)
            probabilities = transform(keras.ops.convert_to_numpy(probabilities)[0, :, 0, 1])
            sums[0, slices, rows, cols] += probabilities
            sums[1, slices, rows, cols] += np.square(probabilities, dtype=np.float64)


def _compiled(trunk):
    """The trunk as one TensorFlow graph function: one trace per tower precision serves
    every window size (the shapes are left open), and TensorFlow then runs the whole
    trunk per batch instead of dispatching its ops one by one from Python (10-18 % less
    CPU time in dense inference). In fp32 the probabilities are bit-identical to the
    op-by-op run; with bf16 towers the graph rounds in other places (within 0.0083 of
    the op-by-op bf16 run on a real 3D FLAIR, and as close to fp32): BENCHMARKS.md,
    issue 15 speed."""
    if not isinstance(trunk, keras.Model):  # a stand-in (benchmarks' staged trunk)
        return lambda image, loc: trunk({"image": image, "loc": loc}, training=False)
    graphs = trunk.__dict__.setdefault("_wmh_graphs", {})  # untracked by Keras
    precision = tower_precision_of(trunk)
    if precision not in graphs:
        channels = next(tensor.shape[-1] for tensor in trunk.inputs if tensor.name == "image")
        graphs[precision] = tf.function(
            lambda image, loc: trunk({"image": image, "loc": loc}, training=False),
            input_signature=[tf.TensorSpec((None, None, None, channels), tf.float32),
                             tf.TensorSpec((None, None, None, N_LOCATION_FEATURES),
                                           tf.float32)])
    return graphs[precision]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _window(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """image[top:top+height, left:left+width] of an (H, W, ...) slice, zero outside it."""
    window = np.zeros((height, width) + image.shape[2:], image.dtype)
    rows = slice(max(top, 0), min(top + height, image.shape[0]))
    cols = slice(max(left, 0), min(left + width, image.shape[1]))
    window[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = \
        image[rows, cols]
    return window
