"""The report's tables: the paper's Tables 2-6 as Markdown sections and CSV files, and
the plain-text table that ``wmh evaluate`` prints.

Job: lay out :class:`wmh.evaluation.results.MethodResult` objects in the shapes of the
paper's tables, with the paper's published numbers beside ours
(:mod:`wmh.evaluation.paper`), bootstrap intervals and paired p-values
(:mod:`wmh.evaluation.bootstrap`).
Must not: read prediction files, talk to MLflow, or draw.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

from wmh.evaluation.bootstrap import pvalue_matrix
from wmh.evaluation.paper import (OBSERVER_NAME, PAPER_RESULTS, paper_method_name,
                                  paper_value)
from wmh.evaluation.results import MethodResult, ReportOptions, chosen_methods, dice_interval


def _format(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _format_pvalue(value: float, resamples: int) -> str:
    if math.isnan(value):
        return "—"
    floor = 1.0 / resamples
    return f"<{floor:g}" if value < floor else f"{value:.2f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if cell is None or (isinstance(cell, float) and math.isnan(cell))
                             else cell for cell in row])
    return path


def table_methods(results: Sequence[MethodResult]) -> dict[str, list[MethodResult]]:
    """Which results go into which of the paper's table shapes."""
    methods = [result for result in results if not result.is_observer]
    observers = [result for result in results if result.is_observer]
    table5 = [m for m in methods if paper_method_name(m.name) in PAPER_RESULTS["table5"]]
    # A training-size run without a paper name ("MSWS + Loc (50%)") belongs to Table 6 only.
    table2 = [m for m in methods if m not in table5
              and paper_method_name(m.name) != "Conventional"
              and not (m.training_size and paper_method_name(m.name) is None)]
    in_table3 = any(paper_method_name(m.name) in ("Conventional", "MSWS + Loc")
                    for m in methods)
    table3 = methods + observers if (observers or in_table3) else []
    table6 = sorted((m for m in methods if m.training_size), key=lambda m: m.training_size)
    compared = [m for m in methods + observers if m.counts_obs1 is not None]
    return {"table2": table2, "table3": table3, "table4": compared, "table5": table5,
            "table6": table6}


def _common_cases(results: Sequence[MethodResult]) -> list[str]:
    common = list(results[0].case_ids)
    for result in results[1:]:
        present = set(result.case_ids)
        common = [case_id for case_id in common if case_id in present]
    return common


def _pvalue_block(methods: Sequence[MethodResult], options: ReportOptions):
    """(header, markdown rows, csv rows, number of cases) of the Table 4 shape."""
    cases = _common_cases(methods)
    if len(cases) < 2:
        return None
    values = [method.counts_for(cases) for method in methods]
    matrix = pvalue_matrix(values, options.pvalue_resamples, options.seed, options.statistic)
    names = [method.name for method in methods]
    paper_names = [OBSERVER_NAME if m.is_observer else paper_method_name(m.name)
                   for m in methods]
    markdown_rows, csv_rows = [], []
    for row, name in enumerate(names):
        cells = []
        for column in range(len(names)):
            if row == column:
                cells.append("—")
                continue
            paper = PAPER_RESULTS["table4"].get(paper_names[row] or "", {}).get(
                paper_names[column] or "")
            ours = _format_pvalue(matrix[row, column], options.pvalue_resamples)
            cells.append(ours if paper is None else f"{ours} (paper {paper})")
            csv_rows.append([name, names[column], matrix[row, column], paper, len(cases),
                             options.pvalue_resamples])
        markdown_rows.append([name] + cells)
    return ["Method"] + names, markdown_rows, csv_rows, len(cases)


def _paper_table6_value(size: int, largest: int) -> Optional[float]:
    table = PAPER_RESULTS["table6"]
    if size in table:
        return table[size]
    fraction = size / largest
    for paper_size, value in table.items():
        if abs(paper_size / max(table) - fraction) < 0.01:
            return value
    return None


def write_tables(results: Sequence[MethodResult], grouped: dict, output_dir: Path,
                 data_label: str, options: ReportOptions) -> tuple[list[str], dict]:
    """Writes the CSV tables that apply and returns their Markdown sections.

    Args:
        results: every method and observer of the report.
        grouped: the methods of each table (:func:`table_methods`).
        output_dir: folder for the CSV files.
        data_label: the first column of every CSV row.
        options: bootstrap settings and the methods chosen for Tables 3 and 4.

    Returns:
        (Markdown lines, {table name: CSV path}).
    """
    sections: list[str] = []
    tables: dict = {}
    intervals = {result.name: dice_interval(result, options) for result in results}

    if grouped["table2"]:
        header = ["Method", "Cases", "Threshold", "Validation Az", "Test Az",
                  "Test Dice (obs1)", "95% CI", "Mean case Dice (obs1)", "Test Dice (obs2)",
                  "Paper validation Az", "Paper Dice (obs1)", "Paper Dice (obs2)"]
        rows = []
        for method in grouped["table2"]:
            low, high = intervals[method.name]
            rows.append([method.name, len(method.case_ids), method.threshold,
                         method.validation_az, method.test_az(), method.dice(1),
                         f"{_format(low)}–{_format(high)}" if not math.isnan(low) else None,
                         method.dice(1, "mean") if method.counts_obs1 is not None else None,
                         method.dice(2), paper_value(method, "validation_az"),
                         paper_value(method, "dice_obs1"), paper_value(method, "dice_obs2")])
        sections += ["## Table 2 shape: methods (validation Az, test Dice)", "",
                     _markdown_table(header, [[row[0], row[1]] + [
                         _format(cell, 4 if "Az" in header[index + 2] else 3)
                         for index, cell in enumerate(row[2:])] for row in rows]), ""]
        tables["table2"] = _write_csv(output_dir / "table2_methods.csv", ["data"] + header,
                                      [[data_label] + row for row in rows])

    if grouped["table3"]:
        header = ["Method", "Test Dice (obs1)", "Test Dice (obs2)", "Paper Dice (obs1)",
                  "Paper Dice (obs2)"]
        rows = []
        chosen = chosen_methods([m for m in grouped["table3"] if not m.is_observer],
                                options.table3_methods, "Table 3")
        for method in chosen + [m for m in grouped["table3"] if m.is_observer]:
            rows.append([method.name, method.dice(1), method.dice(2),
                         paper_value(method, "dice_obs1", ("table3", "table2", "table5")),
                         paper_value(method, "dice_obs2", ("table3", "table2", "table5"))])
        observer = next((m for m in grouped["table3"] if m.is_observer), None)
        if observer is not None:  # observer 1 rated against observer 2: the same overlap
            rows.append(["observer 1", None, observer.dice(1), None,
                         PAPER_RESULTS["table3"]["observer 1"]["dice_obs2"]])
        sections += ["## Table 3 shape: methods and human observers", "",
                     _markdown_table(header, [[row[0]] + [_format(c) for c in row[1:]]
                                              for row in rows]), ""]
        if observer is not None:
            sections += ["Observer rows: observer 2's labels scored against observer 1 "
                         "(Dice is symmetric, so observer 1 vs observer 2 shows the same "
                         "overlap).", ""]
        tables["table3"] = _write_csv(output_dir / "table3_observers.csv", ["data"] + header,
                                      [[data_label] + row for row in rows])

    compared = chosen_methods(grouped["table4"], options.pvalue_methods, "Table 4")
    if len(compared) >= 2:
        block = _pvalue_block(compared, options)
        if block is None:
            sections += ["## Table 4 shape: paired bootstrap p-values", "",
                         "Not computed: the methods share fewer than 2 test cases "
                         "(p-values pair each case's results).", ""]
        else:
            header, markdown_rows, csv_rows, case_count = block
            sections += ["## Table 4 shape: paired bootstrap p-values", "",
                         f"p_ij = share of {options.pvalue_resamples} paired patient-level "
                         f"bootstrap resamples of the {case_count} common test cases in "
                         f"which method i (row) has a higher {options.statistic} Dice than "
                         "method j (column): the p-value of the null hypothesis \"method i "
                         "is better than method j\"; small values mean the column method is "
                         f"significantly better (seed {options.seed}).", "",
                         _markdown_table(header, markdown_rows), ""]
            tables["table4"] = _write_csv(
                output_dir / "table4_pvalues.csv",
                ["data", "row_method", "column_method", "p_value", "paper_p_value",
                 "cases", "resamples"], [[data_label] + row for row in csv_rows])

    if grouped["table5"]:
        header = ["Method", "Validation Az", "Test Dice (obs1)", "Paper validation Az",
                  "Paper Dice (obs1)"]
        rows = [[m.name, m.validation_az, m.dice(1), paper_value(m, "validation_az"),
                 paper_value(m, "dice_obs1")] for m in grouped["table5"]]
        sections += ["## Table 5 shape: where location features enter the network", "",
                     _markdown_table(header, [[row[0], _format(row[1], 4), _format(row[2]),
                                               _format(row[3], 4), _format(row[4])]
                                              for row in rows]), ""]
        tables["table5"] = _write_csv(output_dir / "table5_location_layer.csv",
                                      ["data"] + header, [[data_label] + row for row in rows])

    if grouped["table6"]:
        largest = max(m.training_size for m in grouped["table6"])
        header = ["Method", "Training images", "Test Dice (obs1)", "95% CI",
                  "Paper Dice (same share of training set)"]
        rows = []
        for method in grouped["table6"]:
            low, high = intervals[method.name]
            rows.append([method.name, method.training_size, method.dice(1),
                         f"{_format(low)}–{_format(high)}" if not math.isnan(low) else None,
                         _paper_table6_value(method.training_size, largest)])
        sections += ["## Table 6 shape: test Dice by training-set size", "",
                     _markdown_table(header, [[r[0], r[1], _format(r[2]), _format(r[3]),
                                               _format(r[4])] for r in rows]), "",
                     "Paper (MSWS + Loc): " + ", ".join(
                         f"{size} images {dice:.3f}"
                         for size, dice in PAPER_RESULTS["table6"].items()), ""]
        tables["table6"] = _write_csv(output_dir / "table6_training_size.csv",
                                      ["data"] + header, [[data_label] + row for row in rows])
    return sections, tables


# ------------------------------------------------------------------ evaluate printing

def format_evaluation(evaluation: dict) -> str:
    """A plain-text table of :func:`wmh.evaluation.cases.evaluate_cases` output, for the
    terminal."""
    columns = [("id", "case", "{}"), ("dice", "Dice", "{:.3f}"), ("hd95", "HD95 mm", "{:.2f}"),
               ("avd", "AVD %", "{:.1f}"), ("lesion_recall", "recall", "{:.3f}"),
               ("lesion_f1", "F1", "{:.3f}")]
    cases = evaluation["cases"]
    if cases and "dice_brain" in cases[0]:
        columns.append(("dice_brain", "Dice brain", "{:.3f}"))
    if cases and all("auc" in case for case in cases):
        columns.append(("auc", "Az", "{:.4f}"))

    def cell(value, pattern):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return pattern.format(value)

    rows = [[cell(case.get(key), pattern) for key, _, pattern in columns] for case in cases]
    summary = evaluation["summary"]
    rows.append(["mean"] + [cell(summary["mean"].get(key), pattern)
                            for key, _, pattern in columns[1:]])
    header = [title for _, title, _ in columns]
    widths = [max(len(str(row[index])) for row in rows + [header])
              for index in range(len(header))]
    lines = ["  ".join(str(value).rjust(width) for value, width in zip(row, widths))
             for row in [header] + rows]
    lines.append(f"{summary['num_cases']} cases; overall Dice {summary['pooled_dice']:.3f}"
                 if cases else "no cases")
    used = sorted({case["threshold"] for case in cases if "threshold" in case})
    if used:
        whose = ("as given with --threshold" if evaluation.get("threshold") is not None
                 else "each segmentation's own; probability maps without one at 0.5")
        lines.append(f"threshold {', '.join(f'{t:g}' for t in used)} ({whose})")
    undefined = {key: count for key, count in summary.get("undefined", {}).items() if count}
    if undefined:
        lines.append("undefined (empty masks, left out of means): " + ", ".join(
            f"{key} {count}" for key, count in undefined.items()))
    if evaluation.get("unmatched_predictions"):
        lines.append("predictions without truth (not evaluated): "
                     + ", ".join(evaluation["unmatched_predictions"][:10]))
    return "\n".join(lines)
