"""NumPy arrays with RAS affines <-> SimpleITK images (LPS world), resampling, threads."""

from __future__ import annotations

import contextlib

import numpy as np
import SimpleITK as sitk


_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (ITK's world)


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """(x, y, z) array with a voxel -> RAS world affine -> SimpleITK image (LPS world)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    _set_geometry(image, affine)
    return image


def reference_image(shape: tuple[int, int, int], affine: np.ndarray) -> sitk.Image:
    """An empty SimpleITK image with the grid of ``shape`` and ``affine`` (RAS)."""
    image = sitk.Image([int(n) for n in shape], sitk.sitkUInt8)
    _set_geometry(image, affine)
    return image


def _set_geometry(image: sitk.Image, affine: np.ndarray) -> None:
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (_LPS @ (affine[:3, :3] / spacing)).ravel()])
    image.SetOrigin([float(v) for v in _LPS @ affine[:3, 3]])


def from_sitk(image: sitk.Image) -> np.ndarray:
    """SimpleITK image -> (x, y, z[, components]) array."""
    array = sitk.GetArrayFromImage(image)
    axes = (2, 1, 0) + tuple(range(3, array.ndim))
    return np.ascontiguousarray(np.transpose(array, axes))


def grid_affine(image: sitk.Image) -> np.ndarray:
    """A SimpleITK image's voxel -> RAS world affine."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS @ np.array(image.GetOrigin())
    return affine


@contextlib.contextmanager
def sitk_threads(threads: int):
    """Sets SimpleITK's default thread count for the block, then restores it."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
             linear: bool = True) -> sitk.Image:
    """``image`` on ``reference``'s grid; transform maps reference points to image points."""
    transform = sitk.Transform() if transform is None else transform
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    return sitk.Resample(image, reference, transform, interpolator, 0.0, image.GetPixelID())


def downsample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Float copy on an isotropic ``spacing_mm`` grid with the same field of view and
    direction, Gaussian-smoothed along the axes it coarsens."""
    spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    new_spacing = np.full(3, float(spacing_mm))
    new_size = np.maximum(1, np.round(size * spacing / new_spacing)).astype(int)
    smooth = _smoothed_for(image, new_spacing)
    reference = sitk.Image([int(n) for n in new_size], sitk.sitkFloat32)
    reference.SetSpacing([float(v) for v in new_spacing])
    reference.SetDirection(image.GetDirection())
    # keep the first voxel's outer edge where it was
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((new_spacing - spacing) / 2.0)
    reference.SetOrigin([float(v) for v in origin])
    return resample(smooth, reference)


def _smoothed_for(image: sitk.Image, target_spacing) -> sitk.Image:
    """Anti-aliasing before resampling ``image`` onto a grid of ``target_spacing`` (mm),
    per axis (nothing where the image is already as coarse)."""
    spacing = np.array(image.GetSpacing())
    target = np.broadcast_to(np.asarray(target_spacing, dtype=np.float64), (3,))
    sigma = np.sqrt(np.maximum(target ** 2 - spacing ** 2, 0)) / 2.355
    if not np.any(sigma > 0.1 * spacing):
        return sitk.Cast(image, sitk.sitkFloat32)
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32),
                                           [float(max(v, 1e-3)) for v in sigma])
