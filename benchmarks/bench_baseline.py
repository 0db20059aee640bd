"""Random-forest baseline: feature extraction and prediction time per case; prints JSON.

Usage: ``.venv/bin/python benchmarks/bench_baseline.py [--train-cases 8 --repeats 3]``

Each case is a RUN DMC-like prepared volume built here (no registration): 256 x 256 x 48
voxels of 1 x 1 x 3 mm (FLAIR + T1, the 8 location maps), an ellipsoidal brain of about
1.4 L (semi-axes 70 x 85 x 55 mm) with a brighter cortical rim, two dark lateral
ventricles, about 15 mL of periventricular and deep WMH blobs with blurred borders,
bright cortical mimics, noise (standard deviation 0.05) and a rater border jittered by
noise of 0.1, so WMH and normal tissue overlap near lesion borders and the trees grow
deep as on real data (the JSON gives their mean depth and node count). The forest (the
default ``BaselineConfig``: 50 trees, min_samples_leaf 5, all cores) is fitted on
balanced samples of ``--train-cases`` cases (all WMH voxels and as many normal brain
voxels per case; paper scale is about 10,000 per training image) and timed on another:

* ``feature_seconds_per_case``: every feature of every brain voxel (whole-volume 2D
  filters, then the brain voxels gathered), median over all cases;
* ``predict_seconds_per_case``: the forest's P(WMH) for those voxels, median of
  ``--repeats`` runs;
* ``segment_seconds_per_case``: both, as ``RandomForestBaseline.predict_volume``;
* ``*_cpu_seconds_per_case``: the process's CPU time for the same work (all threads:
  features use one core, the forest all of them), a check on wall times taken while
  other work shares the machine (``load_average_1min_before_after``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

from machine import cpu_model, vector_isa  # benchmarks/machine.py


def make_case(seed: int, shape=(256, 256, 48), spacing=(1.0, 1.0, 3.0)):
    """A prepared-like case: (images (X, Y, Z, 2), location (X, Y, Z, 8), brain, labels)."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    radius = np.sqrt((x / 70) ** 2 + (y / 85) ** 2 + (z / 55) ** 2)
    brain = radius <= 1
    ventricles = np.zeros(shape, np.uint8)
    for side, label in ((-1, 1), (1, 2)):
        ventricles[(((x - side * 9) / 5) ** 2 + (y / 22) ** 2 + ((z - 8) / 14) ** 2) <= 1] = label
    ventricles[~brain] = 0
    # WMH: blobs of 2-8 mm radius, mostly around the ventricles, some deep
    wmh_score = np.zeros(shape, np.float32)
    for _ in range(40):
        periventricular = rng.random() < 0.7
        centre = (rng.choice([-1, 1]) * rng.uniform(14, 20) if periventricular
                  else rng.uniform(-45, 45), rng.uniform(-30, 30), rng.uniform(-10, 30))
        size = rng.uniform(2, 8)
        distance2 = (((x - centre[0]) / size) ** 2 + ((y - centre[1]) / (1.5 * size)) ** 2
                     + ((z - centre[2]) / max(size, 3)) ** 2)
        wmh_score = np.maximum(wmh_score, np.exp(-distance2).astype(np.float32))
    # the rater's border is uncertain: labels overlap the intensities as on real data
    rater = wmh_score + rng.normal(0, 0.1, shape).astype(np.float32)
    labels = ((rater > 0.45) & brain & (ventricles == 0)).astype(np.uint8)
    flair = np.where(radius > 0.93, 0.55, 0.45).astype(np.float32)  # cortex brighter than WM
    flair += 0.25 * wmh_score  # graded lesions: borders overlap normal tissue
    flair[ventricles > 0] = 0.1
    mimics = brain & (radius > 0.9) & (rng.random(shape) < 0.01)
    flair[ndimage.binary_dilation(mimics, iterations=1)] = 0.75
    flair = np.where(brain, np.clip(flair + rng.normal(0, 0.05, shape), 0, 1), 0)
    t1 = np.where(brain, np.clip(0.7 - 0.25 * wmh_score - 0.5 * (ventricles > 0)
                                 + rng.normal(0, 0.05, shape), 0, 1), 0)
    images = np.stack([flair, t1], axis=-1).astype(np.float32)

    def normalised(volume):
        volume = np.asarray(volume, np.float32)
        low, high = volume[brain].min(), volume[brain].max()
        return np.where(brain, (volume - low) / max(high - low, 1e-6), 0).astype(np.float32)

    def distance_to(mask):
        return ndimage.distance_transform_edt(~mask, sampling=spacing)

    full = np.broadcast_to
    location = np.stack([
        normalised(full(x, shape)), normalised(full(y, shape)), normalised(full(z, shape)),
        normalised(distance_to(ventricles == 1)), normalised(distance_to(ventricles == 2)),
        normalised(ndimage.distance_transform_edt(brain, sampling=spacing)),
        normalised(full(np.abs(x), shape)),
        normalised(np.exp(-distance_to(ventricles > 0) / 15.0))], axis=-1)
    return images, location, brain, labels, spacing


def _has_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-cases", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 48),
                        metavar=("X", "Y", "Z"))
    args = parser.parse_args()

    import numpy as np
    import sklearn

    from wmh import baseline
    from wmh.config import BaselineConfig

    load_before = os.getloadavg()
    feature_seconds, feature_cpu_seconds, features, labels = [], [], [], []
    rng = np.random.default_rng(0)
    for seed in range(args.train_cases):
        images, location, brain, truth, spacing = make_case(seed, tuple(args.shape))
        voxels = np.nonzero(brain)
        start, start_cpu = time.perf_counter(), time.process_time()
        case_features = baseline.features_at(images, location, spacing, voxels)
        feature_seconds.append(time.perf_counter() - start)
        feature_cpu_seconds.append(time.process_time() - start_cpu)
        case_labels = truth[voxels]
        positives = np.flatnonzero(case_labels == 1)
        negatives = rng.choice(np.flatnonzero(case_labels == 0), len(positives),
                               replace=False)
        chosen = np.concatenate([positives, negatives])
        features.append(case_features[chosen])
        labels.append(case_labels[chosen])
    features, labels = np.concatenate(features), np.concatenate(labels)
    forest = baseline.make_forest(BaselineConfig(), seed=0)
    start = time.perf_counter()
    forest.fit(features, labels)
    fit_seconds = time.perf_counter() - start
    model = baseline.RandomForestBaseline(forest, use_t1=True)

    images, location, brain, truth, spacing = make_case(1000, tuple(args.shape))
    voxels = np.nonzero(brain)
    start, start_cpu = time.perf_counter(), time.process_time()
    test_features = baseline.features_at(images, location, spacing, voxels)
    feature_seconds.append(time.perf_counter() - start)
    feature_cpu_seconds.append(time.process_time() - start_cpu)
    predict_seconds, predict_cpu_seconds, segment_seconds = [], [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        scores = model.predict_features(test_features)
        predict_seconds.append(time.perf_counter() - start)
        predict_cpu_seconds.append(time.process_time() - start_cpu)
    for _ in range(args.repeats):
        start = time.perf_counter()
        probability = model.predict_volume(images, location, brain, spacing)
        segment_seconds.append(time.perf_counter() - start)
    from wmh.evaluation import metrics

    curve = metrics.dice_threshold_curve([probability], [truth], [0.5], [brain])
    result = {
        "feature_seconds_per_case": round(statistics.median(feature_seconds), 2),
        "predict_seconds_per_case": round(statistics.median(predict_seconds), 2),
        "segment_seconds_per_case": round(statistics.median(segment_seconds), 2),
        "feature_cpu_seconds_per_case": round(statistics.median(feature_cpu_seconds), 2),
        "predict_cpu_seconds_per_case": round(statistics.median(predict_cpu_seconds), 2),
        "feature_seconds_all": [round(s, 2) for s in feature_seconds],
        "predict_seconds_all": [round(s, 2) for s in predict_seconds],
        "fit_seconds": round(fit_seconds, 2),
        "train_samples": int(len(labels)),
        "train_cases": args.train_cases,
        "brain_voxels_per_case": int(len(voxels[0])),
        "features": len(baseline.feature_names(True)),
        "trees": forest.n_estimators,
        "mean_tree_depth": round(float(np.mean([t.get_depth() for t in
                                                forest.estimators_])), 1),
        "mean_tree_nodes": int(np.mean([t.tree_.node_count for t in forest.estimators_])),
        "test_auc_synthetic": round(metrics.roc_auc(scores, truth[voxels]), 4),
        "test_dice_at_0_5_synthetic": round(float(curve.pooled_dice[0]), 4),
        "case": f"synthetic RUN DMC-like prepared volume built by make_case(): shape "
                f"{tuple(args.shape)} at 1 x 1 x 3 mm, FLAIR + T1 + 8 location maps, "
                f"ellipsoidal brain, ventricles, ~40 graded WMH blobs, noise 0.05; "
                f"forest on balanced samples of {args.train_cases} such cases, timed on "
                "another",
        "load_average_1min_before_after": [round(load_before[0], 2),
                                           round(os.getloadavg()[0], 2)],
        "machine": f"{cpu_model()} ({vector_isa()}), {os.cpu_count()} cpus, "
                   f"{'GPU present (unused)' if _has_gpu() else 'no GPU'}",
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scipy": __import__("scipy").__version__,
                     "scikit-learn": sklearn.__version__},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
