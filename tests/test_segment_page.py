"""The cohort QC page (OUT/index.html): one row per subject with its values, relative
links that resolve, escaped user data, failures marked, no network resources."""

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from wmh.segment import outputs
from wmh.segment.page import PAGE_COLUMNS, cohort_page


class PageParser(HTMLParser):
    """Rows of the table body (class + cell texts), every URL attribute, tag names."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.urls, self.tags, self.headers = [], [], [], []
        self.cell = None
        self.in_body = self.in_header = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [value for key, value in attrs.items()
                      if key in ("href", "src", "action", "data", "poster")]
        if tag == "tbody":
            self.in_body = True
        elif tag == "th":
            self.in_header = True
            self.headers.append("")
        elif tag == "tr" and self.in_body:
            self.rows.append({"class": attrs.get("class"), "cells": [], "links": [],
                              "sort": []})
        elif tag == "td" and self.in_body:
            self.cell = ""
            self.rows[-1]["sort"].append(attrs.get("data-sort"))
        elif tag in ("a", "img") and self.in_body:
            self.rows[-1]["links"].append(attrs.get("href") or attrs.get("src"))

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1]["cells"].append(self.cell)
            self.cell = None
        elif tag == "th":
            self.in_header = False
        elif tag == "tbody":
            self.in_body = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.in_header:
            self.headers[-1] += data


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    text = path.read_text()
    parser.feed(text)
    parser.text = text
    return parser


def assert_self_contained(page: PageParser) -> None:
    """No resource from the network: no absolute URL anywhere, no external stylesheet
    or script, every link relative."""
    assert "http://" not in page.text and "https://" not in page.text
    assert "//" not in "".join(url[:2] for url in page.urls)  # no protocol-relative URL
    assert "link" not in page.tags and "iframe" not in page.tags
    assert all(":" not in url.split("/")[0] for url in page.urls), page.urls


def _publish(out, subject_id, report, image=b""):
    def write(folder):
        outputs.write_report(folder, {"subject_id": subject_id, **report})
        if image:
            (folder / "qc.png").write_bytes(image)
    outputs.write_subject_folder(out, subject_id, write)


def test_page_lists_every_subject_escaped_with_links(tmp_path):
    out = tmp_path / "out"
    hostile = 'p<b>1 & "x" #2?q=%41'  # a legal folder name full of HTML and URL syntax
    _publish(out, hostile, {"status": "ok", "error": "", "total_ml": 3.25,
                            "periventricular_ml": 2.0, "deep_ml": 1.25, "lesion_count": 4,
                            "brain_ml": 1200.5, "threshold": 0.45, "dice": None,
                            "warnings": ["registration <fell back> to affine", "b&w"]},
             image=b"\x89PNG one")
    _publish(out, "a2", {"status": "ok", "error": "", "total_ml": 12.0, "lesion_count": 10,
                         "warnings": []}, image=b"\x89PNG two")
    _publish(out, "c3", {"status": "failed",
                         "error": "<script>alert('x')</script>: NMI 0.01 < 0.02"})
    page = parse_page(out / "index.html")
    assert_self_contained(page)
    assert page.headers == ["QC", *(name for _, name in PAGE_COLUMNS)]
    assert "<script>alert" not in page.text  # escaped, so it is text, not a tag
    assert page.tags.count("script") == 1  # only the page's own sort script
    rows = {row["cells"][1]: row for row in page.rows}
    assert list(rows) == ["a2", "c3", hostile]  # folder order, values unescaped by parser
    columns = ["QC", *(field for field, _ in PAGE_COLUMNS)]
    first = dict(zip(columns, rows[hostile]["cells"]))
    assert first["status"] == "ok" and first["total_ml"] == "3.250"
    assert first["lesion_count"] == "4" and first["threshold"] == "0.450"
    assert first["dice"] == "" and first["error"] == ""
    assert first["warnings"] == "registration <fell back> to affine; b&w"
    sort = dict(zip(columns, rows[hostile]["sort"]))
    assert float(sort["total_ml"]) == 3.25 and float(sort["brain_ml"]) == 1200.5
    assert sort["dice"] is None  # text column: not sorted as a number
    failed = dict(zip(columns, rows["c3"]["cells"]))
    assert rows["c3"]["class"] == "failed" and rows["a2"]["class"] == "ok"
    assert failed["status"] == "failed" and failed["QC"] == "no image"
    assert failed["error"] == "<script>alert('x')</script>: NMI 0.01 < 0.02"
    # Thumbnail, full-size link and report link resolve, relative to OUT.
    image_link, thumbnail, report_link = rows[hostile]["links"]
    assert image_link == thumbnail
    assert (out / unquote(thumbnail)).read_bytes() == b"\x89PNG one"
    assert (out / unquote(report_link)) == out / hostile / "report.json"
    assert rows["c3"]["links"] == ["c3/report.json"]
    assert "3 subjects, 1 failed" in page.text


def test_page_is_rebuilt_with_the_table(tmp_path):
    out = tmp_path / "out"
    _publish(out, "a1", {"status": "ok", "total_ml": 1.0})
    assert [row["cells"][1] for row in parse_page(out / "index.html").rows] == ["a1"]
    _publish(out, "a1", {"status": "failed", "error": "boom"})
    _publish(out, "b2", {"status": "ok", "total_ml": 2.0})
    rows = parse_page(out / "index.html").rows
    assert [(row["cells"][1], row["class"]) for row in rows] == [("a1", "failed"),
                                                                   ("b2", "ok")]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
@pytest.mark.parametrize("clicks, expected", [
    ("th[3]", ["s1", "s0", "s3", "s2"]),  # WMH mL ascending, the failed (empty) one last
    ("th[3] th[3]", ["s3", "s0", "s1", "s2"]),  # descending, empty still last
    ("th[1] th[1]", ["s3", "s2", "s1", "s0"]),  # subject, descending
])
def test_headers_sort_the_rows_in_a_browser(tmp_path, clicks, expected):
    values = [("ok", 10.5), ("ok", 2.0), ("failed", None), ("ok", 100.0)]
    entries = [({"subject_id": f"s{index}", "status": status, "total_ml": total}, None, None)
               for index, (status, total) in enumerate(values)]
    script = "".join(f"document.querySelectorAll('th')[{click[3:-1]}].click();"
                     for click in clicks.split())
    page = tmp_path / "page.html"
    page.write_text(cohort_page(entries).replace("</body>", f"<script>{script}</script></body>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    parser = PageParser()
    parser.feed(dom)
    assert [row["cells"][1] for row in parser.rows] == expected
