"""wmh segment on cohorts: failures recorded and gone past, resume, shared output folders."""

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segment_helpers import prepare_from_files, tiny_model, write_subject  # noqa: F401
from wmh.cli import main
from wmh.preprocess import PreparationFailed
from wmh.segment import SegmentOptions, run_cohort, segment
from wmh.segment import outputs


def _table(out):
    with open(out / "volumes.csv", newline="") as handle:
        return {row["subject_id"]: row for row in csv.DictReader(handle)}


def _run(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_cohort_goes_past_failures_and_exits_1(tmp_path, tiny_model, monkeypatch, capsys):
    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for index, name in enumerate(("a1", "b2", "c3", "d4")):
        write_subject(cohort, prepared, name, seed=index)
    # b2: corrupt FLAIR (found by the header check, before the model loads);
    # c3: registration fails during preparation (found late).
    (cohort / "site" / "b2" / "pre" / "FLAIR.nii.gz").write_bytes(b"garbage" * 100)
    calls = prepare_from_files(monkeypatch, prepared, fail={
        "c3": PreparationFailed("c3: atlas registration failed (NMI 0.014 < 0.02)")})
    out = tmp_path / "out"
    code = _run(["segment", "--model", str(tiny_model), str(cohort), "--out", str(out)])
    assert code == 1
    captured = capsys.readouterr()
    assert "wmh: error: 2 subject(s) failed: b2, c3 (see" in captured.err
    assert "segmented 2, skipped 0 (already done with this model and settings), failed 2" \
        in captured.out
    assert calls == ["a1", "c3", "d4"]  # b2 never reached preparation
    table = _table(out)
    assert {key: row["status"] for key, row in table.items()} == {
        "a1": "ok", "b2": "failed", "c3": "failed", "d4": "ok"}
    assert "FLAIR.nii.gz: cannot read NIfTI header" in table["b2"]["error"]
    assert table["c3"]["error"] == "c3: atlas registration failed (NMI 0.014 < 0.02)"
    assert table["a1"]["error"] == "" and float(table["a1"]["total_ml"]) >= 0
    assert table["c3"]["total_ml"] == "" and table["c3"]["model_sha256"]
    assert sorted(p.name for p in (out / "c3").iterdir()) == ["report.json"]
    assert (out / "d4" / "wmh_mask.nii.gz").is_file()
    # An unexpected exception in one subject is recorded the same way.
    calls.clear()
    prepare_from_files(monkeypatch, prepared, fail={"a1": MemoryError("out of memory")})
    result = run_cohort(tiny_model, [cohort], out, SegmentOptions(overwrite=True),
                        progress=False)
    assert result.failed == ["a1", "b2"] and result.segmented == ["c3", "d4"]
    assert _table(out)["a1"]["error"] == "MemoryError: out of memory"


def test_rerun_skips_what_is_done(tmp_path, tiny_model, monkeypatch, capsys):
    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for index, name in enumerate(("a1", "b2")):
        write_subject(cohort, prepared, name, seed=index)
    calls = prepare_from_files(monkeypatch, prepared)
    out = tmp_path / "out"
    argv = ["segment", "--model", str(tiny_model), str(cohort), "--out", str(out), "--quiet"]
    assert _run(argv) == 0
    files = sorted(out.glob("*/*")) + [out / "volumes.csv"]
    before = {path: path.stat().st_mtime_ns for path in files}
    calls.clear()
    capsys.readouterr()
    time.sleep(0.01)
    assert _run(argv) == 0
    assert "segmented 0, skipped 2 (already done" in capsys.readouterr().out
    assert calls == []
    assert {path: path.stat().st_mtime_ns for path in files} == before
    # Another setting, or --overwrite, segments again.
    assert _run(argv + ["--threshold", "0.7"]) == 0
    assert calls == ["a1", "b2"]
    assert json.loads((out / "a1" / "report.json").read_text())["threshold"] == 0.7
    calls.clear()
    assert _run(argv + ["--threshold", "0.7"]) == 0 and calls == []
    assert _run(argv + ["--threshold", "0.7", "--overwrite"]) == 0
    assert calls == ["a1", "b2"]


def test_calls_into_one_folder_accumulate(tmp_path, tiny_model, monkeypatch, capsys):
    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for index, name in enumerate(("a1", "b2")):
        write_subject(cohort, prepared, name, seed=index)
    prepare_from_files(monkeypatch, prepared)
    out = tmp_path / "out"
    (out / "a1").mkdir(parents=True)
    (out / "a1" / "stale.txt").write_text("from an older run")
    for name in ("a1", "b2"):  # a job array: one subject per call
        flair = cohort / "site" / name / "pre" / "FLAIR.nii.gz"
        t1 = cohort / "site" / name / "pre" / "T1.nii.gz"
        assert _run(["segment", "--model", str(tiny_model), str(flair), str(t1),
                     "--out", str(out), "--quiet"]) == 0
    assert sorted(_table(out)) == ["a1", "b2"]
    assert not (out / "a1" / "stale.txt").exists()  # the folder was replaced as a whole
    assert sorted(p.name for p in out.iterdir()) == [".wmh.lock", "a1", "b2", "index.html",
                                                     "volumes.csv"]
    rows = segment(tiny_model, [cohort], out, progress=False)
    assert [row["status"] for row in rows] == ["ok", "ok"]


def test_concurrent_writers_keep_every_row(tmp_path, monkeypatch):
    """Two writers publish different subjects into one folder at once. Writer 'slow'
    pauses between listing the subject folders and writing volumes.csv; writer 'fast'
    publishes during that pause. Without the lock the slow writer's table (written last)
    would lack the fast writer's subject."""
    out = tmp_path / "out"
    reports = outputs.subject_reports
    slow_listed = threading.Event()

    def slow_reports(*args):
        found = reports(*args)
        if threading.current_thread().name == "slow":
            slow_listed.set()
            time.sleep(0.5)
        return found

    monkeypatch.setattr(outputs, "subject_reports", slow_reports)

    def writer(subject_id):
        if subject_id == "fast":
            slow_listed.wait(5)
        outputs.write_subject_folder(out, subject_id, lambda folder: outputs.write_report(
            folder, {"subject_id": subject_id, "status": "ok"}))

    threads = [threading.Thread(target=writer, args=(name,), name=name)
               for name in ("slow", "fast")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(_table(out)) == ["fast", "slow"]
    assert sorted(p.name for p in out.iterdir()) == [".wmh.lock", "fast", "index.html",
                                                     "slow", "volumes.csv"]


def test_the_lock_is_held_during_the_swap(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done = threading.Event()

    def publish():
        outputs.write_subject_folder(out, "x", lambda folder: outputs.write_report(
            folder, {"subject_id": "x", "status": "ok"}))
        done.set()

    with outputs.out_dir_lock(out):
        thread = threading.Thread(target=publish)
        thread.start()
        assert not done.wait(0.3)  # blocked by our lock
        assert not (out / "x").exists()
    thread.join(5)
    assert done.is_set() and (out / "x" / "report.json").is_file()


def test_stage_progress_and_quiet(tmp_path, tiny_model, monkeypatch, capsys):
    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    write_subject(cohort, prepared, "a1")
    prepare_from_files(monkeypatch, prepared)
    argv = ["segment", "--model", str(tiny_model), str(cohort), "--out", str(tmp_path / "o")]
    assert _run(argv) == 0
    err = capsys.readouterr().err
    for stage in ("prepare", "infer", "write"):
        assert pytest.approx(0, abs=1e3) == float(
            next(line for line in err.splitlines() if line.startswith(f"a1: {stage} "))
            .split()[2])
    assert "segment" in err and "s_per_subject" in err  # the bar and its postfix
    assert _run(argv + ["--quiet", "--overwrite"]) == 0
    assert capsys.readouterr().err == ""


def test_the_lock_holds_across_processes(tmp_path):
    """Another process (a job-array task) holding OUT's lock delays our swap until it
    lets go: our subject folder appears only after its 'released' marker."""
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from wmh.segment.outputs import out_dir_lock\n"
        "out = Path(sys.argv[1])\n"
        "with out_dir_lock(out):\n"
        "    (out / '.held').touch()\n"
        "    time.sleep(0.5)\n"
        "    (out / '.released').touch()\n")
    other = subprocess.Popen([sys.executable, "-c", script, str(out)],
                             env={**os.environ,
                                  "PYTHONPATH": str(Path(outputs.__file__).parents[2])})
    try:
        for _ in range(500):
            if (out / ".held").exists():
                break
            time.sleep(0.01)
        assert (out / ".held").exists()
        outputs.write_subject_folder(out, "x", lambda folder: outputs.write_report(
            folder, {"subject_id": "x", "status": "ok"}))
        assert (out / ".released").exists()  # we got the lock only after it let go
    finally:
        assert other.wait(10) == 0
    assert sorted(_table(out)) == ["x"]


def test_a_failed_test_subject_stops_the_pipelines_evaluation(tmp_path, monkeypatch):
    """The experiment pipeline never drops a test subject silently: a failed row from
    `wmh segment` stops it with the subject's error."""
    import wmh.segment
    from wmh import pipeline, sampling
    from wmh.config import load_config
    from wmh.errors import WMHError

    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    write_subject(cohort, prepared, "a1")
    monkeypatch.setattr(sampling, "load_splits", lambda folder: {"test": ["a1"]})
    monkeypatch.setattr(wmh.segment, "segment", lambda *args, **kwargs: [
        {"subject_id": "a1", "status": "failed", "error": "a1: registration failed"}])
    stages = pipeline.DataStages(cohort, True, prepared, tmp_path / "samples")
    with pytest.raises(WMHError, match=r"test subject 'a1' failed to segment \(a1: "
                                       r"registration failed\)"):
        pipeline.segment_test_subjects(load_config(None, []), stages, tmp_path / "model",
                                       tmp_path / "out")


def test_folders_left_by_a_killed_writer_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    owner = outputs._owner()
    host = owner.split("@")[1]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    abandoned = out / f".s1.{dead}@{host}.abc123.staging"
    live = out / f".s2.{owner}.def456.staging"  # ours, still running
    elsewhere = out / f".s3.{dead}@another-host.ghi789.old"
    for folder in (abandoned, live, elsewhere):
        folder.mkdir()
    outputs.write_subject_folder(out, "x", lambda folder: outputs.write_report(
        folder, {"subject_id": "x", "status": "ok"}))
    assert not abandoned.exists() and live.exists() and elsewhere.exists()


def test_precision_is_recorded_as_run_and_a_change_segments_again(tmp_path, tiny_model,
                                                                  monkeypatch, capsys):
    import nibabel as nib
    import numpy as np

    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    write_subject(cohort, prepared, "a1")
    calls = prepare_from_files(monkeypatch, prepared)
    out = tmp_path / "out"
    argv = ["segment", "--model", str(tiny_model), str(cohort), "--out", str(out), "--quiet"]
    assert _run(argv + ["--precision", "fp32"]) == 0
    report = json.loads((out / "a1" / "report.json").read_text())
    assert report["precision"] == "fp32" and _table(out)["a1"]["precision"] == "fp32"
    fp32 = nib.load(out / "a1" / "wmh_probability.nii.gz").get_fdata()
    calls.clear()
    assert _run(argv) == 0 and calls == []  # auto resolves to fp32 in the tests: done
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if not {"avx512_bf16", "amx_bf16"} & set(cpuinfo.split()):  # conftest hides the ISA
        pytest.skip("this CPU has no bfloat16 units")
    assert _run(argv + ["--precision", "bf16"]) == 0 and calls == ["a1"]
    assert json.loads((out / "a1" / "report.json").read_text())["precision"] == "bf16"
    bf16 = nib.load(out / "a1" / "wmh_probability.nii.gz").get_fdata()
    assert np.abs(bf16 - fp32).max() <= 0.02


def test_the_model_loads_while_the_first_subject_is_prepared(tmp_path, tiny_model,
                                                             monkeypatch):
    from wmh import preprocess
    from wmh.segment.subject import SegmentModel

    cohort, prepared_dir = tmp_path / "cohort", tmp_path / "prepared"
    write_subject(cohort, prepared_dir, "a1")
    events, preparing = [], threading.Event()
    load = SegmentModel._load

    def slow_load(self):  # loading waits until preparation has begun (20 s at most)
        events.append(("load starts", preparing.wait(20)))
        load(self)
        events.append(("loaded", threading.current_thread().name))

    def prepare(subject, config, use_t1=True):
        preparing.set()
        events.append(("prepare", subject.subject_id))
        time.sleep(0.2)
        return preprocess.PreparedSubject.load(prepared_dir / f"{subject.subject_id}.h5")

    monkeypatch.setattr(SegmentModel, "_load", slow_load)
    monkeypatch.setattr(preprocess, "prepare_subject", prepare)
    result = run_cohort(tiny_model, [cohort], tmp_path / "out", progress=False)
    assert result.segmented == ["a1"] and result.failed == []
    # loading waited for preparation to begin (it would wait in vain if it came first)
    assert ("load starts", True) in events
    assert events.index(("prepare", "a1")) < events.index(("loaded", "wmh-load-model"))
    assert (tmp_path / "out" / "a1" / "wmh_mask.nii.gz").is_file()


@pytest.mark.parametrize("direct", [False, True])
def test_a_model_that_cannot_load_stops_the_command_with_exit_2(tmp_path, tiny_model,
                                                               monkeypatch, capsys, direct):
    """Loading in the background, weights that are no model still stop the command with
    their one-line error and exit 2, write nothing, and win over the first subject's
    own failure (a cohort would otherwise record it and go on)."""
    import shutil

    from wmh.errors import WMHError

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "model.keras").write_bytes(b"not a keras file")
    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for index, name in enumerate(("a1", "b2")):
        write_subject(cohort, prepared, name, seed=index)
    failure = WMHError("a1: no brain found") if direct else PreparationFailed("a1: failed")
    calls = prepare_from_files(monkeypatch, prepared, fail={"a1": failure})
    inputs = ([str(cohort / "site" / "a1" / "pre" / "FLAIR.nii.gz"),
               str(cohort / "site" / "a1" / "pre" / "T1.nii.gz")] if direct
              else [str(cohort)])
    out = tmp_path / "out"
    assert _run(["segment", "--model", str(model), *inputs, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [next(line for line in err if line.startswith("wmh: error: "))]
    assert err[0].startswith(f"wmh: error: {model / 'model.keras'}: cannot load model")
    assert calls == ["a1"]  # prepared while the model loaded, then stopped
    assert not out.exists()
