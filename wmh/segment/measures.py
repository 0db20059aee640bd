"""Volumes and the lesion table from a mask on a grid of known voxel size (pure maths)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

CONNECTIVITY_26 = np.ones((3, 3, 3), bool)
LESION_COLUMNS = ("label", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                  "region", "max_probability")


def ventricle_distance(ventricles: np.ndarray, spacing) -> Optional[np.ndarray]:
    """3D distance (mm) of every voxel to the nearest ventricle voxel; None without any."""
    ventricles = np.asarray(ventricles) > 0
    if not ventricles.any():
        return None
    return ndimage.distance_transform_edt(~ventricles, sampling=np.asarray(spacing, float))


def periventricular_zone(distance: Optional[np.ndarray], shape, periventricular_mm: float):
    """Voxels within ``periventricular_mm`` of a ventricle (all False without ventricles)."""
    if distance is None:
        return np.zeros(shape, bool)
    return distance <= periventricular_mm


def lesion_volumes(mask: np.ndarray, ventricles: np.ndarray, spacing: np.ndarray,
                   periventricular_mm: float) -> dict:
    """Total, periventricular and deep WMH volume (mL) and the lesion count.

    Args:
        mask: (X, Y, Z) bool lesion mask on a grid with voxel size ``spacing`` (mm).
        ventricles: same grid, nonzero inside the lateral ventricles.
        periventricular_mm: lesion voxels within this 3D distance of a ventricle count as
            periventricular, the rest as deep.

    Returns:
        {"total_ml", "periventricular_ml", "deep_ml", "lesion_count"}.
    """
    zone = periventricular_zone(ventricle_distance(ventricles, spacing), np.shape(mask),
                                periventricular_mm)
    return zone_volumes(mask, zone, spacing)


def zone_volumes(mask: np.ndarray, zone: np.ndarray, spacing) -> dict:
    """:func:`lesion_volumes` with the periventricular zone already computed."""
    mask = np.asarray(mask, bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    _, count = ndimage.label(mask, structure=CONNECTIVITY_26)
    total = int(mask.sum())
    near = int((mask & zone).sum())
    return {"total_ml": total * voxel_ml, "periventricular_ml": near * voxel_ml,
            "deep_ml": (total - near) * voxel_ml, "lesion_count": int(count)}


def lesion_table(labels: np.ndarray, probability: np.ndarray, periventricular: np.ndarray,
                 affine: np.ndarray) -> list[dict]:
    """One row per labelled lesion (see ``LESION_COLUMNS``).

    Args:
        labels: (X, Y, Z) int lesion labels 1..N (0 background).
        probability: same grid, P(WMH).
        periventricular: same grid, bool periventricular zone; a lesion is
            'periventricular' when at least half of its voxels lie in it, else 'deep'.
        affine: voxel -> scanner (mm) affine of this grid; centroids are mapped with it.
    """
    labels = np.asarray(labels)
    count = int(labels.max()) if labels.size else 0
    if count == 0:
        return []
    # One pass finds the lesion voxels; every figure is then a per-label sum over them
    # alone (the same sums, in the same order, as scipy.ndimage's per-label statistics).
    where = np.flatnonzero(labels)
    label_of = labels.ravel()[where]
    voxels = np.bincount(label_of, minlength=count + 1)[1:].astype(np.float64)
    coordinates = np.unravel_index(where, labels.shape)
    centroids = np.stack([np.bincount(label_of, axis.astype(np.float64), count + 1)[1:]
                          for axis in coordinates], axis=1) / voxels[:, None]
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    world = (np.c_[centroids, np.ones(count)] @ np.asarray(affine, float).T)[:, :3]
    near = np.asarray(periventricular).ravel()[where].astype(np.float64)
    near_fraction = np.bincount(label_of, near, count + 1)[1:] / voxels
    peak = np.full(count + 1, -np.inf)
    np.maximum.at(peak, label_of, np.asarray(probability).ravel()[where])
    index = np.arange(1, count + 1)
    return [{"label": int(label), "volume_ml": float(n) * voxel_ml,
             "centroid_x_mm": float(w[0]), "centroid_y_mm": float(w[1]),
             "centroid_z_mm": float(w[2]),
             "region": "periventricular" if fraction >= 0.5 else "deep",
             "max_probability": float(p)}
            for label, n, w, fraction, p in zip(index, voxels, world, near_fraction,
                                                peak[1:])]
