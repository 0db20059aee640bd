"""Fine-tuning: the trained model a run starts from (``train.init_model``).

``train.init_model`` names ``pretrained[:NAME]``, a model folder or an MLflow URI. The run
starts from that model's weights (a fresh optimiser) after checking that the config builds
the same network on the same inputs (:func:`check_init_source`: arch, loc, width,
channels, patch, preprocessing); ``wmh train`` prepares the data with the source's
preprocessing plan (:func:`with_source_preprocess`), so the fine-tuned model prepares
scans as the source did. The source's weights' SHA-256 is part of the run key
(:func:`wmh.lifecycle.run_key`) and is recorded in the MLflow params and the contract by
the CNN's learner (:mod:`wmh.train`). No TensorFlow here: the weights themselves are
loaded by the architecture.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from wmh.config import ExperimentConfig
from wmh.contract import MODEL_FILE, ModelContract, read_model_folder
from wmh.errors import WMHError


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
