"""MLflow conventions every run shares: where runs go and what each one records.

Where runs go never depends on the working directory. The tracking store is, first
found:

1. ``MLFLOW_TRACKING_URI`` when set (e.g. an ``http://127.0.0.1:5000`` tracking server
   backed by PostgreSQL);
2. ``sqlite:///$WMH_HOME/mlflow.db`` when ``WMH_HOME`` (a folder) is set;
3. ``mlflow.db`` in the project root when wmh runs from a source checkout (the folder
   holding ``MLproject`` beside the ``wmh`` package);
4. ``~/.wmh/mlflow.db`` otherwise.

Cases 2-4 are :func:`wmh_home`. Artifacts of the experiments wmh creates in a SQLite
store go to ``mlruns/`` beside the database file. Looking a run up never creates a store: a missing SQLite file is an
error (:func:`require_store`).

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

TRACKING_FILE = "mlflow.db"  # the SQLite store in wmh_home()
ARTIFACTS_FOLDER = "mlruns"  # artifacts of experiments created in that store
LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "optuna", "numpy", "scipy",
             "h5py", "nibabel", "SimpleITK", "nilearn", "scikit-learn", "scikit-image", "skops")


def project_root() -> Path | None:
    """The source checkout wmh runs from (MLproject beside the wmh package), or None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "MLproject").is_file() else None


def wmh_home() -> Path:
    """Where the default tracking store lives: ``WMH_HOME``, else the project root of a
    source checkout, else ``~/.wmh`` (absolute in every case)."""
    home = os.environ.get("WMH_HOME", "").strip()
    if home:
        return Path(home).expanduser().resolve()
    return project_root() or Path.home() / ".wmh"


def anchored(path: str | Path) -> Path:
    """A relative path taken from :func:`wmh_home` (absolute paths are kept)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else wmh_home() / path


def default_tracking_uri() -> str:
    """The SQLite store in :func:`wmh_home`."""
    return f"sqlite:///{wmh_home() / TRACKING_FILE}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else :func:`default_tracking_uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def tracking_source() -> str:
    """Why :func:`tracking_uri` is what it is, in a few words."""
    if tracking_uri() != default_tracking_uri():
        return "MLFLOW_TRACKING_URI"
    return ("WMH_HOME" if os.environ.get("WMH_HOME", "").strip() else
            "the project root" if project_root() else "~/.wmh, no WMH_HOME set")


def describe_tracking() -> str:
    """One line for help texts: the store in use and why."""
    return f"{tracking_uri()} ({tracking_source()})"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def require_store(what: str) -> str:
    """The tracking URI for a lookup, after checking its SQLite file exists (MLflow would
    create an empty one and then report the run missing).

    Raises:
        WMHError: ``what`` (e.g. "--model runs:/<id>/model") and the missing store.
    """
    from wmh.errors import WMHError

    uri = tracking_uri()
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise WMHError(f"{what}: no MLflow store at {database} (from {tracking_source()}; "
                       "set MLFLOW_TRACKING_URI or WMH_HOME to the store that holds the run)")
    return uri


def configure_mlflow(experiment: str):
    """Points MLflow at :func:`tracking_uri` and selects ``experiment``; returns mlflow.

    Under ``mlflow run`` (``MLFLOW_RUN_ID`` set) the run already exists in the experiment
    chosen on that command line, so ``experiment`` is not selected: the next
    ``mlflow.start_run()`` continues that run.
    """
    import mlflow

    uri = tracking_uri()
    database = sqlite_file(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow
    if database is not None:  # artifacts beside the database, not in ./mlruns
        _create_experiment(mlflow, experiment, database.resolve().parent / ARTIFACTS_FOLDER)
    mlflow.set_experiment(experiment)
    # When two processes create the experiment at once, the loser's set_experiment can
    # return without activating it (its runs would land in "Default"): set it again.
    mlflow.set_experiment(experiment)
    return mlflow


def _create_experiment(mlflow, name: str, artifacts: Path) -> None:
    """Creates ``name`` with its artifacts under ``artifacts`` (not ./mlruns of the
    working directory) unless it exists; a concurrent creator winning is fine."""
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(name) is not None:
        return
    try:
        client.create_experiment(name, artifact_location=artifacts.as_uri())
    except mlflow.exceptions.MlflowException:
        if client.get_experiment_by_name(name) is None:
            raise


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


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes alone (not its name), 16 hex digits: the same data under
    another name (a model folder's copy of a prior) hashes the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# The wmh modules whose source produces each cached stage: a stage's key hashes them (and the
# key of the stage before it), so a code change invalidates exactly the stages it touches.
STAGE_CODE = {
    "prepare": ("wmh.preprocess", "wmh.location", "wmh.io"),
    "prior": ("wmh.prior", "wmh.location", "wmh.splits"),  # split + prior view
    "sample": ("wmh.splits", "wmh.sampling"),
    "train": ("wmh.lifecycle", "wmh.train", "wmh.models", "wmh.patches", "wmh.data",
              "wmh.baseline", "wmh.finetune", "wmh.calibration", "wmh.evaluation.metrics",
              "wmh.contract", "wmh.threshold", "wmh.loader"),
    # the test segmentation and the MethodResult that result.json keeps (tables, figures
    # and MLflow I/O do not change it)
    "evaluate": ("wmh.segment", "wmh.evaluation.metrics", "wmh.evaluation.cases",
                 "wmh.evaluation.results", "wmh.evaluation.paper", "wmh.pipeline"),
}


def source_files(module: str) -> list[Path]:
    """The source files of a wmh module: its file, or every ``.py`` file of a package."""
    import importlib.util

    spec = importlib.util.find_spec(module)  # finds the files without importing the module
    if spec is None or spec.origin is None:
        raise ValueError(f"no source for module {module}")
    if spec.submodule_search_locations:
        return sorted(path for folder in spec.submodule_search_locations
                      for path in Path(folder).rglob("*.py"))
    return [Path(spec.origin)]


def code_hash(*modules: str) -> str:
    """Hash of the source files of ``modules`` (dotted names; packages over their ``.py``
    files), 16 hex digits: what cache and run keys hold instead of ``__version__``."""
    files = [path for module in modules for path in source_files(module)]
    return hash_files(files, extra="|".join(modules))


def stage_code_hash(stage: str) -> str:
    """:func:`code_hash` of the modules of one stage of :data:`STAGE_CODE`."""
    return code_hash(*STAGE_CODE[stage])


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


SYSTEM_METRICS_INTERVAL_S = 2.0  # short runs still get samples; MLflow's default is 10 s



def system_metrics() -> bool:
    """Whether training runs log CPU and memory (``system/*`` metrics) and, if so, sets
    MLflow's sampling interval to :data:`SYSTEM_METRICS_INTERVAL_S`. On by default;
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off, and
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` sets another interval."""
    import mlflow

    setting = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
    if setting in ("false", "0", "no"):
        return False
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    return True


def synthetic_cohort(prepared_dir: str | Path) -> dict:
    """The arguments of the synthetic cohort a prepared folder came from (its
    ``cohort.json``: ``subjects``, ``seed``, ``profile``, ``synth_version``, ...), or {}
    for real data or a prepared folder that does not record its origin."""
    import json

    try:
        origin = json.loads((Path(prepared_dir) / "origin.json").read_text())
        cohort = json.loads((Path(origin["cohort"]) / "cohort.json").read_text())
        return {**cohort.get("arguments", {}), "synth_version": int(cohort["synth_version"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


SYNTH_TAGS = ("synth_version", "seed", "subjects", "profile")  # tagged as synth_<name>
