"""Intensities: N4 bias-field correction, robust normalisation, Otsu threshold."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from wmh.preprocess.sitk_bridge import from_sitk, to_sitk


def bias_correct(image: np.ndarray, brain_mask: np.ndarray, affine: np.ndarray,
                 config) -> np.ndarray:
    """N4 bias-field correction fitted inside the brain on a shrunk image.

    Args:
        image: (X, Y, Z) float32 intensities (non-negative).
        brain_mask: (X, Y, Z) bool.
        affine: (4, 4) voxel -> world, for the voxel sizes.

    Returns:
        (X, Y, Z) float32 corrected image (the field is divided out everywhere).
    """
    full = to_sitk(np.maximum(image, 0).astype(np.float32) + 1e-3, affine)
    mask = to_sitk(brain_mask.astype(np.uint8), affine)
    spacing = np.array(full.GetSpacing())
    shrink = [int(max(1, round(config.n4_shrink_mm / s))) for s in spacing]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(config.n4_iterations)] * 3)
    corrector.Execute(sitk.Shrink(full, shrink), sitk.Shrink(mask, shrink))
    log_field = from_sitk(corrector.GetLogBiasFieldAsImage(full))
    return (np.maximum(image, 0) / np.exp(log_field)).astype(np.float32)


def normalise_intensities(image: np.ndarray, brain_mask: np.ndarray,
                          percentiles: tuple[float, float], ceiling: float = 1.0) -> np.ndarray:
    """Robust per-subject scaling: the brain's low/high percentiles -> 0/1, clipped to
    [0, ``ceiling``]; 0 outside the brain (the patch padding convention)."""
    low, high = np.percentile(image[brain_mask], percentiles)
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0.0, ceiling)
    return np.where(brain_mask, scaled, 0.0).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of an intensity array (256 bins)."""
    values = values[values > 0] if np.any(values > 0) else values.ravel()
    histogram, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = np.cumsum(histogram)
    total = weight[-1]
    mean = np.cumsum(histogram * centres)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(
        weight * (total - weight), 1e-12)
    return float(centres[int(np.argmax(between))])
