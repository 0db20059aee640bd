"""Commands with many options get them as one config object (`wmh.cli.options.gathered`):
the objects the commands hand on are exactly what their options say."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from wmh.cli import main
from wmh.cli.options import gathered


@dataclasses.dataclass(frozen=True)
class Pair:
    a: int = 1
    b: str = "x"
    c: float = 0.5  # no option: keeps its default


def test_gathered_hands_the_fields_options_as_one_object():
    seen = {}

    @click.command()
    @click.option("--a", type=int, default=3)
    @click.option("--b", default="y")
    @click.option("--other", default="o")
    @gathered(lambda: Pair, "pair", b=str.upper)
    def command(other, pair):
        seen.update(other=other, pair=pair)

    result = CliRunner().invoke(command, ["--a", "7", "--other", "p"])
    assert result.exit_code == 0, result.output
    assert seen == {"other": "p", "pair": Pair(a=7, b="Y", c=0.5)}
    CliRunner().invoke(command, [])
    assert seen == {"other": "o", "pair": Pair(a=3, b="Y", c=0.5)}


def _exit_code(argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code


def test_segment_options_are_those_given(tmp_path, monkeypatch):
    from wmh import segment
    from wmh.segment import SegmentOptions

    seen = {}

    def run_cohort(model_source, inputs, out_dir, options, progress, subject_id):
        seen.update(model=model_source, inputs=inputs, options=options, progress=progress,
                    subject_id=subject_id)
        return SimpleNamespace(rows=[], segmented=[], skipped=[], failed=[])

    monkeypatch.setattr(segment, "run_cohort", run_cohort)
    assert _exit_code(["segment", "--model", "m", "a.nii.gz", "--out", tmp_path / "o",
                       "--threshold", "0.4", "--mc-samples", "3", "--layout", "bids",
                       "--calibration", "none", "--quiet", "--subject-id", "s1"]) == 0
    assert seen == {"model": "m", "inputs": ("a.nii.gz",), "progress": False,
                    "subject_id": "s1",
                    "options": SegmentOptions(threshold=0.4, mc_samples=3, layout="bids",
                                              calibration="none", precision="auto")}
    assert _exit_code(["segment", "a.nii.gz", "--out", tmp_path / "o", "--precision",
                       "bf16", "--periventricular-mm", "5", "--overwrite"]) == 0
    assert seen["options"] == SegmentOptions(periventricular_mm=5.0, overwrite=True,
                                             precision="bf16", calibration=None)


def test_report_sources_and_options_are_those_given(tmp_path, monkeypatch):
    from wmh.evaluation import report
    from wmh.evaluation.report import ReportSources
    from wmh.evaluation.results import ReportOptions

    seen = {}
    monkeypatch.setattr(report, "collect_results",
                        lambda sources, notes: seen.setdefault("sources", sources) and [])
    monkeypatch.setattr(report, "write_report", lambda results, out, label, options, **kw:
                        seen.update(options=options, label=label)
                        or SimpleNamespace(markdown=out / "report.md"))
    assert _exit_code(["report", "--method", "SS + Loc=seg", "--run", "B=abc", "--truth",
                       tmp_path, "--threshold", "0.3", "--out", tmp_path / "r",
                       "--resamples", "20", "--seed", "4", "--data-label", "x"]) == 0
    assert seen == {"sources": ReportSources(methods=(("SS + Loc", "seg"),),
                                             runs=(("B", "abc"),), truth=tmp_path,
                                             threshold=0.3),
                    "options": ReportOptions(ci_resamples=20, pvalue_resamples=100, seed=4),
                    "label": "x"}


def test_reproduce_request_is_the_options_given(monkeypatch, capsys):
    from wmh import reproduce
    from wmh.reproduce import ReproduceRequest

    seen = []
    monkeypatch.setattr(reproduce, "describe", lambda request: seen.append(request) or "plan")
    assert _exit_code(["reproduce", "--dry-run", "--scale", "paper", "--experiments", "ss",
                       "--set", "train.epochs=1", "--set-list", "synth.seed=2 synth.subjects=5",
                       "--alphas", "0.5,2", "--experiments-dir", "elsewhere"]) == 0
    assert seen == [ReproduceRequest(scale="paper", experiments="ss",
                                     overrides=("train.epochs=1", "synth.seed=2",
                                                "synth.subjects=5"),
                                     experiments_dir=Path("elsewhere"), alphas=(0.5, 2.0))]
    assert capsys.readouterr().out == "plan\n"
