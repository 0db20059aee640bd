"""The paper's experiments end to end: ``wmh reproduce`` and ``mlflow run . -e reproduce``.

Every experiment of :data:`EXPERIMENTS` (``experiments/<name>.yaml``) runs at one scale
(:data:`SCALES`) on one cohort (default: the synthetic cohort):

1. the cached data stages of :mod:`wmh.pipeline` (shared by the experiments; the
   Table 6 subsets add nested training subsets, validation and test stay the same);
2. training, a nested MLflow run under the reproduction's parent run. An experiment with
   location features (``model.loc`` not none) tunes α on the validation subjects, as the
   paper did: one nested run per α of the scale's list (:data:`ALPHAS`, or ``--alphas``),
   the α with the highest validation Dice kept (:func:`choose_alpha`; ties: the smaller α)
   and only that model tested;
3. segmentation of the test subjects (``wmh segment``'s outputs, brain mask included);
4. evaluation inside the brain mask against observer 1, and observer 2 where the cohort
   has one -> a :class:`wmh.evaluation.results.MethodResult`, logged to the run as
   ``evaluation/method_result.json`` and kept in ``<out>/<name>/result.json``.

Then observer 2 is scored against observer 1 on the same test subjects and
:func:`wmh.evaluation.report.write_report` writes Tables 2-6 and Figures 4-5 next to the
paper's published numbers (``<out>/report/``; logged to the parent run).

Resumable at the experiment level: ``result.json`` records a hash of the experiment's
resolved config, of its data and of its α list, so a rerun skips what is done and up to
date (another α list runs the search again, reusing the α runs already finished), and an
experiment interrupted during training resumes at its last finished epoch
(:func:`wmh.train.train`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from wmh import io
from wmh.config import ExperimentConfig, load_config
from wmh.errors import WMHError
from wmh.lifecycle import RunOptions


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments.

    Attributes:
        name: ``experiments/<name>.yaml`` and the output folder.
        method: the method's name in the report (the paper's name where it has one).
        tables: the paper's tables it appears in (documentation and ``--dry-run``).
        training_size: True for the Table 6 / Figure 5 series (the number of training
            subjects is recorded).
    """

    name: str
    method: str
    tables: str
    training_size: bool = False


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment("ss", "SS", "2, 4"),
    Experiment("msef", "MSEF", "2"),
    Experiment("msiw", "MSIW", "2"),
    Experiment("msws", "MSWS", "2, 4"),
    Experiment("ss_loc", "SS + Loc", "2, 4, 5 (FFCL)"),
    Experiment("msef_loc", "MSEF + Loc", "2"),
    Experiment("msiw_loc", "MSIW + Loc", "2"),
    Experiment("msws_loc", "MSWS + Loc", "2, 3, 4, 6", training_size=True),
    Experiment("ss_lcl", "LCL", "5"),
    Experiment("ss_sfcl", "SFCL", "5"),
    Experiment("rf", "Conventional", "3"),
    Experiment("msws_loc_train50", "MSWS + Loc (50%)", "6", training_size=True),
    Experiment("msws_loc_train25", "MSWS + Loc (25%)", "6", training_size=True),
    Experiment("msws_loc_train12_5", "MSWS + Loc (12.5%)", "6", training_size=True),
    Experiment("msws_loc_train6_25", "MSWS + Loc (6.25%)", "6", training_size=True),
)

# Table 5's FFCL row is the SS + Loc network (the paper's default layer): no extra training.
DERIVED = {"FFCL": "SS + Loc"}
TABLE3_METHODS = ("Conventional", "MSWS + Loc")
TABLE4_METHODS = ("SS", "MSWS", "SS + Loc", "MSWS + Loc")  # + observer 2 when there is one
FIGURE4_METHODS = ("Conventional", "SS", "MSWS", "SS + Loc", "MSWS + Loc")

# Each scale overrides the experiment files (the user's --set go on top).
SCALES: dict[str, dict[str, object]] = {
    # 2 CPU cores: 24 synthetic subjects (16 train, 2 validation, 6 test), a quarter-width
    # network, 15 000 balanced samples per epoch for 3 epochs (35.7 min before the α
    # search, which trains the 8 experiments with location features once per α).
    "demo": {
        "synth.subjects": 24, "preprocess.workers": 2,
        "sampling.validation_fraction": 0.08, "sampling.test_fraction": 0.25,
        "model.width": 0.25, "train.epochs": 3, "train.learning_rate": 3e-4,
        "train.max_train_samples": 15000, "train.max_validation_samples": 4000,
    },
    # The paper's protocol: 470 subjects (378 train, 42 validation, 50 test), the full
    # network, every balanced sample (50% of the WMH voxels + as many negatives:
    # 3.88 M / 430 k samples in the paper). For a GPU machine.
    "paper": {
        "synth.subjects": 470, "preprocess.workers": 8,
        "sampling.validation_fraction": 42 / 470, "sampling.test_fraction": 50 / 470,
        "sampling.positive_fraction": 0.5, "sampling.negative_ratio": 1.0,
        "model.width": 1.0, "train.epochs": 10, "train.learning_rate": 1e-4,
        "train.batch_size": 128, "train.max_train_samples": 0,
        "train.max_validation_samples": 0,
    },
}
# α (the scale of the 8 location features) tried per scale for every experiment with
# location features, chosen on the validation subjects as the paper did (the paper does not
# give the values it tried: these grids are this suite's choice).
ALPHAS: dict[str, tuple[float, ...]] = {
    "demo": (0.3, 1.0, 3.0),
    "paper": (0.1, 0.3, 1.0, 3.0, 10.0),
}
REPRODUCE_EXPERIMENT = "wmh-reproduce"  # MLflow experiment of the parent and child runs
RESULT_FILE = "result.json"
STATE_FILE = "reproduce.json"  # in the output folder: the parent MLflow run to continue


def experiments_dir() -> Path:
    """The ``experiments/`` folder of this checkout (else the current directory's)."""
    beside_package = Path(__file__).resolve().parents[1] / "experiments"
    return beside_package if beside_package.is_dir() else Path("experiments")


def select_experiments(names: str = "") -> list[Experiment]:
    """The experiments named in a comma-separated list (all of them for "")."""
    if not names.strip():
        return list(EXPERIMENTS)
    by_name = {experiment.name: experiment for experiment in EXPERIMENTS}
    chosen = []
    for name in (part.strip() for part in names.split(",") if part.strip()):
        if name not in by_name:
            raise WMHError(f"--experiments: unknown experiment '{name}' (known: "
                           f"{', '.join(by_name)})")
        chosen.append(by_name[name])
    return chosen


def resolve(experiment: Experiment, scale: str, overrides: Sequence[str] = (),
            folder: Optional[Path] = None) -> ExperimentConfig:
    """An experiment's config: its YAML, then the scale, then the user's overrides."""
    if scale not in SCALES:
        raise WMHError(f"--scale {scale}: unknown scale (known: {', '.join(SCALES)})")
    path = (folder or experiments_dir()) / f"{experiment.name}.yaml"
    if not path.is_file():
        raise WMHError(f"{path}: experiment file not found (--experiments-dir)")
    scale_overrides = [f"{key}={value}" for key, value in SCALES[scale].items()]
    return load_config(path, [*scale_overrides, f"train.experiment={REPRODUCE_EXPERIMENT}",
                              *overrides])


@dataclasses.dataclass
class Outcome:
    """What one experiment gave: its result and whether it was reused from a former run."""

    experiment: Experiment
    result: object  # wmh.evaluation.results.MethodResult
    run_id: str
    reused: bool
    seconds: float
    stages: object = None  # wmh.pipeline.DataStages the experiment ran on
    # the α search ({"alphas", "validation_dice", "runs", "chosen"}), None without one
    alpha_search: Optional[dict] = None


def searches_alpha(config: ExperimentConfig, alphas: Sequence[float]) -> bool:
    """Whether an experiment tunes α: it has location features and an α list is given."""
    return bool(alphas) and config.model.loc != "none" and config.model.arch != "rf"


def run_experiment(experiment: Experiment, config: ExperimentConfig, out_dir: Path,
                   alphas: Sequence[float] = ()) -> Outcome:
    """Data stages (cached), training (the α search for an experiment with location
    features), test segmentation and evaluation of one experiment; reuses
    ``<out_dir>/<name>/result.json`` when it matches the config, the data and the α list."""
    from wmh import pipeline, sampling
    from wmh.evaluation import tracking_io
    from wmh.evaluation.results import MethodResult
    from wmh.data import dataset_hash
    from wmh.lifecycle import run_key

    start = time.time()
    stages = pipeline.ensure_data(config)
    alphas = tuple(float(alpha) for alpha in alphas) if searches_alpha(config, alphas) else ()
    key = result_key(run_key(config, dataset_hash(stages.samples)), alphas)
    folder = out_dir / experiment.name
    stored = _read_json(folder / RESULT_FILE)
    if stored is not None and stored.get("key") == key:
        return Outcome(experiment, MethodResult.from_dict(stored["result"]),
                       stored["run_id"], True, time.time() - start, stages,
                       stored.get("alpha_search"))
    search = None
    if alphas:
        trained, search = search_alpha(experiment, config, stages, alphas)
    else:
        trained = pipeline.train_model(config, stages, RunOptions(
            nested=True, run_name=experiment.name, reuse_finished=True))
    training_size = (len(sampling.load_splits(stages.samples)["train"])
                     if experiment.training_size else None)
    _, result = pipeline.evaluate_test_subjects(config, stages, trained, folder / "segment",
                                                experiment.method, training_size)
    tracking_io.log_method_result(result, run_id=trained.run_id)
    io.atomic_write_text(folder / RESULT_FILE, json.dumps(
        {"key": key, "run_id": trained.run_id, "experiment": experiment.name,
         "seconds": time.time() - start, "result": result.to_dict(),
         "alpha_search": search}))
    return Outcome(experiment, result, trained.run_id, False, time.time() - start, stages,
                   search)


def choose_alpha(validation_dice: dict[float, float]) -> float:
    """The α with the highest validation Dice; ties go to the smaller α (the location
    features weigh less), and a NaN Dice never wins over a number."""
    def rank(alpha):
        dice = validation_dice[alpha]
        return (dice if dice == dice else float("-inf"), -alpha)

    return max(validation_dice, key=rank)


def search_alpha(experiment: Experiment, config: ExperimentConfig, stages,
                 alphas: Sequence[float]) -> tuple[object, dict]:
    """Trains ``config`` once per α (nested runs ``<name> alpha=<α>`` under the
    reproduction's run, tagged ``alpha_search`` = the experiment and ``alpha_chosen``),
    reusing finished runs, and keeps the α with the best validation Dice
    (:func:`choose_alpha`).

    Returns:
        (the chosen α's :class:`wmh.contract.TrainResult`, the search: {"alphas",
        "validation_dice" and "runs" by α as text, "chosen"}).
    """
    from mlflow.tracking import MlflowClient

    from wmh import pipeline
    from wmh.config import replace

    trained = {}
    for alpha in alphas:
        candidate = replace(config, **{"model.alpha": alpha})
        trained[alpha] = pipeline.train_model(candidate, stages, RunOptions(
            nested=True, run_name=f"{experiment.name} alpha={alpha:g}", reuse_finished=True))
    chosen = choose_alpha({alpha: result.validation_dice for alpha, result in trained.items()})
    client = MlflowClient()
    for alpha, result in trained.items():
        client.set_tag(result.run_id, "alpha_search", experiment.name)
        client.set_tag(result.run_id, "alpha_chosen", str(alpha == chosen).lower())
    search = {"alphas": list(alphas), "chosen": chosen,
              "validation_dice": {f"{alpha:g}": result.validation_dice
                                  for alpha, result in trained.items()},
              "runs": {f"{alpha:g}": result.run_id for alpha, result in trained.items()}}
    return trained[chosen], search


def result_key(training_key: str, alphas: Sequence[float] = ()) -> str:
    """An experiment's result key: its training run's key (config, data, training code),
    the code that segments and scores the test subjects (``evaluate`` stage of
    :data:`wmh.tracking.STAGE_CODE`) and the α list searched (none: no search)."""
    from wmh.tracking import stage_code_hash

    key = f"{training_key}-{stage_code_hash('evaluate')}"
    return key + (f"-alphas={','.join(f'{alpha:g}' for alpha in alphas)}" if alphas else "")


def parse_alphas(text: str) -> tuple[float, ...]:
    """``--alphas 0.3,1,3`` -> (0.3, 1.0, 3.0).

    Raises:
        WMHError: a value that is not a positive number (``--alphas`` named).
    """
    values = []
    for part in (piece.strip() for piece in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise WMHError(f"--alphas {text}: '{part}' is not a positive number "
                           "(comma-separated α values, e.g. 0.3,1,3)")
        values.append(value)
    return tuple(sorted(set(values)))


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclasses.dataclass
class Reproduction:
    """A finished reproduction: the outcomes, the report and what the data were."""

    outcomes: list[Outcome]
    report: object  # wmh.evaluation.report.ReportFiles
    data_label: str
    parent_run_id: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class ReproduceRequest:
    """What to reproduce (``wmh reproduce``'s options).

    Attributes:
        scale: a key of :data:`SCALES`.
        experiments: comma-separated experiment names; "" = all of :data:`EXPERIMENTS`.
        overrides: ``section.field=value`` strings applied to every experiment last (e.g.
            ``data.root=/data/wmh2017`` for your own cohort).
        data_label: what the data are, for every table and figure; default "synthetic"
            for the synthetic cohort and "real" otherwise.
        experiments_dir: where the experiment YAMLs are (default :func:`experiments_dir`).
        alphas: the α values searched for every experiment with location features;
            None = the scale's (:data:`ALPHAS`).
    """

    scale: str = "demo"
    experiments: str = ""
    overrides: Sequence[str] = ()
    data_label: Optional[str] = None
    experiments_dir: Optional[Path] = None
    alphas: Optional[Sequence[float]] = None


def reproduce(request: ReproduceRequest = ReproduceRequest(),
              out_dir: str | Path = "outputs/reproduce",
              progress: Callable[[str], None] = print) -> Reproduction:
    """Runs (or reuses) every selected experiment, then writes the report.

    Args:
        request: the scale, experiments, overrides, data label and α values.
        out_dir: per-experiment folders and ``report/`` go here (``<out_dir>/<scale>``).
        progress: called with one line per step.

    Raises:
        WMHError: unknown scale or experiment, a missing experiment file, bad overrides,
            or experiments whose test subjects differ.
    """
    import mlflow

    from wmh.evaluation import report
    from wmh.evaluation.paper import OBSERVER_NAME
    from wmh.evaluation.results import ReportOptions
    from wmh.tracking import configure_mlflow

    start = time.time()
    scale = request.scale
    chosen = select_experiments(request.experiments)
    configs = [resolve(experiment, scale, request.overrides, request.experiments_dir)
               for experiment in chosen]
    alphas = ALPHAS[scale] if request.alphas is None else tuple(request.alphas)
    out_dir = Path(out_dir) / scale
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _read_json(out_dir / STATE_FILE) or {}
    configure_mlflow(REPRODUCE_EXPERIMENT)
    # Continue the former parent run, unless `mlflow run` made one for us (MLFLOW_RUN_ID).
    parent_id = None if os.environ.get("MLFLOW_RUN_ID") else state.get("parent_run_id")
    try:
        parent = mlflow.start_run(run_id=parent_id, run_name=f"reproduce-{scale}")
    except mlflow.exceptions.MlflowException:  # e.g. another tracking store than before
        parent = mlflow.start_run(run_name=f"reproduce-{scale}")
    with parent:
        parent_id = parent.info.run_id
        io.atomic_write_text(out_dir / STATE_FILE, json.dumps({"parent_run_id": parent_id}))
        mlflow.set_tags({"scale": scale, "experiments": ",".join(e.name for e in chosen)})
        outcomes: list[Outcome] = []
        for index, (experiment, config) in enumerate(zip(chosen, configs), start=1):
            progress(f"[{index}/{len(chosen)}] {experiment.name} ({experiment.method}; "
                     f"Table {experiment.tables})")
            outcome = run_experiment(experiment, config, out_dir, alphas)
            outcomes.append(outcome)
            tuned = (f", α {outcome.alpha_search['chosen']:g} chosen on validation"
                     if outcome.alpha_search else "")
            progress(f"    {'reused' if outcome.reused else 'done'} in {outcome.seconds:.0f} s:"
                     f" test Dice {outcome.result.dice(1):.3f} (run {outcome.run_id}{tuned})")
        stages = outcomes[0].stages
        test_ids = _check_same_test_cases(outcomes)
        label = request.data_label or ("synthetic" if stages.synthetic else "real")
        results = [outcome.result for outcome in outcomes]
        results += [dataclasses.replace(by_name, name=name)
                    for name, source in DERIVED.items()
                    for by_name in results if by_name.name == source]
        observer = _observer_result(stages.cohort, test_ids,
                                    out_dir / outcomes[0].experiment.name / "segment")
        if observer is not None:
            results.append(observer)
        names = {result.name for result in results}
        options = ReportOptions(
            table3_methods=tuple(n for n in TABLE3_METHODS if n in names),
            pvalue_methods=tuple(n for n in TABLE4_METHODS if n in names)
            + ((OBSERVER_NAME,) if observer is not None else ()),
            figure_methods=tuple(n for n in FIGURE4_METHODS if n in names))
        files = report.write_report(results, out_dir / "report", label, options)
        _append_runs(files.markdown, outcomes, scale, time.time() - start)
        _append_failures(files.markdown, outcomes, out_dir)
        _append_choices(files.markdown, outcomes, configs)
        _append_alpha_search(files.markdown, outcomes)
        mlflow.log_artifacts(str(out_dir / "report"), artifact_path="report")
        mlflow.log_metric("seconds", time.time() - start)
    return Reproduction(outcomes, files, label, parent_id, time.time() - start)


def _check_same_test_cases(outcomes: Sequence[Outcome]) -> list[str]:
    """Every experiment must be tested on the same subjects (paired statistics)."""
    first = outcomes[0]
    for outcome in outcomes[1:]:
        if set(outcome.result.case_ids) != set(first.result.case_ids):
            raise WMHError(f"reproduce: {outcome.experiment.name} was tested on other "
                           f"subjects than {first.experiment.name}; the experiments must "
                           "share the sampling seed and the split fractions")
    return list(first.result.case_ids)


def _observer_result(cohort: Path, test_ids: Sequence[str], segment_dir: Path):
    """Observer 2 vs observer 1 on the test subjects, when the cohort has a second rater."""
    from wmh import pipeline
    from wmh.evaluation.results import observer_result

    if not pipeline.has_second_rater(cohort, test_ids):
        return None
    return observer_result(cohort, cohort, brain_mask=segment_dir, case_ids=test_ids)


def _append_runs(markdown: Path, outcomes: Sequence[Outcome], scale: str,
                 seconds: float) -> None:
    """Adds the experiments' runs and timings to the report."""
    lines = ["", f"## Runs (scale `{scale}`)", "",
             "| Experiment | Method | Tables | MLflow run | Seconds | |",
             "|---|---|---|---|---|---|"]
    for outcome in outcomes:
        lines.append(f"| {outcome.experiment.name} | {outcome.experiment.method} | "
                     f"{outcome.experiment.tables} | {outcome.run_id} | "
                     f"{outcome.seconds:.0f} | {'reused' if outcome.reused else 'run'} |")
    lines += ["", f"This invocation: {seconds / 60:.1f} min (reused experiments count only "
              "their data check)."]
    with open(markdown, "a") as handle:
        handle.write("\n".join(lines) + "\n")


def failed_subjects(outcome: Outcome, out_dir: Path) -> dict[str, dict[str, str]]:
    """The subjects an experiment lost: {"prepare": {id: reason}, "segment": {id: reason}}
    (its prepared folder's manifest and its test segmentation's volumes.csv)."""
    import csv

    from wmh import pipeline

    listing = {"prepare": pipeline.preparation_failures(outcome.stages.prepared)
               if outcome.stages is not None else {}, "segment": {}}
    try:
        with open(out_dir / outcome.experiment.name / "segment" / "volumes.csv",
                  newline="") as handle:
            listing["segment"] = {row["subject_id"]: row.get("error", "")
                                  for row in csv.DictReader(handle)
                                  if row.get("status") == "failed"}
    except OSError:
        pass
    return listing


def _append_failures(markdown: Path, outcomes: Sequence[Outcome], out_dir: Path) -> None:
    """Adds every subject the experiments lost to the report (none vanish silently)."""
    lines = ["", "## Failed subjects", ""]
    rows = [(outcome.experiment.name, stage, subject_id, reason)
            for outcome in outcomes
            for stage, failures in failed_subjects(outcome, out_dir).items()
            for subject_id, reason in sorted(failures.items())]
    if not rows:
        lines.append("None: every subject was prepared and every test subject segmented.")
    else:
        lines += ["A failed test subject counts as Dice 0 (`evaluate.on_failure: zero`); "
                  "a subject that failed preparation is in no split.", "",
                  "| Experiment | Stage | Subject | Reason |", "|---|---|---|---|"]
        lines += [f"| {name} | {stage} | {subject_id} | {reason.replace('|', '/')} |"
                  for name, stage, subject_id, reason in rows]
    with open(markdown, "a") as handle:
        handle.write("\n".join(lines) + "\n")


def suite_choices(experiment: Experiment, config: ExperimentConfig,
                  alpha_search: Optional[dict] = None) -> dict[str, str]:
    """The settings of one experiment that the paper does not give: this suite's choices,
    as the report states them (α: the one chosen on validation and the values tried)."""
    choices = {
        "learning rate": f"{config.train.learning_rate:g}",
        "epochs": str(config.train.epochs),
        "training samples / epoch": str(config.train.max_train_samples or "all"),
        "validation samples": str(config.train.max_validation_samples or "all"),
        "network width": f"{config.model.width:g}",
    }
    if alpha_search:
        tried = ", ".join(f"{alpha:g}" for alpha in alpha_search["alphas"])
        choices["α (location scale)"] = (f"{alpha_search['chosen']:g}, best validation Dice "
                                         f"of {tried} (the values tried)")
    elif config.model.loc != "none":
        choices["α (location scale)"] = (f"{config.model.alpha:g}, fixed (not tuned on "
                                         "validation subjects as in the paper)")
    return choices


def _append_choices(markdown: Path, outcomes: Sequence[Outcome],
                    configs: Sequence[ExperimentConfig]) -> None:
    """Adds the settings the paper does not state, per experiment, to the report."""
    table = {outcome.experiment.name: suite_choices(outcome.experiment, config,
                                                    outcome.alpha_search)
             for outcome, config in zip(outcomes, configs)}
    columns = list(dict.fromkeys(key for row in table.values() for key in row))
    lines = ["", "## Settings the paper does not give (this suite's choices)", "",
             "The paper does not state these; the values below are this suite's choices for "
             "this scale, not the paper's. The threshold is chosen on the validation "
             "subjects' native grids by an exact Dice search.", "",
             "| Experiment | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(row.get(column, "-") for column in columns) + " |"
              for name, row in table.items()]
    with open(markdown, "a") as handle:
        handle.write("\n".join(lines) + "\n")


def _append_alpha_search(markdown: Path, outcomes: Sequence[Outcome]) -> None:
    """Adds the α search of every experiment with location features to the report: the
    validation Dice of each α, the one chosen, its run."""
    searched = [outcome for outcome in outcomes if outcome.alpha_search]
    if not searched:
        return
    lines = ["", "## α tuned on the validation subjects", "",
             "As in the paper, α (the scale of the 8 location features) was chosen on the "
             "validation subjects for every experiment with location features: one training "
             "run per α, the α with the highest validation Dice (at each run's own "
             "validation-optimal threshold; ties: the smaller α) kept, and only that model "
             "segmented the test subjects. The values tried are this suite's choice (the "
             "paper does not give them).", "",
             "| Experiment | α tried | Validation Dice per α | Chosen α | MLflow run |",
             "|---|---|---|---|---|"]
    for outcome in searched:
        search = outcome.alpha_search
        dice = ", ".join(f"{alpha}: {value:.3f}" for alpha, value in
                         search["validation_dice"].items())
        chosen = f"{search['chosen']:g}"
        tried = ", ".join(f"{alpha:g}" for alpha in search["alphas"])
        lines.append(f"| {outcome.experiment.name} | {tried} | {dice} | {chosen} | "
                     f"{search['runs'][chosen]} |")
    with open(markdown, "a") as handle:
        handle.write("\n".join(lines) + "\n")


def describe(request: ReproduceRequest) -> str:
    """The plan of a reproduction, one line per experiment (``--dry-run``)."""
    scale, alphas = request.scale, request.alphas
    lines = [f"scale {scale}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else
                                            f"{k}={v}" for k, v in SCALES.get(scale, {}).items())]
    tried = ALPHAS.get(scale, ()) if alphas is None else tuple(alphas)
    for experiment in select_experiments(request.experiments):
        config = resolve(experiment, scale, request.overrides, request.experiments_dir)
        lines.append(
            f"{experiment.name:<20} {experiment.method:<20} Table {experiment.tables:<14} "
            f"arch={config.model.arch} loc={config.model.loc} width={config.model.width:g} "
            f"subjects={config.synth.subjects} train_size={config.sampling.train_size_fraction:g}"
            f" epochs={config.train.epochs} samples/epoch="
            f"{config.train.max_train_samples or 'all'}"
            + (f" alphas={','.join(f'{alpha:g}' for alpha in tried)}"
               if searches_alpha(config, tried) else ""))
    return "\n".join(lines)


def summary_table(done: Reproduction) -> str:
    """One line per method: validation Az, test Dice vs both observers, the paper's Dice."""
    from wmh import pipeline
    from wmh.evaluation.paper import paper_value

    rows = []
    for outcome in done.outcomes:
        result = outcome.result
        paper = paper_value(result, "dice_obs1", ("table2", "table5", "table3"))
        rows.append({"method": result.name, "validation_az": result.validation_az,
                     "test_az": result.test_az(), "dice_obs1": result.dice(1),
                     "dice_obs2": result.dice(2), "paper_dice_obs1": paper})
    title = f"Test set ({done.data_label.upper()} data"
    title += "; not comparable with the paper's)" if "synth" in done.data_label else ")"
    return title + "\n" + pipeline.format_table(
        rows, ("method", "validation_az", "test_az", "dice_obs1", "dice_obs2",
               "paper_dice_obs1"))
