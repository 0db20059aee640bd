"""Optuna studies around training: alpha, injection layer, architecture, learning rate,
dropout; pruned on per-epoch validation AUC; every trial a nested MLflow run.

The search space is static, so every trial suggests every parameter (alpha too, even
where the injection layer would make it moot) and Optuna's samplers and importance
analysis see one fixed space. Parameters are named by the config key they set:

* ``model.arch``: categorical over ``tune.archs``;
* ``model.loc``: categorical over ``tune.injections``;
* ``model.alpha``: log-uniform in [``tune.alpha_low``, ``tune.alpha_high``];
* ``train.learning_rate``: log-uniform in [``tune.learning_rate_low``, ``..._high``];
* ``model.dropout_rate``: uniform in [``tune.dropout_low``, ``tune.dropout_high``];

so the best trial is reproduced with ``wmh train --set model.alpha=... --set ...``.

Storage: by default a journal file ``<data.cache_dir>/optuna/journal.log`` (one machine;
several ``wmh tune`` processes may share it). ``tune.storage`` (``--storage``) takes a
``postgresql://user:password@host:port/database`` URL to share one study between processes
on several machines (``sqlite:///file.db`` also works, on one machine).

``tune.n_trials`` is the total number of trials the *study* should hold, in any state
(complete, pruned, failed), not a number per call: each worker claims the next trial
under a lock (a PostgreSQL advisory lock, or a file lock beside a local store), so
workers together stop at exactly ``n_trials``, and running ``wmh tune`` again with the
same ``--study`` resumes the study and only adds what is missing (raise ``--n-trials``
to extend it).

Failures: a trial whose training raises (NaN loss, any exception) is recorded as FAIL
with its reason in the trial's ``fail_reason`` attribute, and the study goes on. Finished
trials are committed to the storage when they finish, so killing a worker loses nothing
but the trial it was running: with an RDB storage the heartbeat marks that trial failed
after ``2 x tune.heartbeat_seconds``; with the journal file the next worker on the same
machine marks trials of workers that no longer exist as failed.

MLflow: each ``wmh tune`` process opens a parent run (tags ``optuna.study``,
``optuna.storage``, ``optuna.worker``) and each trial it runs is a run nested under it
(``trial-<number>``). Two workers on one study therefore give two parent runs with the
same ``optuna.study`` tag; each trial records its own MLflow run id and its parent's in the
trial's user attributes (``mlflow_run_id``, ``mlflow_parent_run_id``). When a worker
finishes it logs the study's best trial so far (``best.<param>`` params, ``best_value``)
and Optuna's figures of the whole study (``figures/optimization_history.png``,
``figures/param_importances.png`` from two completed trials on,
``figures/intermediate_values.png``) to its parent run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import math
import os
import signal
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import keras

from wmh.config import ExperimentConfig, TuneConfig, replace
from wmh.errors import WMHError

CNN_ARCHS = ("ss", "msef", "msiw", "msws")  # what wmh.train.train fits (not model.arch=rf)
INJECTIONS = ("none", "lcl", "ffcl", "sfcl")
OBJECTIVES = ("val_auc", "val_dice")
RDB_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg", "sqlite")
JOURNAL_FILE = "journal.log"
SEARCH_SPACE_ATTR = "wmh_search_space"  # study user attribute: the space it was created with


# ---------------------------------------------------------------------- search space

def _choices(text: str, allowed: tuple[str, ...], key: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise WMHError(f"config key '{key}': empty list (choose from {', '.join(allowed)})")
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise WMHError(f"config key '{key}': '{unknown[0]}' is not one of "
                       f"{', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise WMHError(f"config key '{key}': '{text}' lists a value twice")
    return values


def _range(settings: TuneConfig, name: str, log: bool) -> tuple[float, float]:
    low, high = getattr(settings, f"{name}_low"), getattr(settings, f"{name}_high")
    if not low <= high:
        raise WMHError(f"config keys 'tune.{name}_low'/'tune.{name}_high': low {low} is "
                       f"above high {high}")
    if log and low <= 0:
        raise WMHError(f"config key 'tune.{name}_low': {low} must be positive "
                       "(searched log-uniformly)")
    if not log and (low < 0 or high >= 1):
        raise WMHError(f"config keys 'tune.{name}_low'/'tune.{name}_high': "
                       f"[{low}, {high}] must lie in [0, 1)")
    return low, high


def search_space(settings: TuneConfig) -> dict:
    """The static search space: config key -> Optuna distribution.

    Raises:
        WMHError: an unknown objective, architecture or injection layer, or a bad range,
            naming the ``tune.*`` key.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if settings.objective not in OBJECTIVES:
        raise WMHError(f"config key 'tune.objective': {settings.objective!r} is not one of "
                       f"{', '.join(OBJECTIVES)}")
    for key in ("n_trials", "startup_trials", "pruner_startup_trials",
                "pruner_warmup_epochs", "heartbeat_seconds"):
        if getattr(settings, key) < (1 if key in ("n_trials", "heartbeat_seconds") else 0):
            raise WMHError(f"config key 'tune.{key}': {getattr(settings, key)} is too small")
    if settings.timeout < 0:
        raise WMHError(f"config key 'tune.timeout': {settings.timeout} is negative "
                       "(0 = no limit)")
    alpha = _range(settings, "alpha", log=True)
    learning_rate = _range(settings, "learning_rate", log=True)
    dropout = _range(settings, "dropout", log=False)
    return {
        "model.arch": CategoricalDistribution(_choices(settings.archs, CNN_ARCHS,
                                                       "tune.archs")),
        "model.loc": CategoricalDistribution(_choices(settings.injections, INJECTIONS,
                                                      "tune.injections")),
        "model.alpha": FloatDistribution(*alpha, log=True),
        "train.learning_rate": FloatDistribution(*learning_rate, log=True),
        "model.dropout_rate": FloatDistribution(*dropout),
    }


def suggest(trial, space: dict) -> dict:
    """Asks ``trial`` for every parameter of ``space`` (always all of them, in order)."""
    from optuna.distributions import CategoricalDistribution

    values = {}
    for name, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, distribution.choices)
        else:
            values[name] = trial.suggest_float(name, distribution.low, distribution.high,
                                               log=distribution.log)
    return values


def _space_signature(space: dict, objective: str) -> str:
    from optuna.distributions import distribution_to_json

    return objective + ";" + ";".join(f"{name}={distribution_to_json(distribution)}"
                                      for name, distribution in space.items())


# ---------------------------------------------------------------------------- storage

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


def _fail_orphaned_trials(study, storage: StudyStorage) -> None:
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


# --------------------------------------------------------------------------- callbacks

class PruningCallback(keras.callbacks.Callback):
    """Reports each epoch's validation AUC to an Optuna trial and stops a poor trial.

    Runs after :class:`wmh.train.EpochTracker`, which puts ``logs["val_auc"]`` in place.
    Steps are 1-based epochs, as in MLflow. Non-finite values are not reported (Optuna's
    median pruner would prune on them at once).

    Raises:
        optuna.TrialPruned: when the trial's pruner says so; ``wmh.train.train`` lets it
            through and the trial is recorded as PRUNED.
    """

    def __init__(self, trial, monitor: str = "val_auc"):
        super().__init__()
        self.trial = trial
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        import optuna

        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        step = epoch + 1
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {step}: {self.monitor} {value:.4f}")


class TrialRunRecorder(keras.callbacks.Callback):
    """Records the trial's nested MLflow run id in the trial as soon as training starts
    (so pruned and failed trials point to their run too) and tags the run."""

    def __init__(self, trial, study_name: str):
        super().__init__()
        self.trial = trial
        self.study_name = study_name
        self.run_id: Optional[str] = None

    def on_train_begin(self, logs=None):
        import mlflow

        run = mlflow.active_run()
        if run is None:
            return
        self.run_id = run.info.run_id
        self.trial.set_user_attr("mlflow_run_id", self.run_id)
        mlflow.set_tags({"optuna.study": self.study_name,
                         "optuna.trial_number": str(self.trial.number)})


# ---------------------------------------------------------------------------- running

@dataclasses.dataclass(frozen=True)
class TuneSummary:
    """What a ``wmh tune`` worker did and where the study stands.

    Attributes:
        study: the study name.
        storage: the storage location, without password.
        storage_kind: ``journal-file``, ``postgresql`` or ``sqlite``.
        parent_run_id: this worker's MLflow parent run.
        trials_run: numbers of the trials this worker ran.
        states: trial counts of the whole study by state name (``COMPLETE``, ``PRUNED``...).
        best_number: the study's best trial so far (None before the first complete one).
        best_value: its objective value.
        best_params: its parameters, keyed by config key.
        best_run_id: its MLflow run ("" before the first complete trial).
        objective: ``val_auc`` or ``val_dice``.
    """

    study: str
    storage: str
    storage_kind: str
    parent_run_id: str
    trials_run: tuple[int, ...]
    states: dict
    best_number: Optional[int]
    best_value: Optional[float]
    best_params: dict
    best_run_id: str
    objective: str

    @property
    def n_trials(self) -> int:
        return sum(self.states.values())


def make_pruner(settings: TuneConfig):
    """A median pruner on per-epoch validation AUC, or none (``tune.pruner``)."""
    import optuna

    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    # steps are 1-based epochs: warm-up epochs 1..W are never pruned
    return optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials,
                                       n_warmup_steps=settings.pruner_warmup_epochs + 1)


def make_sampler(settings: TuneConfig, trial_number: int):
    """TPE seeded with ``tune.seed + trial_number``: a study replays the same suggestions
    from the same history, and workers that start together draw different trials."""
    import optuna

    return optuna.samplers.TPESampler(seed=settings.seed + trial_number,
                                      n_startup_trials=settings.startup_trials)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while tuning (main thread only), so a terminated
    worker records its running trial as FAIL and ends its MLflow run as KILLED."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def tune(config: ExperimentConfig, stages=None, data_label: Optional[str] = None,
         progress: Callable[[str], None] = print) -> TuneSummary:
    """Runs (or resumes, or joins) the Optuna study ``config.tune.study``.

    The data stages are prepared once, before any trial (``wmh.pipeline.ensure_data``),
    unless ``stages`` gives them; each trial then only trains, through
    :func:`wmh.train.train` with a config built by :func:`wmh.config.replace`.

    Args:
        config: the resolved experiment config; ``config.tune`` holds the study settings
            and every other section the fixed part of each trial's config.
        stages: a :class:`wmh.pipeline.DataStages` to tune on (e.g. a sample set built by
            ``wmh sample``); None runs the data stages of ``config``.
        data_label: "synthetic" or "real" for ``stages``; default from the stages.
        progress: called with one line per finished trial.

    Returns:
        A :class:`TuneSummary`.

    Raises:
        WMHError: bad ``tune.*`` settings, an unknown storage scheme, an unreachable
            database, or a study created with a different search space or objective.
    """
    import mlflow
    import optuna

    from wmh import data, pipeline, tracking
    from wmh import train as train_module

    settings = config.tune
    space = search_space(settings)
    storage = open_storage(settings, config.data.cache_dir)
    # every run records its config: never the database password
    config = replace(config, **{"tune.storage": redact(settings.storage)})
    try:
        if stages is None:
            stages = pipeline.ensure_data(config)
        config = pipeline.with_prior(config, stages)  # the trials' plans carry the prior used
        if data_label is None:
            data_label = "synthetic" if stages.synthetic else "real"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage=storage.storage, study_name=settings.study,
                                    direction="maximize", load_if_exists=True,
                                    pruner=make_pruner(settings))
        _check_study(study, space, settings.objective, storage)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        tracking.configure_mlflow(config.train.experiment)
        with _terminate_as_interrupt(), mlflow.start_run(
                run_name=f"study-{settings.study}",
                tags={"optuna.study": settings.study, "optuna.storage": storage.kind,
                      "optuna.storage_location": storage.display,
                      "optuna.worker": worker, "data_label": data_label}) as parent:
            try:
                tracking.log_context(config, data.dataset_hash(stages.samples))
                # the precision every trial trains in here (train.precision resolved)
                train_module.log_precision(config)
                trials_run = _run_trials(study, storage, config, space, stages, data_label,
                                         parent.info.run_id, worker, progress)
                summary = _summarise(study, storage, settings, parent.info.run_id,
                                     trials_run)
                _log_study(study, summary)
            except KeyboardInterrupt:
                mlflow.end_run("KILLED")
                raise
        return summary
    finally:
        storage.claim_lock.close()


def _check_study(study, space: dict, objective: str, storage: StudyStorage) -> None:
    """Records the search space in a new study; refuses to mix spaces or objectives."""
    signature = _space_signature(space, objective)
    existing = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if existing is None:
        study.set_user_attr(SEARCH_SPACE_ATTR, signature)
        study.set_user_attr("objective", objective)
    elif existing != signature:
        raise WMHError(f"--study {study.study_name} in {storage.display}: the study was "
                       "created with another search space or objective "
                       f"(objective {study.user_attrs.get('objective', '?')}); use its "
                       "tune.* settings or a new --study name")


def _run_trials(study, storage: StudyStorage, config: ExperimentConfig, space: dict, stages,
                data_label: str, parent_run_id: str, worker: str,
                progress: Callable[[str], None]) -> tuple[int, ...]:
    """Claims and runs trials until the study holds ``tune.n_trials`` or time is up."""
    import optuna

    settings = config.tune
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    trials_run: list[int] = []

    def objective(trial):
        trial.set_user_attr("worker", worker)  # before anything can kill it unnamed
        trial.set_user_attr("mlflow_parent_run_id", parent_run_id)
        storage.claim_lock.release()  # the trial exists now: let the next worker claim
        trials_run.append(trial.number)
        return _train_trial(trial, config, space, stages, data_label)

    def report(study, trial):
        value = "" if trial.value is None else f" {settings.objective} {trial.value:.4f}"
        reason = trial.user_attrs.get("fail_reason", "")
        progress(f"trial {trial.number}: {trial.state.name}{value}"
                 + (f" ({reason})" if reason else ""))

    while deadline is None or time.monotonic() < deadline:
        storage.claim_lock.acquire()
        try:
            _fail_orphaned_trials(study, storage)
            claimed = len(study.get_trials(deepcopy=False))
            if claimed >= settings.n_trials:
                break
            study.sampler = make_sampler(settings, claimed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[report],
                               gc_after_trial=True)
        finally:
            storage.claim_lock.release()
    return tuple(trials_run)


def _train_trial(trial, config: ExperimentConfig, space: dict, stages,
                 data_label: str) -> float:
    """One trial: suggest, build the trial's config, train nested in the parent run."""
    import optuna

    from wmh import train as train_module
    from wmh.lifecycle import RunOptions

    params = suggest(trial, space)
    # A name per study and trial keeps each trial's checkpoint folder (wmh.lifecycle.run_key)
    # its own, even if two trials ever drew the same values.
    trial_config = replace(config, **params,
                           name=f"{config.name}.{config.tune.study}.trial-{trial.number}")
    recorder = TrialRunRecorder(trial, config.tune.study)
    try:
        result = train_module.train(trial_config, stages.samples, stages.prepared,
                                    callbacks=[recorder, PruningCallback(trial)],
                                    options=RunOptions(nested=True, data_label=data_label,
                                                       run_name=f"trial-{trial.number}"))
    except optuna.TrialPruned:
        _tag_run(recorder.run_id, "PRUNED", status="KILLED")  # stopped early, not broken
        raise
    except (Exception, KeyboardInterrupt) as error:  # interrupted: recorded, then re-raised
        reason = " ".join(str(error).split()) or type(error).__name__
        trial.set_user_attr("fail_reason", f"{type(error).__name__}: {reason}"[:500])
        _tag_run(recorder.run_id, "FAIL")
        raise
    finally:
        keras.backend.clear_session()
    trial.set_user_attr("mlflow_run_id", result.run_id)
    trial.set_user_attr("val_auc", float(result.validation_auc))
    trial.set_user_attr("val_dice", float(result.validation_dice))
    trial.set_user_attr("threshold", float(result.threshold))
    trial.set_user_attr("best_epoch", int(result.best_epoch))
    value = float(result.validation_auc if config.tune.objective == "val_auc"
                  else result.validation_dice)
    if not math.isfinite(value):
        trial.set_user_attr("fail_reason", f"objective {config.tune.objective} is {value} "
                            "(no validation subjects?)")
        _tag_run(result.run_id, "FAIL")
        raise WMHError(f"trial {trial.number}: objective {config.tune.objective} is {value}")
    _tag_run(result.run_id, "COMPLETE")
    return value


def _tag_run(run_id: Optional[str], state: str, status: Optional[str] = None) -> None:
    """Tags a trial's MLflow run with its Optuna state (and sets its final status)."""
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, "optuna.state", state)
    if status is not None:
        client.set_terminated(run_id, status)


def _summarise(study, storage: StudyStorage, settings: TuneConfig, parent_run_id: str,
               trials_run: tuple[int, ...]) -> TuneSummary:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = {state.name: sum(t.state == state for t in trials) for state in TrialState
              if any(t.state == state for t in trials)}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value, default=None)
    return TuneSummary(study=study.study_name, storage=storage.display,
                       storage_kind=storage.kind, parent_run_id=parent_run_id,
                       trials_run=trials_run, states=states,
                       best_number=None if best is None else best.number,
                       best_value=None if best is None else float(best.value),
                       best_params={} if best is None else dict(best.params),
                       best_run_id="" if best is None else
                       str(best.user_attrs.get("mlflow_run_id", "")),
                       objective=settings.objective)


def _log_study(study, summary: TuneSummary) -> None:
    """Best trial (params, value, run), the trials table and Optuna's figures, into the
    active parent run."""
    import mlflow

    mlflow.log_metrics({"study_trials": summary.n_trials,
                        "worker_trials": len(summary.trials_run)})
    if summary.best_number is not None:
        # several workers log the best trial as they see it when they finish: the last
        # worker to finish holds the study's final answer
        mlflow.log_params({f"best.{name}": value for name, value in summary.best_params.items()})
        mlflow.log_metric("best_value", summary.best_value)
        mlflow.set_tags({"best_trial": str(summary.best_number),
                         "best_objective": summary.objective,
                         "best_run_id": summary.best_run_id})
    mlflow.log_text(study.trials_dataframe().to_csv(index=False), "study/trials.csv")
    for name, figure in study_figures(study).items():
        mlflow.log_figure(figure, f"figures/{name}.png")
        _close(figure)


def study_figures(study) -> dict:
    """Optuna's matplotlib figures of a study: optimisation history (from one complete
    trial), intermediate values (when any trial reported) and parameter importances (from
    two complete trials)."""
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    wanted = {}
    if complete:
        wanted["optimization_history"] = plots.plot_optimization_history
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        wanted["intermediate_values"] = plots.plot_intermediate_values
    if len(complete) >= 2:
        wanted["param_importances"] = plots.plot_param_importances
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in wanted.items():
            axes = plot(study)
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figures[name] = figure
    return figures


def _close(figure) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def format_summary(summary: TuneSummary) -> str:
    """A few lines for the CLI: the study's state, the best trial, how to reproduce it."""
    states = ", ".join(f"{count} {state.lower()}" for state, count in summary.states.items())
    lines = [f"study {summary.study} ({summary.storage_kind}: {summary.storage}): "
             f"{summary.n_trials} trials ({states}); this worker ran "
             f"{len(summary.trials_run)}"]
    if summary.best_number is None:
        lines.append("no complete trial yet")
    else:
        overrides = " ".join(f"--set {name}={value:.6g}" if isinstance(value, float)
                             else f"--set {name}={value}"
                             for name, value in summary.best_params.items())
        lines.append(f"best trial {summary.best_number}: {summary.objective} "
                     f"{summary.best_value:.4f}")
        lines.append(f"reproduce: wmh train {overrides}")
    lines.append(f"MLflow parent run {summary.parent_run_id}")
    return "\n".join(lines)


