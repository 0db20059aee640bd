"""Subjects prepared ahead, in a worker process, while the model loads and infers.

``wmh segment`` loads the model (importing TensorFlow, building the dense twin) while the
first subject is prepared. In one process the two contend for the interpreter lock: the
import is Python, and so is much of preparation between its SimpleITK and SciPy calls.
Measured on the 2-core reference machine (BENCHMARKS.md, issue 15): a thick-slice FLAIR
with skull was prepared 2-2.5 s later with the load on a thread than with preparation in a
separate process. The worker also prepares subject k + 1 while subject k is inferred.

The worker is one process forked before TensorFlow is imported, and only then: a fork of a
process with TensorFlow's (or any other) threads running could inherit locks held by
threads that do not exist in the child. Where that cannot be guaranteed (TensorFlow already
imported, other threads alive, no ``fork`` on the platform) subjects are prepared in the
calling process when asked for, exactly as before; ``WMH_PREPARE_WORKER=0`` does so too.
Results are the same either way: the same function runs on the same inputs (tested).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Optional

from wmh import io
from wmh.errors import WMHError


def worker_allowed() -> bool:
    """Whether a worker may be forked now: Linux, TensorFlow not imported, this the only
    thread, and not turned off (environment ``WMH_PREPARE_WORKER=0``, e.g. to debug
    preparation in one process)."""
    return (os.environ.get("WMH_PREPARE_WORKER", "1").strip() != "0"
            and sys.platform.startswith("linux") and "tensorflow" not in sys.modules
            and threading.active_count() == 1
            and "fork" in multiprocessing.get_all_start_methods())


def _prepare(subject: io.Subject, config, use_t1: bool):
    from wmh.preprocess import prepare_subject

    return prepare_subject(subject, config, use_t1=use_t1)


class Preparer:
    """Prepares ``subjects`` (in this order) with one config: in a worker process when
    :func:`worker_allowed` (or ``worker`` says so), else in the calling process at
    :meth:`result`.

    Use as a context manager. The worker starts on the first subject at once and on the
    next one whenever :meth:`result` is asked for a subject, so at most two prepared
    subjects wait in memory. :meth:`result` returns a subject's PreparedSubject or raises
    what preparing it raised; a subject not in ``subjects`` is prepared there and then.
    """

    def __init__(self, config, use_t1: bool, subjects=(), worker: Optional[bool] = None):
        self.config, self.use_t1 = config, use_t1
        use_worker = bool(subjects) and (worker_allowed() if worker is None else worker)
        self._pool = (ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
                      if use_worker else None)
        self._futures: dict[str, Future] = {}
        self._queue = list(subjects) if self._pool is not None else []
        self._submit_next()

    @property
    def in_worker(self) -> bool:
        """Whether subjects are (still) prepared in the worker process."""
        return self._pool is not None

    def __enter__(self) -> "Preparer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _submit_next(self) -> None:
        """Hands the next queued subject to the worker (none without a worker)."""
        if self._pool is None or not self._queue:
            return
        subject = self._queue.pop(0)
        try:
            self._futures[subject.subject_id] = self._pool.submit(
                _prepare, subject, self.config, self.use_t1)
        except (BrokenProcessPool, RuntimeError):  # the worker died earlier: here from now
            self._drop_pool()

    def result(self, subject: io.Subject):
        """The subject's PreparedSubject (prepared here when it was never submitted to a
        working worker).

        Raises:
            WMHError: as :func:`wmh.preprocess.prepare_subject`, or when the worker died
                while preparing it (one line naming the FLAIR).
            Exception: anything else preparing it raised.
        """
        while subject.subject_id not in self._futures and any(
                queued.subject_id == subject.subject_id for queued in self._queue):
            self._submit_next()  # asked for out of order: the ones before it go first
        future = self._futures.pop(subject.subject_id, None)
        self._submit_next()  # prepared while this one is inferred
        if future is None:
            return _prepare(subject, self.config, self.use_t1)
        try:
            return future.result()
        except BrokenProcessPool:
            self._drop_pool()  # the others are prepared here
            raise WMHError(f"{subject.flair}: the preparation worker process died while "
                           "preparing this subject (out of memory?)") from None

    def close(self) -> None:
        """Cancels what has not started and ends the worker."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._futures.clear()
        self._queue.clear()

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._futures.clear()
        self._queue.clear()
