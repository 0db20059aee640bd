"""The command-line reference (``docs/cli.md``), rendered from the click commands.

``python -m wmh.clidoc > docs/cli.md`` regenerates it; a test checks that the committed
file equals :func:`render`, so the reference never drifts from the code.
"""

from __future__ import annotations

import click

WIDTH = 92  # help text is wrapped at this width, whatever the terminal


def _commands(group: click.Group, context: click.Context, path: tuple[str, ...] = ()):
    """(command path, command, context) for every command below ``group``, depth first."""
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        child = command.make_context(name, [], parent=context,
                                     resilient_parsing=True, terminal_width=WIDTH,
                                     max_content_width=WIDTH)
        yield (*path, name), command, child
        if isinstance(command, click.Group):
            yield from _commands(command, child, (*path, name))


def render() -> str:
    """Markdown: the top-level help, then every command's ``--help`` in command order."""
    from wmh.cli import cli

    root = cli.make_context("wmh", [], resilient_parsing=True, terminal_width=WIDTH,
                            max_content_width=WIDTH)
    parts = ["# `wmh` command reference",
             "",
             "Every command's `--help`, generated from the code by "
             "`python -m wmh.clidoc > docs/cli.md` (a test keeps this file up to date). "
             "The README explains what the commands are for.",
             "",
             "## wmh", "", "```text", cli.get_help(root), "```"]
    for path, command, context in _commands(cli, root):
        parts += ["", f"## wmh {' '.join(path)}", "", "```text", command.get_help(context),
                  "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    click.echo(render(), nl=False)
