"""Whole-slice (dense) versus patch-wise inference on one synthetic case; prints JSON.

Usage: ``.venv/bin/python benchmarks/bench_dense.py [--arch msws --loc ffcl --width 1.0]``

The case is a 256 x 256 x 48 volume of random FLAIR/T1 values with an ellipsoidal brain
mask (semi-axes 85 x 70 voxels in plane, 22 slices); the network has random Glorot
weights (speed and exactness do not depend on training). Dense seconds are measured on
the whole case; patch-wise seconds are measured on ``--patch-voxels`` random brain voxels
and extrapolated linearly to all brain voxels (said so in the JSON). ``max_abs_diff`` is
the largest |dense - patch-wise| probability over those voxels. ``dense_cpu_seconds``
(process CPU time, all threads) and ``load_average_1min`` help read the wall time on a
shared machine: with both cores free, wall is about half the CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="msws")
    parser.add_argument("--loc", default="ffcl")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 48),
                        metavar=("H", "W", "Z"))
    parser.add_argument("--patch-voxels", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4, help="slices per dense pass")
    parser.add_argument("--fft-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)

    from wmh.config import ModelConfig
    from wmh.models import (
        build_dense_model,
        build_model,
        predict_patchwise,
        predict_slices,
    )

    height, width, depth = args.shape
    rng = np.random.default_rng(0)
    images = rng.random((depth, height, width, 2), dtype=np.float32)
    loc_maps = rng.random((depth, height, width, 8), dtype=np.float32)
    z, row, col = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width),
                              indexing="ij")
    brain = (((row - height / 2) / 85) ** 2 + ((col - width / 2) / 70) ** 2
             + ((z - depth / 2) / 22) ** 2) < 1

    config = ModelConfig(arch=args.arch, loc=args.loc, width=args.width)
    model = build_model(config, 2)

    start = time.perf_counter()
    dense = model if args.arch == "msef" else build_dense_model(model, config, 2,
                                                                args.fft_size)
    build_seconds = time.perf_counter() - start
    start, start_cpu = time.perf_counter(), time.process_time()
    probabilities = predict_slices(dense, config, images, loc_maps, brain,
                                   batch_size=args.batch_size)
    dense_seconds = time.perf_counter() - start
    dense_cpu_seconds = time.process_time() - start_cpu

    voxels = np.argwhere(brain)
    chosen = voxels[rng.choice(len(voxels), min(args.patch_voxels, len(voxels)),
                               replace=False)]
    chosen = chosen[np.argsort(chosen[:, 0], kind="stable")]
    patchwise = np.empty(len(chosen), np.float32)
    predict_patchwise(model, images[0], loc_maps[0], chosen[:1, 1], chosen[:1, 2])  # warm-up
    start = time.perf_counter()
    for slice_index in np.unique(chosen[:, 0]):
        here = chosen[:, 0] == slice_index
        patchwise[here] = predict_patchwise(model, images[slice_index], loc_maps[slice_index],
                                            chosen[here, 1], chosen[here, 2])
    patch_seconds = (time.perf_counter() - start) * len(voxels) / len(chosen)
    difference = np.abs(probabilities[tuple(chosen.T)] - patchwise).max()

    print(json.dumps({
        "benchmark": "dense_vs_patchwise",
        "arch": args.arch, "loc": args.loc, "width": args.width,
        "shape_hwz": [height, width, depth], "brain_voxels": int(brain.sum()),
        "brain_mask": "ellipsoid, semi-axes 85 x 70 voxels in plane, 22 slices",
        "dense_build_seconds": round(build_seconds, 2),
        "dense_seconds": round(dense_seconds, 2),
        "dense_cpu_seconds": round(dense_cpu_seconds, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "patchwise_seconds": round(patch_seconds, 1),
        "patchwise_seconds_note": f"measured on {len(chosen)} random brain voxels, "
                                  "extrapolated linearly to all brain voxels",
        "speedup": round(patch_seconds / dense_seconds, 1),
        "max_abs_diff": float(difference),
        "batch_size_slices": args.batch_size, "fft_size": args.fft_size,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {_cpu_name()}, "
                   f"{os.cpu_count()} cpus",
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


if __name__ == "__main__":
    main()
