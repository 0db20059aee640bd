"""Synthetic cohort from real anatomy: the embedded default dataset (never needed at inference).

Subjects are built from the MNI ICBM152 2009 templates inside the nilearn wheel (offline):
random pose and smooth warp with ventricle enlargement, T1/FLAIR contrasts with bias field
and Rician noise, WMH placed by an explicit spatial prior, WMH look-alikes (hard negatives)
and territorial infarcts, thick-slice acquisition per scanner profile, two observers.

Modules: ``anatomy`` (reference maps, cached), ``profiles`` (scanner protocols),
``pathology`` (lesions, look-alikes, observer 2), ``randomised`` (the ``randomised``
profile: per-subject domain randomisation of acquisition, contrast, artefacts, anatomy and
lesions, placed without the WMH prior; synth version 4), ``subject`` (one subject's
images), ``cohort`` (the folder, cohort.json), ``preview`` (PNG montage), ``realism``
(measures of a written cohort).
"""

from wmh.synth.cohort import (SYNTH_VERSION, subject_seed, synthesize_cohort,
                              synthesize_subject)
from wmh.synth.profiles import PROFILES, AcquisitionProfile

__all__ = ["PROFILES", "AcquisitionProfile", "SYNTH_VERSION", "subject_seed",
           "synthesize_cohort", "synthesize_subject"]
