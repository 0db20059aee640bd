"""Alias of ``bench_segment.py`` (dense vs patch-wise inference); prints the same JSON.

Usage: ``.venv/bin/python benchmarks/bench_dense.py [--arch msws --loc ffcl --width 1.0]``
(same options as ``bench_segment.py``; kept so that older notes and commands still work).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_segment import main  # one implementation

if __name__ == "__main__":
    main()
