"""Registrations: T1 -> FLAIR (rigid) and MNI152 -> subject (affine, then demons)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from wmh.preprocess.atlas import Atlas, load_atlas
from wmh.preprocess.format import PreparationFailed
from wmh.preprocess.intensity import _otsu
from wmh.preprocess.sitk_bridge import (_LPS, _smoothed_for, downsample, from_sitk,
                                        grid_affine, resample, to_sitk)


def _itk_seed(config) -> int:
    """SimpleITK reads seed 0 as 'use the wall clock': shift seeds by one."""
    return int(config.seed) + 1


def _mutual_information(config, iterations: int) -> sitk.ImageRegistrationMethod:
    """Mattes mutual information, seeded random sampling, two resolution levels."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    share = float(config.registration_sampling)
    method.SetMetricSamplingPercentagePerLevel([min(1.0, 4 * share), share], _itk_seed(config))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.01, numberOfIterations=int(iterations),
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def register_rigid(fixed: sitk.Image, moving: sitk.Image, config) -> sitk.Euler3DTransform:
    """Rigid registration by mutual information, starting from the scanner's world
    alignment (identity).

    Returns:
        The transform mapping fixed world points to moving world points (LPS mm).
    """
    transform = sitk.Euler3DTransform()
    size = np.array(fixed.GetSize())
    transform.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in (size - 1) / 2.0]))
    method = _mutual_information(config, config.registration_iterations)
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    return transform


def _centroid(mask: sitk.Image) -> np.ndarray:
    """World (LPS) centroid of a mask's nonzero voxels."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    return np.array(statistics.GetCentroid(1))


ATLAS_START_SCALES = (0.88, 1.0, 1.12)  # head sizes the affine search starts from


def register_atlas_affine(subject: sitk.Image, subject_brain_centre: np.ndarray,
                          atlas: Atlas, config) -> sitk.AffineTransform:
    """Affine registration of the subject to the MNI template (template = fixed, its
    dilated brain mask restricts the metric so the subject's skull matters little).

    Mutual information has a local optimum that stretches the template brain over the
    whole head; starting from several scales (``ATLAS_START_SCALES``) and keeping the
    best final metric avoids it.

    Returns:
        The transform mapping MNI world points to subject world points (LPS mm).
    """
    template = atlas.image("t1")
    brain = atlas.image("brain") > 0.5
    template_mask = sitk.BinaryDilate(brain, [3, 3, 3])
    template_centre = _centroid(brain)
    moving = sitk.Cast(subject, sitk.sitkFloat32)
    judge = sitk.ImageRegistrationMethod()  # one metric, all voxels, to compare the starts
    judge.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    judge.SetMetricFixedMask(template_mask)
    judge.SetInterpolator(sitk.sitkLinear)
    best, best_value = None, np.inf
    for scale in ATLAS_START_SCALES:
        transform = sitk.AffineTransform(3)
        transform.SetCenter([float(v) for v in template_centre])
        transform.SetMatrix([float(v) for v in (scale * np.eye(3)).ravel()])
        transform.SetTranslation([float(v) for v in subject_brain_centre - template_centre])
        method = _mutual_information(config, config.registration_iterations)
        method.SetMetricFixedMask(template_mask)
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(template, moving)
        judge.SetInitialTransform(transform)
        value = judge.MetricEvaluate(template, moving)
        if value < best_value:
            best, best_value = transform, value
    return best


def register_atlas_deformable(subject: sitk.Image, mni_from_subject_affine: sitk.Transform,
                              atlas: Atlas, config, slice_mm: float = 0.0) -> sitk.Transform:
    """Deformable refinement of the affine atlas registration, for any contrast.

    The atlas's tissue probabilities (grey, white, CSF, and 'outside the brain') are
    pulled into the subject by the affine and mixed with the subject's own class
    intensities (least squares), giving a template with the subject's contrast; both
    images are divided by their local mean (Gaussian, 25 mm, inside the dilated brain)
    to cancel the bias field; symmetric-forces demons then aligns them.

    Args:
        subject: the subject's registration image (FLAIR or registered T1).
        mni_from_subject_affine: subject -> MNI affine (LPS world points).
        slice_mm: the thickness the subject image's slices (its third axis) integrate
            over, e.g. a 2D FLAIR's slice spacing; the template is blurred alike.

    Returns:
        The composite transform mapping subject world points to MNI world points (LPS).
    """
    maps = {name: from_sitk(resample(atlas.image(name), subject, mni_from_subject_affine))
            for name in ("grey", "white", "csf", "brain")}
    spacing = np.array(subject.GetSpacing())
    region = ndimage.binary_dilation(maps["brain"] > 0.5, iterations=2)
    if region.sum() < 1000:
        return mni_from_subject_affine
    # crop to the region's bounding box: demons cost grows with the voxel count
    corner = np.argwhere(region).min(axis=0)
    end = np.argwhere(region).max(axis=0) + 1
    crop = tuple(slice(int(a), int(b)) for a, b in zip(corner, end))
    region = region[crop]
    intensities = from_sitk(subject)[crop].astype(np.float32)
    design = np.stack([maps["grey"][crop], maps["white"][crop], maps["csf"][crop],
                       1.0 - maps["brain"][crop]], axis=-1)
    means, *_ = np.linalg.lstsq(design[region], intensities[region], rcond=None)
    template = (design @ means).astype(np.float32)
    if slice_mm > spacing[2]:
        # a thick slice averages its slab, then linear interpolation spreads it further
        template = ndimage.gaussian_filter1d(template, slice_mm / 2.355 / spacing[2], axis=2)
    sigma = 25.0 / spacing
    affine = grid_affine(subject) @ _translation(corner)
    fixed = to_sitk(_local_normalise(intensities, region, sigma), affine)
    moving = to_sitk(_local_normalise(template, region, sigma), affine)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(config.deformable_iterations))
    demons.SetStandardDeviations(float(config.deformable_smoothing_mm))
    field = demons.Execute(fixed, moving)
    displacement = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([mni_from_subject_affine, displacement])


def _translation(offset) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = np.asarray(offset, dtype=np.float64)
    return matrix


def _local_normalise(image: np.ndarray, region: np.ndarray, sigma) -> np.ndarray:
    """image / (its Gaussian-weighted mean inside ``region``), 0 outside the region."""
    weight = region.astype(np.float32)
    local_sum = ndimage.gaussian_filter(image * weight, sigma)
    local_weight = ndimage.gaussian_filter(weight, sigma)
    local_mean = local_sum / np.maximum(local_weight, 1e-3)
    normalised = image / np.maximum(local_mean, 1e-6 * max(float(image.max()), 1e-6))
    return np.where(region, normalised, 0.0).astype(np.float32)


def normalised_mutual_information(first: np.ndarray, second: np.ndarray,
                                  bins: int = 32) -> float:
    """(H(A) + H(B)) / H(A, B) - 1 of two equally long samples: 0 for independent
    intensities, 1 for a one-to-one relation. Quantiles 0.5-99.5% set the bin ranges."""
    def quantise(values):
        low, high = np.percentile(values, [0.5, 99.5])
        scaled = (np.clip(values, low, high) - low) / max(high - low, 1e-12)
        return np.minimum((scaled * bins).astype(np.int64), bins - 1)

    joint = np.bincount(quantise(first) * bins + quantise(second),
                        minlength=bins * bins).reshape(bins, bins).astype(np.float64)
    joint /= joint.sum()

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    joint_entropy = entropy(joint.ravel())
    if joint_entropy <= 0:
        return 0.0
    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / joint_entropy - 1.0


MNI_BRAIN_TOP_ABOVE_CENTROID_MM = 72.0  # MNI152 brain mask: top z minus centroid z


def _head_centre(image: sitk.Image, stripped: bool) -> np.ndarray:
    """World (LPS) point where the brain's centre probably is.

    Skull-stripped: the foreground centroid. With a skull: the head's x/y centroid and,
    in z, the top of the head minus 10 mm of scalp and skull minus the MNI brain's
    top-to-centroid height (the top of the head is the landmark a cut neck can't move).
    """
    array = from_sitk(image)
    threshold = 0.0 if stripped else _otsu(array)
    head = ndimage.binary_opening(array > threshold, iterations=1)
    if not head.any():
        head = array > threshold
    affine = grid_affine(image)
    voxels = np.argwhere(head)
    points = (affine[:3, :3] @ voxels.T + affine[:3, 3:]).T  # RAS mm
    centre = points.mean(axis=0)
    if not stripped:
        top = np.percentile(points[:, 2], 99.5)
        centre[2] = top - 10.0 - MNI_BRAIN_TOP_ABOVE_CENTROID_MM
    return _LPS @ centre


def _t1_registration(loaded, t1_native: sitk.Image, flair_native: sitk.Image, config,
                     quality: dict) -> sitk.Transform:
    """FLAIR world -> T1 world transform: identity when the layout promises
    co-registration or the T1 lies on exactly the FLAIR grid, else rigid by MI."""
    grid, t1_grid = loaded.flair_grid, loaded.t1_grid
    same_grid = (t1_grid.shape == grid.shape
                 and np.allclose(t1_grid.affine, grid.affine, atol=1e-3))
    if loaded.subject.coregistered or same_grid:
        quality["t1_registration"] = "skipped (co-registered)"
        return sitk.Transform()
    quality["t1_registration"] = "rigid"
    t1_coarse = downsample(t1_native, config.atlas_spacing_mm)
    return register_rigid(t1_coarse, flair_native, config).GetInverse()


def _atlas_registration(flair_native: sitk.Image, t1_native: Optional[sitk.Image],
                        flair_to_t1: sitk.Transform, brain_mask: Optional[np.ndarray],
                        affine: np.ndarray, config, quality: dict, name) -> sitk.Transform:
    """MNI152 -> subject, affine then demons, on the FLAIR's field of view at atlas
    resolution; the T1 (better contrast, finer slices) is the subject image when there
    is one, and a known brain mask removes the skull first.

    Returns:
        The transform mapping FLAIR world points to MNI world points (LPS).

    Raises:
        PreparationFailed: the registered template does not resemble the subject.
    """
    registration_grid = downsample(flair_native, config.atlas_spacing_mm)
    if t1_native is not None:
        subject_image = resample(_smoothed_for(t1_native, config.atlas_spacing_mm),
                                 registration_grid, flair_to_t1)
    else:
        subject_image = registration_grid
    atlas = load_atlas(config.atlas_spacing_mm)
    if brain_mask is not None:
        known_mask = resample(to_sitk(brain_mask.astype(np.uint8), affine), registration_grid,
                              linear=False)
        subject_image = sitk.Mask(subject_image, known_mask)
        centre = _centroid(known_mask)
    else:
        centre = _head_centre(subject_image, stripped=False)
    mni_from_subject = register_atlas_affine(subject_image, centre, atlas,
                                             config).GetInverse()
    if config.atlas_deformable:
        slice_mm = 0.0 if t1_native is not None else float(flair_native.GetSpacing()[2])
        mni_from_subject = register_atlas_deformable(subject_image, mni_from_subject, atlas,
                                                     config, slice_mm)
    similarity = _atlas_similarity(subject_image, mni_from_subject, atlas)
    quality["atlas_similarity"] = similarity
    if similarity < config.min_similarity:
        raise PreparationFailed(f"{name}: atlas registration failed (normalised mutual "
                                f"information {similarity:.3f} < {config.min_similarity})")
    return mni_from_subject


def _atlas_similarity(subject_image: sitk.Image, mni_from_subject: sitk.Transform,
                      atlas: Atlas) -> float:
    """Normalised mutual information between the subject and the warped template
    inside the warped brain."""
    template = from_sitk(resample(atlas.image("t1"), subject_image, mni_from_subject))
    brain = from_sitk(resample(atlas.image("brain"), subject_image, mni_from_subject)) > 0.5
    if brain.sum() < 100:
        return 0.0
    return normalised_mutual_information(from_sitk(subject_image)[brain], template[brain])
