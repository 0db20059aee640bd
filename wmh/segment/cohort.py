"""``wmh segment`` over a cohort: check everything first, skip what is done, go past
failures, and say how it went.

Order of work: options, the output folder and every input file's header are checked
before the model loads (seconds of TensorFlow start-up) or any folder is made. A subject
given as FLAIR [T1] files that fails stops the command with its one-line error (exit 2).
In a cohort (folders, manifests) a subject that fails, early or late, gets a failed
report.json and a ``failed`` row in volumes.csv, and the others go on (exit 1 at the end).
A subject whose report.json shows it done with the same model weights, inputs and
settings is skipped unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from wmh import io
from wmh.errors import WMHError
from wmh.segment import outputs
from wmh.segment.inputs import check_header, resolve_inputs
from wmh.segment.layouts import REPORT_FILE, get_layout
from wmh.segment.ahead import Preparer
from wmh.segment.subject import (SegmentModel, SegmentOptions, input_provenance,
                                 preparation, segment_subject, write_failure)
from wmh.contract import MODEL_FILE, read_model_folder


@dataclasses.dataclass
class CohortResult:
    """What a ``wmh segment`` call did.

    Attributes:
        rows: one report per input subject, in input order (report.json contents).
        segmented, skipped, failed: subject ids (skipped: already done with the same model,
            inputs and settings).
    """

    rows: list[dict]
    segmented: list[str]
    skipped: list[str]
    failed: list[str]


def resolve_model(source: str | Path | None) -> SegmentModel:
    """The model folder, contract and weights hash, without loading the weights.

    ``source`` is a model folder, its weights file, an MLflow URI, or a shipped model:
    ``pretrained``, ``pretrained:<name>``, or empty/None for the default shipped one
    (:mod:`wmh.pretrained`, its files verified against their SHA-256).

    Raises:
        WMHError: a missing folder or file, a bad contract (named with ``--model``), no
            shipped model, or a corrupted one.
    """
    from wmh import baseline, pretrained

    from wmh.registry import model_folder

    text = str(source or "")
    version = sha256 = None
    if not text or pretrained.is_pretrained(text):  # name and version go in the reports
        shipped = pretrained.find(text or pretrained.PREFIX,
                                  label="--model not given" if not text else None)
        folder, text, version = shipped.folder, shipped.uri, shipped.version
        sha256 = shipped.weights_sha256  # just verified
    else:
        folder = model_folder(source)  # URI downloaded, weights file -> its folder
    if (folder / baseline.FOREST_FILE).is_file():
        weights = baseline.FOREST_FILE
        contract = read_model_folder(folder, weights, "by `wmh train` with model.arch=rf")
    else:
        weights = MODEL_FILE
        contract = read_model_folder(folder, weights,
                                           "by `wmh train`, or runs:/<run id>/model")
    return SegmentModel(source=text, folder=folder, contract=contract,
                        sha256=sha256 or io.sha256_file(folder / weights),
                        weights_file=weights,
                        version=version)


def check_files(subject: io.Subject) -> None:
    """Header check of every file the subject names (cheap: no voxel data read)."""
    for path in (subject.flair, subject.t1, subject.labels, subject.brain_mask):
        if path is not None:
            check_header(path)


def check_channels(subject: io.Subject, channels: Sequence[str]) -> None:
    """Raises when the model needs a T1 the subject lacks."""
    if "T1" in channels and subject.t1 is None:
        raise WMHError(f"{subject.flair}: the model needs FLAIR and T1 "
                       f"(channels {', '.join(channels)}) but subject "
                       f"'{subject.subject_id}' has no T1; use a FLAIR-only model")


def is_done(report: Optional[dict], expected: dict) -> bool:
    """Whether a subject's report shows it done with exactly the ``expected`` values."""
    return (report is not None and report.get("status") == "ok"
            and all(report.get(key) == value for key, value in expected.items()))


def run_cohort(model_source: str | Path | None, inputs: Sequence[str | Path | io.Subject],
               out_dir: str | Path, options: SegmentOptions = SegmentOptions(),
               progress: bool = True, prepared_dir: Optional[Path] = None,
               subject_id: Optional[str] = None) -> CohortResult:
    """Segments every subject of ``inputs``; see the module docstring for the order.

    Args:
        model_source: a model folder, its ``model.keras``, an MLflow URI, or a shipped
            model (``pretrained[:<name>]``; empty or None: the default shipped one).
        inputs: paths as ``wmh segment`` takes them, or :class:`wmh.io.Subject` records.
        out_dir: output folder (created when there is something to write).
        options: threshold, Monte Carlo samples, periventricular distance, overwrite.
        progress: a progress bar over subjects and one stderr line per stage.
        prepared_dir: a ``wmh prepare`` folder made with the model's preprocessing; a
            subject found there (``<id>.h5``) is not prepared again.
        subject_id: the id of a subject given as FLAIR [T1] files.

    Raises:
        WMHError: bad options, output folder or model; with FLAIR [T1] files given
            directly, any bad file.
    """
    options.validate()
    out_dir = io.check_output_dir(out_dir, "--out")
    resolved = resolve_inputs(inputs, subject_id)
    layout = get_layout(options.layout)
    layout.check(out_dir, resolved.subjects)
    problems: dict[str, BaseException] = {}
    for subject in resolved.subjects:
        try:
            check_files(subject)
        except WMHError as error:
            if resolved.direct:
                raise
            problems[subject.subject_id] = error
    model = resolve_model(model_source)
    channels = model.contract.channels
    for subject in resolved.subjects:
        if subject.subject_id not in problems:
            try:
                check_channels(subject, channels)
            except WMHError as error:
                if resolved.direct:
                    raise
                problems[subject.subject_id] = error

    run = _Run(model, out_dir, options, progress, prepared_dir, resolved.direct)
    settings = options.settings(model.contract)
    todo = []
    for subject in resolved.subjects:
        if subject.subject_id in problems:  # its files may not even be readable: no hashes
            run.fail(subject, problems[subject.subject_id],
                     {**model.provenance(), **settings, "flair": str(subject.flair),
                      "t1": str(subject.t1) if subject.t1 else None})
            continue
        details = {**model.provenance(), **settings,
                   **input_provenance(subject, "T1" in channels)}
        expected = {key: details[key] for key in
                    ("model_sha256", "flair_sha256", "t1_sha256", *settings)}
        unit = layout.unit(subject.subject_id)
        existing = outputs.read_report(out_dir / unit / layout.file(unit, REPORT_FILE))
        if not options.overwrite and is_done(existing, expected):
            run.reports[subject.subject_id] = existing
            run.skipped.append(subject.subject_id)
        else:
            todo.append((subject, details))
    run.segment_all(todo)
    if not run.segmented and not (out_dir / outputs.INDEX_FILE).exists():
        with outputs.out_dir_lock(out_dir):  # all skipped, in an OUT older than the page
            outputs.rebuild_tables(out_dir, layout)
    ids = [subject.subject_id for subject in resolved.subjects]
    return CohortResult([run.reports[name] for name in ids], run.segmented, run.skipped,
                        [name for name in ids if name in run.failed])  # in input order


@dataclasses.dataclass
class _Run:
    """One call's state: where it writes, how, and what became of each subject."""

    model: SegmentModel
    out_dir: Path
    options: SegmentOptions
    progress: bool
    prepared_dir: Optional[Path]
    direct: bool  # FLAIR [T1] files given directly: a WMHError stops the command
    reports: dict = dataclasses.field(default_factory=dict)
    segmented: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)

    def log(self, line: str) -> None:
        from tqdm import tqdm

        if self.progress:
            tqdm.write(line, file=sys.stderr)

    def fail(self, subject: io.Subject, error: BaseException, details: dict) -> None:
        """Records a failed subject (its folder holds only the failed report.json)."""
        self.reports[subject.subject_id] = write_failure(self.out_dir, subject, error,
                                                         details, self.options.layout)
        self.failed.append(subject.subject_id)

    def segment_all(self, todo: list) -> None:
        """The subjects that need work, one at a time, with a progress bar whose postfix
        counts subjects done and failed and the mean seconds per subject."""
        if not todo:
            return
        # Subjects without a prepared file are prepared ahead in a worker process
        # (wmh.segment.ahead: forked now, before TensorFlow is imported), the first while
        # the model loads (TensorFlow imported, dense twin built), each next one while the
        # one before is inferred; segment_subject waits for both. Weights that cannot load
        # stop the command (exit 2) before anything is written, as they did when loaded up
        # front, and win over any error of that first subject.
        config, use_t1, _ = preparation(self.model.folder, self.model.contract)
        ahead = [subject for subject, _ in todo if self._cached(subject) is None]
        with Preparer(config, use_t1, ahead) as preparer:
            self.model.load_in_background()
            try:
                self._segment_each(todo, preparer)
            finally:  # never leave with the load running (it holds stderr while importing)
                self.model.load_error()

    def _cached(self, subject: io.Subject) -> Optional[Path]:
        """The subject's file in ``prepared_dir``, or None."""
        if not self.prepared_dir:
            return None
        path = Path(self.prepared_dir) / f"{subject.subject_id}.h5"
        return path if path.exists() else None

    def _segment_each(self, todo: list, preparer: Preparer) -> None:
        import contextlib

        from tqdm import tqdm

        from wmh.preprocess import PreparedSubject

        began, finished = time.perf_counter(), 0
        with contextlib.ExitStack() as stack:
            bar = None  # drawn once the first subject is through (the model has loaded)
            for subject, details in todo:
                try:
                    cached = self._cached(subject)
                    prepared = PreparedSubject.load(cached) if cached else None
                    inputs = {key: details[key] for key in ("flair", "flair_sha256", "t1",
                                                            "t1_sha256")}
                    self.reports[subject.subject_id] = segment_subject(
                        self.model, subject, self.out_dir, self.options, inputs,
                        prepared=prepared, log=self.log, preparer=preparer)
                    self.segmented.append(subject.subject_id)
                except Exception as error:  # one subject's failure never stops the cohort
                    model_error = self.model.load_error()
                    if model_error is not None:  # ... but a model that cannot load does
                        raise model_error from None
                    if self.direct and isinstance(error, WMHError):
                        raise
                    self.fail(subject, error, details)
                    self.log(f"{subject.subject_id}: failed: "
                             f"{self.reports[subject.subject_id]['error']}")
                finished += 1
                if bar is None:
                    bar = stack.enter_context(tqdm(total=len(todo), desc="segment",
                                                   unit="subject", disable=not self.progress))
                bar.update(1)
                bar.set_postfix(done=len(self.segmented), failed=len(self.failed),
                                s_per_subject=f"{(time.perf_counter() - began) / finished:.1f}")


def segment(model_source: str | Path | None, inputs: Sequence[str | Path | io.Subject],
            out_dir: str | Path, options: SegmentOptions = SegmentOptions(),
            progress: bool = True, prepared_dir: Optional[Path] = None) -> list[dict]:
    """Segments every subject of ``inputs`` with the model; keeps ``volumes.csv`` current.

    The API form of :func:`run_cohort` (same arguments, no subject id).

    Returns:
        One report per subject (report.json contents; ``status`` 'ok' or 'failed').
    """
    return run_cohort(model_source, inputs, out_dir, options, progress, prepared_dir).rows
