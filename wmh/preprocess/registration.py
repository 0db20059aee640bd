"""Registrations: T1 -> FLAIR (rigid) and MNI152 -> subject (affine, then demons)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from wmh.preprocess.atlas import Atlas, load_atlas
from wmh.preprocess.brain_mask import extract_brain, zero_background
from wmh.preprocess.intensity import _otsu
from wmh.preprocess.sitk_bridge import (_LPS, _smoothed_for, downsample, from_sitk,
                                        grid_affine, resample, to_sitk)


def _itk_seed(config) -> int:
    """SimpleITK reads seed 0 as 'use the wall clock': shift seeds by one."""
    return int(config.seed) + 1


# Resolution levels of the mutual-information registrations: (shrink factor, Gaussian
# smoothing sigma in mm, multiple of config.registration_sampling voxels sampled).
# "coarse" shrinks the images 2x itself; "coarse_copy" runs on copies already
# downsampled 2x (register_atlas_affine makes them once for all of its starts).
_LEVELS = {"coarse": (2, 2.0, 4.0), "full": (1, 1.0, 1.0), "coarse_copy": (1, 0.0, 4.0)}


def _mutual_information(config, iterations: int,
                        levels: tuple[str, ...] = ("coarse", "full"),
                        ) -> sitk.ImageRegistrationMethod:
    """Mattes mutual information, seeded random sampling, at the resolution levels named
    (``_LEVELS``; by default shrunk 2x and smoothed 2 mm, then full resolution smoothed
    1 mm). Image gradients are taken at the sampled points only (the gradient filters
    that precompute them over whole images cost more than the sampled optimisation)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    share = float(config.registration_sampling)
    method.SetMetricSamplingPercentagePerLevel(
        [min(1.0, _LEVELS[level][2] * share) for level in levels], _itk_seed(config))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([_LEVELS[level][0] for level in levels])
    method.SetSmoothingSigmasPerLevel([_LEVELS[level][1] for level in levels])
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


ATLAS_START_SCALES = (0.88, 1.0, 1.12)  # head sizes (relative) the affine search starts from
PRINCIPAL_AXES_MAX_DEGREES = 30.0  # a principal-axes start tilted further is not tried
# The second search after a doubtful result (``retry``): more head sizes, the brain's
# centre also moved down and up (LPS z: superior), every start judged by the similarity
# the quality check uses whatever its brain volume.
RETRY_START_SCALES = (0.8, 0.88, 1.0, 1.12, 1.24)
RETRY_CENTRE_SHIFTS_MM = (-15.0, 0.0, 15.0)
# A head with skull is registered on its extracted brain first; below this similarity the
# whole head is registered as well and the more similar result kept (on the randomised
# cohort the extracted brain's good results scored 0.047-0.063, its wrong ones 0.017-0.029,
# while the real development cases' good registrations score 0.033-0.069: BENCHMARKS.md).
ATLAS_CONFIDENT_SIMILARITY = 0.04


def register_atlas_affine(subject: sitk.Image, subject_brain_centre: np.ndarray,
                          atlas: Atlas, config, subject_mask: Optional[sitk.Image] = None,
                          retry: bool = False) -> sitk.AffineTransform:
    """Affine registration of the subject to the MNI template (template = fixed, its
    dilated brain mask restricts the metric so the subject's skull matters little).

    Mutual information has local optima (the template brain stretched over the whole
    head, or slid down into the neck). The search therefore starts from several poses
    around ``subject_brain_centre``: no rotation at the head sizes ``ATLAS_START_SCALES``
    and, given ``subject_mask``, the rotation that aligns the template's principal axes
    with the subject's (:func:`principal_axes_rotation`). Every start is optimised on
    copies of both images at twice the voxel size (made once: letting each optimisation
    shrink the images itself cost 2x more), and the best (metric on all voxels at full
    resolution) goes on to full resolution, except that a result whose brain volume (the
    template's times the affine's determinant) lies outside ``config.brain_volume_ml``
    ranks after every plausible one. (Ranking the starts by a short coarse search and
    optimising only the best was measured and rejected: the coarse, smoothed metric
    prefers the template stretched over the skull.)

    With ``retry`` (the second search :func:`_atlas_registration` makes when the first
    result's similarity is doubtful) the starts are the head sizes
    ``RETRY_START_SCALES`` at the centre moved by each of ``RETRY_CENTRE_SHIFTS_MM``
    along the superior axis, plus the principal axes, and they are ranked by the
    normalised mutual information inside the warped brain (:func:`_atlas_similarity`),
    whatever their brain volume: the volume rule rejects the true pose of a brain larger
    than ``config.brain_volume_ml`` allows, and Mattes MI over the template's
    surroundings can prefer the template stretched over the skull.

    Args:
        subject: the subject image (world = LPS mm).
        subject_brain_centre: world (LPS) point where the brain's centre probably is.
        subject_mask: the subject's head (or brain) for the principal axes, or None.
        retry: the wider search, ranked by similarity.

    Returns:
        The transform mapping MNI world points to subject world points (LPS mm).
    """
    template = atlas.image("t1")
    brain = atlas.image("brain") > 0.5
    template_mask = sitk.BinaryDilate(brain, [3, 3, 3])
    template_centre = _centroid(brain)
    moving = sitk.Cast(subject, sitk.sitkFloat32)
    # the starts are optimised on copies at twice the voxel size, made once
    coarse_mm = 2.0 * float(max(template.GetSpacing()))
    coarse_template = downsample(template, coarse_mm)
    coarse_mask = resample(template_mask, coarse_template, linear=False)
    coarse_moving = downsample(moving, coarse_mm)
    brain_ml = float(from_sitk(brain).sum()) * float(np.prod(template.GetSpacing())) / 1000.0
    low, high = config.brain_volume_ml
    judge = sitk.ImageRegistrationMethod()  # one metric, all voxels, to compare the poses
    judge.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    judge.SetMetricUseFixedImageGradientFilter(False)  # (no gradients needed)
    judge.SetMetricUseMovingImageGradientFilter(False)
    judge.SetMetricFixedMask(template_mask)
    judge.SetInterpolator(sitk.sitkLinear)

    def rank(transform) -> tuple[bool, float]:
        if retry:
            return (False, -_atlas_similarity(moving, transform.GetInverse(), atlas))
        judge.SetInitialTransform(transform)
        try:
            value = float(judge.MetricEvaluate(template, moving))
        except RuntimeError:  # too few samples overlap: the worst score
            value = np.inf
        volume = brain_ml * abs(float(np.linalg.det(np.reshape(transform.GetMatrix(), (3, 3)))))
        return (not low <= volume <= high, value)

    scales, shifts = ((RETRY_START_SCALES, RETRY_CENTRE_SHIFTS_MM) if retry
                      else (ATLAS_START_SCALES, (0.0,)))
    starts = [(scale * np.eye(3), shift) for shift in shifts for scale in scales]
    if subject_mask is not None:
        rotation = principal_axes_rotation(subject_mask, brain)
        if rotation is not None and _rotation_degrees(rotation) > 2.0:
            starts.append((rotation, 0.0))

    def optimise(transform, level: str) -> bool:
        method = _mutual_information(config, config.registration_iterations, (level,))
        if level == "coarse_copy":
            method.SetMetricFixedMask(coarse_mask)
            fixed, image = coarse_template, coarse_moving
        else:
            method.SetMetricFixedMask(template_mask)
            fixed, image = template, moving
        method.SetInitialTransform(transform, inPlace=True)
        try:
            method.Execute(fixed, image)
        except RuntimeError:  # the optimiser left the overlap
            return False
        return True

    # every start through the coarse copies; the best one goes on to full resolution
    best, best_rank = None, (True, np.inf)
    for matrix, shift in starts:
        transform = sitk.AffineTransform(3)
        transform.SetCenter([float(v) for v in template_centre])
        transform.SetMatrix([float(v) for v in matrix.ravel()])
        transform.SetTranslation([float(v) for v in np.asarray(subject_brain_centre)
                                  + (0.0, 0.0, shift) - template_centre])
        if not optimise(transform, "coarse_copy"):
            continue
        candidate = rank(transform)
        if best is None or candidate < best_rank:
            best, best_rank = transform, candidate
    if best is not None:
        refined = sitk.AffineTransform(best)
        if optimise(refined, "full") and rank(refined) <= best_rank:
            best = refined
    if best is None:  # every start failed: the first start, unoptimised
        best = sitk.AffineTransform(3)
        best.SetCenter([float(v) for v in template_centre])
        best.SetTranslation([float(v) for v in
                             np.asarray(subject_brain_centre) - template_centre])
    return best


def _rotation_degrees(matrix: np.ndarray) -> float:
    cosine = np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cosine)))


def _principal_axes(mask: sitk.Image) -> np.ndarray:
    """Principal axes (columns, world LPS) of a mask's nonzero voxels."""
    affine = grid_affine(mask)
    points = affine[:3, :3] @ np.argwhere(from_sitk(mask) > 0).T.astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(points))
    return _LPS @ vectors[:, np.argsort(values)[::-1]]


def principal_axes_rotation(subject_mask: sitk.Image, template_mask: sitk.Image,
                            ) -> Optional[np.ndarray]:
    """The rotation (LPS, 3 x 3) that takes the template's principal axes onto the
    subject's: of every pairing and sign of the axes, the one closest to no rotation;
    None when even that tilts more than ``PRINCIPAL_AXES_MAX_DEGREES`` (heads lie roughly
    upright in a scanner: a larger angle means the axes are ill-defined)."""
    import itertools

    subject_axes = _principal_axes(subject_mask)
    template_axes = _principal_axes(template_mask)
    best, best_angle = None, np.inf
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            rotation = subject_axes[:, order] @ np.diag(signs) @ template_axes.T
            if np.linalg.det(rotation) < 0:
                continue
            angle = _rotation_degrees(rotation)
            if angle < best_angle:
                best, best_angle = rotation, angle
    return best if best_angle <= PRINCIPAL_AXES_MAX_DEGREES else None


# The demons stop once an iteration lowers their mean squared difference by less than
# this share, or raises it (at most config.deformable_iterations): on the synthetic
# profiles after 15-16 of 30 iterations, the remaining ones moving it by about 1 %.
DEMONS_MIN_GAIN = 0.0025


def register_atlas_deformable(subject: sitk.Image, mni_from_subject_affine: sitk.Transform,
                              atlas: Atlas, config, slice_mm: float = 0.0,
                              slice_axis: int = 2) -> sitk.Transform:
    """Deformable refinement of the affine atlas registration, for any contrast.

    The atlas's tissue probabilities (grey, white, CSF, and 'outside the brain') are
    pulled into the subject by the affine and mixed with the subject's own class
    intensities (least squares), giving a template with the subject's contrast; both
    images are divided by their local mean (Gaussian, 25 mm, inside the dilated brain)
    to cancel the bias field; symmetric-forces demons then aligns them, until an
    iteration gains less than ``DEMONS_MIN_GAIN`` or after ``config.deformable_iterations``.

    Args:
        subject: the subject's registration image (FLAIR or registered T1).
        mni_from_subject_affine: subject -> MNI affine (LPS world points).
        slice_mm: the thickness the subject image's slices (along ``slice_axis``)
            integrate over, e.g. a 2D FLAIR's slice spacing; the template is blurred alike.
        slice_axis: the subject image's voxel axis across its slices.

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
    if slice_mm > spacing[slice_axis]:
        # a thick slice averages its slab, then linear interpolation spreads it further
        template = ndimage.gaussian_filter1d(template, slice_mm / 2.355 / spacing[slice_axis],
                                             axis=slice_axis)
    sigma = 25.0 / spacing
    affine = grid_affine(subject) @ _translation(corner)
    fixed = to_sitk(_local_normalise(intensities, region, sigma), affine)
    moving = to_sitk(_local_normalise(template, region, sigma), affine)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(config.deformable_iterations))
    demons.SetStandardDeviations(float(config.deformable_smoothing_mm))
    previous = [np.inf]

    def stop_when_converged() -> None:
        metric = float(demons.GetMetric())
        if previous[0] - metric < DEMONS_MIN_GAIN * previous[0]:
            demons.StopRegistration()
        previous[0] = metric

    demons.AddCommand(sitk.sitkIterationEvent, stop_when_converged)
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
SCALP_MM = 10.0  # skin, fat and bone above the brain at the vertex
NECK_CROP_BELOW_TOP_MM = 190.0  # kept below the top of the head: brain, skull and 15 % more


def head_geometry(image: sitk.Image) -> tuple[np.ndarray, sitk.Image, sitk.Image]:
    """Where the brain of a head with skull probably is, and the image without the neck.

    The head is the largest component above the Otsu threshold, with its holes filled.
    Its superior extent (99.5th percentile of its voxels' heights) is the landmark a neck
    cannot move: everything more than ``NECK_CROP_BELOW_TOP_MM`` below it (neck,
    shoulders) is set to 0.

    Returns:
        The world (LPS) point where the brain's centre probably is (the cropped head's
        centroid in x and y; in z the top of the head minus ``SCALP_MM`` minus the MNI
        brain's top-to-centroid height), the cropped image and the cropped head mask
        (uint8). An image with no foreground comes back whole, centred on its grid.
    """
    array = from_sitk(image)
    threshold = _otsu(array)
    head = ndimage.binary_opening(array > threshold, iterations=1)
    if not head.any():
        head = array > threshold
    components, count = ndimage.label(head)
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        head = components == int(np.argmax(sizes)) + 1
    head = ndimage.binary_fill_holes(head)
    affine = grid_affine(image)
    if not head.any():
        centre = affine[:3, :3] @ ((np.array(array.shape) - 1) / 2.0) + affine[:3, 3]
        return _LPS @ centre, image, to_sitk(head.astype(np.uint8), affine)
    index = np.indices(array.shape, dtype=np.float32)
    height = sum(float(affine[2, axis]) * index[axis] for axis in range(3)) + affine[2, 3]
    top = float(np.percentile(height[head], 99.5))
    keep = height >= top - NECK_CROP_BELOW_TOP_MM
    head &= keep
    points = (affine[:3, :3] @ np.argwhere(head).T + affine[:3, 3:]).T  # RAS mm
    centre = points.mean(axis=0)
    centre[2] = top - SCALP_MM - MNI_BRAIN_TOP_ABOVE_CENTROID_MM
    cropped = to_sitk(np.where(keep, array, 0).astype(np.float32), affine)
    return _LPS @ centre, cropped, to_sitk(head.astype(np.uint8), affine)


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


def atlas_subject_image(flair_native: sitk.Image, t1_native: Optional[sitk.Image],
                        flair_to_t1: sitk.Transform, brain_mask: Optional[np.ndarray],
                        affine: np.ndarray, config,
                        ) -> tuple[sitk.Image, np.ndarray, sitk.Image]:
    """The image the atlas is registered to, on the FLAIR's field of view at atlas
    resolution: the T1 pulled onto it when there is one, else the FLAIR; a known brain
    mask (working grid ``affine``) removes the skull, else the neck is cropped
    (:func:`head_geometry`).

    Returns:
        The image, the world (LPS) point where the brain's centre probably is and the
        subject's brain (or head) mask on the image's grid.
    """
    registration_grid = downsample(flair_native, config.atlas_spacing_mm)
    if t1_native is not None:
        subject_image = resample(_smoothed_for(t1_native, config.atlas_spacing_mm),
                                 registration_grid, flair_to_t1)
    else:
        subject_image = registration_grid
    if brain_mask is not None:
        subject_mask = resample(to_sitk(brain_mask.astype(np.uint8), affine),
                                registration_grid, linear=False)
        return sitk.Mask(subject_image, subject_mask), _centroid(subject_mask), subject_mask
    centre, cropped, head = head_geometry(subject_image)
    return cropped, centre, head


def _atlas_registration(flair_native: sitk.Image, t1_native: Optional[sitk.Image],
                        flair_to_t1: sitk.Transform, brain_mask: Optional[np.ndarray],
                        affine: np.ndarray, config, quality: dict,
                        warnings: list[str], slice_axis: int = 2) -> sitk.Transform:
    """MNI152 -> subject, affine then demons, on the FLAIR's field of view at atlas
    resolution; the T1 (better contrast, finer slices) is the subject image when there
    is one, a known brain mask removes the skull first, else the neck is cropped.

    A head with skull (a background not zeroed) is registered first on its extracted
    brain (:func:`~wmh.preprocess.brain_mask.extract_brain`, when its volume is
    plausible), which keeps the template from stretching over the skull; a result less
    similar than ``ATLAS_CONFIDENT_SIMILARITY`` is compared with the whole head's and the
    more similar kept. Never fails: where the result's normalised mutual information with
    the template (``quality['atlas_similarity']``) is below ``config.min_similarity``,
    the affine result is tried alone, then the wider affine search of
    ``register_atlas_affine(retry=True)`` (and its demons); the most similar result is
    kept and warnings appended to ``warnings`` say what was done and how similar the
    result is (below the threshold still: "atlas registration doubtful").

    Args:
        slice_axis: the FLAIR's thick (acquired slice) axis in working orientation.

    Returns:
        The transform mapping FLAIR world points to MNI world points (LPS).
    """
    subject_image, centre, subject_mask = atlas_subject_image(
        flair_native, t1_native, flair_to_t1, brain_mask, affine, config)
    atlas = load_atlas(config.atlas_spacing_mm)
    threshold = float(config.min_similarity)
    slice_mm = 0.0 if t1_native is not None else float(flair_native.GetSpacing()[slice_axis])

    def attempt(image, centre, mask, retry: bool
                ) -> tuple[sitk.Transform, float, dict, list[str]]:
        figures, notes = {}, []
        affine_only = register_atlas_affine(image, centre, atlas, config, mask,
                                            retry=retry).GetInverse()
        affine_similarity = _atlas_similarity(image, affine_only, atlas)
        figures["atlas_affine_similarity"] = affine_similarity
        if not config.atlas_deformable:
            return affine_only, affine_similarity, figures, notes
        deformed = register_atlas_deformable(image, affine_only, atlas, config,
                                             slice_mm, slice_axis)
        deformed_similarity = _atlas_similarity(image, deformed, atlas)
        figures["atlas_deformable_similarity"] = deformed_similarity
        if deformed_similarity >= threshold or deformed_similarity >= affine_similarity:
            return deformed, deformed_similarity, figures, notes
        notes.append(f"atlas registration fell back to affine (NMI {affine_similarity:.3f}; "
                     f"deformable {deformed_similarity:.3f})")
        return affine_only, affine_similarity, figures, notes

    extracted = None
    if brain_mask is None and not zero_background(from_sitk(flair_native)):
        extracted = _extracted_brain(subject_image, config, quality)
    if extracted is not None:
        brain_result = attempt(sitk.Mask(subject_image, extracted), _centroid(extracted),
                               extracted, retry=False)
        quality["atlas_extracted_brain_similarity"] = brain_result[1]
        if brain_result[1] >= ATLAS_CONFIDENT_SIMILARITY:
            return _keep(brain_result, quality, warnings, threshold)
    mni_from_subject, similarity, figures, notes = attempt(subject_image, centre,
                                                           subject_mask, retry=False)
    if similarity < threshold:
        retried, retried_similarity, retried_figures, retried_notes = attempt(
            subject_image, centre, subject_mask, retry=True)
        quality["atlas_first_similarity"] = similarity
        quality["atlas_retry_similarity"] = retried_similarity
        if retried_similarity > similarity:
            notes = [f"atlas registration retried with the wider search (NMI "
                     f"{similarity:.3f} -> {retried_similarity:.3f})"] + retried_notes
            mni_from_subject, similarity, figures = (retried, retried_similarity,
                                                     retried_figures)
    if extracted is not None:
        if brain_result[1] >= similarity:
            return _keep(brain_result, quality, warnings, threshold)
        notes = [f"atlas registration used the whole head: its extracted brain registered "
                 f"less similarly (NMI {brain_result[1]:.3f} < {similarity:.3f})"] + notes
    return _keep((mni_from_subject, similarity, figures, notes), quality, warnings, threshold)


def _extracted_brain(subject_image: sitk.Image, config, quality: dict
                     ) -> Optional[sitk.Image]:
    """The brain extracted from a head with skull on the registration grid (uint8), or
    None when there is none of plausible volume (``config.brain_volume_ml``)."""
    spacing = np.sqrt((grid_affine(subject_image)[:3, :3] ** 2).sum(axis=0))
    brain = extract_brain(from_sitk(subject_image), spacing)
    if brain is None:
        quality["brain_extraction"] = "none"
        return None
    volume_ml = float(brain.sum() * np.prod(spacing) / 1000.0)
    quality["brain_extraction_ml"] = volume_ml
    low, high = config.brain_volume_ml
    if not low <= volume_ml <= high:
        quality["brain_extraction"] = "implausible volume"
        return None
    quality["brain_extraction"] = "used"
    return to_sitk(brain.astype(np.uint8), grid_affine(subject_image))


def _keep(result, quality: dict, warnings: list[str], threshold: float) -> sitk.Transform:
    """Records the kept registration (transform, similarity, figures, notes) in
    ``quality`` and ``warnings``, with "doubtful" below ``threshold``; returns it."""
    mni_from_subject, similarity, figures, notes = result
    quality.update(figures)
    warnings += notes
    quality["atlas_similarity"] = similarity
    if similarity < threshold:
        warnings.append(f"atlas registration doubtful (NMI {similarity:.3f} < "
                        f"{threshold}): check the brain mask and location features")
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

