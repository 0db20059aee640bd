"""A cohort: every subject prepared (or skipped when up to date), failures reported."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from wmh.config import PreprocessConfig
from wmh.errors import WMHError
from wmh.io import Subject, atomic_write_text, check_output_dir, discover
from wmh.preprocess.format import read_key_and_warnings
from wmh.preprocess.keys import cache_key, code_version, config_hash
from wmh.preprocess.subject import prepare_subject
from wmh.tracking import hash_files


@dataclasses.dataclass
class PrepareReport:
    """What :func:`prepare_cohort` did.

    Attributes:
        prepared: subject id -> file written in this run.
        skipped: subject id -> file already up to date (same cache key).
        failed: subject id -> one-line reason; these subjects have no file.
        seconds: subject id -> wall-clock seconds of each subject tried in this run.
        warnings: subject id -> the prepared file's warnings (fallbacks, doubtful quality).
        order: subject ids in cohort order.
        summary_path: the ``prepare_summary.csv`` written, or None.
    """

    prepared: dict[str, Path] = dataclasses.field(default_factory=dict)
    skipped: dict[str, Path] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    warnings: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)
    summary_path: Optional[Path] = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def status(self, subject_id: str) -> str:
        """'prepared', 'skipped' (up to date) or 'failed'."""
        if subject_id in self.failed:
            return "failed"
        return "skipped" if subject_id in self.skipped else "prepared"

    def summary(self) -> str:
        """Multi-line human summary; failures listed one per line with their reason."""
        warned = sum(1 for values in self.warnings.values() if values)
        lines = [(f"{len(self.prepared)} prepared, {len(self.skipped)} up to date, "
                  f"{len(self.failed)} failed, {warned} with warnings")]
        lines += [f"  FAILED {subject_id}: {reason}"
                  for subject_id, reason in sorted(self.failed.items())]
        lines += [f"  WARNING {subject_id}: {warning}"
                  for subject_id, values in sorted(self.warnings.items()) for warning in values]
        return "\n".join(lines)

    def rows(self) -> list[dict]:
        """One row per subject, cohort order: the columns of ``SUMMARY_COLUMNS``."""
        rows = []
        for subject_id in self.order:
            path = self.prepared.get(subject_id) or self.skipped.get(subject_id)
            seconds = self.seconds.get(subject_id)
            rows.append({"subject_id": subject_id, "status": self.status(subject_id),
                         "error": self.failed.get(subject_id, ""),
                         "warnings": "; ".join(self.warnings.get(subject_id, ())),
                         "seconds": "" if seconds is None else f"{seconds:.1f}",
                         "file": path.name if path is not None else ""})
        return rows


MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "prepare_summary.csv"
SUMMARY_COLUMNS = ("subject_id", "status", "error", "warnings", "seconds", "file")


def prepare_cohort(source: str | Path | list[Subject], out: str | Path,
                   config: PreprocessConfig, use_t1: bool = True, workers: int = 1,
                   progress: bool = True, overwrite: bool = False) -> PrepareReport:
    """Prepares every subject of a cohort into ``<out>/<subject_id>.h5``.

    Subjects whose file holds the current cache key (same inputs, config and code) are
    skipped unless ``overwrite``. A subject that fails (an unreadable file; nothing else
    fails, doubtful quality gives warnings instead) is reported with its reason and leaves
    no file (a stale one is removed); the others go on. ``<out>/manifest.json`` lists the
    prepared subjects, their cache keys and the cohort hash; ``<out>/prepare_summary.csv``
    has one row per subject (``SUMMARY_COLUMNS``: status prepared / skipped / failed, the
    error, the warnings, seconds).

    Args:
        source: a cohort folder or CSV manifest (:func:`wmh.io.discover`), or Subjects.
        out: output folder.
        config: preprocessing options.
        use_t1: add the T1 channel where a subject has one.
        workers: subjects prepared in parallel processes (1 = in this process).
        progress: show a progress bar (subjects done and failed, seconds per subject).
        overwrite: prepare every subject again, even when its file is up to date.

    Raises:
        WMHError: the cohort cannot be discovered, or ``out`` cannot be written.
    """
    from tqdm import tqdm

    out = check_output_dir(out, "--out")
    subjects = discover(source) if isinstance(source, (str, Path)) else list(source)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WMHError(f"{out}: cannot create output folder ({error.strerror})") from None
    report = PrepareReport(order=[subject.subject_id for subject in subjects])
    keys: dict[str, str] = {}
    pending = []
    for subject in subjects:
        path = out / f"{subject.subject_id}.h5"
        try:
            key = cache_key(subject, config, use_t1)
        except WMHError as error:
            report.failed[subject.subject_id] = str(error)
            path.unlink(missing_ok=True)
            continue
        keys[subject.subject_id] = key
        stored_key, warnings = (read_key_and_warnings(path) if path.is_file() and not overwrite
                                else (None, ()))
        if stored_key == key:
            report.skipped[subject.subject_id] = path
            report.warnings[subject.subject_id] = warnings
        else:
            pending.append(subject)

    bar = tqdm(total=len(pending), desc="prepare", unit="subject", disable=not progress)

    def record(result) -> None:
        _record(report, result)
        tried = [report.seconds[s.subject_id] for s in pending if s.subject_id in report.seconds]
        failed = sum(1 for s in pending if s.subject_id in report.failed)
        bar.set_postfix_str(f"done {len(tried) - failed}, failed {failed}, last {result[3]:.1f} s"
                            f", mean {sum(tried) / len(tried):.1f} s/subject")
        bar.update()

    if workers <= 1 or len(pending) <= 1:
        for subject in pending:
            record(_prepare_and_save(subject, config, use_t1, out, keys[subject.subject_id]))
    else:
        import concurrent.futures
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                    mp_context=context) as pool:
            futures = [pool.submit(_prepare_and_save, subject, config, use_t1, out,
                                   keys[subject.subject_id]) for subject in pending]
            for future in concurrent.futures.as_completed(futures):
                record(future.result())
    bar.close()
    write_manifest(out, subjects, keys, report, config, use_t1)
    report.summary_path = write_summary(out, report)
    return report


def write_summary(out: Path, report: PrepareReport) -> Path:
    """``<out>/prepare_summary.csv``: one row per subject (``SUMMARY_COLUMNS``)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.rows())
    return atomic_write_text(Path(out) / SUMMARY_NAME, buffer.getvalue())


def _prepare_and_save(subject: Subject, config: PreprocessConfig, use_t1: bool, out: Path,
                      key: str,
                      ) -> tuple[str, Optional[Path], Optional[str], float, tuple[str, ...]]:
    """Worker: (subject id, written path or None, failure reason or None, seconds,
    warnings). The file stores ``key``, the cache key the manifest lists (computed
    before the run, so code edited during a run cannot make them differ)."""
    import time

    start = time.perf_counter()
    path = out / f"{subject.subject_id}.h5"
    try:
        prepared = prepare_subject(subject, config, use_t1)
        prepared.cache_key = key
        prepared.save(path)
        return (subject.subject_id, path, None, time.perf_counter() - start,
                tuple(prepared.warnings))
    except Exception as error:  # one subject's failure must not stop the cohort
        path.unlink(missing_ok=True)
        if isinstance(error, WMHError):
            reason = str(error)
        else:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{subject.flair}: {type(error).__name__} {first_line}".strip()
        return subject.subject_id, None, reason, time.perf_counter() - start, ()


def _record(report: PrepareReport, result) -> None:
    subject_id, path, reason, seconds, warnings = result
    report.seconds[subject_id] = seconds
    if reason is None:
        report.prepared[subject_id] = path
        report.warnings[subject_id] = warnings
    else:
        report.failed[subject_id] = reason


def write_manifest(out: Path, subjects: list[Subject], keys: dict[str, str],
                   report: PrepareReport, config: PreprocessConfig, use_t1: bool) -> Path:
    """``<out>/manifest.json``: prepared subjects with cache keys, and the cohort hash
    (over the sorted id:key pairs: a different prepared cohort gives a different hash)."""
    done = {**report.skipped, **report.prepared}
    entries = [{"subject_id": s.subject_id, "file": f"{s.subject_id}.h5",
                "cache_key": keys[s.subject_id], "site": s.site, "split": s.split}
               for s in subjects if s.subject_id in done]
    cohort = hash_files([], extra="\n".join(f"{e['subject_id']}:{e['cache_key']}"
                                            for e in sorted(entries,
                                                            key=lambda e: e["subject_id"])))
    manifest = {"cohort_hash": cohort, "code_version": code_version(),
                "config_hash": config_hash(config, use_t1), "use_t1": bool(use_t1),
                "subjects": entries, "failed": dict(sorted(report.failed.items()))}
    return atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1))
