"""How long a process that has imported TensorFlow and run a Keras model takes to exit:
Python's own exit against :func:`wmh.launch.exit_now` (issue 15 speed). Prints one JSON
object.

Usage: ``.venv/bin/python benchmarks/bench_exit.py [--repeats 3]``

Each repeat starts a fresh interpreter that imports TensorFlow, Keras and
:mod:`wmh.models`, predicts with a small Keras model, prints the time and then ends either
by returning (``python_exit``) or through ``exit_now(0)`` (``exit_now``). The figure is
the wall time from that print to the parent seeing the process end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402  benchmarks/machine.py

CHILD = """
import sys, time
import tensorflow as tf, keras
import wmh.models
from wmh import launch
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
model.predict(tf.ones((2, 8)), verbose=0)
print(time.time(), flush=True)
if sys.argv[1] == "exit_now":
    launch.exit_now(0)
"""


def exit_seconds(how: str) -> float:
    child = subprocess.run([sys.executable, "-c", CHILD, how], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    end = time.time()
    return end - float(child.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    result = {"benchmark": "exit", "load_1min_before": round(load_before, 2)}
    for how in ("python_exit", "exit_now"):
        runs = [exit_seconds(how) for _ in range(args.repeats)]
        result[how] = {"runs_s": [round(r, 3) for r in runs],
                       "median_s": round(sorted(runs)[len(runs) // 2], 3)}
    result.update({"load_1min_after": round(os.getloadavg()[0], 2), "machine": describe()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
