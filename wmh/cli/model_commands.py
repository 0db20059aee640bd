"""The model commands: train, tune, segment, calibrate, models."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import click

from wmh.cli.options import (check_outputs, cohort_exit_code, config_options,
                             echo_registration, gathered, model_options, precision_option,
                             register_option, resolve_config, with_precision)
from wmh.errors import WMHError


# --- train commands ---

@click.command("train")
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


# --- tune commands ---

@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """``wmh tune``'s options beside the config: ``tune.*`` overrides (empty, 0 or None =
    the config's value) and the sample set to tune on (None = the config's data stages)."""

    storage: str = ""
    study: str = ""
    n_trials: int = 0
    timeout: Optional[float] = None
    objective: str = ""
    samples_dir: Optional[Path] = None
    prepared_dir: Optional[Path] = None
    data_label: str = "real"

    def apply(self, config):
        """``config`` with the ``tune.*`` values given."""
        from wmh.config import replace

        options = {"tune.storage": self.storage, "tune.study": self.study,
                   "tune.n_trials": self.n_trials, "tune.objective": self.objective}
        options = {key: value for key, value in options.items() if value}
        if self.timeout is not None:
            options["tune.timeout"] = self.timeout
        return replace(config, **options)

    def stages(self):
        """The :class:`wmh.pipeline.DataStages` of --samples and --prepared, or None.

        Raises:
            WMHError: one of the two without the other, or a missing folder.
        """
        if (self.samples_dir is None) != (self.prepared_dir is None):
            raise WMHError("--samples and --prepared go together (a sample set and the "
                           "prepared subjects it was drawn from)")
        if self.samples_dir is None:
            return None
        from wmh.pipeline import DataStages

        for option, folder in (("--samples", self.samples_dir),
                               ("--prepared", self.prepared_dir)):
            if not folder.is_dir():
                raise WMHError(f"{option} {folder}: no such folder")
        return DataStages(cohort=self.prepared_dir, synthetic=self.data_label == "synthetic",
                          prepared=self.prepared_dir, samples=self.samples_dir)


@click.command("tune")
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
@gathered(lambda: TuneOptions, "options")  # --storage, ..., --samples, --prepared, --data-label
def tune_command(config_path, overrides, override_list, precision, register_name, options):
    """Optuna search over alpha, injection layer, architecture, learning rate and dropout."""
    from wmh.tune import format_summary, tune

    config = with_precision(resolve_config(config_path, overrides, override_list), precision)
    config = options.apply(config)
    check_outputs((config.data.cache_dir, "data.cache_dir"))
    summary = tune(config, options.stages(), progress=click.echo)
    click.echo(format_summary(summary))
    if register_name and not summary.best_run_id:
        raise WMHError(f"--register {register_name}: the study has no complete trial yet")
    echo_registration(summary.best_run_id, register_name)


# --- segment commands ---

def _segment_options():
    from wmh.segment import SegmentOptions

    return SegmentOptions


@click.command("segment")
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
@gathered(_segment_options, "options", precision=lambda value: value or "auto",
          calibration=lambda value: None if value == "model" else "none")
def segment_command(model_source, inputs, out_dir, subject_id, quiet, options):
    """Segment WMH in INPUTS: a subject folder, a cohort, or FLAIR [T1] files.

    Without --model, the FLAIR model shipped with wmh does it (`wmh models`).

    A subject that fails in a cohort is recorded (status 'failed' in volumes.csv) and the
    others go on; the exit code is then 1. Bad options or a bad file given directly
    exit 2 before anything is written.
    """
    from wmh.segment import run_cohort

    result = run_cohort(model_source, inputs, out_dir, options, progress=not quiet,
                        subject_id=subject_id)
    for row in result.rows:
        if row["subject_id"] in result.segmented:
            click.echo(f"{row['subject_id']}: {row['total_ml']:.2f} mL WMH "
                       f"({row['periventricular_ml']:.2f} periventricular, "
                       f"{row['deep_ml']:.2f} deep), {row['lesion_count']} lesions")
    click.echo(f"segmented {len(result.segmented)}, skipped {len(result.skipped)} (already "
               f"done with this model and settings), failed {len(result.failed)}")
    click.echo(f"outputs in {out_dir}; volumes in {out_dir / 'volumes.csv'}; QC page "
               f"{out_dir / 'index.html'}")
    return cohort_exit_code(f"wmh: error: {len(result.failed)} subject(s) failed",
                            result.failed, out_dir / "volumes.csv")


@click.command("calibrate")
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
@click.option("--adapt-prevalence", is_flag=True,
              help="Shift each scan's probabilities to its own WMH prevalence, estimated "
                   "by EM (a heavy load no longer reads as unlikely as a light one); the "
                   "threshold is chosen on the adapted maps. Default: one prevalence, the "
                   "scans' pooled.")
@click.option("--threshold-objective", "objective", default="pooled", show_default=True,
              help="What the threshold maximises: 'pooled', the Dice of all scans' voxels "
                   "(heavy loads dominate it), or 'mean', the mean of the scans' Dice "
                   "(scans without WMH left out).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def calibrate_command(model_source, data, out_dir, method, subjects, adapt_prevalence,
                      objective, quiet):
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
                         progress=not quiet, adapt_prevalence=adapt_prevalence,
                         objective=objective)
    click.echo(json.dumps(summary(result)))
    click.echo(f"model: {result.out_dir}")


@click.command("models")
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


COMMANDS = (train_command, tune_command, segment_command, calibrate_command, models_command)
