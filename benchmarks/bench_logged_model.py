"""What MLflow 3 logging adds to a training run: logging the model as a logged model
(pyfunc with signature and input example, validated by MLflow), logging the three split
datasets, registering a version with its aliases, and resolving ``models:/NAME@best``
back to the model folder. Prints JSON.

    python benchmarks/bench_logged_model.py [--repeats 3] [--width 1.0]

Runs in a temporary SQLite store; the model is a paper-size MSWS + FFCL network (untrained:
the cost does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
        import numpy as np

        from wmh import registry, tracking, train
        from wmh.config import ModelConfig
        from wmh.contract import ModelContract
        from wmh.models import build_model

        config = ModelConfig(arch="msws", loc="ffcl", width=args.width)
        model = build_model(config, 2)
        contract = ModelContract(model=config, channels=("FLAIR", "T1"),
                                       inplane_spacing_mm=1.0, threshold=0.5)
        model_dir = train.save_model_dir(model, contract, folder / "model")
        size_mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 1e6
        rng = np.random.default_rng(0)
        example = {name: rng.random((2, 32, 32, 2), np.float32) for name in ("s1", "s2", "s3")}
        example["loc"] = rng.random((2, 8), np.float32)
        mlflow = tracking.configure_mlflow("bench-logged-model")
        seconds = {"log_model": [], "register": [], "resolve_alias": []}
        for _ in range(args.repeats):
            with mlflow.start_run() as run:
                mlflow.set_tag("dataset_hash", "bench")
                start = time.perf_counter()
                registry.log_model(model_dir, train.load_network_dir(model_dir), example,
                                   {"val_volume_dice": 0.5})
                seconds["log_model"].append(time.perf_counter() - start)
            start = time.perf_counter()
            registry.register(run.info.run_id, "bench")
            seconds["register"].append(time.perf_counter() - start)
            start = time.perf_counter()
            registry.model_folder("models:/bench@best")
            seconds["resolve_alias"].append(time.perf_counter() - start)
    print(json.dumps({"machine": describe(), "model": f"msws+ffcl width {args.width}",
                      "model_folder_mb": round(size_mb, 2), "repeats": args.repeats,
                      **{f"{key}_s_median": round(statistics.median(values), 3)
                         for key, values in seconds.items()}}, indent=2))


if __name__ == "__main__":
    main()
