"""One subject: NIfTI files -> PreparedSubject (the steps of :mod:`wmh.preprocess`)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from wmh.config import PreprocessConfig
from wmh.io import Subject, load_subject
from wmh.location import load_prior, location_features
from wmh.preprocess.atlas import load_atlas, mni_coordinate_map, sample_atlas
from wmh.preprocess.brain_mask import _known_brain_mask, _largest_component, check_brain_mask
from wmh.preprocess.format import PreparedSubject
from wmh.preprocess.grid import slice_axis, to_working_grid, working_axes, working_grid
from wmh.preprocess.intensity import bias_correct, normalise_intensities
from wmh.preprocess.keys import cache_key, provenance
from wmh.preprocess.registration import (_atlas_registration, _t1_registration,
                                         normalised_mutual_information)
from wmh.preprocess.sitk_bridge import (_smoothed_for, from_sitk, reference_image, resample,
                                        sitk_threads, to_sitk)
from wmh.preprocess.ventricles import refine_ventricles


def prepare_subject(subject: Subject, config: PreprocessConfig, use_t1: bool = True,
                    ) -> PreparedSubject:
    """Runs the whole preprocessing of one subject (steps 1-7 of the module docstring).

    Args:
        subject: the subject's files (from :func:`wmh.io.discover`).
        config: preprocessing options.
        use_t1: add the T1 channel when the subject has one.

    Returns:
        The PreparedSubject (not yet saved; ``cache_key`` filled in).

    Raises:
        WMHError: a bad input file (named). Nothing else: a registration or brain mask of
            doubtful quality falls back where it can and adds a line to the result's
            ``warnings``.
    """
    with sitk_threads(config.threads):
        return _prepare(subject, config, use_t1)


def _prepare(subject: Subject, config: PreprocessConfig, use_t1: bool) -> PreparedSubject:
    quality: dict = {}  # provenance: methods used, similarity, volumes, stage seconds
    warnings: list[str] = []  # fallbacks and doubtful quality, for the reports
    clock = _StageClock(quality)
    loaded = load_subject(subject, use_t1=use_t1)
    grid = loaded.flair_grid
    shape, affine = working_grid(grid, config.inplane_spacing_mm)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    working = reference_image(shape, affine)
    flair_native = to_sitk(loaded.flair, grid.working_affine)
    flair = to_working_grid(loaded.flair, grid, shape, affine, order=1)
    clock.lap("load")

    # 1. T1 -> FLAIR
    t1_native, flair_to_t1, t1 = None, sitk.Transform(), None
    if loaded.t1 is not None:
        t1_native = to_sitk(loaded.t1, loaded.t1_grid.working_affine)
        flair_to_t1 = _t1_registration(loaded, t1_native, flair_native, config, quality)
        # smoothing to the working voxel size mimics the FLAIR's thick-slice partial volume
        # (the T1's RAS axes lie along the FLAIR's: the working spacing in RAS order)
        ras_spacing = np.empty(3)
        ras_spacing[list(working_axes(grid, affine))] = spacing
        t1 = from_sitk(resample(_smoothed_for(t1_native, ras_spacing), working, flair_to_t1))
    clock.lap("t1_registration")

    # 2a. a brain mask known up front; 6. atlas registration
    brain_mask = _known_brain_mask(loaded, shape, affine, quality)
    acquired_axis = slice_axis(grid)  # of the FLAIR's RAS grid: 2 axial, 1 coronal, 0 sagittal
    quality["slice_plane"] = ("sagittal", "coronal", "axial")[acquired_axis]
    mni_from_subject = _atlas_registration(flair_native, t1_native, flair_to_t1, brain_mask,
                                           affine, config, quality, warnings, acquired_axis)
    clock.lap("atlas_registration")

    # MNI coordinates of every working voxel; atlas labels pulled through them. 2b.
    mni_coordinates = mni_coordinate_map(mni_from_subject, working)
    atlas = load_atlas(1.0)
    if brain_mask is None:
        brain_mask = sample_atlas(atlas.brain, atlas.affine, mni_coordinates) > 0.5
        brain_mask = _largest_component(brain_mask)
        quality["brain_mask"] = "atlas"
    warnings += check_brain_mask(brain_mask, spacing, config, quality)
    atlas_ventricles = np.zeros(shape, dtype=np.uint8)
    brain_points = mni_coordinates[brain_mask]  # ventricles are kept inside the brain only
    brain_labels = np.zeros(len(brain_points), dtype=np.uint8)
    for label in (1, 2):
        inside = sample_atlas((atlas.ventricles == label).astype(np.float32), atlas.affine,
                              brain_points) > 0.5
        brain_labels[inside] = label
    atlas_ventricles[brain_mask] = brain_labels
    clock.lap("masks")

    # 3-4. bias field and intensities
    channels = [("FLAIR", flair)] + ([("T1", t1)] if t1 is not None else [])
    images = []
    for _, image in channels:
        if config.bias_correction:
            image = bias_correct(image, brain_mask, affine, config)
        images.append(normalise_intensities(image, brain_mask, config.normalise_percentiles,
                                             config.normalise_ceiling))
    images = np.stack(images, axis=-1)
    if t1 is not None:
        quality["t1_similarity"] = normalised_mutual_information(
            images[..., 0][brain_mask], images[..., 1][brain_mask])
        if quality["t1_similarity"] < config.min_similarity:
            warnings.append(f"T1 to FLAIR registration doubtful (NMI "
                            f"{quality['t1_similarity']:.3f} < {config.min_similarity})")
    clock.lap("bias_and_normalisation")

    # 7. ventricles and location features
    ventricles = refine_ventricles(atlas_ventricles, images, brain_mask,
                                   mni_coordinates[..., 0], spacing)
    prior = load_prior(config.prior_path or None)
    # the working axis nearest to superior: distance features stay axial-plane distances
    axial_axis = int(np.argmax(np.abs(affine[2, :3]) / spacing))
    location = location_features(mni_coordinates, ventricles, brain_mask, spacing, prior,
                                 axial_axis)
    clock.lap("ventricles_and_location")

    def on_working_grid(labels):
        if labels is None:
            return None
        return to_working_grid(labels, grid, shape, affine, order=0).astype(np.uint8)

    return PreparedSubject(
        subject_id=subject.subject_id, site=subject.site, split=subject.split,
        participant=subject.participant,
        images=images, channels=tuple(name for name, _ in channels),
        brain_mask=brain_mask, labels=on_working_grid(loaded.labels),
        labels_observer2=on_working_grid(loaded.labels_observer2), location=location,
        ventricles=ventricles, spacing=spacing, affine=affine, native_shape=grid.shape,
        native_affine=grid.affine, native_header=bytes(grid.header.binaryblock),
        cache_key=cache_key(subject, config, use_t1),
        provenance=provenance(subject, config, use_t1, quality, prior.source),
        mni_coordinates=mni_coordinates.astype(np.float32), warnings=tuple(warnings))


class _StageClock:
    """Records wall-clock seconds per preprocessing stage into ``quality['seconds']``."""

    def __init__(self, quality: dict):
        import time

        self._time = time.perf_counter
        self._last = self._time()
        self._seconds = quality.setdefault("seconds", {})

    def lap(self, stage: str) -> None:
        now = self._time()
        self._seconds[stage] = round(now - self._last, 2)
        self._last = now
