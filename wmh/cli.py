"""The ``wmh`` command: thin wrappers that parse options and call the modules.

User errors (:class:`wmh.errors.WMHError`, bad options) print one line and exit 2,
without a traceback. Heavy libraries (TensorFlow, MLflow) are imported inside the
commands that need them, so ``wmh --help`` and the data commands start fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wmh import __version__
from wmh.errors import WMHError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wmh")
def cli():
    """White matter hyperintensity segmentation with location-sensitive CNNs."""


def config_options(function):
    """--config FILE and repeated --set key=value, resolved by wmh.config.load_config."""
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                            help="Override a config field, e.g. --set model.alpha=0.5.")(function)
    return click.option("--config", "config_path", type=click.Path(path_type=Path),
                        help="Experiment YAML (see experiments/).")(function)


@cli.command("config")
@config_options
def config_command(config_path, overrides):
    """Print the resolved configuration as YAML."""
    from wmh.config import dump_yaml, load_config

    click.echo(dump_yaml(load_config(config_path, overrides)), nl=False)


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

# --- prepare commands ---

# --- sample commands ---

# --- train commands ---

# --- segment commands ---

# --- evaluate commands ---

# --- tune commands ---

# --- pipeline commands ---


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
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
