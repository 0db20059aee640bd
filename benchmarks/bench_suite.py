"""CPU and wall seconds of pytest runs (the default suite or chosen tests); prints JSON.

Usage: ``.venv/bin/python benchmarks/bench_suite.py [--root CHECKOUT] [--label NAME]
[--serial] [-- PYTEST ARGS...]``

Runs ``python -m pytest -q -p no:cacheprovider XDIST PYTEST ARGS`` in ``--root`` (default:
this checkout; its ``wmh`` wins through PYTHONPATH, so an exported older commit can be
measured with the same interpreter), where XDIST is the Makefile's ``XDIST`` (the
pytest-xdist workers ``make test`` runs; none with ``--serial`` or in a checkout whose
Makefile has none), and records:

* ``cpu_seconds``: user + system time of pytest and every process it waited for (the
  xdist workers, the ``wmh``/``mlflow`` subprocesses some tests start), which depends
  little on what else the machine runs, unlike ``wall_seconds`` (``load_average_1min``
  before and after say how busy it was);
* ``summary``: pytest's last line (passed, failed, skipped, deselected counts);
* ``durations``: pytest's slowest durations (``--durations`` rows, wall seconds).

Without PYTEST ARGS it runs the default suite (``make test``: pyproject's addopts
deselect ``slow``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_test_workers(root: Path) -> list[str]:
    """The pytest-xdist options of ``make test`` (the Makefile's ``XDIST ?= ...``), or none."""
    try:
        makefile = (root / "Makefile").read_text()
    except OSError:
        return []
    found = re.search(r"^XDIST \?=(.*)$", makefile, flags=re.M)
    return found.group(1).split() if found else []


def has_xdist() -> bool:
    return importlib.util.find_spec("xdist") is not None


def run(root: Path, arguments: list[str], durations: int) -> dict:
    inherited = os.environ.get("PYTHONPATH")  # kept after the root's (its wmh wins)
    environment = {**os.environ,
                   "PYTHONPATH": os.pathsep.join([str(root), *([inherited] if inherited else [])])}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--durations={durations}", *arguments]
    load_before = os.getloadavg()[0]
    cpu_before, began = children_cpu(), time.perf_counter()
    completed = subprocess.run(command, cwd=root, env=environment, capture_output=True,
                               text=True)
    wall = time.perf_counter() - began
    cpu = children_cpu() - cpu_before
    lines = completed.stdout.strip().splitlines()
    rows = []
    if "slowest" in completed.stdout:
        start = next(i for i, line in enumerate(lines) if "slowest" in line)
        for line in lines[start + 1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith("s") and parts[1] in ("call", "setup",
                                                                         "teardown"):
                rows.append({"seconds": float(parts[0][:-1]), "phase": parts[1],
                             "test": parts[2]})
    return {"command": command[1:], "returncode": completed.returncode,
            "summary": lines[-1] if lines else completed.stderr.strip()[-500:],
            "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "durations": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="checkout whose tests (and wmh) run (default: this one)")
    parser.add_argument("--label", default="", help="a name for this measurement")
    parser.add_argument("--durations", type=int, default=15,
                        help="how many of the slowest durations to keep (0: all)")
    parser.add_argument("--serial", action="store_true",
                        help="one pytest process, without make test's xdist workers")
    parser.add_argument("pytest_args", nargs="*", help="after --: node ids and options")
    options = parser.parse_args()
    if not (options.root / "tests").is_dir():
        parser.exit(2, f"bench_suite: --root {options.root}: no tests/ folder\n")
    workers = [] if options.serial else make_test_workers(options.root)
    if workers and not has_xdist():
        parser.exit(2, "bench_suite: make test runs pytest-xdist (the Makefile's XDIST), "
                       "which this Python lacks: make install, or --serial\n")
    result = {"label": options.label, "machine": describe(),
              "cpus_available": len(os.sched_getaffinity(0)), "root": str(options.root),
              "xdist": " ".join(workers) or "none",
              **run(options.root.resolve(), [*workers, *options.pytest_args],
                    options.durations)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
