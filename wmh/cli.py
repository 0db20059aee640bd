"""The ``wmh`` command: thin wrappers that parse options and call the modules.

User errors (:class:`wmh.errors.WMHError`, bad options) print one line and exit 2,
without a traceback. Heavy libraries (TensorFlow, MLflow) are imported inside the
commands that need them, so ``wmh --help`` and the data commands start fast.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path

import click

from wmh import __version__
from wmh.errors import WMHError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wmh")
@click.option("--verbose", is_flag=True,
              help="Keep TensorFlow's start-up lines (oneDNN, CPU instructions, absl) on "
                   "stderr; without it the `wmh` command drops them.")
def cli(verbose):
    """White matter hyperintensity segmentation with location-sensitive CNNs.

    \b
    Runs are tracked in MLflow, in the first of:
      MLFLOW_TRACKING_URI            any MLflow store or server
      sqlite:///$WMH_HOME/mlflow.db  WMH_HOME: a folder
      <project root>/mlflow.db       running from a source checkout
      ~/.wmh/mlflow.db               otherwise
    never relative to the working directory; `wmh config` shows the one in use.
    """


def config_options(function):
    """--config FILE and repeated --set key=value, resolved by :func:`resolve_config`."""
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                            help="Override a config field, e.g. --set model.alpha=0.5.")(function)
    return click.option("--config", "config_path", default=None, metavar="FILE",
                        help="Experiment YAML (see experiments/).")(function)


def model_options(function):
    """--arch, --loc and --alpha: shortcuts for --set model.*; empty (the default) keeps
    the config's value, so MLproject parameters never override a config silently.

    The wrapped command receives them folded into its ``override_list`` (before the
    --set-list overrides, which still come last)."""
    @functools.wraps(function)
    def wrapper(*args, arch: str, loc: str, alpha: str, **kwargs):
        chosen = [f"model.{key}={value.strip()}" for key, value in
                  (("arch", arch), ("loc", loc), ("alpha", alpha)) if value.strip()]
        kwargs["override_list"] = " ".join([*chosen, kwargs.get("override_list", "")])
        return function(*args, **kwargs)

    for name, example in (("alpha", "0.5"), ("loc", "none, lcl, ffcl or sfcl"),
                          ("arch", "ss, msef, msiw, msws or rf")):
        wrapper = click.option(f"--{name}", default="", metavar="VALUE",
                               help=f"Same as --set model.{name}=VALUE ({example}); empty "
                                    f"= the config's model.{name}.")(wrapper)
    return wrapper


def _precision_value(context, parameter, value):
    """--precision: auto, fp32 or bf16; empty (an MLproject default) = not given."""
    from wmh.models.precision import PRECISIONS  # pure Python: TensorFlow stays unloaded

    if value is None or not value.strip():
        return None
    if value.strip() not in PRECISIONS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(PRECISIONS)}")
    return value.strip()


def precision_option(function=None, *, job: str = "train"):
    """--precision auto|fp32|bf16 (a bad value exits 2; empty = the config's value)."""
    where = {"train": "train.precision", "segment": "auto"}[job]
    decorator = click.option(
        "--precision", default=None, metavar="[auto|fp32|bf16]", callback=_precision_value,
        help="Numeric precision: bf16 = bfloat16 compute (float32 weights); auto = what was "
             "measured to pay and hold accuracy on this CPU's bfloat16 units, today bf16 "
             "for whole-volume inference, fp32 for training (BENCHMARKS.md) [default: "
             f"{where}].")
    return decorator if function is None else decorator(function)


def with_precision(config, precision):
    """The config with ``train.precision`` set by --precision (None keeps it)."""
    from wmh.config import replace

    return config if precision is None else replace(config, **{"train.precision": precision})


def register_option(what: str):
    """--register NAME: register ``what`` in the MLflow model registry (the name is checked
    before any work)."""
    def check(context, parameter, value):
        if value:
            from wmh.registry import validate_name

            validate_name(value)
        return value

    return click.option("--register", "register_name", default="", metavar="NAME",
                        callback=check,
                        help=f"Register {what} as a new version of NAME in the MLflow model "
                             "registry, with the alias 'newest', and 'best' when its "
                             "validation Dice beats the current best on the same data.")


def echo_registration(run_id: str, name: str) -> None:
    """Registers the run's logged model under ``name`` (when given) and says so."""
    if name:
        from wmh.registry import format_registration, register

        click.echo(format_registration(register(run_id, name)))


def resolve_config(config_path, overrides, override_list: str = ""):
    """The config from --config (empty = defaults), --set, then --set-list overrides."""
    from wmh.config import load_config

    return load_config(config_path or None, [*overrides, *override_list.split()])


def check_outputs(*pairs: tuple[Path | str, str]) -> None:
    """Each (folder, option) can become an output folder (:func:`wmh.io.check_output_dir`):
    checked before anything is loaded or created, so a bad path fails in one line."""
    from wmh.io import check_output_dir

    for path, option in pairs:
        check_output_dir(path, option)


def check_output_file(path: Path, option: str) -> None:
    """``path`` can become an output file: not a folder, below a usable folder."""
    if path.is_dir():
        raise WMHError(f"{option} {path}: is a folder (expected a file name)")
    check_outputs((path.parent, option))


@cli.command("config")
@config_options
def config_command(config_path, overrides):
    """Print the resolved configuration as YAML.

    Two comment lines first name the MLflow tracking store and the Optuna journal in
    use (see `wmh --help`)."""
    from wmh.config import dump_yaml
    from wmh.tracking import anchored, describe_tracking

    config = resolve_config(config_path, overrides)
    journal = anchored(config.data.cache_dir) / "optuna" / "journal.log"
    click.echo(f"# MLflow tracking store: {describe_tracking()}")
    click.echo(f"# Optuna journal (tune.storage empty): {journal}")
    click.echo(dump_yaml(config), nl=False)


@cli.command("check")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--no-t1", is_flag=True, help="Ignore T1 images.")
def check_command(data, no_t1):
    """Discover the subjects in DATA and validate every file."""
    from wmh.io import discover, load_subject

    subjects = discover(data)
    for subject in subjects:
        loaded = load_subject(subject, use_t1=not no_t1)
        spacing = "x".join(f"{v:.2g}" for v in loaded.flair_grid.working_spacing)
        parts = [subject.subject_id, f"FLAIR {loaded.flair.shape} @ {spacing} mm",
                 "T1" if loaded.t1 is not None else "no T1",
                 "labels" if loaded.labels is not None else "no labels"]
        click.echo("  ".join(parts))
    click.echo(f"{len(subjects)} subjects OK in {data}")


# --- synth commands ---

@cli.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--subjects", type=int, default=40, show_default=True,
              help="Number of synthetic subjects.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Cohort seed: same seed and version give identical images.")
@click.option("--profile", default="default", show_default=True,
              help="Acquisition profile (default, clinical-thick, research-3t, oblique, "
                   "flair-3d, clinical-neck, coronal, sagittal, test), 'mixed' to draw one "
                   "per subject, or 'randomised' to draw every contrast, artefact, "
                   "geometry and lesion parameter per subject.")
@click.option("--flair-only", is_flag=True, help="Write no T1 images.")
@click.option("--skull-stripped", is_flag=True, help="Zero everything outside the brain.")
@click.option("--preview", is_flag=True, help="Write a PNG montage per subject.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Subjects generated in parallel processes.")
def synth_command(out, subjects, seed, profile, flair_only, skull_stripped, preview, workers):
    """Write a synthetic cohort (MICCAI WMH 2017 layout + cohort.json) to OUT."""
    from wmh.synth import synthesize_cohort

    check_outputs((out, "OUT"))
    synthesize_cohort(out, subjects=subjects, seed=seed, profile=profile,
                      flair_only=flair_only, skull_stripped=skull_stripped, preview=preview,
                      workers=workers, progress=True)
    click.echo(f"synthetic cohort of {subjects} subjects in {out} (see {out / 'cohort.json'})")


# --- prepare commands ---

@cli.command("prepare")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: <data.cache_dir>/prepared].")
@click.option("--workers", type=int, default=None,
              help="Subjects prepared in parallel processes [default: preprocess.workers].")
@click.option("--no-t1", is_flag=True, help="FLAIR only, even where a T1 exists.")
@click.option("--overwrite", is_flag=True,
              help="Prepare every subject again, even those up to date.")
@config_options
def prepare_command(data, out_dir, workers, no_t1, overwrite, config_path, overrides):
    """Preprocess every subject of DATA into OUT/<subject_id>.h5.

    DATA is a cohort (folder or CSV manifest) or one FLAIR NIfTI file. Subjects already
    prepared with the same inputs, settings and code are skipped (unless --overwrite).
    A subject that fails is listed with its reason and the others go on; every subject
    gets a row (status, error, warnings) in OUT/prepare_summary.csv, and the exit code is
    then 1. Bad options, or a single FLAIR file given directly that cannot be prepared,
    exit 2.
    """
    from wmh.preprocess import prepare_cohort

    config = resolve_config(config_path, overrides)
    out_dir = out_dir or Path(config.data.cache_dir) / "prepared"
    workers = config.preprocess.workers if workers is None else workers
    if workers < 1:
        raise WMHError(f"--workers {workers}: must be at least 1")
    check_outputs((out_dir, "--out"))
    source = data
    if data.is_file() and data.name.lower().endswith((".nii", ".nii.gz")):
        from wmh.io import Subject, load_image, strip_nifti_suffix

        load_image(data)  # an unreadable file: one line, exit 2, nothing written
        source = [Subject(strip_nifti_suffix(data.name), flair=data)]
    report = prepare_cohort(source, out_dir, config.preprocess,
                            use_t1=config.data.use_t1 and not no_t1, workers=workers,
                            overwrite=overwrite)
    if not isinstance(source, Path) and report.failed:  # one file given directly
        raise WMHError(next(iter(report.failed.values())))
    click.echo(report.summary())
    click.echo(out_dir)
    if report.failed:
        click.echo(f"wmh prepare: {len(report.failed)} of {len(report.order)} subjects failed: "
                   f"{', '.join(sorted(report.failed))} (see {report.summary_path})", err=True)
        return 1
    return 0


@cli.group("prior")
def prior_group():
    """The WMH prior probability map in MNI space (location feature 8)."""


@prior_group.command("build")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Prior NIfTI to write, e.g. wmh_prior_mni.nii.gz.")
@click.option("--spacing-mm", type=float, default=4.0, show_default=True,
              help="Voxel size of the prior grid.")
@click.option("--smoothing-mm", type=float, default=4.0, show_default=True,
              help="Gaussian smoothing sigma.")
@click.option("--workers", type=int, default=None,
              help="Subjects prepared in parallel when DATA is a raw cohort.")
@click.option("--samples", "samples_dir", type=click.Path(path_type=Path), default=None,
              help="A sample set (from `wmh sample`): only its training split's subjects.")
@click.option("--subjects", "subjects_file", type=click.Path(path_type=Path), default=None,
              help="A text file of subject ids, one per line: only those subjects.")
@config_options
def prior_build_command(data, out_path, spacing_mm, smoothing_mm, workers, samples_dir,
                        subjects_file, config_path, overrides):
    """Build the WMH prior from labelled subjects.

    DATA is a folder of prepared subjects (*.h5), or a cohort that is prepared first
    into <data.cache_dir>/prepared. Give the training subjects (--samples or --subjects):
    a prior from test subjects puts their labels into their features. Use the prior with
    --set preprocess.prior_path=OUT (the pipeline builds the training split's prior itself
    with preprocess.prior: training, the default).
    """
    from wmh.location import read_subject_list
    from wmh.prior import build_prior_from_cohort

    config = resolve_config(config_path, overrides)
    if samples_dir is not None and subjects_file is not None:
        raise WMHError("--samples and --subjects: give one of them")
    check_output_file(out_path, "--out")
    check_outputs((config.data.cache_dir, "data.cache_dir"))
    subject_ids, option = None, "--subjects"
    if samples_dir is not None:
        from wmh.sampling import load_splits

        subject_ids, option = load_splits(samples_dir)["train"], f"--samples {samples_dir}"
    elif subjects_file is not None:
        subject_ids, option = read_subject_list(subjects_file), f"--subjects {subjects_file}"
    else:
        click.echo("warning: the prior uses every labelled subject of DATA, test subjects "
                   "included; pass --samples SAMPLES_DIR (its training split) or --subjects "
                   "FILE for a prior without test labels", err=True)
    prior = build_prior_from_cohort(data, config, spacing_mm, smoothing_mm, workers=workers,
                                    subject_ids=subject_ids, option=option)
    prior.save(out_path)
    click.echo(f"prior from {prior.subjects} labelled subjects -> {out_path}")


# --- sample commands ---

@cli.command("sample")
@click.argument("prepared", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Parent folder; the sample set goes to OUT/<key>/ (printed).")
@config_options
def sample_command(prepared, out_dir, config_path, overrides):
    """Split PREPARED subjects and write their balanced voxel samples."""
    from wmh.config import load_config
    from wmh.sampling import build_samples, load_splits

    config = load_config(config_path, overrides)
    check_outputs((out_dir, "--out"))
    folder = build_samples(prepared, out_dir, config.sampling)
    splits = load_splits(folder)
    click.echo("  ".join(f"{name}: {len(ids)} subjects" for name, ids in splits.items()))
    click.echo(folder)

# --- train commands ---

@cli.command("train")
@config_options
@click.option("--set-list", "override_list", default="", metavar="'K=V K=V'",
              help="Whitespace-separated overrides, applied last (used by MLproject).")
@model_options
@precision_option
@register_option("the trained model")
def train_command(config_path, overrides, override_list, precision, register_name):
    """Prepare the data (cached) and train the configured model, tracked in MLflow."""
    from wmh.pipeline import run_training

    result = run_training(with_precision(resolve_config(config_path, overrides, override_list),
                                         precision))
    click.echo(f"run {result.run_id}: best epoch {result.best_epoch}, validation AUC "
               f"{result.validation_auc:.4f}, threshold {result.threshold:.3f}, "
               f"validation Dice {result.validation_dice:.4f}")
    click.echo(f"model: {result.model_dir}  (also runs:/{result.run_id}/model)")
    echo_registration(result.run_id, register_name)

# --- segment commands ---

@cli.command("segment")
@click.option("--model", "model_source", default="",
              help="A model folder from `wmh train`, its model.keras, runs:/<run id>/model, "
                   "models:/<model id>, a registered model models:/NAME@ALIAS, or a model "
                   "shipped with wmh: pretrained (the default FLAIR model) or "
                   "pretrained:NAME (see `wmh models`) [default: pretrained].")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder, shared by several calls: <subject>/wmh_probability.nii.gz, "
                   "..., volumes.csv, index.html (the cohort QC page; see the README's "
                   "'Outputs of `wmh segment`').")
@click.option("--subject-id", default=None,
              help="Id of a subject given as FLAIR [T1] files (default: the challenge "
                   "folder <id>/pre|orig/, the BIDS sub-X[_ses-Y], the folder of a file "
                   "named flair.nii.gz, else the file name).")
@click.option("--threshold", type=float, default=None,
              help="Mask threshold: wmh_mask = P >= threshold (default: the model's "
                   "validation-optimal threshold; recorded in report.json).")
@click.option("--mc-samples", type=int, default=0,
              help="Monte Carlo dropout passes: writes wmh_uncertainty.nii.gz (0 = off).")
@click.option("--periventricular-mm", type=float, default=10.0, show_default=True,
              help="Lesion voxels this close (3D, mm) to the lateral ventricles count as "
                   "periventricular_ml, the rest as deep_ml.")
@click.option("--overwrite", is_flag=True,
              help="Segment again subjects already done with the same model and settings.")
@click.option("--layout", type=click.Choice(["folders", "bids"]), default="folders",
              show_default=True,
              help="folders: OUT/<subject>/...; bids: OUT is a BIDS derivatives dataset "
                   "(e.g. derivatives/wmh): sub-X/[ses-Y/]anat/sub-X[_ses-Y]_space-FLAIR_"
                   "label-WMH_desc-wmh_probseg.nii.gz, ..._mask.nii.gz with JSON sidecars, "
                   "dataset_description.json, wmh_volumes.tsv.")
@click.option("--quiet", is_flag=True, help="No progress bar and no per-stage lines.")
@click.option("--calibration", type=click.Choice(["model", "none"]), default="model",
              show_default=True,
              help="model: P(WMH) calibrated as the model was on its validation subjects, "
                   "and its threshold; none: the paper's uncorrected output and its "
                   "threshold (the model's uncalibrated validation-optimal one).")
@precision_option(job="segment")
def segment_command(model_source, inputs, out_dir, subject_id, threshold, mc_samples,
                    periventricular_mm, overwrite, layout, quiet, calibration, precision):
    """Segment WMH in INPUTS: a subject folder, a cohort, or FLAIR [T1] files.

    Without --model, the FLAIR model shipped with wmh does it (`wmh models`).

    A subject that fails in a cohort is recorded (status 'failed' in volumes.csv) and the
    others go on; the exit code is then 1. Bad options or a bad file given directly
    exit 2 before anything is written.
    """
    from wmh.segment import SegmentOptions, run_cohort

    result = run_cohort(model_source, inputs, out_dir,
                        SegmentOptions(threshold=threshold, mc_samples=mc_samples,
                                       periventricular_mm=periventricular_mm,
                                       overwrite=overwrite, layout=layout,
                                       precision=precision or "auto",
                                       calibration=None if calibration == "model" else "none"),
                        progress=not quiet, subject_id=subject_id)
    for row in result.rows:
        if row["subject_id"] in result.segmented:
            click.echo(f"{row['subject_id']}: {row['total_ml']:.2f} mL WMH "
                       f"({row['periventricular_ml']:.2f} periventricular, "
                       f"{row['deep_ml']:.2f} deep), {row['lesion_count']} lesions")
    click.echo(f"segmented {len(result.segmented)}, skipped {len(result.skipped)} (already "
               f"done with this model and settings), failed {len(result.failed)}")
    click.echo(f"outputs in {out_dir}; volumes in {out_dir / 'volumes.csv'}; QC page "
               f"{out_dir / 'index.html'}")
    if result.failed:
        click.echo(f"wmh: error: {len(result.failed)} subject(s) failed: "
                   f"{', '.join(result.failed)} (see {out_dir / 'volumes.csv'})", err=True)
        return 1
    return 0

@cli.command("calibrate")
@click.argument("model_source", metavar="MODEL")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Labelled scans (every one with a manual WMH mask): a cohort folder, a "
                   "CSV manifest, or a `wmh prepare` folder prepared with the model's plan.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="The new model folder (must not exist or be empty): a copy of MODEL with "
                   "the new calibration and threshold in wmh_model.json.")
@click.option("--method", type=click.Choice(["platt", "prior", "none"]), default="platt",
              show_default=True,
              help="platt: logistic scaling of the log-odds; prior: the prior-shift "
                   "correction for the training samples' WMH share; none: the network's "
                   "uncorrected output (only the threshold is chosen again).")
@click.option("--subjects", default="", metavar="ID,ID",
              help="Use only these subjects of --data (default: all).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def calibrate_command(model_source, data, out_dir, method, subjects, quiet):
    """Recalibrate MODEL (a folder or MLflow model URI) on labelled scans.

    The scans are prepared with the model's own preprocessing plan, the calibration of
    P(WMH) is fitted on their brain voxels (native grid), and the Dice-optimal threshold
    is chosen on the calibrated probabilities. MODEL is never modified. Prints one JSON
    line: ECE before and after, thresholds, Dice.
    """
    import json

    from wmh.recalibrate import recalibrate, summary

    chosen = [name.strip() for name in subjects.split(",") if name.strip()]
    result = recalibrate(model_source, data, out_dir, method, chosen or None,
                         progress=not quiet)
    click.echo(json.dumps(summary(result)))
    click.echo(f"model: {result.out_dir}")


@cli.command("models")
def models_command():
    """List the models shipped with wmh (use one with --model pretrained:NAME).

    Each line: name, version, input channels, threshold, size, the first 12 hex digits of
    the weights' SHA-256, and its model card. `wmh segment` without --model uses
    pretrained:flair.
    """
    from wmh import pretrained
    from wmh.contract import CONTRACT_FILE, ModelContract

    models = pretrained.shipped_models()
    if not models:
        click.echo(f"no shipped models: {pretrained.NONE_SHIPPED.format(option='--model')}")
        return
    for model in models:
        path = model.folder / CONTRACT_FILE
        try:
            contract = ModelContract.from_json(path.read_text(), str(path))
        except OSError as error:
            raise WMHError(f"{path}: cannot read ({error.strerror}); reinstall wmh") from None
        default = " (default)" if model.name == pretrained.DEFAULT_NAME else ""
        click.echo(f"{model.uri}{default}  version {model.version}  channels "
                   f"{'+'.join(contract.channels)}  threshold {contract.threshold:.3f}  "
                   f"{model.total_bytes / 1e6:.1f} MB  sha256 {model.weights_sha256[:12]}  "
                   f"card {model.folder / pretrained.CARD_FILE}")

# --- evaluate commands ---

@cli.command("evaluate")
@click.option("--pred", "prediction", required=True, type=click.Path(path_type=Path),
              help="Prediction NIfTI (probabilities or mask), or a folder: <id>.nii.gz or <id>/.")
@click.option("--truth", required=True, type=click.Path(path_type=Path),
              help="Truth labels (0, 1 WMH, 2 ignored): a file, or a folder matched by id.")
@click.option("--brain-mask", type=click.Path(path_type=Path),
              help="Brain masks (file or folder) for the paper's Dice and Az inside the brain.")
@click.option("--threshold", type=float, default=None,
              help="Score the probability maps at this value instead (printed). Default: a "
                   "`wmh segment` folder is scored on the mask it wrote (its own threshold, "
                   "in report.json); other probability maps at 0.5.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (NaN as null).")
def evaluate_command(prediction, truth, brain_mask, threshold, as_json):
    """Challenge metrics per case: Dice, HD95, AVD, lesion recall and F1."""
    from wmh.evaluation.cases import evaluate_cases, to_json
    from wmh.evaluation.tables import format_evaluation

    evaluation = evaluate_cases(prediction, truth, brain_mask, threshold,
                                progress=not as_json)
    for note in evaluation["notes"]:
        click.echo(note, err=True)
    click.echo(to_json(evaluation) if as_json else format_evaluation(evaluation))


def _named_values(values, option):
    """'NAME=VALUE' pairs -> [(name, value)]; bad syntax is a usage error (exit 2)."""
    pairs = []
    for text in values:
        name, separator, value = text.partition("=")
        if not separator or not name.strip() or not value.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got '{text}'", param_hint=option)
        pairs.append((name.strip(), value.strip()))
    return pairs


@cli.command("report")
@click.option("--method", "methods", multiple=True, metavar="NAME=FOLDER",
              help="A method's test-set probability maps (repeatable), e.g. 'SS + Loc=out/ssloc'.")
@click.option("--run", "runs", multiple=True, metavar="NAME=RUN_ID",
              help="A method from an MLflow run (repeatable).")
@click.option("--truth", type=click.Path(path_type=Path),
              help="Observer 1 labels (file or folder), needed with --method.")
@click.option("--observer2", type=click.Path(path_type=Path),
              help="Observer 2 labels: adds the human observer and Dice vs observer 2.")
@click.option("--brain-mask", type=click.Path(path_type=Path),
              help="Brain masks: Dice and ROC count voxels inside only (as the paper).")
@click.option("--threshold", type=float, default=None,
              help="Operating threshold for --method folders (printed when it differs). "
                   "Default: the threshold each segmentation recorded (report.json), 0.5 "
                   "for probability maps without one.")
@click.option("--out", "output_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for report.md, CSV tables and PNG figures.")
@click.option("--data-label", default=None,
              help="What the data are, e.g. 'MICCAI WMH 2017' (shown on every table and "
                   "figure). Default: 'synthetic' when --truth lies in a `wmh synth` "
                   "cohort, else 'unspecified'.")
@click.option("--resamples", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Bootstrap resamples for confidence bands.")
@click.option("--pvalue-resamples", type=click.IntRange(min=10), default=100,
              show_default=True, help="Paired bootstrap resamples for p-values (paper: 100).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--mlflow", "log_to_mlflow", is_flag=True,
              help="Also log the report to MLflow (the active run, else a new one).")
def report_command(methods, runs, truth, observer2, brain_mask, threshold, output_dir,
                   data_label, resamples, pvalue_resamples, seed, log_to_mlflow):
    """The paper's Tables 2-6 and Figures 4-5 for several methods, beside its numbers."""
    from wmh.evaluation import report
    from wmh.evaluation.results import ReportOptions

    check_outputs((output_dir, "--out"))
    notes: list[str] = []
    results = report.collect_results(_named_values(methods, "--method"),
                                     _named_values(runs, "--run"), truth, observer2,
                                     brain_mask, threshold, notes)
    for note in notes:
        click.echo(note, err=True)
    if data_label is None:
        data_label = report.infer_data_label(truth)
        click.echo(f"data: {data_label} (say what they are with --data-label)", err=True)
    options = ReportOptions(ci_resamples=resamples, pvalue_resamples=pvalue_resamples,
                            seed=seed)
    files = report.write_report(results, output_dir, data_label, options,
                                log_to_mlflow=True if log_to_mlflow else None)
    click.echo(f"wrote {files.markdown}")

# --- tune commands ---

@cli.command("tune")
@config_options
@click.option("--set-list", "override_list", default="", metavar="'K=V K=V'",
              help="Whitespace-separated overrides, applied last (used by MLproject).")
@click.option("--storage", default="", metavar="URL",
              help="postgresql://user:password@host:port/db to share the study between "
                   "processes and machines (default: tune.storage; empty = journal file "
                   "under data_cache/optuna/).")
@click.option("--study", default="", help="Study name (default: tune.study). Workers started "
                                          "with one storage and study share it; an existing "
                                          "study is resumed.")
@click.option("--n-trials", type=click.IntRange(min=0), default=0,
              help="Total trials the study should hold, over all workers and calls "
                   "(default: tune.n_trials; 0 = that).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds after which this worker starts no new trial (default: "
                   "tune.timeout).")
@click.option("--objective", default="", help="val_auc or val_dice (default: tune.objective).")
@click.option("--samples", "samples_dir", type=click.Path(path_type=Path), default=None,
              help="Tune on this sample set (from `wmh sample`) instead of running the data "
                   "stages of the config; needs --prepared.")
@click.option("--prepared", "prepared_dir", type=click.Path(path_type=Path), default=None,
              help="The prepared subjects the --samples came from.")
@click.option("--data-label", type=click.Choice(["real", "synthetic"]), default="real",
              show_default=True, help="What the --samples are (recorded on every run).")
@precision_option
@register_option("the study's best trial")
def tune_command(config_path, overrides, override_list, storage, study, n_trials, timeout,
                 objective, samples_dir, prepared_dir, data_label, precision,
                 register_name):
    """Optuna search over alpha, injection layer, architecture, learning rate and dropout."""
    from wmh.config import replace
    from wmh.tune import format_summary, tune

    config = with_precision(resolve_config(config_path, overrides, override_list), precision)
    options = {"tune.storage": storage, "tune.study": study, "tune.n_trials": n_trials,
               "tune.objective": objective}
    options = {key: value for key, value in options.items() if value}
    if timeout is not None:
        options["tune.timeout"] = timeout
    config = replace(config, **options)
    check_outputs((config.data.cache_dir, "data.cache_dir"))
    stages = None
    if (samples_dir is None) != (prepared_dir is None):
        raise WMHError("--samples and --prepared go together (a sample set and the prepared "
                       "subjects it was drawn from)")
    if samples_dir is not None:
        from wmh.pipeline import DataStages

        for option, folder in (("--samples", samples_dir), ("--prepared", prepared_dir)):
            if not folder.is_dir():
                raise WMHError(f"{option} {folder}: no such folder")
        stages = DataStages(cohort=prepared_dir, synthetic=data_label == "synthetic",
                            prepared=prepared_dir, samples=samples_dir)
    summary = tune(config, stages, progress=click.echo)
    click.echo(format_summary(summary))
    if register_name and not summary.best_run_id:
        raise WMHError(f"--register {register_name}: the study has no complete trial yet")
    echo_registration(summary.best_run_id, register_name)

# --- pipeline commands ---

@cli.command("demo")
@config_options
@click.option("--out", "out_dir", default="outputs/demo", type=click.Path(path_type=Path),
              help="Where the test subjects' segmentations go.")
def demo_command(config_path, overrides, out_dir):
    """The main job on the synthetic default: data, MSWS+Loc, segment, evaluate."""
    from wmh.pipeline import demo, format_table
    from wmh.registry import format_registration
    from wmh.reproduce import experiments_dir
    from wmh.tracking import tracking_uri

    config = resolve_config(config_path or experiments_dir() / "demo.yaml", overrides)
    check_outputs((out_dir, "--out"), (config.data.cache_dir, "data.cache_dir"))
    summary = demo(config, out_dir)
    train = summary["train"]
    label = "SYNTHETIC data" if summary["synthetic"] else "real data"
    click.echo(f"\n{config.model.arch.upper()}+{config.model.loc} ({label}): best epoch "
               f"{train.best_epoch}, validation AUC {train.validation_auc:.3f}, threshold "
               f"{train.threshold:.2f}, validation Dice {train.validation_dice:.3f}")
    click.echo(f"Test subjects ({label}):")
    click.echo(format_table(summary["rows"] + [{"subject_id": "mean", **summary["mean"]}]))
    click.echo(f"\nSegmentations, QC images and volumes.csv: {out_dir / 'segment'}")
    click.echo(f"MLflow run {summary['run_id']} in {tracking_uri()}; open the UI with "
               "`make ui` (http://127.0.0.1:5000)")
    click.echo(format_registration(summary["registered"]))


@cli.command("reproduce")
@click.option("--scale", default="demo", show_default=True, metavar="demo|paper",
              help="demo: 2 CPU cores within an hour; paper: the paper's sample counts.")
@click.option("--out", "out_dir", default="outputs/reproduce", show_default=True,
              type=click.Path(path_type=Path), help="Results go to OUT/<scale>/.")
@click.option("--experiments", default="", metavar="A,B",
              help="Comma-separated experiment names (default: all of the paper's).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field in every experiment, e.g. "
                   "--set data.root=/data/wmh2017.")
@click.option("--set-list", "override_list", default="", metavar="'K=V K=V'",
              help="Whitespace-separated overrides, applied last (used by MLproject).")
@click.option("--data-label", default=None,
              help="What the data are, shown on every table (default: synthetic/real).")
@click.option("--experiments-dir", default=None, type=click.Path(path_type=Path),
              help="Folder of the experiment YAMLs (default: this checkout's experiments/).")
@click.option("--alphas", default="", metavar="A,B",
              help="α values tried on the validation subjects for every experiment with "
                   "location features (default: the scale's, demo 0.3,1,3; one value fixes "
                   "α).")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and stop.")
@register_option("the experiment with the best validation Dice")
def reproduce_command(scale, out_dir, experiments, overrides, override_list, data_label,
                      experiments_dir, alphas, dry_run, register_name):
    """Run the paper's experiments (Tables 2-6) and write the comparison report."""
    from wmh import reproduce

    overrides = [*overrides, *override_list.split()]
    alphas = reproduce.parse_alphas(alphas) if alphas.strip() else None
    if dry_run:
        click.echo(reproduce.describe(scale, experiments, overrides, experiments_dir, alphas))
        return
    check_outputs((out_dir, "--out"))
    done = reproduce.reproduce(scale, out_dir, experiments, overrides, data_label,
                               experiments_dir, progress=click.echo, alphas=alphas)
    click.echo(f"\n{reproduce.summary_table(done)}")
    click.echo(f"\nReport ({done.data_label} data): {done.report.markdown}")
    click.echo(f"MLflow parent run {done.parent_run_id} ({done.seconds / 60:.1f} min); open "
               "the UI with `make ui` (http://127.0.0.1:5000)")
    if register_name:
        from wmh.registry import best_run

        echo_registration(best_run([outcome.run_id for outcome in done.outcomes]),
                          register_name)


# Operating-system errors that are the user's to fix (disk full, permissions, read-only
# file system, quota, a file where a folder should be...): one line and exit 2.
USER_OS_ERRORS = (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT,
                  errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the group; user errors exit 2 with one line."""
    try:
        result = cli.main(args=argv, prog_name="wmh", standalone_mode=False)
    except WMHError as error:
        click.echo(f"wmh: error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("wmh: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except OSError as error:
        if error.errno not in USER_OS_ERRORS:
            raise
        where = error.filename if error.filename is not None else "output"
        click.echo(f"wmh: error: {where}: {error.strerror or os.strerror(error.errno)}",
                   err=True)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
