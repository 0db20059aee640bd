"""``OUT/index.html``: the cohort on one page, to review every subject without opening
each QC image.

One table row per subject in OUT (failed subjects highlighted): the QC image as a
thumbnail linking to the full image, the volumes, the status, warnings and error, and a
link to the subject's report. Clicking a column header sorts by it (numbers as numbers;
a few lines of inline JavaScript). The page is self-contained: no network resource, no
external CSS, script or font; links are relative, so OUT can be moved or copied. Every
value is HTML-escaped (ids and error messages are user data).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

# (report field, column header) of the table after the QC image.
PAGE_COLUMNS = (
    ("subject_id", "subject"), ("status", "status"), ("total_ml", "WMH mL"),
    ("periventricular_ml", "periventricular mL"), ("deep_ml", "deep mL"),
    ("lesion_count", "lesions"), ("brain_ml", "brain mL"), ("threshold", "threshold"),
    ("dice", "Dice"), ("warnings", "warnings"), ("error", "error"),
)

_STYLE = """
body{font-family:sans-serif;margin:1em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:middle}
th{background:#eee;cursor:pointer;position:sticky;top:0;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
td.number{text-align:right;font-variant-numeric:tabular-nums}
td.subject_id{white-space:nowrap}
tr.failed td{background:#fdd}
tr.failed td.status{color:#a00;font-weight:bold}
img{height:90px;display:block}
"""

# Sorts tbody rows by the clicked column: data-sort (numbers) or the cell's text; empty
# cells (a failed subject's volumes) last in both directions.
_SCRIPT = """
document.querySelectorAll("th").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var body = document.querySelector("tbody");
    var up = header.getAttribute("aria-sort") !== "ascending";
    document.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", up ? "ascending" : "descending");
    var key = function (row) {  // a number (data-sort), a text, or null when empty
      var cell = row.cells[column], value = cell.getAttribute("data-sort");
      var text = cell.textContent.trim();
      return value !== null ? Number(value) : (text === "" ? null : text);
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) { return (x === null) - (y === null); }  // empty last
      if (typeof x === "number" && typeof y === "number") { return up ? x - y : y - x; }
      return up ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _href(path: Path) -> str:
    """A relative URL to ``path`` (relative to OUT), percent-encoded, HTML-escaped."""
    return html.escape(quote(path.as_posix()), quote=True)


def _cell(field: str, value) -> str:
    if isinstance(value, (list, tuple)):
        value = "; ".join(str(item) for item in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = "" if value is None else str(value)
        return f'<td class="{field}">{html.escape(text)}</td>'
    shown = f"{value:.3f}" if isinstance(value, float) else str(value)
    return (f'<td class="number {field}" data-sort="{html.escape(repr(value))}">'
            f"{html.escape(shown)}</td>")


def cohort_page(entries: Sequence[tuple[dict, Path | None, Path | None]],
                title: str = "wmh segment") -> str:
    """The page's HTML.

    Args:
        entries: per subject: its report (report.json contents), the QC image's path
            relative to OUT (None when it has none, e.g. failed) and the report's path
            relative to OUT.
        title: shown as the page title and heading, with the counts.
    """
    failed = sum(report.get("status") != "ok" for report, _, _ in entries)
    heading = f"{title}: {len(entries)} subjects, {failed} failed"
    header = "".join(f"<th>{html.escape(name)}</th>" for name in
                     ("QC", *(name for _, name in PAGE_COLUMNS)))
    rows = []
    for report, image, report_path in entries:
        status = "ok" if report.get("status") == "ok" else "failed"
        if image is not None:
            link = _href(image)
            thumbnail = (f'<td><a href="{link}"><img src="{link}" '
                         f'alt="QC {html.escape(str(report.get("subject_id")))}" '
                         'loading="lazy"></a></td>')
        else:
            thumbnail = "<td>no image</td>"
        cells = [_cell(field, report.get(field)) for field, _ in PAGE_COLUMNS]
        if report_path is not None:  # the id links to the subject's report.json
            cells[0] = (f'<td class="subject_id"><a href="{_href(report_path)}">'
                        f'{html.escape(str(report.get("subject_id")))}</a></td>')
        rows.append(f'<tr class="{status}">{thumbnail}{"".join(cells)}</tr>')
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(heading)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n<h1>{html.escape(heading)}</h1>\n"
            "<p>Click a column header to sort. Click a QC image to open it full size, a "
            "subject to open its report. Failed subjects are in red.</p>\n"
            f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n" + "\n".join(rows)
            + f"\n</tbody>\n</table>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n")
