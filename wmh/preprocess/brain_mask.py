"""Brain masks known before registration (supplied, skull-stripped input), the brain
extracted from a head with skull, and their plausibility checks."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from wmh.preprocess.grid import slice_axis, to_working_grid
from wmh.preprocess.intensity import _otsu


SKULL_STRIPPED_MAX_ML = 2200.0  # a zero-background foreground smaller than this is a brain


SKULL_STRIPPED_MIN_ZERO_SHARE = 0.2  # share of exact zeros in a skull-stripped image


def zero_background(image: np.ndarray) -> bool:
    """True when at least ``SKULL_STRIPPED_MIN_ZERO_SHARE`` of the image is exactly 0: a
    background already removed (skull-stripped, or masked by the scanner or a tool)."""
    return float(np.mean(image == 0)) >= SKULL_STRIPPED_MIN_ZERO_SHARE


def skull_stripped_mask(image: np.ndarray, spacing: np.ndarray, slice_axis: int = 2,
                        ) -> Optional[np.ndarray]:
    """The brain of an already skull-stripped image, or None when it has a skull.

    Skull-stripped input has an exactly-zero background around a brain-sized
    foreground (at most ``SKULL_STRIPPED_MAX_ML``); the mask is that foreground with
    holes filled slice by slice across ``slice_axis`` (dark CSF inside the brain stays in).
    """
    if not zero_background(image):
        return None
    foreground = image > 0
    volume_ml = foreground.sum() * float(np.prod(spacing)) / 1000.0
    if volume_ml > SKULL_STRIPPED_MAX_ML:
        return None
    return ndimage.binary_fill_holes(fill_holes_per_plane(foreground, slice_axis))


def fill_holes_per_plane(mask: np.ndarray, axis: int) -> np.ndarray:
    """The holes of each plane across ``axis`` filled, as ``binary_fill_holes`` fills a
    2D plane (4-connected background), in one pass over the volume: the background is
    grown from the border with a structuring element that stays inside the plane."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    plane = [slice(None)] * 3
    plane[axis] = 1
    structure[tuple(plane)] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(mask, structure=structure)


# Brain extraction of a head with skull (:func:`extract_brain`), on the 2 mm atlas grid.
EXTRACTION_SEED_DEPTH_MM = 25.0  # deeper inside the head than scalp and skull: brain
EXTRACTION_TISSUE_SHARE = 0.6  # brain tissue: above this share of the seed's median
EXTRACTION_ERODE_MM = 4.5  # cuts tissue bridges across the dark CSF and inner-table band
EXTRACTION_REGROW_MM = 1.0  # regrown past the erosion, inside the tissue
EXTRACTION_CLOSE_MM = 4.0  # closing: sulcal CSF back inside the brain


def head_mask(image: np.ndarray) -> np.ndarray:
    """The head: the largest component above the Otsu threshold (closed twice), with the
    holes of each plane along every axis filled, then those of the volume. Filling plane
    by plane also fills a head the field of view cuts open (no closed 3D shell)."""
    foreground = ndimage.binary_closing(image > _otsu(image), iterations=2)
    foreground = _largest_component(foreground)
    filled = foreground.copy()
    for axis in range(3):
        filled |= fill_holes_per_plane(foreground, axis)
    return ndimage.binary_fill_holes(filled)


def extract_brain(image: np.ndarray, spacing) -> Optional[np.ndarray]:
    """The brain of a head with skull (FLAIR or T1), without an atlas; None when there is
    no head deep enough to hold one.

    Voxels more than ``EXTRACTION_SEED_DEPTH_MM`` inside the head (:func:`head_mask`) are
    brain in any adult head; tissue is what is brighter than ``EXTRACTION_TISSUE_SHARE``
    of their median, which leaves out CSF and bone. Eroding the tissue by
    ``EXTRACTION_ERODE_MM`` cuts its bridges to the scalp across the dark band of CSF and
    inner table; the eroded component holding most of the seed, grown back inside the
    tissue, holes filled and closed by ``EXTRACTION_CLOSE_MM``, is the brain.
    """
    spacing = np.asarray(spacing, float)
    head = head_mask(image)
    depth = ndimage.distance_transform_edt(head, sampling=spacing)
    seed = depth > EXTRACTION_SEED_DEPTH_MM
    if not seed.any():
        return None
    tissue = head & (image > EXTRACTION_TISSUE_SHARE * float(np.median(image[seed])))
    core = ndimage.distance_transform_edt(tissue, sampling=spacing) > EXTRACTION_ERODE_MM
    components, count = ndimage.label(core)
    votes = np.bincount(components[seed], minlength=count + 1)
    votes[0] = 0
    if count == 0 or votes.max() == 0:
        return None
    core = components == int(np.argmax(votes))
    reach = EXTRACTION_ERODE_MM + EXTRACTION_REGROW_MM
    brain = ndimage.binary_fill_holes(
        tissue & (ndimage.distance_transform_edt(~core, sampling=spacing) <= reach))
    dilated = ndimage.distance_transform_edt(~brain, sampling=spacing) <= EXTRACTION_CLOSE_MM
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing) > EXTRACTION_CLOSE_MM
    return ndimage.binary_fill_holes(closed | brain)


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
