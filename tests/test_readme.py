"""The README's commands exist as shown, and docs/cli.md is what the code renders.

Every ``wmh ...``, ``mlflow run . ...`` and ``make ...`` line in the README's bash blocks
is checked, so a new command in the README is checked without touching this file:
``wmh`` lines parse with click (the command and every option exist, values have the
right types, required options are there); ``mlflow run`` lines name an entry point and
parameters of MLproject, and the ``wmh`` command MLflow renders from them parses too;
``make`` targets exist. Cheap commands (``wmh config``, ``--dry-run``) also run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_commands(text: str) -> list[str]:
    """Command lines of the bash blocks: continuations joined, placeholders filled."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)  # optional parts: [--json]
            line = re.sub(r"<[^<>]+>", "PLACEHOLDER", line)  # runs:/<run id>/model
            line = line.replace("DATA_OR_FILES", "DATA")
            if line.strip():
                lines.append(line.strip())
    return lines


def split(line: str) -> list[str]:
    return shlex.split(line, comments=True)


COMMANDS = readme_commands(README.read_text())
WMH = [line for line in COMMANDS if split(line)[:1] == ["wmh"]]
MLFLOW_RUN = [line for line in COMMANDS if split(line)[:3] == ["mlflow", "run", "."]]
MAKE = [line for line in COMMANDS if split(line)[:1] == ["make"]]


def parse_wmh(argv: list[str]) -> tuple[str, dict]:
    """(command path, parsed parameters) of `wmh argv`, parsed as click would; raises
    click.UsageError for an unknown command or option, a bad value, a missing option."""
    from wmh.cli import cli

    command, path = cli, []
    context = cli.make_context("wmh", list(argv), resilient_parsing=True)
    argv = list(argv)
    while argv and argv[0].startswith("-"):  # global options such as --verbose
        assert argv.pop(0) in {"--verbose"}, argv
    while isinstance(command, click.Group):
        name = argv.pop(0)
        sub = command.get_command(context, name)
        if sub is None:
            raise click.UsageError(f"no command '{' '.join([*path, name])}'")
        path.append(name)
        command = sub
        if isinstance(command, click.Group):
            context = command.make_context(name, [], parent=context, resilient_parsing=True)
    parsed = command.make_context(" ".join(path), argv, parent=context)
    return " ".join(path), parsed.params


def test_the_readme_shows_every_command():
    from wmh.cli import cli

    assert len(WMH) >= 15 and len(MLFLOW_RUN) >= 8 and MAKE
    shown = {parse_wmh(split(line)[1:])[0] for line in WMH}
    context = click.Context(cli)
    expected = set()
    for name in cli.list_commands(context):
        command = cli.get_command(context, name)
        if isinstance(command, click.Group):
            expected |= {f"{name} {sub}" for sub in command.list_commands(context)}
        else:
            expected.add(name)
    assert expected - shown == set(), "commands the README never shows"


@pytest.mark.parametrize("line", WMH)
def test_readme_wmh_command_parses(line):
    parse_wmh(split(line)[1:])


@pytest.mark.parametrize("line", MLFLOW_RUN)
def test_readme_mlflow_run_renders_a_wmh_command_that_parses(line):
    from mlflow.projects._project_spec import load_project

    argv = split(line)[3:]
    entry_point, parameters = "main", {}
    while argv:
        option = argv.pop(0)
        if option == "--env-manager":
            assert argv.pop(0) == "local"
        elif option == "-e":
            entry_point = argv.pop(0)
        elif option == "-P":
            key, _, value = argv.pop(0).partition("=")
            parameters[key] = value
        else:
            raise AssertionError(f"unexpected {option!r} in {line!r}")
    entry = load_project(str(ROOT)).get_entry_point(entry_point)
    assert set(parameters) <= set(entry.parameters), "parameters MLproject does not declare"
    rendered = split(entry.compute_command(parameters, storage_dir=None))
    assert rendered[0] == "wmh"
    parse_wmh(rendered[1:])


def test_readme_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    for line in MAKE:
        assert split(line)[1] in targets, line


def test_readme_cheap_commands_run(tmp_path, monkeypatch, capsys):
    from wmh.cli import main

    monkeypatch.chdir(ROOT)
    ran = 0
    for line in WMH:
        argv = split(line)[1:]
        if argv[0] == "config" or "--dry-run" in argv:
            with pytest.raises(SystemExit) as exit_info:
                main(argv)
            assert exit_info.value.code == 0, (line, capsys.readouterr().err)
            ran += 1
    assert ran >= 2
    assert "epochs: 2" in capsys.readouterr().out  # the README's `wmh config --set`


def test_readme_parser_catches_a_wrong_option():
    with pytest.raises(click.UsageError, match="No such option '--n-trails'"):
        parse_wmh(["tune", "--n-trails", "3"])
    with pytest.raises(click.UsageError, match="no command 'prior bild'"):
        parse_wmh(["prior", "bild", "DATA", "--out", "x"])
    with pytest.raises(click.UsageError, match="output_dir"):
        parse_wmh(["report", "--method", "A=B"])


def test_cli_reference_is_up_to_date():
    import subprocess
    import sys

    # A fresh process: click caches each command's help option once used, so other
    # tests that invoke a command directly would change how its help renders here.
    rendered = subprocess.run([sys.executable, "-m", "wmh.clidoc"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=True).stdout
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == rendered, \
        "docs/cli.md is stale: run `python -m wmh.clidoc > docs/cli.md`"
    for command in ("wmh segment", "wmh prior build", "wmh tune"):
        assert f"\n## {command}\n" in committed
