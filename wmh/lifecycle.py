"""The training lifecycle, written once for every architecture (CNNs and random forest).

An architecture takes part through a :class:`Learner`: it fits on a sample set, predicts a
working-grid volume, names its own contract fields, and saves and loads its model folder
(:class:`wmh.train.CNNLearner`, :class:`wmh.baseline.ForestLearner`;
:func:`wmh.loader.learner` picks one by ``model.arch``). Everything around that is here,
and only here (:func:`train_run`):

1. the run key and folder ``<cache>/runs/<run key>/`` (:func:`run_key`: the resolved
   config, the dataset, the training code and a fine-tune's starting weights);
2. the MLflow run (:func:`start_run`), what every new run records first
   (:func:`log_run_start`) and the sample set's datasets;
3. resuming: a learner that ``checkpoints`` keeps its progress in the run folder's
   ``state.json``; started again, an unfinished run continues in the same MLflow run, and
   with ``reuse_finished`` a finished run is returned instead of trained again;
4. the validation verdict: the validation subjects predicted whole by the learner, the
   calibration and Dice-optimal threshold on their native grids
   (:func:`wmh.threshold.logged_choice`); a learner fitted once (no epochs, so no
   per-epoch sample AUC) gets its sample AUC and loss read from those volumes at the
   validation samples (step 1) and the verdict's duration (``validation_seconds``);
5. the contract (the verdict's fields and the learner's), the model folder, its
   preprocessing plan and the logged model with the run's final metrics
   (:func:`publish_model`), then the :class:`wmh.contract.TrainResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np

from wmh.config import ExperimentConfig, dump_yaml
from wmh.contract import ModelContract, TrainResult
from wmh.io import atomic_write_text
from wmh.threshold import ThresholdChoice, logged_choice, predict_validation, sample_loss

STATE_FILE = "state.json"  # a checkpointing run's progress, in its run folder


# ------------------------------------------------------------------ the protocol

@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a training run is tracked.

    Attributes:
        nested: start the MLflow run nested in the active one (Optuna trials, the
            reproduction's experiments).
        run_name: MLflow run name; None: the learner's ``name``.
        data_label: "synthetic" or "real", recorded as a tag so every report can say so.
        reuse_finished: return the finished run of the same config and data (its model
            folder) instead of training again, e.g. when a reproduction was interrupted
            after training; only learners that checkpoint keep finished runs.
    """

    nested: bool = False
    run_name: Optional[str] = None
    data_label: str = "real"
    reuse_finished: bool = False


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a learner's ``fit`` gets: the run it fits in.

    Attributes:
        config: the resolved experiment config.
        samples_dir: the sample set (``wmh sample``); prepared_dir: its prepared subjects.
        run_dir: the run folder ``<cache>/runs/<run key>/`` (checkpoints go here).
        channels: the sample set's channels this run uses ("FLAIR"[, "T1"]).
        state: the run's ``state.json`` (``run_id`` set); a checkpointing learner keeps
            its progress in it (and writes it); {} but the run id for the others.
        new: whether the MLflow run is new (False: resumed from ``state``).
    """

    config: ExperimentConfig
    samples_dir: Path
    prepared_dir: Path
    run_dir: Path
    channels: tuple[str, ...]
    state: dict
    new: bool


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What a learner's ``fit`` gives back.

    Attributes:
        best_epoch: the kept epoch (1 for a model fitted once).
        validation_auc: its AUC on the validation samples; None: read by the lifecycle
            from the whole validation volumes (a model fitted once).
        example: the logged model's input example (patches or feature rows).
        metrics: the architecture's own final metrics (e.g. timings, sample counts).
    """

    best_epoch: int
    validation_auc: Optional[float]
    example: Any
    metrics: dict = dataclasses.field(default_factory=dict)


@runtime_checkable
class Learner(Protocol):
    """One architecture's part of the training lifecycle.

    A learner made from a config (``XLearner(config, callbacks)``: the config is checked
    there, before anything starts) is fitted by :func:`train_run`; ``load`` gives a
    fitted one from a model folder. Either predicts volumes.

    Attributes:
        name: the default MLflow run name and the validation figures' title.
        config: the experiment config it trains (None for a loaded model).
        checkpoints: whether ``fit`` checkpoints into the run folder (``state.json``), so
            an unfinished run resumes and a finished one can be reused.
        model: the fitted model as the architecture's loader returns it (a Keras network,
            a :class:`wmh.baseline.RandomForestBaseline`); None before ``fit``.
        contract: its :class:`wmh.contract.ModelContract` once saved or loaded.
    """

    name: str
    config: Optional[ExperimentConfig]
    checkpoints: bool
    model: Any
    contract: Optional[ModelContract]

    def fit(self, run: RunContext) -> Fitted:
        """Fits inside the active MLflow run (logging what only this architecture logs)."""

    def predict_volume(self, prepared) -> np.ndarray:
        """(X, Y, Z) float32 working-grid P(WMH) of a PreparedSubject (0 outside the brain),
        uncalibrated."""

    def contract_fields(self) -> dict:
        """The :class:`wmh.contract.ModelContract` fields only this architecture decides."""

    def save(self, folder: Path, contract: ModelContract) -> Path:
        """Writes the weights and ``contract`` into the model folder ``folder``."""

    @classmethod
    def load(cls, folder: Path) -> "Learner":
        """A fitted learner from a model folder of this architecture (never unpickles)."""


# --------------------------------------------------------- run keys and MLflow runs

def run_key(config: ExperimentConfig, dataset_hash: str) -> str:
    """Names a run's checkpoint folder: the same config on the same data and training code
    (the ``train`` stage of :data:`wmh.tracking.STAGE_CODE`), and for a fine-tune the same
    starting weights (``train.init_model``'s SHA-256), resumes there."""
    from wmh.finetune import init_source
    from wmh.tracking import stage_code_hash

    text = dump_yaml(config) + dataset_hash + stage_code_hash("train")
    if config.train.init_model.strip():
        text += init_source(config, check=False).sha256
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_folder(config: ExperimentConfig, samples_dir: Path) -> tuple[str, str, Path]:
    """(dataset hash, run key, run folder) of a training run on a sample set: the folder
    ``<cache>/runs/<run key>/`` (created) holds its checkpoints and model folder."""
    from wmh import data

    dataset_hash = data.dataset_hash(samples_dir)
    key = run_key(config, dataset_hash)
    run_dir = Path(config.data.cache_dir) / "runs" / key
    run_dir.mkdir(parents=True, exist_ok=True)
    return dataset_hash, key, run_dir


def start_run(config: ExperimentConfig, name: str, nested: bool,
              run_id: Optional[str] = None):
    """The MLflow run of a training run (a context manager): in ``train.experiment``
    unless ``nested`` in the active run, with system metrics; ``run_id`` resumes one."""
    import mlflow

    from wmh import tracking

    if not nested:
        tracking.configure_mlflow(config.train.experiment)
    return mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=nested,
                            log_system_metrics=tracking.system_metrics())


def log_run_start(config: ExperimentConfig, dataset_hash: str, key: str, channels,
                  data_label: str) -> None:
    """What every new training run records first: the resolved config, dataset hash,
    commit and versions (:func:`wmh.tracking.log_context`) and the ``data_label``,
    ``channels`` and ``run_key`` tags."""
    import mlflow

    from wmh import tracking

    tracking.log_context(config, dataset_hash)
    mlflow.set_tags({"data_label": data_label, "channels": ",".join(channels),
                     "run_key": key})


def write_model_plan(model_dir: Path, config: ExperimentConfig, samples_dir: Path,
                     prepared_dir: Path) -> dict:
    """The preprocessing plan (:mod:`wmh.preprocess.plan`) of a model trained on a sample
    set, written into its folder (CNN and forest alike)."""
    from wmh.preprocess.plan import training_files, write_plan

    return write_plan(model_dir, config.preprocess, config.data.use_t1,
                      training_files(samples_dir, prepared_dir))


def publish_model(learner: Learner, model_dir: Path, run: RunContext, example,
                  metrics: dict, dataset) -> str:
    """A saved model folder made complete and logged: its preprocessing plan
    (:func:`write_model_plan`), then the logged model ``model`` with the run's final
    ``metrics`` (:func:`wmh.registry.log_model`, the folder read back by the learner's
    ``load``: what the logged model will load). Returns the model id."""
    from wmh import registry

    write_model_plan(model_dir, run.config, run.samples_dir, run.prepared_dir)
    loaded = type(learner).load(model_dir)
    return registry.log_model(model_dir, (loaded.model, loaded.contract), example, metrics,
                              dataset)


# ------------------------------------------------------------------ the lifecycle

def read_state(run_dir: Path) -> dict:
    """A run folder's ``state.json``, {} when there is none."""
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def train_run(learner: Learner, samples_dir: Path, prepared_dir: Path,
              options: RunOptions = RunOptions()) -> TrainResult:
    """Trains ``learner`` (made from its config) on a sample set, tracked in MLflow: the
    whole lifecycle of the module docstring.

    Args:
        learner: a :class:`Learner` made from the resolved experiment config.
        samples_dir: output of ``wmh sample`` (splits + samples).
        prepared_dir: the prepared subjects the samples came from (whole-volume
            validation: the calibration and threshold).
        options: the MLflow run's :class:`RunOptions`.

    Returns:
        A :class:`wmh.contract.TrainResult`.
    """
    from wmh import data
    from wmh.datasets import log_datasets

    config = learner.config
    channels = tuple(data.sample_channels(samples_dir, config.data.use_t1))
    dataset_hash, key, run_dir = run_folder(config, samples_dir)
    state = read_state(run_dir) if learner.checkpoints else {}
    if (options.reuse_finished and state.get("finished") and "result" in state
            and (run_dir / "model").is_dir()):
        return TrainResult(run_id=state["run_id"], model_dir=run_dir / "model",
                           **state["result"])
    if state.get("finished"):
        state = {}  # a finished run is not resumed: this is a new run of the same config

    with start_run(config, options.run_name or learner.name, options.nested,
                   state.get("run_id")) as mlflow_run:
        new = not state
        if new:
            log_run_start(config, dataset_hash, key, channels, options.data_label)
            state["run_id"] = mlflow_run.info.run_id
        datasets = log_datasets(samples_dir, prepared_dir)  # again on resume: no-op
        run = RunContext(config, Path(samples_dir), Path(prepared_dir), run_dir, channels,
                         state, new)
        fitted = learner.fit(run)
        choice, metrics = validate(learner, run, fitted)
        contract = ModelContract(model=config.model, channels=channels,
                                 inplane_spacing_mm=config.preprocess.inplane_spacing_mm,
                                 threshold=choice.threshold, **choice.contract_fields(),
                                 **learner.contract_fields())
        model_dir = learner.save(run_dir / "model", contract)
        publish_model(learner, model_dir, run, fitted.example, metrics,
                      datasets["validation"])
        result = {"best_epoch": metrics["best_epoch"],
                  "validation_auc": metrics["best_val_auc"], "threshold": choice.threshold,
                  "validation_dice": choice.dice, "validation_volume_auc": choice.auc}
        if learner.checkpoints:
            state.update(finished=True, result=result)
            atomic_write_text(run_dir / STATE_FILE, json.dumps(state))
    return TrainResult(run_id=state["run_id"], model_dir=model_dir, **result)


def validate(learner: Learner, run: RunContext, fitted: Fitted
             ) -> tuple[ThresholdChoice, dict]:
    """The validation verdict of a fitted learner: its validation subjects predicted
    whole, then the calibration and threshold (``train.calibration``), logged with their
    figures (:func:`wmh.threshold.logged_choice`). A learner fitted once gets its sample
    AUC and loss from those volumes (:func:`volume_sample_metrics`, logged at step 1)
    and the verdict's duration.

    Returns:
        (the :class:`wmh.threshold.ThresholdChoice`: with no validation subject threshold
        0.5, NaN Dice and AUC, uncalibrated; the run's final metrics: ``best_epoch``,
        ``best_val_auc``, ``threshold``, ``val_volume_dice``, ``val_volume_auc`` and the
        learner's own).
    """
    import mlflow

    from wmh.calibration import Calibration

    start = time.perf_counter()
    subject_ids, subjects, probabilities = predict_validation(
        learner.predict_volume, run.samples_dir, run.prepared_dir)
    once = fitted.validation_auc is None
    samples = volume_sample_metrics(run.samples_dir, subject_ids, probabilities) if once \
        else {"val_auc": fitted.validation_auc}
    if subject_ids:
        choice = logged_choice(subjects, probabilities, subject_ids,
                               run.config.train.calibration, run.samples_dir,
                               f"{learner.name} (validation)",
                               "prevalence" if run.config.train.adapt_prevalence else "none",
                               run.config.train.threshold_objective)
    else:
        choice = ThresholdChoice(0.5, math.nan, math.nan, 0.5, Calibration())
    metrics = {"best_epoch": fitted.best_epoch, "best_val_auc": samples["val_auc"],
               "threshold": choice.threshold, "val_volume_dice": choice.dice,
               "val_volume_auc": choice.auc, **fitted.metrics}
    if once:
        metrics["validation_seconds"] = time.perf_counter() - start
        mlflow.log_metrics(samples, step=1)
    return choice, metrics


def volume_sample_metrics(samples_dir: Path, subject_ids, probabilities) -> dict:
    """``val_auc`` and ``val_loss`` of the validation samples, read from the validation
    subjects' whole-volume probabilities at the samples' voxels (the same values as
    predicting the samples alone); samples of a subject without a volume score 0."""
    from wmh import sampling
    from wmh.evaluation import metrics

    index = sampling.load_index(samples_dir, "validation")
    scores = np.zeros(len(index), np.float32)
    for subject_id, volume in zip(subject_ids, probabilities):
        if subject_id in index.subject_ids:
            rows = np.flatnonzero(index.subject == index.subject_ids.index(subject_id))
            scores[rows] = volume[index.row[rows], index.col[rows], index.slice[rows]]
    labels = np.asarray(index.label)
    return {"val_auc": metrics.roc_auc(scores, labels) if len(index) else math.nan,
            "val_loss": sample_loss(scores, labels)}
