"""The working grid of a FLAIR and voxel-to-voxel resampling onto it and back."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wmh.errors import WMHError
from wmh.io import NativeGrid


IDENTITY_ATOL = 1e-6  # voxel units: a working grid this close to the native one is identical


SAME_SPACING_MM = 1e-4  # in-plane spacings closer than this to the target are kept as is


THICK_SLICE_RATIO = 1.25  # an axis this much coarser than the other two is the slice axis


def slice_axis(grid: NativeGrid) -> int:
    """The acquired slice axis of a FLAIR, as an axis of its RAS-oriented grid: the
    thickest axis when it is at least ``THICK_SLICE_RATIO`` times coarser than the other
    two (a 2D acquisition: axial 2, coronal 1, sagittal 0); else (near-isotropic 3D) the
    axial axis 2."""
    spacing = np.asarray(grid.working_spacing, dtype=np.float64)
    thickest = int(np.argmax(spacing))
    others = np.delete(spacing, thickest)
    if spacing[thickest] >= THICK_SLICE_RATIO * float(others.max()):
        return thickest
    return 2


def working_grid(grid: NativeGrid, inplane_spacing_mm: float,
                 ) -> tuple[tuple[int, int, int], np.ndarray]:
    """The working grid of a FLAIR: its RAS-oriented grid with the acquired slice axis
    (:func:`slice_axis`) last, slices kept, in-plane resampled to ``inplane_spacing_mm``
    over the same field of view. The two in-plane axes keep their RAS order: an axial
    scan works on (R, A, S) voxels, a coronal one on (R, S, A), a sagittal one on (A, S, R).

    Working voxel i along an in-plane axis sits at native continuous index
    (i + 0.5) r - 0.5, r = target / native spacing, so the first and last voxel edges
    coincide; when the native spacing already equals the target (within
    ``SAME_SPACING_MM``) r = 1 and, for an axial scan, the working grid is the native one.

    Returns:
        (X, Y, Z) shape and the (4, 4) working voxel -> world affine.
    """
    if not inplane_spacing_mm > 0:
        raise WMHError(f"option preprocess.inplane_spacing_mm: must be positive, "
                       f"got {inplane_spacing_mm}")
    native_spacing = grid.working_spacing
    native_shape = grid.working_shape
    across = slice_axis(grid)
    axes = [axis for axis in range(3) if axis != across] + [across]
    shape = []
    to_native = np.zeros((4, 4))
    to_native[3, 3] = 1.0
    for working_axis, axis in enumerate(axes):
        ratio = 1.0
        if working_axis < 2 and abs(native_spacing[axis] - inplane_spacing_mm) >= SAME_SPACING_MM:
            ratio = inplane_spacing_mm / native_spacing[axis]
        shape.append(max(1, int(round(native_shape[axis] / ratio))))
        to_native[axis, working_axis] = ratio
        to_native[axis, 3] = (ratio - 1.0) / 2.0
    return tuple(shape), grid.working_affine @ to_native


def working_axes(grid: NativeGrid, affine: np.ndarray) -> tuple[int, int, int]:
    """For each working axis, the axis of the FLAIR's RAS-oriented grid it runs along."""
    to_native = np.linalg.solve(grid.working_affine, affine)
    return tuple(int(np.argmax(np.abs(to_native[:3, axis]))) for axis in range(3))


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
        # the working voxel size along each native axis, in native voxels
        ratios = np.sqrt((to_native[:3, :3] ** 2).sum(axis=1))
        sigma = [max(0.0, (ratio - 1.0) / 2.0) for ratio in ratios]
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
    permuted = _permutation_copy(array, output_to_input, output_shape)
    if permuted is not None:
        return permuted
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


def _permutation_copy(array: np.ndarray, output_to_input: np.ndarray,
                      output_shape: tuple[int, ...]) -> "np.ndarray | None":
    """Exact resampling when the voxel map only permutes, flips and shifts axes by whole
    voxels (e.g. a coronal working grid of unchanged spacing <-> its RAS grid): a copy by
    indexing, 0 outside the input; None for any other map."""
    matrix, offset = output_to_input[:3, :3], output_to_input[:3, 3]
    rounded = np.rint(matrix)
    if (not np.allclose(matrix, rounded, atol=IDENTITY_ATOL)
            or not np.allclose(offset, np.rint(offset), atol=IDENTITY_ATOL)
            or not np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3))
            or not np.array_equal(np.abs(rounded).sum(axis=1), np.ones(3))):
        return None
    axes = [int(np.argmax(np.abs(rounded[:, k]))) for k in range(3)]
    source = np.transpose(array, axes + list(range(3, array.ndim)))
    indices, valid = [], []
    for k, axis in enumerate(axes):
        index = int(rounded[axis, k]) * np.arange(output_shape[k]) + int(np.rint(offset[axis]))
        inside = (index >= 0) & (index < array.shape[axis])
        indices.append(index[inside])
        valid.append(inside)
    out = np.zeros(tuple(output_shape) + array.shape[3:], dtype=array.dtype)
    out[np.ix_(*valid)] = source[np.ix_(*indices)]
    return out

