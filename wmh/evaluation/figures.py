"""The report's figures (matplotlib): the paper's Fig. 4a ROC, Fig. 4b Dice against the
threshold with patient-bootstrap bands, Fig. 5 Dice by training-set size, and the
validation figures (ROC, Dice, reliability) that training logs.

Job: draw :class:`wmh.evaluation.results.MethodResult` objects (and calibration curves)
on matplotlib Figures made outside pyplot, and save a report's figures as PNGs.
matplotlib is imported only inside the drawing functions.
Must not: read prediction files, talk to MLflow, or write tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from wmh.evaluation.bootstrap import bootstrap_dice_curve_ci
from wmh.evaluation.metrics import DiceCurve
from wmh.evaluation.paper import PAPER_RESULTS
from wmh.evaluation.results import MethodResult, ReportOptions, chosen_methods, dice_interval

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def _data_suffix(data_label: str) -> str:
    return f" ({data_label} data)" if data_label else ""


def _new_figure(width: float, height: float):
    """A matplotlib Figure outside pyplot (no global state, freed when dropped)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    return figure, figure.add_subplot()


def roc_figure(results: Sequence[MethodResult], data_label: str,
               max_false_positive_rate: float = 0.02, title: str = "Test-set ROC"):
    """ROC curves of the methods with curves, observers as points (paper Fig. 4a).

    Args:
        results: methods (with ``curve``) and observers (with ``counts_obs1``).
        data_label: shown in the title ("" for none).
        max_false_positive_rate: x-axis cut (widened to show every observer).
        title: title before the data label.

    Returns:
        A matplotlib Figure.
    """
    figure, axis = _new_figure(6, 5)
    low_tpr, right = 1.0, max_false_positive_rate
    for index, result in enumerate(r for r in results if r.curve is not None):
        fpr, tpr = result.curve.roc()
        axis.plot(fpr, tpr, color=_COLOURS[index % len(_COLOURS)],
                  label=f"{result.name} (Az {result.test_az():.4f})")
        shown = tpr[fpr <= max_false_positive_rate]
        low_tpr = min(low_tpr, float(np.nanmin(shown)) if shown.size else 0.0)
    for result in results:
        if result.is_observer and result.counts_obs1 is not None:
            tp, fp, fn, tn = np.asarray(result.counts_obs1).sum(axis=0)
            observer_fpr, observer_tpr = fp / max(fp + tn, 1), tp / max(tp + fn, 1)
            axis.plot([observer_fpr], [observer_tpr], "k*", markersize=12, label=result.name)
            low_tpr = min(low_tpr, observer_tpr)
            right = max(right, 1.1 * observer_fpr)  # never cut an observer off
    axis.set_xlim(0, right)
    axis.set_ylim(max(0.0, low_tpr - 0.05), 1.0)
    axis.set_xlabel("False positive rate (voxels inside the brain mask)")
    axis.set_ylabel("True positive rate")
    axis.set_title(f"{title}, observer 1 as reference{_data_suffix(data_label)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def dice_threshold_figure(results: Sequence[MethodResult], data_label: str,
                          options: ReportOptions = ReportOptions(),
                          title: str = "Test Dice vs threshold"):
    """Dice against the binarisation threshold with patient-bootstrap bands (Fig. 4b).

    Observers are a dashed level with their own band; a dot marks each method's
    operating threshold.

    Returns:
        A matplotlib Figure.
    """
    figure, axis = _new_figure(6, 5)
    for index, result in enumerate(r for r in results if r.curve is not None):
        colour = _COLOURS[index % len(_COLOURS)]
        curve = result.curve
        if len(curve.case_ids) > 1:
            low, high = bootstrap_dice_curve_ci(curve, options.ci_resamples,
                                                options.confidence, options.seed,
                                                options.statistic)
            axis.fill_between(curve.thresholds, low, high, color=colour, alpha=0.2,
                              linewidth=0)
        dice_curve = curve.dice(options.statistic)
        axis.plot(curve.thresholds, dice_curve, color=colour, label=result.name)
        if result.threshold is not None:
            index_at = int(np.argmin(np.abs(curve.thresholds - result.threshold)))
            axis.plot([curve.thresholds[index_at]], [dice_curve[index_at]], "o",
                      color=colour, markersize=5)
    for result in results:
        if result.is_observer and result.counts_obs1 is not None:
            low, high = dice_interval(result, options)
            axis.axhspan(low, high, color="grey", alpha=0.2, linewidth=0)
            axis.axhline(result.dice(1, options.statistic), color="black", linestyle="--",
                         label=f"{result.name} vs observer 1")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("Binary masking threshold")
    axis.set_ylabel(f"Dice ({options.statistic}, observer 1 as reference)")
    axis.set_title(f"{title}, {options.confidence:.0%} patient-bootstrap bands"
                   f"{_data_suffix(data_label)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower center", fontsize=8)
    figure.tight_layout()
    return figure


def training_size_figure(results: Sequence[MethodResult], data_label: str,
                         options: ReportOptions = ReportOptions()):
    """Test Dice by number of training images, with the paper's Table 6 (Fig. 5).

    Returns:
        A matplotlib Figure.
    """
    figure, axis = _new_figure(6, 4)
    ordered = sorted((r for r in results if r.training_size), key=lambda r: r.training_size)
    sizes = [result.training_size for result in ordered]
    dice = np.array([result.dice(1) for result in ordered], dtype=np.float64)
    bounds = np.array([dice_interval(result, options) for result in ordered]).reshape(-1, 2)
    errors = np.nan_to_num(np.abs(np.stack([dice - bounds[:, 0], bounds[:, 1] - dice])))
    axis.errorbar(sizes, dice, yerr=errors, marker="o", capsize=3,
                  label=f"this code ({data_label} data)")
    paper = PAPER_RESULTS["table6"]
    axis.plot(list(paper), list(paper.values()), "k--", marker="s", alpha=0.6,
              label="paper, MSWS + Loc (Table 6)")
    axis.set_xscale("log", base=2)
    ticks = sorted(set(sizes) | set(paper))
    axis.set_xticks(ticks, [str(tick) for tick in ticks])
    axis.minorticks_off()
    axis.set_xlabel("Training images")
    axis.set_ylabel("Test Dice (observer 1)")
    axis.set_title(f"Test Dice by training-set size{_data_suffix(data_label)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def validation_figures(curve: DiceCurve, threshold: float,
                       title: str = "validation") -> dict:
    """ROC and Dice-vs-threshold figures of one model's validation cases (for training).

    Args:
        curve: the validation cases' counts over thresholds.
        threshold: the chosen (Dice-maximising) threshold, marked on the Dice curve.
        title: what the curves are, e.g. "msws+ffcl (validation)".

    Returns:
        {"roc": Figure, "dice_vs_threshold": Figure}, ready for ``mlflow.log_figure``.
    """
    result = MethodResult(name=title, case_ids=curve.case_ids, threshold=threshold,
                          curve=curve)
    options = ReportOptions(ci_resamples=200)
    roc = roc_figure([result], "", max_false_positive_rate=0.05, title=f"{title}: ROC")
    dice = dice_threshold_figure([result], "", options, title=f"{title}: Dice")
    return {"roc": roc, "dice_vs_threshold": dice}


def reliability_figure(curves: dict, title: str = "validation: reliability"):
    """Reliability diagram: observed WMH fraction against mean P per bin, one line per
    :class:`wmh.calibration.Reliability` (e.g. {"uncalibrated": ..., "calibrated": ...}),
    with each curve's ECE in the legend and the diagonal of perfect calibration.

    Returns:
        A matplotlib Figure.
    """
    figure, axis = _new_figure(5, 5)
    axis.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    for index, (name, curve) in enumerate(curves.items()):
        filled = curve.counts > 0
        axis.plot(curve.mean_probability[filled], curve.observed[filled], marker="o",
                  color=_COLOURS[index % len(_COLOURS)], label=f"{name} (ECE {curve.ece():.4f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("Mean P(WMH) in bin (brain voxels)")
    axis.set_ylabel("Observed WMH fraction")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def draw_figures(results: Sequence[MethodResult], grouped: dict, output_dir: Path,
                 data_label: str, options: ReportOptions) -> dict[str, Path]:
    """Draws the report's figures that apply and saves them as PNGs (``grouped``: the
    methods of each table, :func:`wmh.evaluation.tables.table_methods`)."""
    figures = {}
    drawn = chosen_methods([r for r in results if not r.is_observer], options.figure_methods,
                           "figure") + [r for r in results if r.is_observer]
    if any(result.curve is not None and not result.is_observer for result in drawn):
        figures["roc"] = roc_figure(drawn, data_label, options.max_false_positive_rate)
        figures["dice_vs_threshold"] = dice_threshold_figure(drawn, data_label, options)
    if grouped["table6"]:
        figures["training_size"] = training_size_figure(grouped["table6"], data_label,
                                                        options)
    paths = {}
    for name, figure in figures.items():
        paths[name] = output_dir / f"{name}.png"
        figure.savefig(paths[name])
    return paths
