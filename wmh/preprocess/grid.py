"""The working grid of a FLAIR and voxel-to-voxel resampling onto it and back."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wmh.errors import WMHError
from wmh.io import NativeGrid


IDENTITY_ATOL = 1e-6  # voxel units: a working grid this close to the native one is identical


SAME_SPACING_MM = 1e-4  # in-plane spacings closer than this to the target are kept as is


def working_grid(grid: NativeGrid, inplane_spacing_mm: float,
                 ) -> tuple[tuple[int, int, int], np.ndarray]:
    """The working grid of a FLAIR: its RAS-oriented grid, slices kept, in-plane
    resampled to ``inplane_spacing_mm`` over the same field of view.

    Working voxel i (along x or y) sits at native continuous index (i + 0.5) r - 0.5,
    r = target / native spacing, so the first and last voxel edges coincide; when the
    native spacing already equals the target (within ``SAME_SPACING_MM``) r = 1 and the
    working grid is the native one.

    Returns:
        (X, Y, Z) shape and the (4, 4) working voxel -> world affine.
    """
    if not inplane_spacing_mm > 0:
        raise WMHError(f"option preprocess.inplane_spacing_mm: must be positive, "
                       f"got {inplane_spacing_mm}")
    native_spacing = grid.working_spacing
    shape = list(grid.working_shape)
    to_native = np.eye(4)
    for axis in (0, 1):
        if abs(native_spacing[axis] - inplane_spacing_mm) < SAME_SPACING_MM:
            continue
        ratio = inplane_spacing_mm / native_spacing[axis]
        shape[axis] = max(1, int(round(shape[axis] / ratio)))
        to_native[axis, axis] = ratio
        to_native[axis, 3] = (ratio - 1.0) / 2.0
    return tuple(shape), grid.working_affine @ to_native


def to_working_grid(array: np.ndarray, grid: NativeGrid, shape: tuple[int, int, int],
                    affine: np.ndarray, order: int) -> np.ndarray:
    """A FLAIR-grid array in working orientation -> the working grid.

    Linear resampling (order 1) smooths in-plane first where it downsamples, against
    aliasing; order 0 (labels) is nearest neighbour. The identity grid returns a copy.
    """
    to_native = np.linalg.solve(grid.working_affine, affine)
    if tuple(shape) == tuple(array.shape[:3]) and np.allclose(to_native, np.eye(4),
                                                              atol=IDENTITY_ATOL):
        return np.array(array, copy=True)
    if order == 1:
        ratios = np.abs(np.diag(to_native)[:3])
        sigma = [max(0.0, (ratio - 1.0) / 2.0) for ratio in ratios[:2]] + [0.0]
        if any(value > 0 for value in sigma):
            sigma += [0.0] * (array.ndim - 3)
            array = ndimage.gaussian_filter(np.asarray(array, np.float32), sigma,
                                            mode="constant")
    return resample_voxels(array, to_native, shape, order)


def resample_voxels(array: np.ndarray, output_to_input: np.ndarray,
                    output_shape: tuple[int, ...], order: int) -> np.ndarray:
    """Resamples a 3D (or 3D + channels) array with a voxel-to-voxel affine.

    Args:
        array: (X, Y, Z[, C]) input array.
        output_to_input: (4, 4) output voxel index -> input voxel index.
        output_shape: (X', Y', Z') output grid.
        order: 0 nearest, 1 linear.

    Returns:
        (X', Y', Z'[, C]) array of the input's dtype; 0 outside the input.
    """
    array = np.asarray(array)
    if array.ndim == 4:
        return np.stack([resample_voxels(array[..., c], output_to_input, output_shape, order)
                         for c in range(array.shape[3])], axis=-1)
    matrix, offset = output_to_input[:3, :3], output_to_input[:3, 3]
    source = array.astype(np.float32) if array.dtype == bool else array
    if order == 0:
        # Nearest neighbour by rounding our own coordinates: scipy's order 0 rounds
        # half-way points differently across versions.
        grid = np.indices(output_shape, dtype=np.float64).reshape(3, -1)
        coords = np.rint(matrix @ grid + offset[:, None]).astype(np.int64)
        inside = np.all((coords >= 0) & (coords < np.array(array.shape)[:, None]), axis=0)
        out = np.zeros(int(np.prod(output_shape)), dtype=array.dtype)
        out[inside] = array[tuple(coords[:, inside])]
        return out.reshape(output_shape)
    result = ndimage.affine_transform(source.astype(np.float32), matrix, offset,
                                      output_shape=tuple(output_shape), order=order,
                                      mode="constant", cval=0.0)
    return result.astype(array.dtype) if array.dtype != bool else result > 0.5
