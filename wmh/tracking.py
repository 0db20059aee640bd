"""MLflow conventions every run shares: where runs go and what each one records.

Tracking defaults to ``sqlite:///mlflow.db`` in the working directory (the project root
when run through ``make`` or ``mlflow run``); ``MLFLOW_TRACKING_URI`` overrides it, e.g.
an ``http://127.0.0.1:5000`` tracking server backed by PostgreSQL.

Every run records its resolved config (``config.yaml`` artifact and flattened params),
the dataset hash, the git commit and the library versions, through :func:`log_context`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable

from wmh import __version__
from wmh.config import dump_yaml, to_dict

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "optuna", "numpy", "scipy",
             "h5py", "nibabel", "SimpleITK", "nilearn", "scikit-learn", "scikit-image", "skops")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure_mlflow(experiment: str):
    """Points MLflow at :func:`tracking_uri` and selects ``experiment``; returns mlflow.

    Under ``mlflow run`` (``MLFLOW_RUN_ID`` set) the run already exists in the experiment
    chosen on that command line, so ``experiment`` is not selected: the next
    ``mlflow.start_run()`` continues that run.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow
    mlflow.set_experiment(experiment)
    # When two processes create the experiment at once, the loser's set_experiment can
    # return without activating it (its runs would land in "Default"): set it again.
    mlflow.set_experiment(experiment)
    return mlflow


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on (without importing them)."""
    versions = {"python": platform.python_version(), "wmh": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(path: str | Path | None = None) -> str:
    """The commit of the wmh checkout (``-dirty`` when tracked files differ), or 'unknown'."""
    path = Path(__file__).resolve().parent if path is None else path
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=path, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


def hash_files(paths: Iterable[str | Path], extra: str = "") -> str:
    """SHA-256 over the files' bytes (in the given order) and an extra string; 16 hex digits."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(str(Path(path).name).encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'alpha': 1}} -> {'model.alpha': 1}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_context(config: Any, dataset_hash: str | None = None) -> None:
    """Records the resolved config, dataset hash, git commit and library versions
    in the active MLflow run."""
    import mlflow

    mlflow.log_params({k: ("" if v is None else v) for k, v in flatten(to_dict(config)).items()})
    mlflow.log_text(dump_yaml(config), "config.yaml")
    tags = {"git_commit": git_commit(), "wmh_version": __version__}
    tags.update({f"version.{name}": version for name, version in library_versions().items()})
    if dataset_hash is not None:
        tags["dataset_hash"] = dataset_hash
    mlflow.set_tags(tags)
