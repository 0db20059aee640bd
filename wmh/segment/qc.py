"""The QC image of one segmentation: what a reader checks at a glance.

Two rows over evenly spaced axial slices through the brain: FLAIR with the mask in red,
and the probability map (colour bar) with the periventricular band outlined. Radiological
convention (the patient's right on the viewer's left, marked R and L on each slice),
anterior up, and pixels drawn with the true aspect of the voxel spacing.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class QCVolumes:
    """Arrays on one grid in working orientation (canonical RAS, axial slices last).

    Attributes:
        flair: (X, Y, Z) intensities.
        mask: (X, Y, Z) bool segmentation.
        probability: (X, Y, Z) P(WMH).
        brain: (X, Y, Z) bool brain mask (sets the slice range).
        spacing: (3,) voxel size in mm along X, Y, Z.
        ventricle_distance: (X, Y, Z) mm to the nearest ventricle, or None.
        periventricular_mm: the band's outer edge.
    """

    flair: np.ndarray
    mask: np.ndarray
    probability: np.ndarray
    brain: np.ndarray
    spacing: np.ndarray
    ventricle_distance: Optional[np.ndarray] = None
    periventricular_mm: float = 10.0


def qc_slices(brain: np.ndarray, n_slices: int = 6) -> np.ndarray:
    """Axial slice indices evenly spaced through the brain's z extent (the whole volume
    when the mask is empty), excluding its first and last slice, in order, unique."""
    occupied = np.flatnonzero(np.asarray(brain).any(axis=(0, 1)))
    low, high = (occupied[0], occupied[-1]) if occupied.size else (0, brain.shape[2] - 1)
    chosen = np.linspace(low, high, n_slices + 2)[1:-1].round().astype(int)
    return np.unique(chosen)


def _display(plane: np.ndarray) -> np.ndarray:
    """(x, y) slice -> image rows = y with anterior up, columns = x with the patient's
    right (high x in RAS) on the viewer's left."""
    return plane.T[::-1, ::-1]


def qc_figure(volumes: QCVolumes, title: str, n_slices: int = 6):
    """The QC figure (a matplotlib Figure, not yet saved).

    Returns:
        The figure; its axes come row by row (FLAIR + mask, then probability), then the
        colour bar.
    """
    from matplotlib.figure import Figure

    chosen = qc_slices(volumes.brain, n_slices)
    aspect = float(volumes.spacing[1] / volumes.spacing[0])  # pixel height / width
    flair = volumes.flair
    inside = flair[volumes.brain] if volumes.brain.any() else flair[flair > 0]
    low, high = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)
    columns = len(chosen)
    figure = Figure(figsize=(2.4 * columns + 0.8, 5.6), dpi=100)
    rows = figure.subplots(2, columns, squeeze=False)
    image = None
    for column, z in enumerate(chosen):
        top, bottom = rows[0][column], rows[1][column]
        top.imshow(_display(flair[:, :, z]), cmap="gray", vmin=low, vmax=high, aspect=aspect,
                   interpolation="nearest")
        overlay = np.ma.masked_where(~_display(volumes.mask[:, :, z]),
                                     np.zeros(_display(volumes.mask[:, :, z]).shape))  # red
        top.imshow(overlay, cmap="autumn", alpha=0.6, vmin=0, vmax=1, aspect=aspect,
                   interpolation="nearest")
        top.set_title(f"z={z}", fontsize=8)
        image = bottom.imshow(_display(volumes.probability[:, :, z]), cmap="magma", vmin=0,
                              vmax=1, aspect=aspect, interpolation="nearest")
        if volumes.ventricle_distance is not None:
            bottom.contour(_display(volumes.ventricle_distance[:, :, z]),
                           levels=[volumes.periventricular_mm], colors="cyan",
                           linewidths=0.8)
        for axis in (top, bottom):
            axis.text(0.03, 0.5, "R", transform=axis.transAxes, color="yellow",
                      fontsize=9, fontweight="bold", ha="left", va="center")
            axis.text(0.97, 0.5, "L", transform=axis.transAxes, color="yellow",
                      fontsize=9, fontweight="bold", ha="right", va="center")
            axis.set_xticks([])
            axis.set_yticks([])
    rows[0][0].set_ylabel("FLAIR + mask", fontsize=8)
    rows[1][0].set_ylabel(f"P(WMH); cyan: {volumes.periventricular_mm:g} mm\n"
                          "periventricular edge", fontsize=8)
    colorbar = figure.colorbar(image, ax=list(rows[1]), fraction=0.03, pad=0.01)
    colorbar.set_label("P(WMH)", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure
