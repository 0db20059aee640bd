"""Ship a trained model inside the package, with its record and model card.

Usage::

    python -m wmh.pretrained.export MODEL --name flair \\
        [--figures real=bench_real.json] [--figures synthetic=test_eval.json] \\
        [--version V] [--recipe experiments/pretrained_flair.yaml] [--run-id ID] [--float16]

``MODEL`` is a model folder from ``wmh train`` (``data_cache/runs/<key>/model``), its
``model.keras``, or an MLflow URI (``runs:/<run id>/model``, ``models:/...``). It must
hold weights, the contract and the preprocessing plan. The tool writes
``wmh/pretrained/<name>/`` atomically (a previous version is replaced whole):

* the model folder's files (``model.keras``, ``wmh_model.json``, ``plan.json``,
  ``prior.nii.gz``, ...). A folder above :data:`wmh.pretrained.MAX_MODEL_BYTES` gets its
  weights stored in float16 (or always with ``--float16``); the float16 network is
  checked to predict within :data:`FLOAT16_TOLERANCE` of the original, and a model still
  too large is refused;
* ``pretrained.json``: name, version (default: the UTC date, ``YYYY.MM.DD``), creation
  date, the SHA-256 and size of every file, the recipe (path and SHA-256), and the
  training provenance read from the MLflow run (``runs:/`` URI, ``--run-id``, or the
  ``state.json`` beside a run folder): commit, data label, the synthetic generator's
  version, seed, subjects and profile (run tags, else the cohort the run's cache
  prepared), and the figures;
* ``MODEL_CARD.md`` (:mod:`wmh.pretrained.card`).

Figures are JSON files (the whole output of ``benchmarks/bench_real.py``, whose last line
is its JSON, or ``wmh evaluate --json`` of the synthetic test subjects), given as
``KIND=FILE`` with KIND ``real`` or ``synthetic`` (bench_real's JSON says ``"data":
"real"`` itself). Nothing is invented: a figure no file gives is "not measured".
Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from wmh import __version__
from wmh.errors import WMHError
from wmh.io import atomic_write_text, sha256_file
from wmh.pretrained import (CARD_FILE, MAX_MODEL_BYTES, PREFIX, RECORD_FILE, package_root)
from wmh.pretrained.card import FIGURE_KINDS, render_card
from wmh.contract import CONTRACT_FILE, MODEL_FILE, read_model_folder

RECORD_FORMAT = 1
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
FLOAT16_TOLERANCE = 0.02  # largest |P(WMH) difference| allowed after storing float16 weights
CHECK_PATCHES = 64  # random patches the float16 check predicts
RECORD_ALLOWANCE = 64_000  # bytes kept for MODEL_CARD.md and pretrained.json in the limit


def export(source: str | Path, name: str, figures: Sequence[str] = (), *,
           version: Optional[str] = None, recipe: Optional[str | Path] = None,
           run_id: Optional[str] = None, float16: bool = False,
           root: Optional[Path] = None) -> Path:
    """Copies a trained model into ``root/<name>/`` (default: the package's
    ``wmh/pretrained/``) with its record and card; returns that folder.

    Raises:
        WMHError: a bad name, model folder, figures file or recipe, or a model above the
            size limit even in float16; nothing is left half-written.
    """
    from wmh.preprocess.plan import read_plan
    from wmh.registry import model_folder

    if not NAME_PATTERN.match(name):
        raise WMHError(f"--name {name!r}: 1-40 lower-case letters, digits, '-' or '_', "
                       "starting with a letter or digit")
    blocks: dict = {}
    for spec in figures:
        kind, block = read_figures(spec)
        if kind in blocks:
            raise WMHError(f"--figures {spec}: a second file of {kind} figures (give one)")
        blocks[kind] = block
    folder = model_folder(source, "MODEL")
    contract = read_model_folder(folder, MODEL_FILE, "by `wmh train`", "MODEL")
    plan = read_plan(folder)
    if plan is None:
        raise WMHError(f"MODEL {folder}: no plan.json (a shipped model must carry its "
                       "preprocessing plan; train it again with this wmh)")
    root = package_root() if root is None else Path(root)
    training = training_provenance(str(source), folder, run_id)
    recipe_entry = recipe_record(recipe, training.get("config_name"))
    created = datetime.datetime.now(datetime.timezone.utc)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".export", dir=root))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the installed model from other users
    try:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name not in (RECORD_FILE, CARD_FILE):
                shutil.copyfile(path, staging / path.name)
        dtype = "float32"
        if float16 or folder_bytes(staging) + RECORD_ALLOWANCE > MAX_MODEL_BYTES:
            store_float16(staging, contract)
            dtype = "float16"
        if folder_bytes(staging) + RECORD_ALLOWANCE > MAX_MODEL_BYTES:
            raise WMHError(f"MODEL {folder}: {folder_bytes(staging) / 1e6:.1f} MB even with "
                           f"float16 weights, above the {MAX_MODEL_BYTES / 1e6:.0f} MB limit "
                           "of a shipped model (train a smaller model.width)")
        record = {"format": RECORD_FORMAT, "name": name, "uri": f"{PREFIX}:{name}",
                  "version": version or created.strftime("%Y.%m.%d"),
                  "created": created.isoformat(timespec="seconds"),
                  "wmh_version": __version__, "weights_dtype": dtype,
                  "recipe": recipe_entry, "training": training, "figures": blocks}
        contract_json = json.loads((staging / CONTRACT_FILE).read_text())
        atomic_write_text(staging / CARD_FILE, render_card(record, contract_json, plan))
        record["files"] = {path.name: {"sha256": sha256_file(path),
                                       "bytes": path.stat().st_size}
                           for path in sorted(staging.iterdir()) if path.is_file()}
        atomic_write_text(staging / RECORD_FILE, json.dumps(record, indent=1) + "\n")
        if folder_bytes(staging) > MAX_MODEL_BYTES:
            raise WMHError(f"MODEL {folder}: {folder_bytes(staging) / 1e6:.1f} MB, above "
                           f"the {MAX_MODEL_BYTES / 1e6:.0f} MB limit of a shipped model")
        return publish(staging, root / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def folder_bytes(folder: Path) -> int:
    """Total size of the regular files of a folder (not recursive)."""
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def publish(staging: Path, final: Path) -> Path:
    """Swaps ``staging`` in as ``final``: the old folder is moved aside first and removed
    only after the new one is in place."""
    aside = None
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old",
                                      dir=final.parent))
        os.replace(final, aside / final.name)
    os.replace(staging, final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


def store_float16(folder: Path, contract) -> float:
    """Rewrites ``folder/model.keras`` with float16 weights, checks that it loads as a
    float32 network predicting within :data:`FLOAT16_TOLERANCE`; returns the largest
    difference of P(WMH) on random patches.

    Raises:
        WMHError: the float16 network predicts too differently.
    """
    import keras
    import numpy as np

    from wmh.io import atomic_output
    from wmh.models import build_model
    from wmh.contract import MODEL_FILE
    from wmh.loader import load_model_dir

    original, _ = load_model_dir(folder)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float16")
    try:
        half = build_model(contract.model, len(contract.channels))
    finally:
        keras.config.set_dtype_policy(previous)
    half.set_weights([weight.astype(np.float16) if weight.dtype == np.float32 else weight
                      for weight in original.get_weights()])
    with atomic_output(folder / MODEL_FILE) as temporary:
        half.save(temporary)
    restored, _ = load_model_dir(folder)
    generator = np.random.default_rng(0)
    channels = len(contract.channels)
    inputs = {key: generator.random((CHECK_PATCHES, 32, 32, channels), np.float32)
              for key in ("s1", "s2", "s3")}
    inputs["loc"] = generator.random((CHECK_PATCHES, 8), np.float32)
    difference = float(np.max(np.abs(np.asarray(original(inputs, training=False))[:, 1]
                                     - np.asarray(restored(inputs, training=False))[:, 1])))
    if not difference <= FLOAT16_TOLERANCE:
        raise WMHError(f"MODEL {folder}: float16 weights change P(WMH) by up to "
                       f"{difference:.3g} (> {FLOAT16_TOLERANCE}); the model cannot be "
                       "stored in float16")
    return difference


# ------------------------------------------------------------------------- provenance

def source_run_id(source: str, folder: Path) -> Optional[str]:
    """The MLflow run that trained a model: from a ``runs:/`` URI, a ``models:/`` URI's
    model info, or the ``state.json`` of the run folder a model folder lies in."""
    if source.startswith("runs:/"):
        return source[len("runs:/"):].split("/")[0] or None
    if source.startswith("models:/"):
        try:
            import mlflow

            return mlflow.models.get_model_info(source).run_id
        except Exception:  # noqa: BLE001  MLflow raises many types; provenance is optional
            return None
    from wmh.lifecycle import STATE_FILE

    try:
        return json.loads((folder.parent / STATE_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def training_provenance(source: str, folder: Path, run_id: Optional[str] = None) -> dict:
    """What trained the model, from its MLflow run: ``run_id``, ``git_commit``,
    ``data_label``, ``config_name``, ``init_model`` and ``synth`` (generator version,
    seed, subjects, profile); a field the run does not give is absent."""
    run_id = run_id or source_run_id(source, folder)
    info: dict = {"model_source": source, "run_id": run_id}
    run = _find_run(run_id) if run_id else None
    if run is None:
        if run_id:
            print(f"note: MLflow run {run_id} not found in the tracking store: training "
                  "provenance not recorded (set MLFLOW_TRACKING_URI to the store of the "
                  "training run, e.g. sqlite:///<its checkout>/mlflow.db)", file=sys.stderr)
        return info
    params, tags = run.data.params, run.data.tags
    info.update({key: value for key, value in (
        ("git_commit", tags.get("git_commit")), ("data_label", tags.get("data_label")),
        ("config_name", params.get("name")), ("init_model", params.get("train.init_model")),
        ("init_model_sha256", params.get("train.init_model_sha256"))) if value})
    synth = {name: _number(tags[tag]) for name, tag in (
        ("synth_version", "synth_version"), ("seed", "synth_seed"),
        ("subjects", "synth_subjects"), ("profile", "synth_profile")) if tag in tags}
    if not synth:
        synth = _cohort_from_cache(run, folder)
    if synth:
        info["synth"] = synth
    return info


def _find_run(run_id: str):
    try:
        import mlflow

        from wmh.tracking import require_store

        mlflow.set_tracking_uri(require_store(f"run {run_id}"))
        return mlflow.get_run(run_id)
    except Exception:  # noqa: BLE001  no store, no run: provenance is "not recorded"
        return None


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def _cohort_from_cache(run, folder: Path) -> dict:
    """The synthetic cohort of a run whose model folder is ``<cache>/runs/<key>/model``:
    the prepared folders its datasets name (``<prepared>-<split>``) lead to it."""
    from wmh.tracking import SYNTH_TAGS, synthetic_cohort

    if folder.parent.parent.name != "runs":
        return {}
    cache = folder.parents[2]
    for dataset_input in run.inputs.dataset_inputs:
        prepared = cache / "prepared" / dataset_input.dataset.name.rsplit("-", 1)[0]
        cohort = synthetic_cohort(prepared)
        if cohort:
            return {name: cohort[name] for name in SYNTH_TAGS if name in cohort}
    return {}


def recipe_record(recipe: Optional[str | Path], config_name: Optional[str]) -> dict:
    """``{"path", "sha256"}`` of the experiment YAML that trained the model: ``recipe``,
    else ``experiments/<config name>.yaml`` of this checkout when it exists; {} if none."""
    from wmh.tracking import content_hash, project_root

    root = project_root()
    if recipe is None:
        if not config_name or root is None:
            return {}
        recipe = root / "experiments" / f"{config_name}.yaml"
        if not recipe.is_file():
            return {}
    recipe = Path(recipe)
    if not recipe.is_file():
        raise WMHError(f"--recipe {recipe}: file not found")
    shown = recipe.resolve()
    if root is not None and shown.is_relative_to(root):
        shown = shown.relative_to(root)
    return {"path": str(shown), "sha256": content_hash(recipe)}


# --------------------------------------------------------------------------- figures

def read_figures(spec: str) -> tuple[str, dict]:
    """``KIND=FILE`` (or a FILE whose JSON says ``"data"``) -> (kind, figures block).

    Raises:
        WMHError: a missing file, no JSON object in it, or an unknown kind.
    """
    kind, separator, text = spec.partition("=")
    if not separator or kind not in FIGURE_KINDS:
        kind, text = "", spec
    path = Path(text)
    if not path.is_file():
        raise WMHError(f"--figures {path}: file not found")
    found = _json_object(path.read_text(errors="replace"))
    if found is None:
        raise WMHError(f"--figures {path}: holds no JSON object (give the output of "
                       "benchmarks/bench_real.py or `wmh evaluate --json`)")
    kind = kind or str(found.get("data", ""))
    if kind not in FIGURE_KINDS:
        raise WMHError(f"--figures {spec}: say what the figures were measured on: "
                       f"{' or '.join(k + '=FILE' for k in FIGURE_KINDS)}")
    return kind, figures_block(found, path.name)


def _json_object(text: str) -> Optional[dict]:
    """The whole text as a JSON object, else its last line that is one."""
    candidates = [text, *reversed(text.strip().splitlines())]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _mean(rows: list[dict], key: str):
    values = [_finite(row.get(key)) for row in rows]
    if not rows or any(not isinstance(value, (int, float)) for value in values):
        return None
    return float(sum(values) / len(values))


METRIC_KEYS = (("mean_hd95_mm", "hd95"), ("mean_avd_percent", "avd"),
               ("mean_lesion_recall", "lesion_recall"), ("mean_lesion_f1", "lesion_f1"))


def figures_block(found: dict, source: str) -> dict:
    """The card's figures from bench_real.py's JSON or ``wmh evaluate --json``; what the
    JSON does not give is absent (the card writes it "not measured")."""
    summary = found.get("summary")
    if isinstance(summary, dict) and isinstance(summary.get("mean"), dict):  # wmh evaluate
        means = summary["mean"]
        block = {"mean_dice": means.get("dice"), "cases": summary.get("num_cases"),
                 **{key: means.get(metric) for key, metric in METRIC_KEYS}}
        cases = [{"subject_id": case.get("id"), "dice": case.get("dice"),
                  "truth_volume_ml": case.get("truth_volume_ml"),
                  "predicted_volume_ml": case.get("predicted_volume_ml")}
                 for case in found.get("cases", [])]
    else:  # benchmarks/bench_real.py
        rows = found.get("rows") or []
        ok = [row for row in rows if row.get("status") == "ok"]
        block = {key: found.get(key) for key in ("mean_dice", "cases", "failed",
                                                  "seconds_per_case", "mean_floor_dice")}
        block.update({key: _mean(ok, metric) for key, metric in METRIC_KEYS})
        cases = [{key: row.get(key) for key in ("subject_id", "dice", "floor_dice",
                                                "truth_volume_ml", "predicted_volume_ml")}
                 for row in rows]
    block = {key: _finite(value) for key, value in block.items() if value is not None}
    block["per_case"] = [{key: _finite(value) for key, value in case.items()}
                         for case in cases]
    block["source"] = source
    return block


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmh.pretrained.export",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder, its model.keras, or runs:/ models:/ URI")
    parser.add_argument("--name", required=True, help="shipped name, e.g. flair")
    parser.add_argument("--figures", action="append", default=[], metavar="KIND=FILE",
                        help="measured figures: real=FILE or synthetic=FILE (repeatable)")
    parser.add_argument("--version", default=None, help="default: the UTC date YYYY.MM.DD")
    parser.add_argument("--recipe", default=None,
                        help="experiment YAML (default: experiments/<config name>.yaml)")
    parser.add_argument("--run-id", default=None, help="the MLflow run that trained it")
    parser.add_argument("--float16", action="store_true",
                        help="store float16 weights even below the size limit")
    args = parser.parse_args(argv)
    try:
        final = export(args.model, args.name, args.figures, version=args.version,
                       recipe=args.recipe, run_id=args.run_id, float16=args.float16)
    except WMHError as error:
        print(f"wmh.pretrained.export: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. a read-only installation: one line too
        print(f"wmh.pretrained.export: error: {error.filename or 'output'}: "
              f"{error.strerror}", file=sys.stderr)
        return 2
    print(f"shipped {PREFIX}:{args.name} in {final} (card: {final / CARD_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
