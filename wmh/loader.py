"""Loads any trained model, CNN or random forest, from wherever ``--model`` points.

A source is a model folder, a weights file, an MLflow URI (``runs:/<run id>/model``,
``models:/<model id>``, ``models:/NAME@ALIAS``) or a shipped model ``pretrained[:NAME]``;
:func:`wmh.registry.model_folder` turns it into a local folder, and the folder's weights
file says which architecture reads it (``forest.skops``: :func:`wmh.baseline.load_model_dir`,
skops with an allow-list; otherwise :func:`wmh.train.load_network_dir`, Keras
``safe_mode``). Nothing is unpickled and no code from the files runs. For training,
:func:`learner` picks the :class:`wmh.lifecycle.Learner` of a config's ``model.arch``.
This module sits above both architectures so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from wmh import baseline, train
from wmh.config import ExperimentConfig
from wmh.lifecycle import Learner
from wmh.registry import model_folder


def load_model_dir(source: str | Path, option: str = "--model"):
    """Loads a trained model (weights stored in float16, a shipped model, come back as
    a float32-policy network).

    Returns:
        (keras model, or :class:`wmh.baseline.RandomForestBaseline`,
        :class:`wmh.contract.ModelContract`).

    Raises:
        WMHError: a missing or invalid folder, or a source that cannot be resolved;
            one line naming ``option``.
    """
    folder = model_folder(source, option)  # URI downloaded, weights file -> its folder
    if (folder / baseline.FOREST_FILE).is_file():  # model.arch=rf: a random forest folder
        return baseline.load_model_dir(folder)
    return train.load_network_dir(folder)


def learner(config: ExperimentConfig, callbacks: Sequence = ()) -> Learner:
    """The learner that trains ``config.model``: the random forest baseline for
    ``model.arch: rf``, else the CNN; ``callbacks`` are Keras callbacks (CNN only).

    Raises:
        WMHError: a config the learner refuses (bad forest settings, callbacks for the
            forest, a fine-tune's incompatible source), naming the option.
    """
    if config.model.arch == "rf":
        return baseline.ForestLearner(config, callbacks)
    return train.CNNLearner(config, callbacks)
