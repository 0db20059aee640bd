"""The result commands: evaluate, report, demo, reproduce."""

from __future__ import annotations

from pathlib import Path

import click

from wmh.cli.options import (check_outputs, config_options, echo_registration, gathered,
                             register_option, resolve_config)


# --- evaluate commands ---

@click.command("evaluate")
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


def _named_values(context, parameter, values) -> tuple[tuple[str, str], ...]:
    """A repeated 'NAME=VALUE' option -> ((name, value), ...); bad syntax is a usage error
    (exit 2)."""
    pairs = []
    for text in values:
        name, separator, value = text.partition("=")
        if not separator or not name.strip() or not value.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got '{text}'",
                                     param_hint=parameter.opts[0])
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def _report_sources():
    from wmh.evaluation.report import ReportSources

    return ReportSources


def _report_options():
    from wmh.evaluation.results import ReportOptions

    return ReportOptions


@click.command("report")
@click.option("--method", "methods", multiple=True, metavar="NAME=FOLDER", callback=_named_values,
              help="A method's test-set probability maps (repeatable), e.g. 'SS + Loc=out/ssloc'.")
@click.option("--run", "runs", multiple=True, metavar="NAME=RUN_ID", callback=_named_values,
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
@click.option("--resamples", "ci_resamples", type=click.IntRange(min=10), default=1000,
              show_default=True,
              help="Bootstrap resamples for confidence bands.")
@click.option("--pvalue-resamples", type=click.IntRange(min=10), default=100,
              show_default=True, help="Paired bootstrap resamples for p-values (paper: 100).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--mlflow", "log_to_mlflow", is_flag=True,
              help="Also log the report to MLflow (the active run, else a new one).")
@gathered(_report_sources, "sources")  # --method, --run, --truth, --observer2, ...
@gathered(_report_options, "options")  # --resamples, --pvalue-resamples, --seed
def report_command(sources, options, output_dir, data_label, log_to_mlflow):
    """The paper's Tables 2-6 and Figures 4-5 for several methods, beside its numbers."""
    from wmh.evaluation import report

    check_outputs((output_dir, "--out"))
    notes: list[str] = []
    results = report.collect_results(sources, notes)
    for note in notes:
        click.echo(note, err=True)
    if data_label is None:
        data_label = report.infer_data_label(sources.truth)
        click.echo(f"data: {data_label} (say what they are with --data-label)", err=True)
    files = report.write_report(results, output_dir, data_label, options,
                                log_to_mlflow=True if log_to_mlflow else None)
    click.echo(f"wrote {files.markdown}")


# --- pipeline commands ---

@click.command("demo")
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


def _reproduce_request():
    from wmh.reproduce import ReproduceRequest

    return ReproduceRequest


def _alphas(text: str):
    """--alphas A,B -> the α values; empty = None (the scale's)."""
    from wmh.reproduce import parse_alphas

    return parse_alphas(text) if text.strip() else None


@click.command("reproduce")
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
@gathered(_reproduce_request, "request", alphas=_alphas)  # --scale, --experiments, --set, ...
def reproduce_command(out_dir, override_list, dry_run, register_name, request):
    """Run the paper's experiments (Tables 2-6) and write the comparison report."""
    import dataclasses

    from wmh import reproduce

    request = dataclasses.replace(request, overrides=(*request.overrides,
                                                      *override_list.split()))
    if dry_run:
        click.echo(reproduce.describe(request))
        return
    check_outputs((out_dir, "--out"))
    done = reproduce.reproduce(request, out_dir, progress=click.echo)
    click.echo(f"\n{reproduce.summary_table(done)}")
    click.echo(f"\nReport ({done.data_label} data): {done.report.markdown}")
    click.echo(f"MLflow parent run {done.parent_run_id} ({done.seconds / 60:.1f} min); open "
               "the UI with `make ui` (http://127.0.0.1:5000)")
    if register_name:
        from wmh.registry import best_run

        echo_registration(best_run([outcome.run_id for outcome in done.outcomes]),
                          register_name)


COMMANDS = (evaluate_command, report_command, demo_command, reproduce_command)
