"""Where an Optuna study of ``wmh tune`` lives and how its workers share it.

By default a journal file ``<data.cache_dir>/optuna/journal.log`` (one machine; several
``wmh tune`` processes may share it); ``tune.storage`` takes a ``postgresql://`` URL to
share one study between machines (``sqlite:///file.db`` also works, on one machine).
Workers claim the next trial under a lock (:class:`ClaimLock`: a PostgreSQL advisory lock,
or a file lock beside a local store), and a trial whose worker is gone is marked failed
(:func:`fail_orphaned_trials`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import socket
import warnings
from pathlib import Path

from wmh.config import TuneConfig
from wmh.errors import WMHError

RDB_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg", "sqlite")
JOURNAL_FILE = "journal.log"


@dataclasses.dataclass
class StudyStorage:
    """An opened Optuna storage and how workers claim trials on it.

    Attributes:
        storage: the Optuna storage object.
        kind: ``journal-file``, ``postgresql`` or ``sqlite`` (the parent run's tag).
        display: the location without its password (for logs and tags).
        claim_lock: a lock held while a worker counts the study's trials and creates the
            next one, so that workers together stop at exactly ``n_trials``.
        heartbeat: whether the storage marks trials of dead workers failed by itself.
    """

    storage: object
    kind: str
    display: str
    claim_lock: "ClaimLock"
    heartbeat: bool


class ClaimLock:
    """An exclusive lock held around 'count the trials, create the next one'."""

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Releases the lock; does nothing when it is not held."""
        raise NotImplementedError

    def close(self) -> None:
        self.release()


class FileClaimLock(ClaimLock):
    """``flock`` on a file beside a local store (released by the OS if the worker dies)."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None

    def acquire(self) -> None:
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


class PostgresClaimLock(ClaimLock):
    """A PostgreSQL session advisory lock keyed by a name, e.g. the study's (released by
    the server if the worker's connection dies)."""

    def __init__(self, url: str, name: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self.key = int.from_bytes(hashlib.sha256(f"wmh-tune:{name}".encode()).digest()[:8],
                                  "big", signed=True)
        # autocommit: the lock belongs to the session, no transaction stays open
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool,
                                               isolation_level="AUTOCOMMIT")
        self.connection = None
        self.held = False

    def acquire(self) -> None:
        import sqlalchemy

        if self.connection is None:
            self.connection = self.engine.connect()
        self.connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"),
                                {"key": self.key})
        self.held = True

    def release(self) -> None:
        import sqlalchemy

        if self.held:
            self.connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                    {"key": self.key})
            self.held = False

    def close(self) -> None:
        self.release()
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        self.engine.dispose()


def redact(url: str) -> str:
    """A storage URL without its password (``postgresql://user:***@host/db``)."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable by SQLAlchemy: show the scheme only
        return url.split("://", 1)[0] + "://..."


def open_storage(settings: TuneConfig, cache_dir: str | Path) -> StudyStorage:
    """Opens ``tune.storage``: the journal file under ``<cache_dir>/optuna/`` when empty
    (a relative ``cache_dir`` taken from :func:`wmh.tracking.wmh_home`, like the MLflow
    store, so every working directory shares one study),
    else a PostgreSQL (or SQLite) URL through Optuna's RDB storage with a heartbeat.

    Raises:
        WMHError: an unknown URL scheme, or a database that cannot be reached.
    """
    import optuna

    url = settings.storage.strip()
    if not url:
        from wmh.tracking import anchored

        folder = anchored(cache_dir) / "optuna"  # beside the MLflow store, from any folder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / JOURNAL_FILE
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return StudyStorage(optuna.storages.JournalStorage(backend), "journal-file", str(path),
                            FileClaimLock(folder / f"{JOURNAL_FILE}.claim.lock"),
                            heartbeat=False)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in RDB_SCHEMES:
        raise WMHError(f"--storage / tune.storage {redact(url)!r}: unknown scheme "
                       f"'{scheme or url}' (use postgresql://user:password@host:port/database, "
                       "sqlite:///file.db, or leave it empty for the journal file under "
                       f"{Path(cache_dir) / 'optuna'})")
    heartbeat = settings.heartbeat_seconds
    engine_url = _with_installed_driver(url)
    lock = None
    try:
        if scheme == "sqlite":
            database = Path(url.split(":///", 1)[1]) if ":///" in url else Path("optuna.db")
            lock = schema_lock = FileClaimLock(database.with_name(database.name
                                                                  + ".claim.lock"))
            kind = "sqlite"
        else:
            lock = PostgresClaimLock(engine_url, f"study:{settings.study}")
            schema_lock = PostgresClaimLock(engine_url, "schema")
            kind = "postgresql"
        # Workers started together on a fresh database would race to create Optuna's
        # tables (a unique violation in PostgreSQL's catalogue): one at a time.
        schema_lock.acquire()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    engine_url, engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
        finally:
            if schema_lock is lock:
                lock.release()
            else:
                schema_lock.close()
    except Exception as error:  # SQLAlchemy/driver errors: bad URL, unreachable, password
        if lock is not None:
            lock.close()
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise WMHError(f"--storage {redact(url)}: cannot open ({first_line})") from None
    return StudyStorage(storage, kind, redact(url), lock, heartbeat=True)


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` with the psycopg2 driver when psycopg 3 (SQLAlchemy 2.1's default
    for that scheme) is not installed; the project pins psycopg2-binary."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def fail_orphaned_trials(study, storage: StudyStorage) -> None:
    """Marks RUNNING trials whose worker is gone as FAIL (journal: same-host workers only;
    RDB: Optuna's heartbeat)."""
    import optuna
    from optuna.trial import TrialState

    if storage.heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _process_alive(int(pid)):
            continue
        try:  # Optuna has no public call that sets another process's trial attribute
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason",
                                               f"worker {host}:{pid} is gone")
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
