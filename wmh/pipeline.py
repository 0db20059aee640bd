"""The stages in sequence, each cached: cohort -> prepared -> prior -> samples -> model ->
results.

``wmh train``, ``mlflow run .``, ``wmh demo`` and ``wmh reproduce`` all start here so that
they do the same thing. Each stage is keyed by a hash of its inputs and config, so a rerun
reuses what is up to date and an interrupted run resumes at the stage it stopped in.

The prior stage (:func:`ensure_prior`) comes after the split: location feature 8 is
recomputed for every subject with the WMH prior of the training split's labels only
(``preprocess.prior: training``), and the model trained on it carries that prior.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

from wmh import io
from wmh.config import ExperimentConfig, dump_yaml
from wmh.errors import WMHError
from wmh.lifecycle import RunOptions, train_run

DEFAULT_COHORT = "data_cache/synth/default"  # data.root placeholder: the synthetic default
DEMO_MODEL_NAME = "wmh-demo"  # the registered model `wmh demo` adds a version to


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def synthetic_root(config: ExperimentConfig) -> Path:
    """Where the synthetic cohort described by ``config.synth`` lives in the cache."""
    from wmh.synth.cohort import synth_version

    synth = config.synth
    # the profile's own generator version: a randomised cohort of a new version gets a new
    # folder instead of meeting the old one (which check_arguments refuses)
    key = _key(dump_yaml(synth), f"synth_version={synth_version(synth.profile)}")
    return (Path(config.data.cache_dir) / "synth"
            / f"{synth.profile}-n{synth.subjects}-seed{synth.seed}-{key}")


def ensure_cohort(config: ExperimentConfig) -> tuple[Path, bool]:
    """The cohort folder, synthesising it when ``data.root`` is the synthetic default.

    Returns:
        (cohort path, whether the cohort is synthetic).
    """
    if config.data.root in (DEFAULT_COHORT, "synthetic"):
        from wmh import synth

        root = synthetic_root(config)
        synth.synthesize_cohort(root, config.synth, workers=config.preprocess.workers)
        return root, True
    root = Path(config.data.root)
    if not root.exists():
        raise WMHError(f"data.root {root}: no such file or folder")
    return root, (root / "cohort.json").exists()


def ensure_prepared(config: ExperimentConfig, cohort: Path) -> Path:
    """Prepared subjects of ``cohort`` under ``<cache>/prepared/<key>``. Subjects that fail
    are listed with their reason on stderr and left out, as are the warnings of those
    prepared; raises when all fail."""
    from wmh import preprocess

    # preprocess.prior is the prior stage's choice: the prepared files do not depend on it
    preprocess_config = dataclasses.replace(config.preprocess, prior="training")
    key = _key(str(cohort.resolve()), dump_yaml(preprocess_config), str(config.data.use_t1))
    out = Path(config.data.cache_dir) / "prepared" / f"{cohort.name}-{key}"
    report = preprocess.prepare_cohort(cohort, out, config.preprocess,
                                       use_t1=config.data.use_t1,
                                       workers=config.preprocess.workers)
    if report.failed or any(report.warnings.values()):
        # The other subjects go on (as in `wmh prepare`); failures and warnings are
        # reported (every subject's row: <out>/prepare_summary.csv).
        print(report.summary(), file=sys.stderr)
        if not report.prepared and not report.skipped:
            subject_id, reason = next(iter(sorted(report.failed.items())))
            raise WMHError(f"{cohort}: every subject failed preparation, first {subject_id}: "
                           f"{reason}")
    return out


def ensure_samples(config: ExperimentConfig, prepared: Path) -> Path:
    """Balanced samples and splits of the prepared cohort, under ``<cache>/samples/``."""
    from wmh import sampling

    # build_samples keys its own folder by the prepared cohort and the sampling config.
    return sampling.build_samples(prepared, Path(config.data.cache_dir) / "samples",
                                  config.sampling)


def prior_mode(config: ExperimentConfig) -> str:
    """Where location feature 8's prior comes from: "path" (``preprocess.prior_path``,
    set: it wins), "shipped" (the synthetic prior in wmh/data) or "training" (built from
    the training split by :func:`ensure_prior`)."""
    if config.preprocess.prior_path:
        return "path"
    return config.preprocess.prior


@dataclasses.dataclass(frozen=True)
class PriorStage:
    """What :func:`ensure_prior` gave.

    Attributes:
        prepared: the prepared folder to sample, train and segment on: the prior view
            (feature 8 from the training split's prior), else the prepared folder itself.
        prior: the training split's prior file, or None (the config's prior is used).
        mode: :func:`prior_mode`, "shipped" too after a fallback.
        warning: why the training split's prior fell back to the shipped one, or "".
    """

    prepared: Path
    prior: Optional[Path]
    mode: str
    warning: str = ""


def ensure_prior(config: ExperimentConfig, cohort: Path, prepared: Path) -> PriorStage:
    """The prior stage: with ``preprocess.prior: training`` (and no ``prior_path``), the
    WMH prior of the training split's labels only and the prepared subjects' view with
    feature 8 recomputed from it (:mod:`wmh.prior`), under
    ``<cache>/prior/<prepared folder>-<key>``. The key hashes the prepared cohort, the
    training split's subject ids, the preprocessing config (``prior_smoothing_mm`` too:
    the prepared subjects' keys leave it out) and the stage's code
    (:data:`wmh.tracking.STAGE_CODE`), so another split builds another prior. Too few
    training lesions fall back to the shipped prior, with a warning (stderr, and the
    run's ``prior_warning`` tag)."""
    from wmh import preprocess, splits
    from wmh import prior as prior_stage
    from wmh.tracking import stage_code_hash

    mode = prior_mode(config)
    if mode != "training":
        return PriorStage(prepared, None, mode)
    use_t1 = config.data.use_t1
    records = splits.read_prepared_cohort(prepared)
    train_ids = splits.make_splits(records, config.sampling)["train"]
    key = _key(splits.cohort_hash(prepared, records), json.dumps(sorted(train_ids)),
               preprocess.config_hash(config.preprocess, use_t1), stage_code_hash("prior"),
               f"smoothing {config.preprocess.prior_smoothing_mm}")
    out = Path(config.data.cache_dir) / "prior" / f"{Path(prepared).name}-{key}"
    info = prior_stage.read_info(out)
    if info is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        info = prior_stage.write_prior_view(prepared, out, train_ids, config.preprocess,
                                            use_t1, _keys_with_prior(config, cohort, records))
    if info.get("fallback"):
        print(f"warning: {info['fallback']}", file=sys.stderr)
        return PriorStage(prepared, None, "shipped", info["fallback"])
    return PriorStage(out, out / prior_stage.PRIOR_FILE, "training")


def _keys_with_prior(config: ExperimentConfig, cohort: Path, records):
    """(subject id, config with the new prior) -> the subject's cache key prepared that
    way, for the subjects of ``cohort`` whose prepared file is up to date; None for the
    others (their view keys are derived: ``wmh segment`` then prepares them again)."""
    from wmh import preprocess

    stored = {record.subject_id: record.cache_key for record in records}
    use_t1 = config.data.use_t1
    try:
        subjects = ({} if is_prepared_dir(Path(cohort)) else
                    {s.subject_id: s for s in io.discover(cohort)})
    except WMHError:  # the cohort moved or is gone
        subjects = {}

    def key(subject_id: str, with_prior) -> Optional[str]:
        subject = subjects.get(subject_id)
        if subject is None or preprocess.cache_key(subject, config.preprocess, use_t1) \
                != stored.get(subject_id):
            return None
        return preprocess.cache_key(subject, with_prior, use_t1)

    return key


@dataclasses.dataclass(frozen=True)
class DataStages:
    """The data stages' folders.

    Attributes:
        cohort: the cohort (a folder or CSV manifest).
        synthetic: whether it is synthetic.
        prepared: the prepared subjects to train and segment on (the prior view when the
            training split's prior is built).
        samples: the sample set.
        prior: the training split's prior file, or None.
        prior_mode: :func:`prior_mode`, "shipped" after a fallback.
        prior_warning: why the training prior fell back to the shipped one, or "".
    """

    cohort: Path
    synthetic: bool
    prepared: Path
    samples: Path
    prior: Optional[Path] = None
    prior_mode: str = ""
    prior_warning: str = ""


def with_prior(config: ExperimentConfig, stages: DataStages) -> ExperimentConfig:
    """``config`` with ``preprocess.prior_path`` the training split's prior of ``stages``
    (when built), so the model folder's plan and prior copy are the ones its features used."""
    if stages.prior is None:
        return config
    from wmh.config import replace

    return replace(config, **{"preprocess.prior_path": str(stages.prior)})


def is_prepared_dir(path: Path) -> bool:
    """A ``wmh prepare`` output folder (PreparedSubject ``.h5`` files), not a cohort."""
    return path.is_dir() and any(path.glob("*.h5"))


def ensure_data(config: ExperimentConfig) -> DataStages:
    """Runs (or reuses) every data stage for ``config``.

    ``data.root`` may also be a ``wmh prepare`` folder: preparation is then skipped (and
    the data counts as synthetic only when the folder records a synthetic origin).
    """
    root = Path(config.data.root)
    if is_prepared_dir(root):
        origin = _read_origin(root)
        cohort, synthetic, prepared = (Path(origin.get("cohort", root)),
                                       bool(origin.get("synthetic", False)), root)
    else:
        cohort, synthetic = ensure_cohort(config)
        prepared = ensure_prepared(config, cohort)
        io.atomic_write_text(prepared / ORIGIN_FILE, json.dumps(
            {"cohort": str(cohort.resolve()), "synthetic": synthetic}))
    prior = ensure_prior(config, cohort, prepared)
    samples = ensure_samples(config, prior.prepared)
    return DataStages(cohort, synthetic, prior.prepared, samples, prior.prior, prior.mode,
                      prior.warning)


ORIGIN_FILE = "origin.json"  # in a prepared folder: the cohort it came from, synthetic or not


def _read_origin(prepared: Path) -> dict:
    try:
        return json.loads((prepared / ORIGIN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def train_model(config: ExperimentConfig, stages: DataStages,
                options: RunOptions = RunOptions()):
    """Trains ``config.model`` on prepared data stages through the lifecycle
    (:func:`wmh.lifecycle.train_run`): a CNN, or the random forest baseline for
    ``model.arch == "rf"`` (:func:`wmh.loader.learner`); ``options.data_label`` comes from
    the stages. Returns a :class:`wmh.contract.TrainResult`."""
    from wmh.loader import learner

    options = dataclasses.replace(options,
                                  data_label="synthetic" if stages.synthetic else "real")
    config = with_prior(config, stages)
    result = train_run(learner(config), stages.samples, stages.prepared, options)
    record_prior(result.run_id, stages)
    return result


def record_prior(run_id: str, stages: DataStages) -> dict:
    """Tags a run with the prior its location feature 8 came from: ``prior`` (the mode:
    training, shipped, path, or "as prepared" for stages made by hand), ``prior_sha256``
    (of the training split's prior) and ``prior_warning`` (a fallback to the shipped
    prior). Returns the tags."""
    from mlflow.tracking import MlflowClient

    from wmh.tracking import content_hash

    tags = {"prior": stages.prior_mode or "as prepared"}
    if stages.prior is not None:
        tags["prior_sha256"] = content_hash(stages.prior)
    if stages.prior_warning:
        tags["prior_warning"] = stages.prior_warning
    client = MlflowClient()
    for name, value in tags.items():
        client.set_tag(run_id, name, value)
    return tags


def run_training(config: ExperimentConfig, options: RunOptions = RunOptions()):
    """Data stages, then training (``wmh train`` and the MLproject ``main`` entry); a
    fine-tune (``train.init_model``) prepares its data with the source model's plan."""
    from wmh.finetune import with_source_preprocess

    config = with_source_preprocess(config, say=lambda line: print(line, file=sys.stderr))
    return train_model(config, ensure_data(config), options)


SUMMARY_COLUMNS = ("subject_id", "dice", "hd95_mm", "avd_percent", "lesion_recall",
                   "lesion_f1", "total_ml", "periventricular_ml", "deep_ml", "lesion_count")


def segment_test_subjects(config: ExperimentConfig, stages: DataStages, model_dir: Path,
                          out_dir: Path, run_id: Optional[str] = None) -> list[dict]:
    """Segments the held-out test subjects of the sample split (cached preparation);
    with ``run_id``, the subjects lost are recorded on that run first
    (:func:`record_failures`), even when a failure then stops the experiment."""
    from wmh import io, sampling
    from wmh.segment import SegmentOptions, segment

    test_ids = set(sampling.load_splits(stages.samples)["test"])
    # Subjects the manifest fixes as test but whose preparation failed are in no split:
    # segmenting them again fails again and lists them (they never vanish).
    test_ids |= {s.subject_id for s in io.discover(stages.cohort)
                 if s.split == "test" and s.subject_id in preparation_failures(stages.prepared)}
    subjects = [s for s in io.discover(stages.cohort) if s.subject_id in test_ids]
    if not subjects:
        raise WMHError(f"{stages.samples}: the split has no test subjects "
                       "(raise sampling.test_fraction or add subjects)")
    rows = segment(model_dir, subjects, out_dir, SegmentOptions.from_config(config.segment),
                   prepared_dir=stages.prepared)
    if run_id is not None:
        record_failures(run_id, stages, rows)
    failed = [row for row in rows if row.get("status") == "failed"]
    if failed and config.evaluate.on_failure == "stop":
        # a test subject must not drop out of the evaluation silently
        raise WMHError(f"{out_dir}: test subject '{failed[0]['subject_id']}' failed to "
                       f"segment ({failed[0]['error']}); see {out_dir / 'volumes.csv'} "
                       "(option evaluate.on_failure: 'zero' scores it as Dice 0)")
    return rows


def preparation_failures(prepared: Path) -> dict[str, str]:
    """Subject id -> reason for the subjects whose preparation failed (the prepared
    folder's manifest.json; empty for a folder without one)."""
    try:
        return dict(json.loads((Path(prepared) / "manifest.json").read_text())
                    .get("failed", {}))
    except (OSError, ValueError, AttributeError):
        return {}


FAILURES_ARTIFACT = "failed_subjects.json"


def record_failures(run_id: str, stages: DataStages, rows: list[dict]) -> dict:
    """Lists every subject an experiment lost, on its MLflow run: tag ``failed_subjects``
    (the count; ``failed_test_subjects`` those of the test split) and the artifact
    ``failed_subjects.json`` ({"prepare": {id: reason}, "segment": {id: reason}}).
    Returns that listing."""
    from mlflow.tracking import MlflowClient

    listing = {"prepare": preparation_failures(stages.prepared),
               "segment": {row["subject_id"]: row.get("error", "") for row in rows
                           if row.get("status") == "failed"}}
    client = MlflowClient()
    client.set_tag(run_id, "failed_subjects", len(set(listing["prepare"])
                                                   | set(listing["segment"])))
    client.set_tag(run_id, "failed_test_subjects", len(listing["segment"]))
    if listing["prepare"] or listing["segment"]:
        client.log_text(run_id, json.dumps(listing, indent=1), FAILURES_ARTIFACT)
    return listing


def has_second_rater(cohort: Path, case_ids) -> bool:
    """Whether any of the cohort's ``case_ids`` has observer-2 labels."""
    subjects = {s.subject_id: s for s in io.discover(cohort)}
    return any(subjects[case].labels_observer2 is not None for case in case_ids
               if case in subjects)


def evaluate_test_subjects(config: ExperimentConfig, stages: DataStages, trained,
                           out_dir: Path, name: str, training_size: Optional[int] = None):
    """Segments the test subjects with a trained model and scores them as the paper does.

    Probabilities are scored inside the brain mask the model classified (label 2 ignored)
    against observer 1, and observer 2 where the cohort has a second rater, at the
    model's validation threshold.

    Args:
        trained: the :class:`wmh.contract.TrainResult` (model folder, threshold, validation Az).
        out_dir: ``wmh segment`` outputs of the test subjects go here.
        name: the method's name in reports.
        training_size: number of training subjects, for the Table 6 series (else None).

    Returns:
        (the per-subject rows of ``wmh segment``, a
        :class:`wmh.evaluation.results.MethodResult` whose ``source`` is the segmentation
        folder).
    """
    from wmh.evaluation.results import method_result_from_predictions

    rows = segment_test_subjects(config, stages, trained.model_dir, out_dir, trained.run_id)
    labels = {s.subject_id: s.labels for s in io.discover(stages.cohort)}
    zero = {row["subject_id"]: labels[row["subject_id"]] for row in rows  # on_failure: zero
            if row.get("status") == "failed" and labels.get(row["subject_id"])}
    has_observer2 = has_second_rater(stages.cohort, [row["subject_id"] for row in rows])
    threshold = trained.threshold if config.segment.threshold is None \
        else config.segment.threshold
    return rows, method_result_from_predictions(
        name, out_dir, stages.cohort, brain_mask=out_dir,
        observer2=stages.cohort if has_observer2 else None, threshold=threshold,
        validation_az=trained.validation_volume_auc, training_size=training_size,
        failed_cases=zero)


def format_table(rows: list[dict], columns=SUMMARY_COLUMNS) -> str:
    """A fixed-width text table; floats with 3 decimals, missing values as '-'."""
    def cell(value):
        if value is None or (isinstance(value, float) and value != value):
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    body = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in body)) for i, column in
              enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def demo(config: ExperimentConfig, out_dir: Path = Path("outputs/demo")) -> dict:
    """The main job on the embedded default: synthesise, prepare, sample, train
    MSWS+Loc, segment the test subjects, evaluate, log it all to MLflow, and register the
    model as a new version of ``wmh-demo`` (aliases: :func:`wmh.registry.register`).

    Returns:
        {"run_id", "model_dir", "rows" (per test subject), "mean" (metric means),
        "evaluation" (the :class:`wmh.evaluation.results.MethodResult` logged to the run),
        "registered" (name, version, aliases), ...}.
    """
    import mlflow
    import numpy as np

    from wmh import registry
    from wmh.evaluation.paper import method_display_name
    from wmh.evaluation.tracking_io import log_method_result

    stages = ensure_data(config)
    result = train_model(config, stages)
    rows, evaluation = evaluate_test_subjects(config, stages, result, out_dir / "segment",
                                              method_display_name(config.model))
    means = {}
    for column in SUMMARY_COLUMNS[1:]:
        values = [row[column] for row in rows if isinstance(row.get(column), (int, float))]
        finite = [v for v in values if v == v]
        means[column] = float(np.mean(finite)) if finite else float("nan")
    with mlflow.start_run(run_id=result.run_id):
        log_method_result(evaluation)  # test Dice/Az as the paper counts them
        mlflow.log_metrics({f"test_{k}": v for k, v in means.items() if v == v})
        mlflow.log_artifact(str(out_dir / "segment" / "volumes.csv"), "test")
        for row in rows:
            mlflow.log_artifact(str(out_dir / "segment" / row["subject_id"] / "qc.png"),
                                f"test/qc/{row['subject_id']}")
    registered = registry.register(result.run_id, DEMO_MODEL_NAME)
    return {"run_id": result.run_id, "model_dir": result.model_dir, "rows": rows,
            "mean": means, "synthetic": stages.synthetic, "train": result,
            "evaluation": evaluation, "registered": registered}
