"""The ``wmh`` command: thin wrappers that parse options and call the modules.

User errors (:class:`wmh.errors.WMHError`, bad options) print one line and exit 2,
without a traceback. Heavy libraries (TensorFlow, MLflow) are imported inside the
commands that need them, so ``wmh --help`` and the data commands start fast.

The commands live in one module per group, each a list of plain click commands that
:data:`cli` adds: :mod:`~wmh.cli.data_commands` (config, check, synth, prepare, prior,
sample), :mod:`~wmh.cli.model_commands` (train, tune, segment, calibrate, models) and
:mod:`~wmh.cli.result_commands` (evaluate, report, demo, reproduce); the options and
helpers they share are in :mod:`~wmh.cli.options`.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from wmh import __version__
from wmh.cli import data_commands, model_commands, result_commands
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


for _module in (data_commands, model_commands, result_commands):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


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


