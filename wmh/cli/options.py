"""Options and helpers the ``wmh`` commands share: configs and overrides, precision,
registration, output checks, and many options handed on as one object (:func:`gathered`)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import click

from wmh.errors import WMHError


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


def cohort_exit_code(head: str, failed_ids, where) -> int:
    """A cohort command's exit status: 1 after naming the failed subjects on stderr
    (``"<head>: id, id (see <where>)"``), 0 when none failed."""
    failed_ids = list(failed_ids)
    if not failed_ids:
        return 0
    click.echo(f"{head}: {', '.join(failed_ids)} (see {where})", err=True)
    return 1


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


def gathered(load: Callable[[], type], name: str, **convert: Callable):
    """Hands a command the options named like the fields of a dataclass as one object.

    The command receives ``load()(**those options)`` as its argument ``name`` instead of
    one argument per option (a field without an option keeps its default), so a command
    with many options keeps a short signature. ``load`` returns the class when the command
    runs: its module is imported then, not by ``wmh --help``. ``convert`` maps a field to
    a function of the option's value (e.g. an option's "not given" to the field's own).
    """
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            cls = load()
            fields = {field.name for field in dataclasses.fields(cls)}
            values = {key: kwargs.pop(key) for key in list(kwargs) if key in fields}
            values.update({key: convert[key](value) for key, value in values.items()
                           if key in convert})
            return function(*args, **kwargs, **{name: cls(**values)})
        return wrapper
    return decorate
