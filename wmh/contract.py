"""The trained-model folder's contract, shared by every architecture (CNN and forest).

A trained model is a folder: its weights (``model.keras`` for a CNN,
``forest.skops`` for the random forest: :data:`wmh.baseline.FOREST_FILE`), the input
contract ``wmh_model.json`` (:class:`ModelContract`: channels, in-plane spacing, model
config, threshold, calibration, patch or feature definition, precision, fine-tune source)
and ``plan.json``, its preprocessing plan (:mod:`wmh.preprocess.plan`). This module holds
what every layer that reads or writes such a folder agrees on: the file names, the
contract and its reading (:func:`read_model_folder`), and what a training run returns
(:class:`TrainResult`). Loading the weights belongs to the architectures
(:func:`wmh.train.load_network_dir`, :func:`wmh.baseline.load_model_dir`) and choosing
between them to :func:`wmh.loader.load_model_dir`. No TensorFlow, no MLflow here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from wmh import __version__
from wmh.config import ModelConfig, from_dict, to_dict
from wmh.errors import WMHError

MODEL_FILE = "model.keras"
CONTRACT_FILE = "wmh_model.json"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished training run produced.

    Attributes:
        run_id: the MLflow run.
        model_dir: folder with ``model.keras`` and ``wmh_model.json``.
        best_epoch: 1-based epoch with the highest validation AUC.
        validation_auc: that AUC (balanced validation samples).
        threshold: validation-optimal threshold on whole validation volumes.
        validation_dice: overall Dice of the validation subjects at that threshold.
        validation_volume_auc: voxel-wise AUC inside the brain on the validation subjects.
    """

    run_id: str
    model_dir: Path
    best_epoch: int
    validation_auc: float
    threshold: float
    validation_dice: float
    validation_volume_auc: float


@dataclasses.dataclass(frozen=True)
class ModelContract:
    """The input contract stored beside a trained model (``wmh_model.json``)."""

    model: ModelConfig
    channels: tuple[str, ...]
    inplane_spacing_mm: float
    threshold: float
    wmh_version: str = __version__
    patch: str = "s1/s2/s3: 32x32 windows at scales 1/2/4 pooled to 32x32 (wmh.data)"
    precision: str = "fp32"  # resolved training precision; contracts without it: fp32
    # wmh.calibration.Calibration.to_dict(), applied to P(WMH) before ``threshold``;
    # None (contracts from before calibration): method none
    calibration: Optional[dict] = None
    # the validation-optimal threshold of the network's uncalibrated output (the paper's);
    # None: ``threshold`` (an uncalibrated model)
    uncalibrated_threshold: Optional[float] = None

    init_model: str = ""  # fine-tuned from this model (train.init_model); "" = from scratch
    init_model_sha256: str = ""  # SHA-256 of that model's weights file

    def calibrator(self):
        """The :class:`wmh.calibration.Calibration` of P(WMH) (method none when absent)."""
        from wmh.calibration import Calibration

        return Calibration.from_dict(self.calibration)

    def threshold_for(self, calibrated: bool = True) -> float:
        """The mask threshold for calibrated probabilities, or for the network's output."""
        if calibrated or self.uncalibrated_threshold is None:
            return float(self.threshold)
        return float(self.uncalibrated_threshold)

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        values["model"] = to_dict(self.model)
        values["channels"] = list(self.channels)
        return json.dumps(values, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str) -> "ModelContract":
        try:
            values = json.loads(text)
            values["model"] = from_dict(values["model"], ModelConfig)
            values["channels"] = tuple(values["channels"])
            contract = cls(**values)
            contract.calibrator()  # a bad calibration fails here, naming the file
            return contract
        except (ValueError, KeyError, TypeError) as error:
            raise WMHError(f"{source}: not a valid {CONTRACT_FILE} ({error})") from None


def read_model_folder(folder: Path, model_file: str, made_by: str,
                      option: str = "--model") -> ModelContract:
    """Checks a model folder holds ``model_file`` and ``wmh_model.json``; returns the
    contract. ``made_by`` completes the error message ("expected a folder made ..."),
    which starts with ``option``."""
    for name in (model_file, CONTRACT_FILE):
        if not (folder / name).is_file():
            raise WMHError(f"{option} {folder}: missing {name} (expected a folder made "
                           f"{made_by})")
    contract_path = folder / CONTRACT_FILE
    return ModelContract.from_json(contract_path.read_text(), str(contract_path))
