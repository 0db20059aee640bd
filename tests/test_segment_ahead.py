"""wmh.segment.ahead: subjects prepared in a worker process while the model loads and infers."""

import csv
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segment_helpers import prepare_from_files, tiny_model, write_subject  # noqa: F401
from wmh.errors import WMHError
from wmh.segment import SegmentOptions, ahead, run_cohort


def _synthetic_subject(folder: Path):
    from wmh.config import SynthConfig
    from wmh.io import discover
    from wmh.synth import synthesize_cohort

    synthesize_cohort(folder, SynthConfig(subjects=1, seed=6, profile="test", flair_only=True),
                      cache_dir=None)
    return discover(folder)[0]


def test_the_worker_prepares_exactly_what_this_process_would(tmp_path):
    from wmh.config import PreprocessConfig
    from wmh.preprocess import prepare_subject

    subject = _synthetic_subject(tmp_path / "synth")
    # one SimpleITK thread: the multi-threaded registration sums in varying order, so two
    # runs in one process differ by ~1e-3 mm of MNI coordinate already
    config = PreprocessConfig(inplane_spacing_mm=2.0, registration_iterations=60,
                              deformable_iterations=15, n4_iterations=10, threads=1)
    with ahead.Preparer(config, False, [subject], worker=True) as preparer:
        assert preparer.in_worker
        in_worker = preparer.result(subject)
    here = prepare_subject(subject, config, use_t1=False)
    assert in_worker.cache_key == here.cache_key
    for name in ("images", "brain_mask", "location", "mni_coordinates", "ventricles"):
        np.testing.assert_array_equal(getattr(in_worker, name), getattr(here, name), name)
    assert in_worker.provenance["quality"]["seconds"].keys() == \
        here.provenance["quality"]["seconds"].keys()


def test_a_worker_is_forked_only_before_tensorflow_and_threads(monkeypatch):
    monkeypatch.delenv("WMH_PREPARE_WORKER", raising=False)
    monkeypatch.setattr(ahead.threading, "active_count", lambda: 1)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert ahead.worker_allowed()
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    assert not ahead.worker_allowed()  # a fork could inherit TensorFlow's held locks
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setattr(ahead.threading, "active_count", lambda: 2)
    assert not ahead.worker_allowed()
    monkeypatch.setattr(ahead.threading, "active_count", lambda: 1)
    monkeypatch.setenv("WMH_PREPARE_WORKER", "0")
    assert not ahead.worker_allowed()


def test_without_a_worker_a_subject_is_prepared_when_asked_for(monkeypatch, tmp_path):
    from wmh.io import Subject

    calls = []
    monkeypatch.setattr(ahead, "_prepare", lambda subject, config, use_t1:
                        calls.append(subject.subject_id) or subject.subject_id)
    subjects = [Subject(subject_id=name, flair=tmp_path / f"{name}.nii.gz")
                for name in ("a", "b")]
    with ahead.Preparer(None, False, subjects, worker=False) as preparer:
        assert not preparer.in_worker and calls == []  # nothing prepared up front
        assert preparer.result(subjects[1]) == "b" and preparer.result(subjects[0]) == "a"
    assert calls == ["b", "a"]


def _die(subject, config, use_t1):
    if subject.subject_id == "dies":
        os._exit(3)  # a worker killed mid-subject (e.g. by the kernel, out of memory)
    return subject.subject_id


def test_a_dead_worker_fails_its_subject_and_the_rest_are_prepared_here(monkeypatch,
                                                                       tmp_path):
    from wmh.io import Subject

    monkeypatch.setattr(ahead, "_prepare", _die)  # inherited by the forked worker
    subjects = [Subject(subject_id=name, flair=tmp_path / f"{name}.nii.gz")
                for name in ("first", "dies", "after")]
    with ahead.Preparer(None, False, subjects, worker=True) as preparer:
        assert preparer.result(subjects[0]) == "first"
        with pytest.raises(WMHError, match=r"dies\.nii\.gz: the preparation worker process "
                                           r"died while preparing this subject"):
            preparer.result(subjects[1])
        assert not preparer.in_worker
        assert preparer.result(subjects[2]) == "after"


def _table(out):
    with open(out / "volumes.csv", newline="") as handle:
        return {row["subject_id"]: row for row in csv.DictReader(handle)}


def test_a_cohort_prepared_in_the_worker_goes_past_failures_with_the_same_outputs(
        tmp_path, tiny_model, monkeypatch):
    from wmh.preprocess import PreparationFailed

    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for index, name in enumerate(("a1", "b2", "c3")):
        write_subject(cohort, prepared, name, seed=index)
    prepare_from_files(monkeypatch, prepared, fail={
        "b2": PreparationFailed("b2: atlas registration failed (NMI 0.014 < 0.02)")})
    workers = []
    original = ahead.Preparer.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        workers.append(self.in_worker)

    monkeypatch.setattr(ahead.Preparer, "__init__", record)
    monkeypatch.setattr(ahead, "worker_allowed", lambda: True)
    forked = run_cohort(tiny_model, [cohort], tmp_path / "forked", progress=False)
    monkeypatch.setattr(ahead, "worker_allowed", lambda: False)
    here = run_cohort(tiny_model, [cohort], tmp_path / "here", progress=False)
    assert workers == [True, False]
    for result in (forked, here):
        assert result.segmented == ["a1", "c3"] and result.failed == ["b2"]
    table = _table(tmp_path / "forked")
    assert table["b2"]["status"] == "failed"
    assert table["b2"]["error"] == "b2: atlas registration failed (NMI 0.014 < 0.02)"
    for name in ("a1", "c3"):
        for output in ("wmh_probability.nii.gz", "wmh_mask.nii.gz"):
            np.testing.assert_array_equal(
                nib.load(tmp_path / "forked" / name / output).get_fdata(),
                nib.load(tmp_path / "here" / name / output).get_fdata())
        assert table[name]["total_ml"] == _table(tmp_path / "here")[name]["total_ml"]


def test_subjects_already_prepared_are_not_sent_to_the_worker(tmp_path, tiny_model,
                                                             monkeypatch):
    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for index, name in enumerate(("a1", "b2")):
        write_subject(cohort, prepared, name, seed=index)
    queued = []
    original = ahead.Preparer.__init__

    def record(self, config, use_t1, subjects=(), worker=None):
        queued.append([subject.subject_id for subject in subjects])
        original(self, config, use_t1, subjects, worker=False)

    monkeypatch.setattr(ahead.Preparer, "__init__", record)
    (prepared / "b2.h5").unlink()
    prepare_from_files(monkeypatch, tmp_path / "elsewhere", fail={
        "b2": WMHError("b2: prepared here, as it should be")})
    result = run_cohort(tiny_model, [cohort], tmp_path / "out", SegmentOptions(),
                        progress=False, prepared_dir=prepared)
    assert queued == [["b2"]]  # a1 is read from its prepared file
    assert result.segmented == ["a1"] and result.failed == ["b2"]


_CLI_SCRIPT = """
import sys
from pathlib import Path

from wmh import launch, preprocess
from wmh.segment import ahead

prepared = Path(sys.argv[1])
preprocess.prepare_subject = lambda subject, config, use_t1=True: \\
    preprocess.PreparedSubject.load(prepared / f"{subject.subject_id}.h5")
seen = []
init = ahead.Preparer.__init__


def record(self, *args, **kwargs):
    init(self, *args, **kwargs)
    seen.append((self.in_worker, "tensorflow" in sys.modules))


ahead.Preparer.__init__ = record
status = launch.run(["segment", sys.argv[2], "--model", sys.argv[3], "--out", sys.argv[4],
                     "--quiet"])
print("RESULT", seen, status)
"""


def test_the_console_command_prepares_in_the_worker(tmp_path, tiny_model):
    """In a fresh process the command reaches the preparation worker before anything has
    imported TensorFlow (an import moved earlier would silently turn the worker off)."""
    import subprocess

    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for index, name in enumerate(("a1", "b2")):
        write_subject(cohort, prepared, name, seed=index)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _CLI_SCRIPT, str(prepared), str(cohort),
                           str(tiny_model), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT [(True, False)] 0" in done.stdout, done.stdout + done.stderr[-2000:]
    assert {row["subject_id"]: row["status"] for row in _table(out).values()} == {
        "a1": "ok", "b2": "ok"}
