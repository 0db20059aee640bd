"""The CNNs' part of the training lifecycle: fit, keep the best epoch, resume, predict.

:class:`CNNLearner` is the CNNs' :class:`wmh.lifecycle.Learner`; :func:`wmh.lifecycle.train_run`
runs it (run key, MLflow run, validation verdict, contract, logged model: shared with the
random forest). The paper's recipe: RMSprop, mini-batches of 128, cross-entropy, dropout
0.3; the epoch with the highest validation AUC is kept (while no epoch has a finite AUC,
the last one). The calibration and the binarisation threshold are then chosen on whole
validation volumes (the dense twin of the kept network) by the lifecycle.

A run checkpoints: after every epoch the model (with optimiser state) and the run's
``state.json`` are written atomically under ``<cache>/runs/<run key>/``. Started again
with the same config and data, an unfinished run continues from its last finished epoch
in the same MLflow run.

The model folder (logged to MLflow as the logged model ``model``: :mod:`wmh.registry`):

* ``model.keras``: the best-epoch patch network (stock layers only; loads with safe_mode);
* ``wmh_model.json``: its input contract: channels, in-plane spacing, model config, the
  validation-optimal threshold (on calibrated probabilities), the calibration and the
  threshold of the uncalibrated output, the patch definition and the training precision.

Fine-tuning (``train.init_model``, :mod:`wmh.finetune`): the run starts from that model's
weights (a fresh optimiser); the source and its weights' SHA-256 are recorded in the
MLflow params and in the contract.

Precision (``train.precision``, :mod:`wmh.models.precision`): bf16 trains with Keras
``mixed_bfloat16`` inside a policy scope (float32 master weights, float32 loss and
softmax); ``auto`` resolves per CPU and job. The saved ``model.keras`` is always a
float32-policy network with the same float32 weights, so inference chooses its own
precision whatever the training precision was.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from wmh.config import ExperimentConfig, ModelConfig
from wmh.contract import (CONTRACT_FILE, MODEL_FILE, ModelContract, TrainResult,
                          read_model_folder)
from wmh.errors import WMHError
from wmh.finetune import init_source
from wmh.io import atomic_output, atomic_write_text
from wmh.lifecycle import STATE_FILE, Fitted, RunContext, RunOptions, train_run
from wmh.threshold import sample_loss


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


# ------------------------------------------------------------------ the CNN's learner

class CNNLearner:
    """The CNNs' :class:`wmh.lifecycle.Learner` (SS, MSEF, MSIW, MSWS, with or without
    location): fits with checkpoints and resume, predicts volumes with the dense twin,
    saves and loads ``model.keras``.

    Args:
        config: the resolved experiment config (None: a loaded model); a fine-tune's
            source (``train.init_model``) is checked here, before anything starts.
        callbacks: extra Keras callbacks; they run after the epoch tracker, so
            ``logs["val_auc"]`` is set in their ``on_epoch_end`` (e.g. Optuna pruning,
            which may raise ``optuna.TrialPruned`` to stop the run).
    """

    checkpoints = True

    def __init__(self, config: ExperimentConfig | None, callbacks: Sequence = ()):
        self.config = config
        self.callbacks = tuple(callbacks)
        self.source = init_source(config) if config is not None else None
        self.model = self.network = self.contract = None
        self.model_config = config.model if config is not None else None
        self.channels: tuple[str, ...] = ()
        self.precision = "fp32"  # of the fitted network; inference_precision predicts
        self.inference_precision = "fp32"

    @classmethod
    def load(cls, folder: Path) -> "CNNLearner":
        """The network of a CNN model folder (:func:`load_network_dir`), predicting in fp32."""
        model, contract = load_network_dir(folder)
        learner = cls(None)
        learner._use(model, contract.model, contract.channels)
        learner.contract, learner.precision = contract, contract.precision
        return learner

    @property
    def name(self) -> str:
        """``<arch>+<loc>``: the default run name."""
        return f"{self.model_config.arch}+{self.model_config.loc}"

    def _use(self, model, model_config: ModelConfig, channels) -> None:
        self.model, self.model_config, self.channels = model, model_config, tuple(channels)
        self.network = None  # its dense twin, built by the first predict_volume

    def fit(self, run: RunContext) -> Fitted:
        """Trains ``config.model`` from its last checkpoint (epoch 0 for a new run): per
        epoch MLflow metrics, best/last checkpoints and ``state.json`` (:class:`EpochTracker`);
        then keeps the best epoch as a float32-policy network."""
        import mlflow

        from wmh import data, registry
        from wmh.models import build_model
        from wmh.models.precision import precision_scope

        config, state, run_dir, source = run.config, run.state, run.run_dir, self.source
        if run.new:
            precisions = log_precision(config)
            if source is not None:
                mlflow.log_params({"train.init_model_sha256": source.sha256,
                                   "train.init_model_folder": str(source.folder)})
            state.update(epoch=0, best_auc=-1.0, best_epoch=0, **precisions)
        # A run resumes in the precision it started in (runs from before: fp32).
        precision = state.get("precision", "fp32")
        keras.utils.set_random_seed(config.train.seed + state["epoch"])
        with distribution_strategy().scope(), precision_scope(precision):
            if state["epoch"] > 0 and (run_dir / "last.keras").exists():
                model = keras.saving.load_model(run_dir / "last.keras", safe_mode=True)
                mlflow.set_tag("resumed_from_epoch", state["epoch"])
            else:
                model = compile_model(build_model(config.model, len(run.channels)),
                                      config.train.learning_rate)
                if source is not None:  # fine-tune: the source's weights, fresh optimiser
                    model.set_weights(load_network_dir(source.folder)[0].get_weights())
        use_t1 = config.data.use_t1
        train_data = data.make_dataset(run.samples_dir, "train", data.StreamOptions(
            config.train.batch_size, seed=config.train.seed + state["epoch"], shuffle=True,
            use_t1=use_t1, max_samples=config.train.max_train_samples))
        validation_data = data.make_dataset(run.samples_dir, "validation", data.StreamOptions(
            512, seed=0, shuffle=False, use_t1=use_t1,
            max_samples=config.train.max_validation_samples))
        tracker = EpochTracker(validation_data, run_dir, state, config.train.epochs)
        if state["epoch"] < config.train.epochs:
            with precision_scope(precision):
                model.fit(train_data, epochs=config.train.epochs, initial_epoch=state["epoch"],
                          verbose=0, shuffle=False, callbacks=[tracker, *self.callbacks])

        if not (run_dir / "best.keras").is_file():
            raise WMHError(f"{run_dir / 'best.keras'}: no epoch was kept (train.epochs is "
                           f"{config.train.epochs}); train at least one epoch")
        best = float32_model(keras.saving.load_model(run_dir / "best.keras", safe_mode=True,
                                                     compile=False),
                             config.model, len(run.channels))
        self._use(best, config.model, run.channels)
        self.precision = precision
        self.inference_precision = state.get("inference_precision", "fp32")
        return Fitted(best_epoch=state["best_epoch"],
                      validation_auc=finite_auc(state["best_auc"]),
                      example=registry.network_example(validation_data))

    def predict_volume(self, prepared) -> np.ndarray:
        """P(WMH) of a PreparedSubject on its working grid (:func:`predict_volume`, the
        dense twin, ``inference_precision``)."""
        from wmh.models import build_dense_model

        if self.network is None:
            self.network = self.model if self.model_config.arch == "msef" else \
                build_dense_model(self.model, self.model_config, len(self.channels))
        return predict_volume(self.network, self.model_config,
                              prepared.images[..., :len(self.channels)], prepared.location,
                              prepared.brain_mask, precision=self.inference_precision)

    def contract_fields(self) -> dict:
        """The training precision and the fine-tune source."""
        source = self.source
        return {"precision": self.precision,
                "init_model": source.source if source else "",
                "init_model_sha256": source.sha256 if source else ""}

    def save(self, folder: Path, contract: ModelContract) -> Path:
        """``model.keras`` + ``wmh_model.json`` (:func:`save_model_dir`)."""
        self.contract = contract
        return save_model_dir(self.model, contract, folder)


def train(config: ExperimentConfig, samples_dir: Path, prepared_dir: Path,
          callbacks: Sequence = (), options: RunOptions = RunOptions()) -> TrainResult:
    """Trains ``config.model`` (a CNN) on a sample set through the lifecycle
    (:func:`wmh.lifecycle.train_run`): tracked in MLflow, resumable.

    Args:
        config: the resolved experiment config.
        samples_dir: output of ``wmh sample`` (splits + samples).
        prepared_dir: the prepared subjects the samples came from.
        callbacks: extra Keras callbacks (:class:`CNNLearner`).
        options: the MLflow run's :class:`wmh.lifecycle.RunOptions`.

    Returns:
        A :class:`wmh.contract.TrainResult`.
    """
    return train_run(CNNLearner(config, callbacks), samples_dir, prepared_dir, options)
