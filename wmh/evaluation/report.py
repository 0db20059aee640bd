"""The paper's comparison report: tables and figures next to the paper's published numbers.

Input: one :class:`~wmh.evaluation.results.MethodResult` per method (and one for
observer 2 where a second rater exists), built from arrays
(:func:`~wmh.evaluation.results.method_result_from_arrays`), prediction folders
(:func:`~wmh.evaluation.results.method_result_from_predictions`,
:func:`~wmh.evaluation.results.observer_result`) or MLflow runs
(:func:`~wmh.evaluation.tracking_io.method_result_from_mlflow`, which reads what
:func:`~wmh.evaluation.tracking_io.log_method_result` stored).

Output of :func:`write_report`, in a folder and, when requested or when an MLflow run
is active, as artifacts under ``report/``:

* ``report.md``: the tables in the shapes of the paper's Tables 2-6, each with the
  paper's numbers alongside (:data:`wmh.evaluation.paper.PAPER_RESULTS`, the paper's
  results as published, not expected values of this code);
* ``table2_methods.csv``, ``table3_observers.csv``, ``table4_pvalues.csv``,
  ``table5_location_layer.csv``, ``table6_training_size.csv`` (those that apply);
* ``roc.png`` (Fig. 4a), ``dice_vs_threshold.png`` with 95% patient-bootstrap bands
  (Fig. 4b), ``training_size.png`` (Fig. 5).

Every number is labelled with ``data_label``; "synthetic" adds a warning that the
numbers come from synthetic data and are not comparable with the paper's.

Dice here is the paper's: counted inside the brain mask, label 2 ignored, "overall"
(TP, FP, FN summed over the test cases) at the method's operating threshold; the mean
of per-case Dice is given beside it. TensorFlow is never imported; matplotlib and
MLflow only inside the functions that draw or log.

Job: gather the results to compare (:func:`collect_results`) and write the report
(:func:`write_report`) from :mod:`wmh.evaluation.tables` and
:mod:`wmh.evaluation.figures`. Must not: hold metric maths, table layouts or drawing
code itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from wmh.errors import WMHError
from wmh.evaluation.figures import draw_figures
from wmh.evaluation.results import (MethodResult, ReportOptions, method_result_from_predictions,
                                    observer_result)
from wmh.evaluation.tables import table_methods, write_tables
from wmh.evaluation.tracking_io import log_report, method_result_from_mlflow


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """Paths written by :func:`write_report` (None where a table or figure did not apply)."""

    markdown: Path
    tables: dict
    figures: dict


@dataclasses.dataclass(frozen=True)
class ReportSources:
    """What a report compares (``wmh report``'s --method, --run, --truth, --observer2,
    --brain-mask and --threshold).

    Attributes:
        methods: (name, prediction folder) pairs; they need ``truth``.
        runs: (name, MLflow run id) pairs.
        truth, observer2, brain_mask: label files/folders matched by case id, or None.
        threshold: operating threshold of the prediction folders; None = each
            segmentation's recorded threshold.
    """

    methods: Sequence[tuple[str, str | Path]] = ()
    runs: Sequence[tuple[str, str]] = ()
    truth: str | Path | None = None
    observer2: str | Path | None = None
    brain_mask: str | Path | None = None
    threshold: Optional[float] = None


def collect_results(sources: ReportSources,
                    notes: Optional[list] = None) -> list[MethodResult]:
    """Results of prediction folders and MLflow runs, plus observer 2 when given.

    Args:
        sources: the methods, runs and labels to compare.
        notes: collects a line for each method scored at another threshold than the
            one its segmentation recorded.

    Raises:
        WMHError: nothing to compare, folders without ``truth``, bad files.
    """
    methods, runs, truth = sources.methods, sources.runs, sources.truth
    observer2, brain_mask = sources.observer2, sources.brain_mask
    if not methods and not runs:
        raise WMHError("--method/--run: give at least one method to compare")
    if methods and truth is None:
        raise WMHError("--truth: needed to score --method folders")
    results = [method_result_from_predictions(
        name, folder, truth, brain_mask=brain_mask, observer2=observer2,
        threshold=sources.threshold, notes=notes) for name, folder in methods]
    results += [method_result_from_mlflow(run_id, name) for name, run_id in runs]
    if observer2 is not None and truth is not None:
        results.append(observer_result(observer2, truth, brain_mask=brain_mask))
    return results


UNSPECIFIED_DATA = "unspecified"  # data label when nothing says what the data are


def infer_data_label(truth: str | Path | None) -> str:
    """What the truth labels are, for reports that were not told: "synthetic" when they
    lie in a cohort written by ``wmh synth`` (its ``cohort.json`` in the truth folder or
    one of its parents), else :data:`UNSPECIFIED_DATA`."""
    if truth is None:
        return UNSPECIFIED_DATA
    folder = Path(truth).resolve()
    folder = folder if folder.is_dir() else folder.parent
    for candidate in (folder, *folder.parents):
        if (candidate / "cohort.json").is_file():
            return "synthetic"
    return UNSPECIFIED_DATA


def write_report(results: Sequence[MethodResult], output_dir: str | Path, data_label: str,
                 options: ReportOptions = ReportOptions(),
                 log_to_mlflow: Optional[bool] = None) -> ReportFiles:
    """Writes the paper's tables (Markdown + CSV) and figures (PNG) for several methods.

    Args:
        results: one per method, plus observer 2 (``is_observer=True``) where available.
        output_dir: folder for ``report.md``, the CSV tables and the PNG figures.
        data_label: what the numbers come from, e.g. "synthetic" or "MICCAI WMH 2017";
            shown on every table and figure ("synthetic" adds a warning).
        options: bootstrap and plotting settings.
        log_to_mlflow: log the folder as artifacts under ``report/`` of the active MLflow
            run, or of a new run in the "wmh-reports" experiment when none is active;
            None = only when a run is active; False = never.

    Returns:
        The written paths.

    Raises:
        WMHError: no results, duplicate names, or an empty data label.
    """
    if not results:
        raise WMHError("report: no methods to compare")
    names = [result.name for result in results]
    if len(set(names)) != len(names):
        raise WMHError(f"report: duplicate method names: {', '.join(names)}")
    if not data_label or not data_label.strip():
        raise WMHError("--data-label: say what the data are, e.g. 'synthetic'")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    synthetic = "synth" in data_label.lower()
    grouped = table_methods(results)
    sections = ["# WMH segmentation: comparison with Ghafoorian et al. 2017",
                "", f"Data: **{data_label}**."]
    if synthetic:
        sections.append("**Synthetic data**: these numbers measure the code on synthetic "
                        "images; they are not comparable with the paper's, which are shown "
                        "beside them for reference only.")
    sections += ["", "Dice: inside the brain mask, label 2 ignored, overall Dice (TP, FP, "
                 f"FN summed over cases) at each method's threshold; {options.confidence:.0%}"
                 f" intervals from {options.ci_resamples} patient-bootstrap resamples "
                 f"(seed {options.seed}). Paper columns: the paper's published results.", ""]

    table_sections, tables = write_tables(results, grouped, output_dir, data_label,
                                          options)
    sections += table_sections

    figures = draw_figures(results, grouped, output_dir, data_label, options)
    if figures:
        sections += ["## Figures", ""]
        sections += [f"![{name}]({path.name})" for name, path in figures.items()]
        sections.append("")
    sections += ["## Sources", ""] + [f"- {r.name}: {r.source or 'in memory'}" for r in results]
    markdown = output_dir / "report.md"
    markdown.write_text("\n".join(sections) + "\n")
    files = ReportFiles(markdown=markdown, tables=tables, figures=figures)
    log_report(output_dir, data_label, log_to_mlflow)
    return files
