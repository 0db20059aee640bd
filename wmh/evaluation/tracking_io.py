"""MLflow input and output of evaluation results and reports.

Job: store a :class:`wmh.evaluation.results.MethodResult` in a run
(:func:`log_method_result`), read one back (:func:`method_result_from_mlflow`, falling
back to a training run's metrics), and log a written report folder as artifacts.
MLflow is imported only inside these functions.
Must not: compute metrics, format tables or draw.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

from wmh.errors import WMHError
from wmh.evaluation.paper import method_name
from wmh.evaluation.results import MethodResult

METHOD_RESULT_ARTIFACT = "evaluation/method_result.json"
REPORT_EXPERIMENT = "wmh-reports"  # MLflow experiment of reports made outside a run

_RUN_METRIC_NAMES = {  # what a training run may have logged, first match wins
    # the paper's validation Az counts whole-volume voxels inside the brain
    "validation_az": ("validation_az", "val_volume_auc", "best_val_auc", "val_auc"),
    "threshold": ("threshold", "best_threshold", "validation_threshold"),
    "dice_obs1": ("test_dice_obs1", "test_dice"),
    "dice_obs2": ("test_dice_obs2",),
    "test_az": ("test_az", "test_auc"),
    "training_size": ("training_size", "train_subjects", "num_training_images"),
}


def _run_method_name(run) -> str:
    """The paper's name of a training run's model from its params, else the run name."""
    arch = run.data.params.get("model.arch")
    if arch is None:
        return run.info.run_name or run.info.run_id
    return method_name(arch, run.data.params.get("model.loc"))


def log_method_result(result: MethodResult, run_id: Optional[str] = None) -> None:
    """Stores a result in an MLflow run (the active one when ``run_id`` is None).

    Writes the artifact ``evaluation/method_result.json`` (per-case counts and the
    threshold curve) and the metrics ``test_dice_obs1``/``test_dice_obs2``/``test_az``.
    """
    import mlflow

    values = {"test_dice_obs1": result.dice(1), "test_dice_obs2": result.dice(2),
              "test_az": result.test_az()}
    values = {key: value for key, value in values.items() if not math.isnan(value)}
    text = json.dumps(result.to_dict())
    if run_id is None:
        if mlflow.active_run() is None:
            raise WMHError("log_method_result: no active MLflow run and no run id given")
        mlflow.log_text(text, METHOD_RESULT_ARTIFACT)
        mlflow.log_metrics(values)
        return
    client = mlflow.MlflowClient()
    client.log_text(run_id, text, METHOD_RESULT_ARTIFACT)
    for key, value in values.items():
        client.log_metric(run_id, key, value)


def method_result_from_mlflow(run_id: str, name: Optional[str] = None) -> MethodResult:
    """A method's results from an MLflow run (tracking URI from :mod:`wmh.tracking`).

    Uses the run's ``evaluation/method_result.json`` when present (full tables and
    figures); otherwise the run's metrics (a summary-only row: no p-values, no curves).

    Args:
        run_id: the MLflow run.
        name: display name; default the stored name, else the paper's name of the
            run's ``model.arch``/``model.loc`` params ("MSWS + Loc"), else the run name.

    Raises:
        WMHError: unknown run.
    """
    import tempfile

    import mlflow

    from wmh.tracking import require_store

    client = mlflow.MlflowClient(tracking_uri=require_store(f"--run {run_id}"))
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise WMHError(f"--run {run_id}: no such MLflow run "
                       f"({str(error).splitlines()[0]})") from None
    text = None
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run_id, METHOD_RESULT_ARTIFACT, folder)
            text = Path(local).read_text()
        except (mlflow.exceptions.MlflowException, OSError):
            text = None  # no stored evaluation: fall back to the run's metrics
    if text is not None:
        result = MethodResult.from_dict(json.loads(text))
    else:
        found = {}
        for field, candidates in _RUN_METRIC_NAMES.items():
            for candidate in candidates:
                value = run.data.metrics.get(candidate, run.data.params.get(candidate))
                if value is not None:
                    found[field] = float(value)
                    break
        result = MethodResult(
            name=_run_method_name(run), threshold=found.get("threshold"),
            validation_az=found.get("validation_az"),
            training_size=(int(found["training_size"]) if "training_size" in found else None),
            reported={key: found[key] for key in ("dice_obs1", "dice_obs2", "test_az")
                      if key in found})
    for field in ("validation_az", "threshold"):  # training logs them, evaluation not
        if getattr(result, field) is None:
            for candidate in _RUN_METRIC_NAMES[field]:
                if candidate in run.data.metrics:
                    setattr(result, field, float(run.data.metrics[candidate]))
                    break
    result.source = f"mlflow run {run_id}"
    if name is not None:
        result.name = name
    return result


def _mlflow_run_is_active() -> bool:
    """True when MLflow is already imported and a run is active (never imports it)."""
    mlflow = sys.modules.get("mlflow")
    return mlflow is not None and mlflow.active_run() is not None


def log_report(output_dir: Path, data_label: str, log_to_mlflow: Optional[bool]) -> None:
    """Logs a written report folder as artifacts under ``report/``: to the active MLflow
    run unless ``log_to_mlflow`` is False; with no active run, to a new run in the
    :data:`REPORT_EXPERIMENT` experiment only when ``log_to_mlflow`` is True."""
    if _mlflow_run_is_active() and log_to_mlflow is not False:
        sys.modules["mlflow"].log_artifacts(str(output_dir), artifact_path="report")
    elif log_to_mlflow:
        from wmh.tracking import configure_mlflow

        mlflow = configure_mlflow(REPORT_EXPERIMENT)
        with mlflow.start_run(run_name=f"report ({data_label})"):
            mlflow.set_tag("data_label", data_label)
            mlflow.log_artifacts(str(output_dir), artifact_path="report")
