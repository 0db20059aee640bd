"""Training: fit, keep the best epoch, pick the threshold, log everything to MLflow.

The paper's recipe: RMSprop, mini-batches of 128, cross-entropy, dropout 0.3; the epoch
with the highest validation AUC is kept (while no epoch has a finite AUC, the last one).
The calibration and the binarisation threshold are then chosen on whole validation
volumes on their native grids, as the test is scored, by :mod:`wmh.threshold` (shared
with the random forest).

A run is resumable: after every epoch the model (with optimiser state) and a small state
file are written atomically under ``<cache>/runs/<run key>/``, where the run key hashes the
resolved config and the dataset. Started again with the same config and data, an
unfinished run continues from its last finished epoch in the same MLflow run.

The trained model is a folder (logged to MLflow as the logged model ``model``, a pyfunc
wrapping the folder: :mod:`wmh.registry`):

* ``model.keras``: the best-epoch patch network (stock layers only; loads with safe_mode);
* ``wmh_model.json``: its input contract: channels, in-plane spacing, model config, the
  validation-optimal threshold (on calibrated probabilities), the calibration and the
  threshold of the uncalibrated output, the patch definition and the training precision.

Fine-tuning (``train.init_model``: ``pretrained[:NAME]``, a model folder or an MLflow URI):
the run starts from that model's weights (a fresh optimiser) after checking that this
config builds the same network on the same inputs (:func:`check_init_source`: arch, loc,
width, channels, patch, preprocessing); ``wmh train`` prepares the data with the source's
preprocessing plan (:func:`with_source_preprocess`), so the fine-tuned model prepares
scans as the source did. The source and its weights' SHA-256 are recorded in the MLflow
params and in the contract, and are part of the run key.

Precision (``train.precision``, :mod:`wmh.models.precision`): bf16 trains with Keras
``mixed_bfloat16`` inside a policy scope (float32 master weights, float32 loss and
softmax); ``auto`` resolves per CPU and job. The saved ``model.keras`` is always a
float32-policy network with the same float32 weights, so inference chooses its own
precision whatever the training precision was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import keras
import numpy as np

from wmh.config import ExperimentConfig, ModelConfig, dump_yaml
from wmh.contract import (CONTRACT_FILE, MODEL_FILE, ModelContract, TrainResult,
                          read_model_folder)
from wmh.errors import WMHError
from wmh.io import atomic_output, atomic_write_text
from wmh.threshold import ThresholdChoice, logged_choice, predict_validation, sample_loss

STATE_FILE = "state.json"


# ---------------------------------------------------------------------- model folder

def save_model_dir(model, contract: ModelContract, folder: Path) -> Path:
    """Writes ``model.keras`` + ``wmh_model.json`` into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_keras_save(model, folder / MODEL_FILE)
    atomic_write_text(folder / CONTRACT_FILE, contract.to_json())
    return folder


def load_network_dir(folder: Path):
    """Loads a CNN model folder (``model.keras`` + ``wmh_model.json``; any kind of
    trained model, by folder or URI: :func:`wmh.loader.load_model_dir`). Weights stored
    in float16 (a shipped model) come back as a float32-policy network. Loading never
    executes code from the file (``safe_mode=True``).

    Returns:
        (keras model, ModelContract).
    """
    folder = Path(folder)
    model_path = folder / MODEL_FILE
    contract = read_model_folder(folder, MODEL_FILE, "by `wmh train`, or runs:/<run id>/model")
    try:
        model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as error:
        raise WMHError(f"{model_path}: cannot load model ({str(error).splitlines()[0]})") \
            from None
    if any(str(weight.dtype) == "float16" for weight in model.weights):
        # stored in float16 to ship it small (wmh.pretrained.export): run in float32
        model = float32_model(model, contract.model, len(contract.channels))
    return model, contract


def _atomic_keras_save(model, path: Path) -> None:
    with atomic_output(path) as temporary:
        model.save(temporary)


# ------------------------------------------------------------------------- training

def distribution_strategy():
    """MirroredStrategy over all GPUs when more than one is visible, else the default."""
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def compile_model(model, learning_rate: float):
    """RMSprop + sparse categorical cross-entropy on the 2-way softmax (the paper)."""
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


def run_key(config: ExperimentConfig, dataset_hash: str) -> str:
    """Names a run's checkpoint folder: the same config on the same data and training code
    (the ``train`` stage of :data:`wmh.tracking.STAGE_CODE`), and for a fine-tune the same
    starting weights (``train.init_model``'s SHA-256), resumes there."""
    from wmh.tracking import stage_code_hash

    text = dump_yaml(config) + dataset_hash + stage_code_hash("train")
    if config.train.init_model.strip():
        text += init_source(config, check=False).sha256
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------- the run lifecycle (CNN and forest)

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


def publish_model(model_dir: Path, loaded: tuple, config: ExperimentConfig,
                  samples_dir: Path, prepared_dir: Path, example, metrics: dict,
                  dataset) -> str:
    """A trained model folder made complete and logged: its preprocessing plan
    (:func:`write_model_plan`), then the logged model ``model`` with the run's final
    ``metrics`` (:func:`wmh.registry.log_model`; ``loaded`` is the folder read back by
    its architecture's loader). Returns the model id."""
    from wmh import registry

    write_model_plan(model_dir, config, samples_dir, prepared_dir)
    return registry.log_model(model_dir, loaded, example, metrics, dataset)


# ------------------------------------------------------------------------- fine-tuning

@dataclasses.dataclass(frozen=True)
class InitSource:
    """The trained model a fine-tune starts from (``train.init_model``)."""

    source: str  # as the config gives it
    folder: Path
    contract: ModelContract
    sha256: str  # of its weights file
    plan: Optional[dict]  # its preprocessing plan (None for models from before plans)


def init_source(config: ExperimentConfig, check: bool = True) -> Optional[InitSource]:
    """The model ``train.init_model`` names (``pretrained[:NAME]``, a model folder or an
    MLflow URI), checked against ``config`` by :func:`check_init_source` unless
    ``check`` is False; None when the field is empty.

    Raises:
        WMHError: a missing model, or an incompatible one; named ``train.init_model``.
    """
    from wmh.io import sha256_file
    from wmh.preprocess.plan import read_plan
    from wmh.registry import model_folder

    text = config.train.init_model.strip()
    if not text:
        return None
    option = "train.init_model"
    folder = model_folder(text, option)
    contract = read_model_folder(folder, MODEL_FILE, "by `wmh train` (a network, not a "
                                 "random forest)", option)
    source = InitSource(text, folder, contract, sha256_file(folder / MODEL_FILE),
                        read_plan(folder))
    if check:
        check_init_source(config, source)
    return source


def source_preprocess(config: ExperimentConfig, source: InitSource):
    """The PreprocessConfig a fine-tune of ``source`` must prepare its data with: the
    source's plan (this config's workers and threads), or for a model without a plan
    this config's with the source's in-plane spacing."""
    from wmh.preprocess.plan import plan_config

    if source.plan is None:
        return dataclasses.replace(config.preprocess,
                                   inplane_spacing_mm=source.contract.inplane_spacing_mm)
    planned = plan_config(source.plan, source.folder)
    return dataclasses.replace(planned, workers=config.preprocess.workers,
                               threads=config.preprocess.threads)


def check_init_source(config: ExperimentConfig, source: InitSource,
                      preprocess: bool = True) -> None:
    """A fine-tune must build the source's network on the source's inputs: model.arch,
    model.loc, model.width, the channels (data.use_t1), the patch definition and (with
    ``preprocess``) the preprocessing (:func:`source_preprocess`) must match.

    Raises:
        WMHError: the first field that differs, named with ``train.init_model``.
    """
    from wmh.preprocess.keys import config_hash

    theirs = source.contract
    channels = ("FLAIR", "T1") if config.data.use_t1 else ("FLAIR",)
    for field, ours, given in (("model.arch", config.model.arch, theirs.model.arch),
                               ("model.loc", config.model.loc, theirs.model.loc),
                               ("model.width", config.model.width, theirs.model.width),
                               ("data.use_t1 (channels)", "+".join(channels),
                                "+".join(theirs.channels)),
                               ("patch", ModelContract.patch, theirs.patch)):
        if ours != given:
            raise WMHError(f"train.init_model {source.source}: {field} is {given} in that "
                           f"model but {ours} in this config (set {field.split()[0]} to "
                           "match, e.g. with the recipe it was trained with)")
    if preprocess and config_hash(config.preprocess, config.data.use_t1) != config_hash(
            source_preprocess(config, source), config.data.use_t1):
        raise WMHError(f"train.init_model {source.source}: the config's preprocess differs "
                       "from that model's plan.json (`wmh train` prepares the data as the "
                       "plan says; give the same preprocess.* here)")


def with_source_preprocess(config: ExperimentConfig, say=None) -> ExperimentConfig:
    """``config`` with the preprocessing of ``train.init_model``'s plan (unchanged when
    the field is empty), so a fine-tune prepares its data as the source model did;
    ``say`` (e.g. print) gets one line when that changes the config's preprocess.

    Raises:
        WMHError: the source is missing or its network or channels differ.
    """
    source = init_source(config, check=False)
    if source is None:
        return config
    check_init_source(config, source, preprocess=False)
    preprocess = source_preprocess(config, source)
    if preprocess != config.preprocess and say is not None:
        say(f"train.init_model {source.source}: preparing the data with that model's "
            "preprocessing plan (its plan.json), not the config's preprocess")
    return dataclasses.replace(config, preprocess=preprocess)


def log_precision(config: ExperimentConfig) -> dict:
    """Resolves ``train.precision`` on this CPU for training and for the whole-volume
    validation, and records both in the active MLflow run (params ``train_precision`` and
    ``inference_precision``, tag ``cpu_bf16_isa``; not ``precision``, which is the
    MLproject parameter ``mlflow run`` logs as given, possibly empty). Returns
    ``{"precision": train's, "inference_precision": inference's}``."""
    import mlflow

    from wmh.models.precision import cpu_bf16_isa, resolve_precision

    precisions = {job_param: resolve_precision(config.train.precision, job)
                  for job_param, job in (("precision", "train"),
                                         ("inference_precision", "inference"))}
    mlflow.log_params({"train_precision": precisions["precision"],
                       "inference_precision": precisions["inference_precision"]})
    mlflow.set_tag("cpu_bf16_isa", cpu_bf16_isa())
    return precisions


def float32_model(model, config: ModelConfig, n_channels: int):
    """The same network and float32 weights under the float32 policy: what a model
    folder holds, whatever precision trained it (mixed_bfloat16 keeps float32 weights)."""
    from wmh.models import build_model
    from wmh.models.precision import precision_scope

    with precision_scope("fp32"):
        copy = build_model(config, n_channels)
    copy.set_weights(model.get_weights())
    return copy


def predict_samples(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """P(WMH) and labels for every sample of a finite dataset, in dataset order."""
    scores, labels = [], []
    for inputs, label in dataset:
        probabilities = model(inputs, training=False)
        scores.append(np.asarray(probabilities)[:, 1])
        labels.append(np.asarray(label))
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, np.int32)
    return np.concatenate(scores), np.concatenate(labels)


def is_better_epoch(validation_auc: float, state: dict) -> bool:
    """Whether an epoch becomes the best one (``best.keras``): a finite validation AUC
    above the best so far; while no epoch had a finite AUC (NaN: the validation samples
    hold one class, or the scores are not finite), every epoch, so the last is kept."""
    if math.isfinite(validation_auc):
        return validation_auc > state["best_auc"]
    return state["best_auc"] < 0  # -1: no finite AUC yet


def finite_auc(value: float) -> float:
    """The stored best AUC, NaN for the sentinel -1 (no epoch had a finite AUC)."""
    return float(value) if value >= 0 else math.nan


class EpochTracker(keras.callbacks.Callback):
    """After each epoch: validation AUC (into ``logs["val_auc"]``), MLflow metrics,
    best/last checkpoints and the resumable state file; stops on a NaN loss."""

    def __init__(self, validation_data, run_dir: Path, state: dict, epochs: int):
        super().__init__()
        self.validation_data = validation_data
        self.run_dir = run_dir
        self.state = state
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        from wmh.evaluation import metrics

        logs = logs if logs is not None else {}
        epoch = epoch + 1  # Keras counts from 0; runs, MLflow steps and checkpoints from 1
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            raise WMHError(f"training diverged: loss is {loss} at epoch {epoch} "
                           "(lower train.learning_rate)")
        scores, labels = predict_samples(self.model, self.validation_data)
        validation_auc = metrics.roc_auc(scores, labels)
        logs["val_auc"] = validation_auc
        validation_loss = sample_loss(scores, labels)
        mlflow.log_metrics({"loss": loss, "accuracy": float(logs.get("accuracy", math.nan)),
                            "val_auc": validation_auc, "val_loss": validation_loss}, step=epoch)
        state = self.state
        if is_better_epoch(validation_auc, state):
            if math.isfinite(validation_auc):
                state["best_auc"] = float(validation_auc)
            state["best_epoch"] = epoch
            _atomic_keras_save(self.model, self.run_dir / "best.keras")
        _atomic_keras_save(self.model, self.run_dir / "last.keras")
        state["epoch"] = epoch
        atomic_write_text(self.run_dir / STATE_FILE, json.dumps(state))
        print(f"epoch {epoch}/{self.epochs}: loss {loss:.4f}  val_auc {validation_auc:.4f}",
              flush=True)


def train(config: ExperimentConfig, samples_dir: Path, prepared_dir: Path,
          callbacks: Sequence = (),
          nested: bool = False, run_name: Optional[str] = None,
          data_label: str = "real", reuse_finished: bool = False) -> TrainResult:
    """Trains ``config.model`` on a sample set, tracked in MLflow, resumable.

    Args:
        config: the resolved experiment config.
        samples_dir: output of ``wmh sample`` (splits + samples).
        prepared_dir: the prepared subjects the samples came from (for whole-volume
            validation: the threshold).
        callbacks: extra Keras callbacks; they run after the epoch tracker, so
            ``logs["val_auc"]`` is set in their ``on_epoch_end`` (e.g. Optuna pruning,
            which may raise ``optuna.TrialPruned`` to stop the run).
        nested: start the MLflow run nested in the active one (Optuna trials).
        run_name: MLflow run name; default ``<arch>+<loc>``.
        data_label: "synthetic" or "real", recorded as a tag so every report can say so.
        reuse_finished: return the finished run of the same config and data (its model
            folder) instead of training again, e.g. when a reproduction was interrupted
            after training; False (default) trains a new run.

    Returns:
        A :class:`TrainResult`.
    """
    import mlflow

    from wmh import data, registry
    from wmh.datasets import log_datasets
    from wmh.models import build_model
    from wmh.models.precision import precision_scope

    use_t1 = config.data.use_t1
    channels = data.sample_channels(samples_dir, use_t1)
    source = init_source(config)  # a fine-tune: checked before anything starts
    dataset_hash, key, run_dir = run_folder(config, samples_dir)
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if (reuse_finished and state.get("finished") and "result" in state
            and (run_dir / "model").is_dir()):
        return TrainResult(run_id=state["run_id"], model_dir=run_dir / "model",
                           best_epoch=state["best_epoch"],
                           validation_auc=finite_auc(state["best_auc"]), **state["result"])
    if state.get("finished"):
        state = {}  # a finished run is not resumed: this is a new run of the same config

    with start_run(config, run_name or f"{config.model.arch}+{config.model.loc}", nested,
                   state.get("run_id")) as run:
        run_id = run.info.run_id
        if not state:
            log_run_start(config, dataset_hash, key, channels, data_label)
            precisions = log_precision(config)
            if source is not None:
                mlflow.log_params({"train.init_model_sha256": source.sha256,
                                   "train.init_model_folder": str(source.folder)})
            state = {"run_id": run_id, "epoch": 0, "best_auc": -1.0, "best_epoch": 0,
                     **precisions}
        # A run resumes in the precision it started in (runs from before: fp32).
        precision = state.get("precision", "fp32")
        datasets = log_datasets(samples_dir, prepared_dir)  # again on resume: no-op
        keras.utils.set_random_seed(config.train.seed + state["epoch"])
        strategy = distribution_strategy()
        with strategy.scope(), precision_scope(precision):
            if state["epoch"] > 0 and (run_dir / "last.keras").exists():
                model = keras.saving.load_model(run_dir / "last.keras", safe_mode=True)
                mlflow.set_tag("resumed_from_epoch", state["epoch"])
            else:
                model = compile_model(build_model(config.model, len(channels)),
                                      config.train.learning_rate)
                if source is not None:  # fine-tune: the source's weights, fresh optimiser
                    model.set_weights(load_network_dir(source.folder)[0].get_weights())
        train_data = data.make_dataset(samples_dir, "train", data.StreamOptions(
            config.train.batch_size, seed=config.train.seed + state["epoch"], shuffle=True,
            use_t1=use_t1, max_samples=config.train.max_train_samples))
        validation_data = data.make_dataset(samples_dir, "validation", data.StreamOptions(
            512, seed=0, shuffle=False, use_t1=use_t1,
            max_samples=config.train.max_validation_samples))
        tracker = EpochTracker(validation_data, run_dir, state, config.train.epochs)
        if state["epoch"] < config.train.epochs:
            with precision_scope(precision):
                model.fit(train_data, epochs=config.train.epochs, initial_epoch=state["epoch"],
                          verbose=0, shuffle=False, callbacks=[tracker, *callbacks])

        if not (run_dir / "best.keras").is_file():
            raise WMHError(f"{run_dir / 'best.keras'}: no epoch was kept (train.epochs is "
                           f"{config.train.epochs}); train at least one epoch")
        best = float32_model(keras.saving.load_model(run_dir / "best.keras", safe_mode=True,
                                                     compile=False),
                             config.model, len(channels))
        choice = validate_volumes(best, config, samples_dir, prepared_dir, channels,
                                  state.get("inference_precision", "fp32"))
        threshold, validation_dice, volume_auc = choice.threshold, choice.dice, choice.auc
        contract = ModelContract(model=config.model, channels=tuple(channels),
                                 inplane_spacing_mm=config.preprocess.inplane_spacing_mm,
                                 threshold=threshold, precision=precision,
                                 **choice.contract_fields(),
                                 init_model=source.source if source else "",
                                 init_model_sha256=source.sha256 if source else "")
        model_dir = save_model_dir(best, contract, run_dir / "model")
        publish_model(model_dir, load_network_dir(model_dir), config, samples_dir,
                      prepared_dir, registry.network_example(validation_data), {
            "best_epoch": state["best_epoch"], "best_val_auc": finite_auc(state["best_auc"]),
            "threshold": threshold, "val_volume_dice": validation_dice,
            "val_volume_auc": volume_auc}, datasets["validation"])
        state["finished"] = True
        state["result"] = {"threshold": threshold, "validation_dice": validation_dice,
                           "validation_volume_auc": volume_auc}
        atomic_write_text(state_path, json.dumps(state))
    return TrainResult(run_id=run_id, model_dir=model_dir, best_epoch=state["best_epoch"],
                       validation_auc=finite_auc(state["best_auc"]), threshold=threshold,
                       validation_dice=validation_dice, validation_volume_auc=volume_auc)


def write_model_plan(model_dir: Path, config: ExperimentConfig, samples_dir: Path,
                     prepared_dir: Path) -> dict:
    """The preprocessing plan (:mod:`wmh.preprocess.plan`) of a model trained on a sample
    set, written into its folder (CNN and forest alike)."""
    from wmh.preprocess.plan import training_files, write_plan

    return write_plan(model_dir, config.preprocess, config.data.use_t1,
                      training_files(samples_dir, prepared_dir))


def predict_volume(model, model_config: ModelConfig, images: np.ndarray, location: np.ndarray,
                   brain_mask: np.ndarray, mc_samples: int = 0, spacing=None,
                   precision: str = "auto", transform=None):
    """P(WMH) over a working-grid volume, slice by slice (dense, exact to the patch net).

    Args:
        model: the patch model or its dense twin (``wmh.models.build_dense_model``), or
            for ``model_config.arch == "rf"`` a :class:`wmh.baseline.RandomForestBaseline`.
        model_config: the model's config.
        images: (X, Y, Z, C) float32; location: (X, Y, Z, 8); brain_mask: (X, Y, Z) bool.
        mc_samples: Monte Carlo dropout passes; 0 = deterministic (a random forest gives
            the spread of its trees instead).
        spacing: (3,) voxel size in mm; needed by the random forest's features only.
        precision: "auto" (bf16 towers where this CPU's measurements justify it, else
            fp32), "fp32" or "bf16"; applies to a given dense twin as well (for this
            call), whatever precision the model was trained in; ignored by the forest.
        transform: applied to every Monte Carlo pass (every tree of a forest) before
            the mean and standard deviation, e.g. :meth:`wmh.calibration.Calibration.apply`;
            None keeps the probabilities.

    Returns:
        (X, Y, Z) float32 probabilities (0 outside the brain), or with ``mc_samples`` > 0
        a pair (mean, standard deviation).
    """
    if model_config.arch == "rf":
        if spacing is None:
            raise ValueError("predict_volume: a random forest needs the voxel spacing")
        return model.predict_volume(images, location, brain_mask, spacing,
                                    mc_samples=mc_samples, transform=transform)
    from wmh.models import InferenceOptions, predict_slices

    def to_slices(volume):  # (X, Y, Z, ...) -> (Z, X, Y, ...): rows = x, columns = y
        return np.moveaxis(np.asarray(volume), 2, 0)

    result = predict_slices(model, model_config, to_slices(images), to_slices(location),
                            to_slices(brain_mask), InferenceOptions(
                                mc_samples=mc_samples, precision=precision,
                                transform=transform))
    if mc_samples:
        return tuple(np.moveaxis(part, 0, 2) for part in result)
    return np.moveaxis(result, 0, 2)


def validate_volumes(model, config: ExperimentConfig, samples_dir: Path, prepared_dir: Path,
                     channels, precision: str = "fp32") -> ThresholdChoice:
    """Whole-volume prediction of the validation subjects and their calibration and
    threshold (``train.calibration``), logged to MLflow with the ROC, Dice-vs-threshold
    and reliability figures (:func:`wmh.threshold.logged_choice`). ``precision`` is the
    inference precision of the whole-volume prediction.

    Returns:
        A :class:`ThresholdChoice`; with no validation subject, threshold 0.5 and NaN
        Dice and AUC, uncalibrated.
    """
    from wmh.calibration import Calibration
    from wmh.models import build_dense_model

    network = model if config.model.arch == "msef" else build_dense_model(
        model, config.model, len(channels))

    def predict(prepared):
        return predict_volume(network, config.model, prepared.images[..., :len(channels)],
                              prepared.location, prepared.brain_mask, precision=precision)

    subject_ids, subjects, probabilities = predict_validation(predict, samples_dir,
                                                              prepared_dir)
    if not subject_ids:
        return ThresholdChoice(0.5, math.nan, math.nan, 0.5, Calibration())
    return logged_choice(subjects, probabilities, subject_ids, config.train.calibration,
                         samples_dir, f"{config.model.arch}+{config.model.loc} (validation)")
