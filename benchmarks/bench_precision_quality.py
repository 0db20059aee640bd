"""bfloat16 quality check (issue 20): a recipe trained in fp32 and in bf16; prints JSON.

Usage (in a scratch folder: data, caches and the MLflow store go to the working
directory)::

    python <repo>/benchmarks/bench_precision_quality.py [--config <repo>/experiments/demo.yaml]
        [--set train.epochs=2 ...]

1. The data stages of the recipe (``wmh.pipeline.ensure_data``; the demo: 12 SYNTHETIC
   subjects), then ``wmh.train.train`` twice at equal samples (same config, seed, data
   and batch order) with ``train.precision`` fp32 and bf16. Each run's whole-volume
   validation (threshold choice) runs in its own precision. Recorded per run: training
   seconds, best epoch, validation AUC (balanced samples), voxel-wise validation AUC and
   Dice at its validation-optimal threshold.
2. Each trained model then predicts the held-out test subjects in fp32 and in bf16
   (``predict_volume(..., precision=...)``, same weights): Dice inside the brain mask on
   the working grid (label 2 ignored), pooled over the test subjects and as a per-subject
   mean, at the model's own threshold; ``max_abs_diff`` is the largest |bf16 - fp32|
   probability over the test brains.
3. ``changes``: bf16 minus fp32 for training (fp32 inference both), for inference (fp32
   training both) and for both together.

All figures are on SYNTHETIC data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "bf16")


def test_dice(model, contract, threshold, prepared_dir, subject_ids, precision):
    """Pooled and mean per-subject Dice, and the probabilities, of the test subjects."""
    import numpy as np

    from wmh.evaluation import metrics
    from wmh.preprocess import PreparedSubject
    from wmh.train import predict_volume

    counts, per_subject, probabilities = [], [], []
    for subject_id in subject_ids:
        prepared = PreparedSubject.load(Path(prepared_dir) / f"{subject_id}.h5")
        images = prepared.images[..., :len(contract.channels)]
        probability = predict_volume(model, contract.model, images, prepared.location,
                                     prepared.brain_mask, precision=precision)
        count = metrics.confusion_counts(probability, prepared.labels, prepared.brain_mask,
                                         threshold)
        counts.append(count)
        per_subject.append(metrics.dice_from_counts(*count[:3]))
        probabilities.append(probability[prepared.brain_mask])
    tp, fp, fn, _ = np.sum(counts, axis=0)
    return (metrics.dice_from_counts(tp, fp, fn), float(np.mean(per_subject)),
            np.concatenate(probabilities))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs of the same config and data (e.g. after "
                             "an interruption) instead of training again")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from wmh import pipeline, sampling, train
    from wmh.config import dump_yaml, load_config, replace
    from wmh.lifecycle import RunOptions
    from wmh.loader import load_model_dir
    from wmh.models import build_dense_model
    from wmh.models.precision import cpu_bf16_isa

    config = load_config(args.config, args.overrides)
    start = time.perf_counter()
    stages = pipeline.ensure_data(config)
    config = pipeline.with_prior(config, stages)  # the model carries the prior it used
    data_s = time.perf_counter() - start
    test_ids = sampling.load_splits(stages.samples)["test"]
    result = {"benchmark": "bf16_quality", "data": "SYNTHETIC" if stages.synthetic else "real",
              "config": args.config, "overrides": args.overrides,
              "recipe": recipe(dump_yaml(config)),
              "test_subjects": len(test_ids), "data_stages_s": round(data_s, 1),
              "cpu_bf16_isa": cpu_bf16_isa()}
    runs, probabilities = {}, {}
    for train_precision in PRECISIONS:
        trained_config = replace(config, **{"train.precision": train_precision})
        start = time.perf_counter()
        trained = train.train(trained_config, stages.samples, stages.prepared, options=RunOptions(
            data_label="synthetic" if stages.synthetic else "real", reuse_finished=args.reuse))
        seconds = time.perf_counter() - start
        model, contract = load_model_dir(trained.model_dir)
        network = model if contract.model.arch == "msef" else build_dense_model(
            model, contract.model, len(contract.channels))
        run = {"run_id": trained.run_id, "train_and_validation_s": round(seconds, 1),
               "best_epoch": trained.best_epoch,
               "validation_auc": round(trained.validation_auc, 5),
               "validation_volume_auc": round(trained.validation_volume_auc, 5),
               "validation_dice": round(trained.validation_dice, 5),
               "threshold": trained.threshold, "contract_precision": contract.precision}
        for inference in PRECISIONS:
            pooled, mean, probabilities[train_precision, inference] = test_dice(
                network, contract, trained.threshold, stages.prepared, test_ids, inference)
            run[f"test_dice_{inference}_inference"] = round(pooled, 5)
            run[f"test_mean_dice_{inference}_inference"] = round(mean, 5)
        run["max_abs_diff_bf16_vs_fp32_inference"] = float(np.abs(
            probabilities[train_precision, "bf16"] - probabilities[train_precision, "fp32"]).max())
        runs[train_precision] = run
        print(f"{train_precision}: {run}", file=sys.stderr, flush=True)
    result["runs"] = runs
    fp32, bf16 = runs["fp32"], runs["bf16"]
    result["changes"] = {
        "training_bf16": {key: round(bf16[key] - fp32[key], 5) for key in (
            "validation_auc", "validation_volume_auc", "validation_dice",
            "test_dice_fp32_inference", "test_mean_dice_fp32_inference")},
        "inference_bf16": {"test_dice": round(fp32["test_dice_bf16_inference"]
                                              - fp32["test_dice_fp32_inference"], 5),
                           "test_mean_dice": round(fp32["test_mean_dice_bf16_inference"]
                                                   - fp32["test_mean_dice_fp32_inference"], 5)},
        "both_bf16": {"test_dice": round(bf16["test_dice_bf16_inference"]
                                         - fp32["test_dice_fp32_inference"], 5)},
    }
    result.update({"machine": describe(), "python": platform.python_version(),
                   "tensorflow": tf.__version__, "threads": args.threads,
                   "targets": {"validation_auc_and_dice": "within 0.01",
                               "test_dice": "change <= 0.005",
                               "probabilities": "within 0.02"}})
    print(json.dumps(result))


def recipe(text: str) -> dict:
    """The ``train`` and ``model`` sections of a dumped config (what the runs share)."""
    import yaml

    values = yaml.safe_load(text)
    return {"model": values["model"], "train": values["train"],
            "synth_subjects": values["synth"]["subjects"]}


if __name__ == "__main__":
    main()
