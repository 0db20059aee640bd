"""A cohort: every subject prepared (or skipped when up to date), failures reported."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from wmh.config import PreprocessConfig
from wmh.errors import WMHError
from wmh.io import Subject, atomic_write_text, discover
from wmh.preprocess.format import read_cache_key
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
        seconds: subject id -> wall-clock seconds of each subject prepared in this run.
    """

    prepared: dict[str, Path] = dataclasses.field(default_factory=dict)
    skipped: dict[str, Path] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """Multi-line human summary; failures listed one per line with their reason."""
        lines = [(f"{len(self.prepared)} prepared, {len(self.skipped)} up to date, "
                  f"{len(self.failed)} failed")]
        lines += [f"  FAILED {subject_id}: {reason}"
                  for subject_id, reason in sorted(self.failed.items())]
        return "\n".join(lines)


MANIFEST_NAME = "manifest.json"


def prepare_cohort(source: str | Path | list[Subject], out: str | Path,
                   config: PreprocessConfig, use_t1: bool = True, workers: int = 1,
                   progress: bool = True) -> PrepareReport:
    """Prepares every subject of a cohort into ``<out>/<subject_id>.h5``.

    Subjects whose file holds the current cache key are skipped. A subject that fails
    (bad file, implausible registration or brain mask) is reported with its reason and
    leaves no file (a stale one is removed); the others go on. ``<out>/manifest.json``
    lists the prepared subjects, their cache keys and the cohort hash.

    Args:
        source: a cohort folder or CSV manifest (:func:`wmh.io.discover`), or Subjects.
        out: output folder.
        config: preprocessing options.
        use_t1: add the T1 channel where a subject has one.
        workers: subjects prepared in parallel processes (1 = in this process).
        progress: show a tqdm progress bar.

    Raises:
        WMHError: the cohort cannot be discovered, or ``out`` cannot be written.
    """
    from tqdm import tqdm

    subjects = discover(source) if isinstance(source, (str, Path)) else list(source)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WMHError(f"{out}: cannot create output folder ({error.strerror})") from None
    report = PrepareReport()
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
        if path.is_file() and read_cache_key(path) == key:
            report.skipped[subject.subject_id] = path
        else:
            pending.append(subject)

    bar = tqdm(total=len(pending), desc="prepare", unit="subject", disable=not progress)
    if workers <= 1 or len(pending) <= 1:
        for subject in pending:
            _record(report, _prepare_and_save(subject, config, use_t1, out))
            bar.update()
    else:
        import concurrent.futures
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                    mp_context=context) as pool:
            futures = [pool.submit(_prepare_and_save, subject, config, use_t1, out)
                       for subject in pending]
            for future in concurrent.futures.as_completed(futures):
                _record(report, future.result())
                bar.update()
    bar.close()
    write_manifest(out, subjects, keys, report, config, use_t1)
    return report


def _prepare_and_save(subject: Subject, config: PreprocessConfig, use_t1: bool,
                      out: Path) -> tuple[str, Optional[Path], Optional[str], float]:
    """Worker: (subject id, written path or None, failure reason or None, seconds)."""
    import time

    start = time.perf_counter()
    path = out / f"{subject.subject_id}.h5"
    try:
        prepared = prepare_subject(subject, config, use_t1)
        prepared.save(path)
        return subject.subject_id, path, None, time.perf_counter() - start
    except Exception as error:  # one subject's failure must not stop the cohort
        path.unlink(missing_ok=True)
        if isinstance(error, WMHError):
            reason = str(error)
        else:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{subject.flair}: {type(error).__name__} {first_line}".strip()
        return subject.subject_id, None, reason, time.perf_counter() - start


def _record(report: PrepareReport, result) -> None:
    subject_id, path, reason, seconds = result
    report.seconds[subject_id] = seconds
    if reason is None:
        report.prepared[subject_id] = path
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
