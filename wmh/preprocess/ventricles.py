"""Lateral ventricles: the warped atlas grown or shrunk to the subject's CSF."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


VENTRICLE_SEARCH_MM = 8.0  # how far outside the atlas ventricles enlarged ones are sought


MIDLINE_MM = 2.0  # |MNI x| below this is the septum / third ventricle, never lateral


def refine_ventricles(atlas_ventricles: np.ndarray, images: np.ndarray,
                      brain_mask: np.ndarray, mni_x: np.ndarray, spacing: np.ndarray,
                      ) -> np.ndarray:
    """Lateral ventricles from the warped atlas, grown or shrunk to the subject's CSF.

    Elderly ventricles are often much larger than the template's. A voxel is ventricular
    CSF when it is darker, in every channel, than halfway between the atlas ventricles'
    median and the surrounding (3-10 mm) tissue's median, lies within
    ``VENTRICLE_SEARCH_MM`` of the atlas ventricles, off the midline, and is connected to
    them. Left / right follows the sign of MNI x.

    Args:
        atlas_ventricles: (X, Y, Z) uint8 warped atlas labels (1 left, 2 right).
        images: (X, Y, Z, C) normalised intensities.
        brain_mask: (X, Y, Z) bool.
        mni_x: (X, Y, Z) MNI x in mm.
        spacing: (3,) voxel size in mm.

    Returns:
        (X, Y, Z) uint8, 1 left and 2 right lateral ventricle.
    """
    core = (atlas_ventricles > 0) & brain_mask
    if core.sum() < 10:
        return atlas_ventricles
    distance = ndimage.distance_transform_edt(~core, sampling=spacing)
    surrounding = brain_mask & (distance > 3.0) & (distance < 10.0)
    dark = brain_mask & (np.abs(mni_x) >= MIDLINE_MM) & (distance <= VENTRICLE_SEARCH_MM)
    for channel in range(images.shape[-1]):
        image = images[..., channel]
        csf_level = float(np.median(image[core]))
        tissue_level = float(np.median(image[surrounding])) if surrounding.any() else 1.0
        if tissue_level <= csf_level:  # no CSF contrast: keep the atlas
            return atlas_ventricles
        dark &= image < (csf_level + tissue_level) / 2.0
    components, _ = ndimage.label(dark)
    touching = np.unique(components[core & dark])
    ventricles = np.isin(components, touching[touching > 0])
    result = np.zeros(atlas_ventricles.shape, dtype=np.uint8)
    result[ventricles & (mni_x < 0)] = 1
    result[ventricles & (mni_x > 0)] = 2
    return result
