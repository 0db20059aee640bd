"""``python -m wmh``: the ``wmh`` command, quiet as the console script is."""

from wmh.launch import main

main()
