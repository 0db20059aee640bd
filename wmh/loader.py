"""Loads any trained model, CNN or random forest, from wherever ``--model`` points.

A source is a model folder, a weights file, an MLflow URI (``runs:/<run id>/model``,
``models:/<model id>``, ``models:/NAME@ALIAS``) or a shipped model ``pretrained[:NAME]``;
:func:`wmh.registry.model_folder` turns it into a local folder, and the folder's weights
file says which architecture reads it (``forest.skops``: :func:`wmh.baseline.load_model_dir`,
skops with an allow-list; otherwise :func:`wmh.train.load_network_dir`, Keras
``safe_mode``). Nothing is unpickled and no code from the files runs. This module sits
above both architectures so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from wmh import baseline, train
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
