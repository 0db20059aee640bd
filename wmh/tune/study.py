"""A ``wmh tune`` worker's part of a study: claim and run trials until the study holds
``tune.n_trials``, then summarise it and log the best trial and Optuna's figures to the
worker's parent MLflow run (see :mod:`wmh.tune`)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import time
import warnings
from typing import Callable, Optional

from wmh.config import ExperimentConfig, TuneConfig, replace
from wmh.tune.space import check_study, search_space
from wmh.tune.storage import StudyStorage, fail_orphaned_trials, open_storage, redact
from wmh.tune.trial import TrialSetup, train_trial


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
        check_study(study, space, settings.objective, storage.display)
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
                setup = TrialSetup(config, space, stages, data_label)
                trials_run = _run_trials(study, storage, setup, parent.info.run_id, worker,
                                         progress)
                summary = _summarise(study, storage, settings, parent.info.run_id,
                                     trials_run)
                _log_study(study, summary)
            except KeyboardInterrupt:
                mlflow.end_run("KILLED")
                raise
        return summary
    finally:
        storage.claim_lock.close()


def _run_trials(study, storage: StudyStorage, setup: TrialSetup, parent_run_id: str,
                worker: str, progress: Callable[[str], None]) -> tuple[int, ...]:
    """Claims and runs trials until the study holds ``tune.n_trials`` or time is up;
    ``worker`` ("host:pid") and ``parent_run_id`` are recorded in each trial."""
    import optuna

    settings = setup.config.tune
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    trials_run: list[int] = []

    def objective(trial):
        trial.set_user_attr("worker", worker)  # before anything can kill it unnamed
        trial.set_user_attr("mlflow_parent_run_id", parent_run_id)
        storage.claim_lock.release()  # the trial exists now: let the next worker claim
        trials_run.append(trial.number)
        return train_trial(trial, setup)

    def report(study, trial):
        value = "" if trial.value is None else f" {settings.objective} {trial.value:.4f}"
        reason = trial.user_attrs.get("fail_reason", "")
        progress(f"trial {trial.number}: {trial.state.name}{value}"
                 + (f" ({reason})" if reason else ""))

    while deadline is None or time.monotonic() < deadline:
        storage.claim_lock.acquire()
        try:
            fail_orphaned_trials(study, storage)
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
