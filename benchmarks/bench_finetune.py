"""Fine-tuning the shipped model on real labels, leave one case out (issue 17, item 4).

Usage: ``.venv/bin/python benchmarks/bench_finetune.py MANIFEST [--init pretrained]
[--config experiments/finetune_flair.yaml] [--set KEY=VALUE ...]``

For every case of a CSV manifest with masks (at least 3 cases), fine-tunes the model
``--init`` (``train.init_model``: the shipped model by default, or a model folder / MLflow
URI) on the other cases — the first of them (in manifest order) trains, the rest validate
(the threshold and calibration are chosen on them) — with the recipe ``--config``, then
segments the held-out case and scores it exactly as ``benchmarks/bench_real.py`` does
(Dice, HD95, AVD, lesion recall/F1, volumes, the global-threshold floor). Beside each fold,
the starting model on the same held-out case (no fine-tuning), so the gain is measured on
the same data.

Each fold writes its manifest (absolute paths, the ``split`` column fixed) into a temporary
folder; training uses the project's cached stages (``data.cache_dir``) and MLflow store.

The JSON last line: ``mean_dice`` (fine-tuned), ``mean_dice_start`` (the starting model),
``cases``, ``failed``, ``seconds_per_fold``, the per-fold rows and the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_real import COLUMNS, _format, run as score_cases  # noqa: E402
from machine import cpu_model, vector_isa  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fold_manifests(manifest: Path, held_out: str, folder: Path) -> tuple[Path, Path]:
    """(training manifest: the other cases, first train and the rest validation; test
    manifest: the held-out case alone), paths made absolute."""
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    base = manifest.resolve().parent
    columns = [c for c in ("subject_id", "flair", "t1", "mask", "site", "participant")
               if c in rows[0]]
    for row in rows:
        for column in ("flair", "t1", "mask"):
            if row.get(column):
                row[column] = str((base / row[column]).resolve())
    others = [row for row in rows if row["subject_id"] != held_out]
    train_manifest, test_manifest = folder / "train.csv", folder / "test.csv"
    with open(train_manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns + ["split"], extrasaction="ignore")
        writer.writeheader()
        for index, row in enumerate(others):
            writer.writerow({**row, "split": "train" if index == 0 else "validation"})
    with open(test_manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(row for row in rows if row["subject_id"] == held_out)
    return train_manifest, test_manifest


def run(manifest: Path, init: str, config_path: Path, overrides: list[str]) -> dict:
    from wmh import io, pipeline
    from wmh.config import load_config
    from wmh.errors import WMHError

    if not manifest.is_file():
        raise WMHError(f"{manifest}: manifest not found")
    cases = [subject.subject_id for subject in io.discover_manifest(manifest)]
    if len(cases) < 3:
        raise WMHError(f"{manifest}: leave-one-out fine-tuning needs at least 3 cases "
                       f"with masks, found {len(cases)}")
    folds = []
    for held_out in cases:
        with tempfile.TemporaryDirectory(prefix="bench_finetune_") as scratch:
            train_manifest, test_manifest = fold_manifests(manifest, held_out, Path(scratch))
            config = load_config(config_path, [*overrides, f"data.root={train_manifest}",
                                               f"train.init_model={init}",
                                               f"name=finetune-loo-{held_out}"])
            start = time.perf_counter()
            result = pipeline.run_training(config)
            seconds = time.perf_counter() - start
            tuned = score_cases(test_manifest, str(result.model_dir), None, False)
            before = score_cases(test_manifest, init, None, False)
        row = {"held_out": held_out, "train_seconds": seconds,
               "threshold": result.threshold, "validation_dice": result.validation_dice,
               "start": before["rows"][0], "tuned": tuned["rows"][0]}
        folds.append(row)
        print(f"fold {held_out}: Dice {_format(row['start'].get('dice'))} -> "
              f"{_format(row['tuned'].get('dice'))} (floor "
              f"{_format(row['tuned'].get('floor_dice'))}), {seconds:.0f} s", flush=True)
    ok = [fold for fold in folds if fold["tuned"]["status"] == "ok"]
    return {
        "benchmark": "finetune_loo", "data": "real", "init_model": init,
        "config": str(config_path), "overrides": overrides, "cases": len(folds),
        "failed": len(folds) - len(ok),
        "mean_dice": float(np.mean([f["tuned"]["dice"] for f in ok])) if ok else None,
        "mean_dice_start": float(np.mean([f["start"]["dice"] for f in ok
                                          if f["start"]["status"] == "ok"])) if ok else None,
        "seconds_per_fold": float(np.mean([f["train_seconds"] for f in folds])),
        "folds": folds,
        "machine": {"cpu": cpu_model(), "isa": vector_isa(), "cores": os.cpu_count(), "gpu": "none",
                    "python": platform.python_version()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--init", default="pretrained",
                        help="train.init_model: pretrained, a model folder or an MLflow URI")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments/finetune_flair.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override (repeatable)")
    args = parser.parse_args(argv)

    from wmh.errors import WMHError

    try:
        summary = run(args.manifest, args.init, args.config, args.overrides)
    except WMHError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("  ".join(f"{c:>10}" for c in ["case", "start", *COLUMNS[1:]]))
    for fold in summary["folds"]:
        tuned = {**fold["tuned"], "start": fold["start"].get("dice")}
        print("  ".join(f"{_format(tuned.get(c)):>10}"
                        for c in ["subject_id", "start", *COLUMNS[1:]]))
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
