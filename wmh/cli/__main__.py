"""``python -m wmh.cli``: the ``wmh`` command."""

from wmh.cli import main

main()
