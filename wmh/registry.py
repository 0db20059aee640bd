"""Trained models the MLflow 3 way: logged models, the model registry, and ``--model`` URIs.

Every trained model (CNN or random forest) is logged as an MLflow *logged model* named
``model`` in its run: a pyfunc whose artifacts are the suite's model folder
(``model.keras`` or ``forest.skops``, plus the ``wmh_model.json`` contract). Why a pyfunc
wrapping the folder and not the Keras flavour: one format serves both architectures (the
forest has no safe MLflow flavour: the sklearn flavour pickles), the contract travels
with the weights, and wmh itself never runs MLflow's loader: :func:`model_folder`
downloads the artifacts and the suite's loader reads them (Keras ``safe_mode``, skops
allow-list; nothing is unpickled). The pyfunc is logged *from code*
(``wmh/mlflow_model.py``), so ``mlflow.pyfunc.load_model`` unpickles nothing either; its
``predict`` takes patches ``{s1, s2, s3, loc}`` (CNN) or feature rows (forest) and
returns P(WMH), as the logged signature and input example show. The final metrics of a
run are linked to its logged model.

Registry rule (:func:`register`): a registered version always gets the alias ``newest``
(MLflow reserves the alias ``latest``; ``models:/NAME/latest`` means the same version);
it also gets ``best`` when the model has no ``best`` yet, or when its run's validation
Dice (``val_volume_dice``, whole validation volumes at the model's threshold) beats the
``best`` version's on the same data (the same ``dataset_hash`` tag). Otherwise ``best``
stays where it is: runs on other data are not comparable.

``--model`` takes a folder, ``runs:/<run id>/model``, ``models:/<model id>`` or
``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``), or a shipped model
``pretrained[:<name>]``; see :func:`model_folder`.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np

from wmh.errors import WMHError

LOGGED_MODEL_NAME = "model"  # the logged model's name in its run: runs:/<run id>/model
URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
ARTIFACTS_FOLDER = "artifacts"  # where a pyfunc keeps its artifacts, beside MLmodel
BEST_METRIC = "val_volume_dice"  # what the `best` alias compares (higher is better)
NEWEST_ALIAS = "newest"  # MLflow reserves "latest" (models:/NAME/latest: highest version)
BEST_ALIAS = "best"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ENTRY_FILE = Path(__file__).with_name("mlflow_model.py")  # the pyfunc, logged from code
REQUIREMENTS = ("tensorflow-cpu", "keras", "numpy", "scikit-learn", "skops", "mlflow")


class SuiteModel:
    """The pyfunc's behaviour (wrapped by ``wmh/mlflow_model.py``, which loads the model
    folder from the artifacts with the suite's safe loader, :mod:`wmh.loader`): predict
    P(WMH)."""

    def __init__(self, model, contract):
        self.model = model
        self.contract = contract

    def predict(self, model_input) -> np.ndarray:
        """Patches ``{"s1", "s2", "s3": (N, 32, 32, C), "loc": (N, 8)}`` (CNN) or (N, F)
        feature rows (forest) -> (N,) float32 P(WMH), calibrated as the contract says (so
        it matches the contract's threshold)."""
        if self.contract.model.arch == "rf":
            probability = self.model.predict_features(np.asarray(model_input, np.float32))
        else:
            inputs = {key: np.asarray(model_input[key], np.float32)
                      for key in ("s1", "s2", "s3", "loc")}
            probability = np.asarray(self.model(inputs, training=False), np.float32)[:, 1]
        return self.contract.calibrator().apply(probability)


def validate_name(name: str, option: str = "--register") -> str:
    """A registered-model name: letters, digits, '.', '_', '-' (no '/', '@' or ':', which
    ``models:/`` URIs use)."""
    if not NAME_PATTERN.match(name):
        raise WMHError(f"{option} {name!r}: a model name is 1-100 letters, digits, '.', '_' "
                       "or '-', starting with a letter or digit")
    return name


def network_example(dataset, rows: int = 2) -> dict[str, np.ndarray]:
    """The first ``rows`` samples of a patch dataset's first batch, as numpy arrays."""
    inputs, _ = next(iter(dataset))
    return {key: np.asarray(value)[:rows].astype(np.float32) for key, value in inputs.items()}


def log_model(model_dir: Path, loaded: tuple, input_example, metrics: dict[str, float],
              dataset=None) -> str:
    """Logs ``model_dir`` as the active run's logged model ``model`` and the run's final
    ``metrics``, linked to it (and to ``dataset``, the validation data); returns the
    model id (``models:/<model id>``).

    Args:
        model_dir: the suite's model folder (weights + ``wmh_model.json``).
        loaded: (model, contract) as read back from ``model_dir`` by the architecture's
            loader (what the pyfunc will load; its predictions make the signature).
        input_example: patches (dict of arrays) or feature rows (DataFrame).
        metrics: final metrics (NaN values are skipped).
        dataset: the MLflow dataset the metrics were measured on, or None.
    """
    import mlflow

    from wmh.tracking import library_versions

    suite = SuiteModel(*loaded)
    contract = suite.contract
    versions = library_versions()
    requirements = [f"{name}=={versions[name]}" for name in REQUIREMENTS if name in versions]
    with warnings.catch_warnings():
        # MLflow suggests type hints on predict; dicts of arrays and feature frames have
        # none it supports, and the signature is given explicitly.
        warnings.filterwarnings("ignore", message=".*type hint")
        signature = mlflow.models.infer_signature(input_example,
                                                  suite.predict(input_example))
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME, python_model=str(ENTRY_FILE),
            artifacts={path.name: str(path) for path in sorted(model_dir.iterdir())
                       if path.is_file()},
            signature=signature, input_example=input_example, pip_requirements=requirements,
            metadata={"wmh_version": contract.wmh_version, "arch": contract.model.arch,
                      "threshold": contract.threshold, "channels": list(contract.channels)})
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()
                        if not (isinstance(value, float) and math.isnan(value))},
                       model_id=info.model_id, dataset=dataset)
    return info.model_id


def run_model_id(run_id: str) -> str:
    """The id of the logged model ``model`` of a run."""
    import mlflow

    run = mlflow.get_run(run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list",
        filter_string=f"name = '{LOGGED_MODEL_NAME}' AND source_run_id = '{run_id}'")
    if not models:
        raise WMHError(f"run {run_id}: no logged model '{LOGGED_MODEL_NAME}' to register "
                       "(a run from before logged models; train it again)")
    return models[0].model_id


def register(run_id: str, name: str) -> dict:
    """Registers the logged model of ``run_id`` as a new version of ``name`` and sets its
    aliases by the rule in the module docstring.

    Returns:
        ``{"name", "version", "aliases", "model_uri"}`` (``model_uri``:
        ``models:/NAME@newest``).
    """
    import mlflow

    validate_name(name)
    client = mlflow.MlflowClient()
    model_id = run_model_id(run_id)
    try:
        version = mlflow.register_model(f"models:/{model_id}", name)
    except mlflow.exceptions.MlflowException as error:
        raise WMHError(f"--register {name}: {str(error).splitlines()[0]}") from None
    aliases = [NEWEST_ALIAS]
    if _beats_best(client, name, run_id):
        aliases.append(BEST_ALIAS)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": int(version.version), "aliases": aliases,
            "model_uri": f"models:/{name}@{NEWEST_ALIAS}"}


def _beats_best(client, name: str, run_id: str) -> bool:
    """Whether ``run_id`` should take the ``best`` alias of ``name`` (module docstring)."""
    try:
        best = client.get_model_version_by_alias(name, BEST_ALIAS)
    except Exception:  # no `best` yet (MLflow raises for a missing alias)
        return True
    new, old = client.get_run(run_id).data, client.get_run(best.run_id).data
    if new.tags.get("dataset_hash") != old.tags.get("dataset_hash"):
        return False
    new_score = new.metrics.get(BEST_METRIC, math.nan)
    old_score = old.metrics.get(BEST_METRIC, math.nan)
    return math.isnan(old_score) or (not math.isnan(new_score) and new_score > old_score)


def format_registration(registered: dict) -> str:
    """One line: what was registered and how to use it."""
    return (f"registered {registered['name']} version {registered['version']} (aliases "
            f"{', '.join(registered['aliases'])}): --model models:/{registered['name']}@"
            f"{registered['aliases'][-1]}")


WEIGHTS_SUFFIXES = (".keras", ".skops")  # a weights file given for its model folder


def model_folder(source: str | Path, option: str = "--model") -> Path:
    """The local model folder (weights + ``wmh_model.json``) behind ``source``.

    A folder is returned as given, a weights file (``model.keras``, ``forest.skops``) as
    its folder, ``pretrained[:<name>]`` as the shipped model's folder (its files checked
    against their SHA-256: :mod:`wmh.pretrained`). A URI (``runs:/``, ``models:/<model id>``,
    ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``mlflow-artifacts:/``) is downloaded
    from the tracking store; a logged model's folder is its ``artifacts/``.

    Raises:
        WMHError: a missing store (none is created), an unknown run, model, name, alias or
            version, or a logged model that is not a wmh model; one line naming ``option``.
    """
    from wmh import pretrained

    text = str(source)
    if pretrained.is_pretrained(text):  # a model shipped inside the package, verified
        return pretrained.find(text, option).folder
    if not text.startswith(URI_SCHEMES):
        return _folder_of(Path(source))
    import mlflow

    from wmh.tracking import require_store

    uri = require_store(f"{option} {text}")  # creates no store
    mlflow.set_tracking_uri(uri)  # the registry follows the tracking store
    try:
        local = Path(mlflow.artifacts.download_artifacts(text))
    except Exception as error:  # mlflow raises several types for a bad URI
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise WMHError(f"{option} {text}: cannot download ({lines[0]})") from None
    if (local / "MLmodel").is_file():
        from wmh.contract import CONTRACT_FILE

        if not (local / ARTIFACTS_FOLDER / CONTRACT_FILE).is_file():
            raise WMHError(f"{option} {text}: not a wmh model (its artifacts hold no "
                           f"{CONTRACT_FILE})")
        return local / ARTIFACTS_FOLDER
    return _folder_of(local)  # e.g. runs:/<id>/model/model.keras downloads the file


def _folder_of(path: Path) -> Path:
    """``path``, or its folder when it is a weights file."""
    return path.parent if path.is_file() and path.name.endswith(WEIGHTS_SUFFIXES) else path


def registered_versions(name: str) -> list[dict]:
    """Versions of a registered model, newest first: version, run id, aliases and source
    (``models:/<model id>``: the logged model registered)."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"name = '{name}'")
    # a search leaves aliases and model ids out: each version is read in full
    versions = [client.get_model_version(name, str(v.version)) for v in found]
    return sorted(({"version": int(v.version), "run_id": v.run_id, "aliases": sorted(v.aliases),
                    "source": v.source} for v in versions), key=lambda row: -row["version"])


def best_run(run_ids: list[str]) -> str:
    """The run with the highest validation Dice (:data:`BEST_METRIC`; the test subjects
    are for reporting, not for choosing), the first on ties or when none has it."""
    import mlflow

    client = mlflow.MlflowClient()
    scores = [client.get_run(run_id).data.metrics.get(BEST_METRIC, -math.inf)
              for run_id in run_ids]
    scores = [-math.inf if math.isnan(score) else score for score in scores]
    return run_ids[scores.index(max(scores))]
