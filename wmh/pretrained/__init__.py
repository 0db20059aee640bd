"""Models shipped inside the package: ``wmh/pretrained/<name>/``, found, listed and verified.

A shipped model is a trained model folder (``model.keras``, ``wmh_model.json``,
``plan.json``, ``prior.nii.gz``) plus ``MODEL_CARD.md`` and ``pretrained.json`` (name,
version, creation date, the SHA-256 and size of every file, recipe, training commit and
data, measured figures), written by :mod:`wmh.pretrained.export`. The folders are package
data: they are found with :mod:`importlib.resources` in a source checkout and in an
installed wheel alike, and nothing is ever downloaded.

``--model pretrained`` (and ``wmh segment`` without ``--model``) means the default model,
:data:`DEFAULT_NAME`; ``--model pretrained:<name>`` any shipped one. Every file is checked
against its SHA-256 before the model is used: a corrupted or missing file is a one-line
:class:`wmh.errors.WMHError` naming it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from pathlib import Path

from wmh.errors import WMHError
from wmh.io import sha256_file

RECORD_FILE = "pretrained.json"
CARD_FILE = "MODEL_CARD.md"
DEFAULT_NAME = "flair"  # the FLAIR-only model `wmh segment` uses without --model
PREFIX = "pretrained"  # --model pretrained | pretrained:<name>
MAX_MODEL_BYTES = 25_000_000  # every shipped model folder, all files together (25 MB)
NONE_SHIPPED = ("no model is shipped with this installation of wmh (wmh/pretrained/ holds "
                "none); give {option} FOLDER or URI of a model trained with `wmh train`")


def package_root() -> Path:
    """The folder holding the shipped model folders (this package's folder)."""
    return Path(str(importlib.resources.files(__name__)))


@dataclasses.dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its folder and its ``pretrained.json`` record."""

    name: str
    folder: Path
    record: dict

    @property
    def version(self) -> str:
        return str(self.record.get("version", ""))

    @property
    def total_bytes(self) -> int:
        return sum(int(entry["bytes"]) for entry in self.record.get("files", {}).values())

    @property
    def weights_sha256(self) -> str:
        return self.record.get("files", {}).get("model.keras", {}).get("sha256", "")

    @property
    def uri(self) -> str:
        """How ``--model`` names it: ``pretrained:<name>``."""
        return f"{PREFIX}:{self.name}"

    def provenance(self) -> dict:
        """What a segmentation's report records about the model it used."""
        return {"model_name": self.uri, "model_version": self.version}


def shipped_models(root: Path | None = None) -> list[ShippedModel]:
    """Every shipped model (a subfolder holding ``pretrained.json``), by name.

    Raises:
        WMHError: an unreadable ``pretrained.json``.
    """
    root = package_root() if root is None else Path(root)
    found = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()) \
            if root.is_dir() else []:
        path = folder / RECORD_FILE
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            record["files"].items()
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise WMHError(f"{path}: not a valid {RECORD_FILE} ({error}); reinstall wmh") \
                from None
        found.append(ShippedModel(folder.name, folder, record))
    return found


def is_pretrained(source) -> bool:
    """Whether a ``--model`` value names a shipped model (``pretrained[:<name>]``)."""
    text = str(source)
    return text == PREFIX or text.startswith(PREFIX + ":")


def verify(model: ShippedModel) -> ShippedModel:
    """Checks every file ``pretrained.json`` lists against its SHA-256.

    Raises:
        WMHError: a missing or corrupted file, named.
    """
    for name, entry in sorted(model.record["files"].items()):
        path = model.folder / name
        if not path.is_file():
            raise WMHError(f"{path}: missing from the shipped model '{model.name}' "
                           "(reinstall wmh)")
        if sha256_file(path) != entry.get("sha256"):
            raise WMHError(f"{path}: corrupted (its SHA-256 differs from {RECORD_FILE}; "
                           "reinstall wmh)")
    return model


def find(source: str = PREFIX, option: str = "--model", root: Path | None = None,
         check: bool = True, label: str | None = None) -> ShippedModel:
    """The shipped model ``source`` names (``pretrained`` = :data:`DEFAULT_NAME`,
    ``pretrained:<name>``), its files verified unless ``check`` is False. Errors start
    with ``label`` (default: "<option> <source>").

    Raises:
        WMHError: none shipped, an unknown name, or a missing or corrupted file.
    """
    label = label or f"{option} {source}"
    name = str(source).partition(":")[2] or DEFAULT_NAME
    models = {model.name: model for model in shipped_models(root)}
    if not models:
        raise WMHError(f"{label}: {NONE_SHIPPED.format(option=option)}")
    if name not in models:
        raise WMHError(f"{label}: no shipped model named '{name}' (shipped: "
                       f"{', '.join(sorted(models))}; see `wmh models`)")
    return verify(models[name]) if check else models[name]
