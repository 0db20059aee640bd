"""The data commands: config, check, synth, prepare, prior build, sample."""

from __future__ import annotations

from pathlib import Path

import click

from wmh.cli.options import (check_output_file, check_outputs, cohort_exit_code,
                             config_options, gathered, resolve_config)
from wmh.errors import WMHError


@click.command("config")
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


@click.command("check")
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

def _synth_config():
    from wmh.config import SynthConfig

    return SynthConfig


@click.command("synth")
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
@gathered(_synth_config, "cohort")  # --subjects, --seed, --profile, --flair-only, ...
def synth_command(out, preview, workers, cohort):
    """Write a synthetic cohort (MICCAI WMH 2017 layout + cohort.json) to OUT."""
    from wmh.synth import synthesize_cohort

    check_outputs((out, "OUT"))
    synthesize_cohort(out, cohort, preview=preview, workers=workers, progress=True)
    click.echo(f"synthetic cohort of {cohort.subjects} subjects in {out} (see "
               f"{out / 'cohort.json'})")


# --- prepare commands ---

@click.command("prepare")
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
    return cohort_exit_code(f"wmh prepare: {len(report.failed)} of {len(report.order)} "
                            "subjects failed", sorted(report.failed), report.summary_path)


@click.group("prior")
def prior_group():
    """The WMH prior probability map in MNI space (location feature 8)."""


@prior_group.command("build")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Prior NIfTI to write, e.g. wmh_prior_mni.nii.gz.")
@click.option("--spacing-mm", type=float, default=4.0, show_default=True,
              help="Voxel size of the prior grid.")
@click.option("--smoothing-mm", type=float, default=None,
              help="Gaussian smoothing sigma [default: preprocess.prior_smoothing_mm].")
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
    if smoothing_mm is None:
        smoothing_mm = config.preprocess.prior_smoothing_mm  # as the pipeline's prior stage
    prior = build_prior_from_cohort(data, config, spacing_mm, smoothing_mm, workers=workers,
                                    subject_ids=subject_ids, option=option)
    prior.save(out_path)
    click.echo(f"prior from {prior.subjects} labelled subjects -> {out_path}")


# --- sample commands ---

@click.command("sample")
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


COMMANDS = (config_command, check_command, synth_command, prepare_command, prior_group,
            sample_command)
