"""Whole-volume segmentation of new scans with a trained model, and what users need from it.

For each subject: the same preprocessing as training (:func:`wmh.preprocess.prepare_subject`
with the model's in-plane spacing), every brain voxel classified by the dense twin of the
patch network (:func:`wmh.train.predict_volume`; equal to the sliding window), then, on the
native FLAIR grid with the input's affine and header, in ``OUT/<subject_id>/``:

* ``wmh_probability.nii.gz``: P(WMH), float32, exactly 0 outside ``brain_mask``, with the
  model's calibration applied (:mod:`wmh.calibration`; with ``--mc-samples`` to every pass;
  ``--calibration none``: the network's uncorrected output and uncalibrated threshold);
* ``wmh_mask.nii.gz``: uint8, probability >= threshold inside the brain mask; the model's
  validation-optimal threshold unless ``--threshold`` is given (report.json records it);
* ``wmh_lesions.nii.gz``: int32 lesion labels (26-connected), the rows of ``lesions.csv``
  (volume in mL, centroid in scanner mm, periventricular or deep, max probability);
* ``brain_mask.nii.gz``: uint8, the brain mask the voxels were classified in;
* ``wmh_uncertainty.nii.gz`` with ``--mc-samples N``: the standard deviation of P(WMH)
  over N Monte Carlo dropout passes (the probability map is then their mean);
* ``qc.png``: FLAIR + mask and probability + periventricular band on evenly spaced slices;
* ``report.json``: volumes (mL: total, periventricular within ``periventricular_mm`` of the
  lateral ventricles, deep, brain), lesion count, settings, challenge metrics when labels
  exist, warnings, provenance (inputs with SHA-256, model (folder or URI, or a shipped
  model's ``pretrained:<name>`` and version) and its weights' SHA-256, wmh version, UTC
  date); for a failed subject only status 'failed' and the error.

Without a model (``--model`` not given or empty) the default model shipped in the package
segments (:mod:`wmh.pretrained`); with none shipped, a one-line error asks for ``--model``.

``OUT/volumes.csv`` and the cohort QC page ``OUT/index.html`` are rebuilt from every
subject folder in OUT after each subject (under a lock, so several calls can share OUT).
With ``--layout bids`` OUT is a BIDS derivatives dataset instead (:mod:`.layouts`).
``OUTPUT_FILES`` and ``BIDS_OUTPUT_FILES`` list every file; the README section "Outputs of
`wmh segment`" describes them and every column.

Modules: :mod:`.inputs` (subjects, ids, header checks), :mod:`.cohort` (the run: order of
checks, resume, failures, progress), :mod:`.subject` (one subject: prepare, infer, write),
:mod:`.measures` (volumes, lesion table), :mod:`.qc` (the QC image), :mod:`.outputs`
(files, atomic subject folders, lock, volumes.csv), :mod:`.layouts` (folders or BIDS
derivatives: names, sidecars, dataset description), :mod:`.page` (the cohort QC page).
"""

from wmh.segment.cohort import CohortResult, resolve_model, run_cohort, segment
from wmh.segment.inputs import (check_header, check_subject_id, default_subject_id,
                                resolve_inputs)
from wmh.segment.measures import lesion_table, lesion_volumes
from wmh.segment.layouts import BIDS_NAMES, bids_labels, get_layout
from wmh.segment.outputs import BIDS_OUTPUT_FILES, OUTPUT_FILES, REPORT_COLUMNS, rebuild_tables
from wmh.segment.page import cohort_page
from wmh.segment.qc import QCVolumes, qc_figure, qc_slices
from wmh.segment.subject import SegmentModel, SegmentOptions, segment_subject

__all__ = ["BIDS_NAMES", "BIDS_OUTPUT_FILES", "CohortResult", "OUTPUT_FILES", "QCVolumes",
           "REPORT_COLUMNS", "SegmentModel", "SegmentOptions", "bids_labels", "check_header",
           "check_subject_id", "cohort_page", "default_subject_id", "get_layout",
           "lesion_table", "lesion_volumes", "qc_figure", "qc_slices", "rebuild_tables",
           "resolve_inputs", "resolve_model", "run_cohort", "segment", "segment_subject"]
