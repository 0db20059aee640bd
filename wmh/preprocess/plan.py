"""The preprocessing plan: how a model's training data were prepared, kept in its folder.

``plan.json`` beside ``wmh_model.json`` (and the WMH prior it used, copied as
``prior.nii.gz``) lets ``wmh segment`` rebuild exactly that preprocessing, refuse prepared
files made otherwise, and warn when a scan lies outside the training data's geometry:

* ``preprocess``: the full :class:`wmh.config.PreprocessConfig` (``prior_path`` names the
  copy in the model folder, "" when the model used the analytic prior);
* ``use_t1``, ``config_hash`` and ``code_version`` (:mod:`wmh.preprocess.keys`), and
  ``prior_sha256`` (16 hex digits, "" for the analytic prior);
* ``training``: the training subjects' count, native in-plane spacing and slice thickness
  ranges in mm;
* ``channels``: per channel, mean, standard deviation and the 1st/99th percentiles of the
  normalised intensities inside the brain (training subjects, up to
  :data:`STATISTICS_SUBJECTS`).

A model folder without ``plan.json`` (older models) is segmented as before: the default
preprocessing at the contract's in-plane spacing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np

from wmh.config import PreprocessConfig, from_dict, to_dict
from wmh.errors import WMHError
from wmh.io import atomic_write_text

PLAN_FILE = "plan.json"
PRIOR_FILE = "prior.nii.gz"
PLAN_FORMAT = 1
STATISTICS_SUBJECTS = 20  # training subjects read for the channel statistics
RANGE_TOLERANCE = 0.05  # relative slack before a scan's geometry counts as out of range


def subject_geometry(spacing: Sequence[float], native_affine: np.ndarray) -> dict:
    """A prepared subject's native in-plane spacing (the finest native axis) and slice
    thickness (the working grid's slice spacing: native slices are kept), in mm."""
    zooms = np.sqrt((np.asarray(native_affine, np.float64)[:3, :3] ** 2).sum(axis=0))
    return {"inplane_spacing_mm": float(zooms.min()),
            "slice_thickness_mm": float(np.asarray(spacing, np.float64)[2])}


def build_plan(config: PreprocessConfig, use_t1: bool, prepared_files: Sequence[Path]) -> dict:
    """The plan of a model trained on ``prepared_files`` (its training subjects)."""
    from wmh import location
    from wmh.preprocess.keys import code_version, config_hash
    from wmh.tracking import content_hash

    prior = config.prior_path or location.default_prior_path()
    geometry, statistics = [], {}
    values: dict[str, list[np.ndarray]] = {}
    for index, path in enumerate(prepared_files):
        with h5py.File(path, "r") as file:
            geometry.append(subject_geometry(file.attrs["spacing"],
                                             file.attrs["native_affine"]))
            if index < STATISTICS_SUBJECTS:
                channels = json.loads(file.attrs["channels"])
                brain = file["brain_mask"][...].astype(bool)
                images = file["images"][...]
                for number, name in enumerate(channels):
                    values.setdefault(name, []).append(images[..., number][brain])
    for name, parts in values.items():
        data = np.concatenate(parts).astype(np.float64)
        statistics[name] = {"mean": float(data.mean()), "std": float(data.std()),
                            "p1": float(np.percentile(data, 1)),
                            "p99": float(np.percentile(data, 99))} if data.size else {}

    def extent(key):
        found = [g[key] for g in geometry]
        return [min(found), max(found)] if found else []

    preprocess = to_dict(config)
    preprocess["prior_path"] = PRIOR_FILE if prior else ""
    return {"format": PLAN_FORMAT, "preprocess": preprocess, "use_t1": bool(use_t1),
            "config_hash": config_hash(config, use_t1), "code_version": code_version(),
            "prior_sha256": content_hash(prior) if prior else "",
            "training": {"subjects": len(geometry),
                         "inplane_spacing_mm": extent("inplane_spacing_mm"),
                         "slice_thickness_mm": extent("slice_thickness_mm")},
            "channels": statistics}


def write_plan(model_dir: Path, config: PreprocessConfig, use_t1: bool,
               prepared_files: Sequence[Path]) -> dict:
    """Writes ``plan.json`` (and the prior copy) into a model folder; returns the plan."""
    from wmh import location

    model_dir = Path(model_dir)
    plan = build_plan(config, use_t1, prepared_files)
    prior = config.prior_path or location.default_prior_path()
    if prior:
        shutil.copyfile(prior, model_dir / PRIOR_FILE)
    atomic_write_text(model_dir / PLAN_FILE, json.dumps(plan, indent=1))
    return plan


def training_files(samples_dir: Path, prepared_dir: Path) -> list[Path]:
    """The prepared files of the training split of a sample set."""
    from wmh import sampling

    return [Path(prepared_dir) / f"{subject_id}.h5"
            for subject_id in sampling.load_splits(samples_dir)["train"]]


def read_plan(model_dir: Path) -> Optional[dict]:
    """A model folder's plan, or None when it has none (older models).

    Raises:
        WMHError: an unreadable plan.json.
    """
    path = Path(model_dir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
        plan["preprocess"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WMHError(f"{path}: not a preprocessing plan ({error})") from None
    return plan


def plan_config(plan: dict, model_dir: Path) -> PreprocessConfig:
    """The PreprocessConfig a plan describes, its prior the copy in ``model_dir``."""
    values = dict(plan["preprocess"])
    if values.get("prior_path"):
        prior = Path(model_dir) / values["prior_path"]
        if not prior.is_file():
            raise WMHError(f"{prior}: the model's WMH prior is missing from its folder")
        values["prior_path"] = str(prior)
    known = {field.name for field in dataclasses.fields(PreprocessConfig)}
    return from_dict({k: v for k, v in values.items() if k in known}, PreprocessConfig)


def geometry_warnings(plan: Optional[dict], spacing: Sequence[float],
                      native_affine: np.ndarray) -> list[str]:
    """Warnings for a scan whose in-plane spacing or slice thickness lies outside the
    training data's range (beyond :data:`RANGE_TOLERANCE`); none without a plan."""
    if not plan:
        return []
    found = subject_geometry(spacing, native_affine)
    warnings = []
    for key, label in (("inplane_spacing_mm", "in-plane spacing"),
                       ("slice_thickness_mm", "slice thickness")):
        extent = plan.get("training", {}).get(key) or []
        if len(extent) != 2:
            continue
        low, high = extent
        value = found[key]
        if value < low * (1 - RANGE_TOLERANCE) or value > high * (1 + RANGE_TOLERANCE):
            warnings.append(f"{label} {value:.2g} mm outside the model's training range "
                            f"{low:.2g}-{high:.2g} mm")
    return warnings
