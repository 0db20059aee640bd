"""Evaluation in three layers: metric maths, cases on disk, and the comparison report.

* :mod:`~wmh.evaluation.metrics` (challenge metrics, Dice/ROC over thresholds, the
  best threshold) and :mod:`~wmh.evaluation.bootstrap` (patient-level bootstrap
  intervals and p-values): pure functions of arrays, no I/O.
* :mod:`~wmh.evaluation.cases`: finding, pairing and loading prediction and truth files,
  and ``wmh evaluate`` (:func:`~wmh.evaluation.cases.evaluate_cases`).
* The report: :mod:`~wmh.evaluation.paper` (the paper's published numbers and method
  names), :mod:`~wmh.evaluation.results` (the data model, built from arrays or files),
  :mod:`~wmh.evaluation.tracking_io` (MLflow), :mod:`~wmh.evaluation.tables` (Markdown,
  CSV and terminal tables), :mod:`~wmh.evaluation.figures` (matplotlib) and
  :mod:`~wmh.evaluation.report` (gathering results and writing the report).

Each layer imports only the layers above it in this list. Nothing is imported here:
import the module you need.
"""
