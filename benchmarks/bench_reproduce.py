"""The whole reproduction, as users run it: wall time and memory; prints JSON.

Usage: ``.venv/bin/python benchmarks/bench_reproduce.py [--scale demo] [--work DIR]
[--output result.json]``

Runs ``mlflow run . --env-manager local -e reproduce -P scale=<scale>`` from scratch: a
fresh data cache, output folder and MLflow store under ``--work`` (default: a temporary
folder), so nothing cached from earlier runs is reused. Measures:

* ``wall_minutes``: the command's wall time, start to report (target for ``demo``: 60 on
  2 cores); ``cpu_minutes``: user + system CPU time of all its processes;
* ``peak_rss_gib``: the largest resident set of any one process it ran;
* ``experiments``: per experiment, its seconds (data stages, training, segmentation of the
  test subjects, evaluation; the first one also synthesises and prepares the cohort) and
  its test Dice against observer 1 (**synthetic** data).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="demo")
    parser.add_argument("--work", default=None, help="fresh folder for cache/outputs/MLflow")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="wmh-bench-reproduce-"))
    work.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
                       TF_CPP_MIN_LOG_LEVEL="2",
                       PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local", "-e", "reproduce",
               "-P", f"scale={args.scale}", "-P", f"out={work / 'outputs'}",
               "-P", f"set=data.cache_dir={work / 'cache'}"]
    load_before = os.getloadavg()[0]
    start = time.time()
    with open(work / "reproduce.log", "w") as log:
        completed = subprocess.run(command, cwd=work, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT)
    wall = time.time() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        sys.exit(f"reproduce failed (exit {completed.returncode}); see {work / 'reproduce.log'}")
    experiments = {}
    for result_file in sorted((work / "outputs" / args.scale).glob("*/result.json")):
        stored = json.loads(result_file.read_text())
        counts = stored["result"]["counts_obs1"]
        tp, fp, fn = (sum(row[i] for row in counts) for i in range(3))
        experiments[stored["experiment"]] = {
            "seconds": round(stored["seconds"], 1),
            "test_dice_obs1_synthetic": round(2 * tp / max(2 * tp + fp + fn, 1), 4)}
    result = {
        "benchmark": "reproduce", "scale": args.scale, "data": "synthetic",
        "machine": describe(), "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "wall_minutes": round(wall / 60, 2),
        "cpu_minutes": round((usage.ru_utime + usage.ru_stime) / 60, 2),
        "peak_rss_gib": round(usage.ru_maxrss / 2 ** 20, 2),
        "experiments": experiments,
        "report": str(work / "outputs" / args.scale / "report" / "report.md"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
