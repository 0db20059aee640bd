"""Calibration of a trained model, fitted on some labelled scans and checked on others;
prints JSON (trains nothing).

Usage::

    .venv/bin/python benchmarks/bench_calibration.py MODEL --data DATA \\
        --fit s004,s005 --test s002,s007,s009 [--method platt|prior|none] \
        [--samples SAMPLE_SET] [--data-label synthetic]

MODEL is a model folder (or MLflow URI); DATA a labelled cohort folder, CSV manifest or
``wmh prepare`` folder (prepared with the model's plan), as ``wmh calibrate`` takes them.
The scans are prepared and predicted as ``wmh calibrate`` does (the model's plan, native
grid, brain voxels, label 2 left out). The calibration and both thresholds (of the
network's output and of the calibrated output) are fitted on ``--fit`` (the model's
validation subjects, say) exactly as ``wmh calibrate`` fits them, then on each set:

* ``ece_uncalibrated`` / ``ece_calibrated``: expected calibration error (15 bins);
* ``dice_uncalibrated``: pooled Dice of the network's output at its fitted threshold;
  ``dice_calibrated``: of the calibrated output at the calibrated threshold (equal up to
  float32 ties: the calibration is monotone);
* ``dice_at_0_5_uncalibrated`` / ``dice_at_0_5_calibrated``: at P >= 0.5 (what a user
  reading "probability" would threshold at);
* ``best_threshold_uncalibrated`` / ``best_threshold_calibrated``: the set's own
  Dice-optimal thresholds (on ``--fit`` they are the fitted ones).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from machine import describe  # benchmarks/machine.py


def pooled_dice(scores, truths, brains, threshold: float) -> float:
    """Overall Dice of ``score >= threshold`` inside the brains (label 2 ignored)."""
    from wmh.evaluation import metrics

    curve = metrics.dice_threshold_curve(scores, truths, [float(threshold)], brains)
    return float(curve.pooled_dice[0])


def evaluate(calibration, thresholds: dict, scores, truths, brains) -> dict:
    """ECE, Dice at the fitted thresholds and at 0.5, the set's own best thresholds."""
    import numpy as np

    from wmh.evaluation import metrics
    from wmh.calibration import expected_calibration_error

    calibrated = [calibration.apply(score, brain) for score, brain in zip(scores, brains)]
    inside = np.concatenate([score[brain] for score, brain in zip(scores, brains)])
    labels = np.concatenate([truth[brain] for truth, brain in zip(truths, brains)])
    result = {"voxels": int(inside.size),
              "prevalence": float(np.mean(labels[labels != 2] == 1)),
              "ece_uncalibrated": expected_calibration_error(inside, labels),
              "ece_calibrated": expected_calibration_error(calibration.apply(inside), labels)}
    for name, maps in (("uncalibrated", scores), ("calibrated", calibrated)):
        result[f"dice_{name}"] = pooled_dice(maps, truths, brains, thresholds[name])
        result[f"dice_at_0_5_{name}"] = pooled_dice(maps, truths, brains, 0.5)
        best, best_dice = metrics.exact_best_threshold(maps, truths, brains)
        result[f"best_threshold_{name}"] = float(best)
        result[f"best_dice_{name}"] = float(best_dice)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--fit", required=True, help="ID,ID: the scans the fit uses")
    parser.add_argument("--test", default="", help="ID,ID: held-out scans to check on")
    parser.add_argument("--method", default="platt", choices=("platt", "prior", "none"))
    parser.add_argument("--data-label", default="synthetic")
    parser.add_argument("--samples", default="",
                        help="the model's sample set: its training positive share for "
                             "--method prior (default: the one the contract records)")
    args = parser.parse_args()

    from wmh import data
    from wmh.loader import load_model_dir
    from wmh.recalibrate import labelled_inputs, predict_labelled
    from wmh.segment import resolve_model
    from wmh.threshold import calibrated_threshold, native_validations

    resolved = resolve_model(args.model)
    model, contract = load_model_dir(resolved.folder)
    sets = {"fit": [s for s in args.fit.split(",") if s],
            "test": [s for s in args.test.split(",") if s]}
    start = time.perf_counter()
    natives = {}
    for name, ids in sets.items():
        if ids:
            subjects, volumes, found = predict_labelled(
                resolved.folder, contract, model, labelled_inputs(args.data, ids),
                progress=False)
            natives[name] = (subjects, volumes, found)
    predict_seconds = time.perf_counter() - start
    subjects, volumes, ids = natives["fit"]
    share = (data.positive_share(args.samples) if args.samples
             else contract.calibrator().sample_positive_share)
    choice = calibrated_threshold(subjects, volumes, ids, args.method, share)
    thresholds = {"uncalibrated": choice.uncalibrated_threshold,
                  "calibrated": choice.threshold}
    output = {"benchmark": "calibration", "data_label": args.data_label.upper(),
              "machine": describe(), "load_average_1min": os.getloadavg()[0],
              "model": str(args.model), "method": choice.calibration.method,
              "sample_positive_share": share,
              "parameters": choice.calibration.parameters,
              "contract_threshold": contract.threshold,
              "threshold_uncalibrated": float(thresholds["uncalibrated"]),
              "threshold_calibrated": float(thresholds["calibrated"]),
              "predict_seconds": round(predict_seconds, 1)}
    for name, (subjects, volumes, found) in natives.items():
        scores, truths, brains = native_validations(subjects, volumes, found)
        output[name] = {"subjects": found,
                        **evaluate(choice.calibration, thresholds, scores, truths, brains)}
    print(json.dumps(output))


if __name__ == "__main__":
    main()
