"""One trial of a ``wmh tune`` study: its callbacks and its objective, a training run
nested in the worker's parent run (:func:`train_trial`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import keras

from wmh.config import ExperimentConfig, replace
from wmh.errors import WMHError
from wmh.tune.space import suggest


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial of a worker shares.

    Attributes:
        config: the resolved experiment config; ``config.tune`` holds the study settings
            and every other section the fixed part of each trial's config.
        space: the search space (:func:`wmh.tune.space.search_space`).
        stages: the :class:`wmh.pipeline.DataStages` the trials train on.
        data_label: "synthetic" or "real", recorded on every run.
    """

    config: ExperimentConfig
    space: dict
    stages: object
    data_label: str


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



def train_trial(trial, setup: TrialSetup) -> float:
    """One trial: suggest, build the trial's config, train nested in the parent run.

    Returns:
        The objective (``tune.objective``) of the trained model.

    Raises:
        optuna.TrialPruned: the pruner stopped the trial.
        WMHError: a non-finite objective (recorded as the trial's ``fail_reason``).
    """
    import optuna

    from wmh import train as train_module
    from wmh.lifecycle import RunOptions

    config, stages, data_label = setup.config, setup.stages, setup.data_label
    params = suggest(trial, setup.space)
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
