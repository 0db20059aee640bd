"""Brain masks known before registration (supplied, skull-stripped input) and their
plausibility checks."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from wmh.preprocess.grid import slice_axis, to_working_grid


SKULL_STRIPPED_MAX_ML = 2200.0  # a zero-background foreground smaller than this is a brain


SKULL_STRIPPED_MIN_ZERO_SHARE = 0.2  # share of exact zeros in a skull-stripped image


def skull_stripped_mask(image: np.ndarray, spacing: np.ndarray, slice_axis: int = 2,
                        ) -> Optional[np.ndarray]:
    """The brain of an already skull-stripped image, or None when it has a skull.

    Skull-stripped input has an exactly-zero background around a brain-sized
    foreground (at most ``SKULL_STRIPPED_MAX_ML``); the mask is that foreground with
    holes filled slice by slice across ``slice_axis`` (dark CSF inside the brain stays in).
    """
    zero_share = float(np.mean(image == 0))
    if zero_share < SKULL_STRIPPED_MIN_ZERO_SHARE:
        return None
    foreground = image > 0
    volume_ml = foreground.sum() * float(np.prod(spacing)) / 1000.0
    if volume_ml > SKULL_STRIPPED_MAX_ML:
        return None
    filled = np.stack([ndimage.binary_fill_holes(plane)
                       for plane in np.moveaxis(foreground, slice_axis, 0)], axis=slice_axis)
    return ndimage.binary_fill_holes(filled)


def _known_brain_mask(loaded, shape, affine, quality: dict) -> Optional[np.ndarray]:
    """The working-grid brain mask when it is known before registration: supplied by
    the user, or the foreground of skull-stripped input; else None."""
    grid = loaded.flair_grid
    if loaded.brain_mask is not None:
        quality["brain_mask"] = "supplied"
        mask = loaded.brain_mask
    else:
        mask = skull_stripped_mask(loaded.flair, grid.working_spacing, slice_axis(grid))
        if mask is None:
            return None
        quality["brain_mask"] = "skull-stripped input"
    return to_working_grid(mask.astype(np.uint8), grid, shape, affine, order=0) > 0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


def check_brain_mask(brain_mask: np.ndarray, spacing: np.ndarray, config, quality: dict,
                     slice_axis: int = 2) -> list[str]:
    """Warnings for a brain of implausible volume (outside ``config.brain_volume_ml``) or
    one that fills the field of view across its slices (on more than half of the
    border of the slice planes); records the figures in ``quality``."""
    warnings = []
    volume_ml = float(brain_mask.sum() * np.prod(spacing) / 1000.0)
    quality["brain_volume_ml"] = volume_ml
    low, high = config.brain_volume_ml
    if not low <= volume_ml <= high:
        warnings.append(f"implausible brain volume {volume_ml:.0f} ml (expected {low:.0f}-"
                        f"{high:.0f} ml): check the brain mask")
    inplane = [axis for axis in range(3) if axis != slice_axis]
    border = np.concatenate([np.take(brain_mask, index, axis=axis).ravel()
                             for axis in inplane for index in (0, -1)])
    quality["brain_border_share"] = float(border.mean())
    if border.mean() > 0.5:
        warnings.append(f"brain mask touches the field of view on {100 * border.mean():.0f}% "
                        "of its in-plane border: check the brain mask")
    return warnings
