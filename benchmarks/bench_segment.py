"""Whole-volume segmentation speed and memory (issue 7): dense vs patch-wise; prints JSON.

Usage: ``.venv/bin/python benchmarks/bench_segment.py [--arch msws --loc ffcl --width 1.0]``
(``benchmarks/bench_dense.py`` is an alias of this script: one implementation.)

Two synthetic cases, random FLAIR/T1 values and random Glorot weights (speed, memory and
exactness do not depend on training or on the image content):

* RUN DMC-like: 256 x 256 x 48 voxels with an ellipsoidal brain mask (semi-axes 85 x 70
  voxels in plane, 22 slices). Dense seconds (``predict_slices`` on the whole case) are
  measured; patch-wise seconds are measured on ``--patch-voxels`` random brain voxels and
  extrapolated linearly to all brain voxels (said so in the JSON); ``ratio`` is
  patch-wise / dense; ``max_abs_diff`` the largest |dense - patch-wise| probability over
  those voxels; ``peak_rss_gb`` the process's peak resident memory (``ru_maxrss``).
* 3D FLAIR-sized: 256 x 256 x 192 voxels (brain semi-axis 88 slices), dense only, run in a
  fresh child process so that its ``peak_rss_gb`` is its own (``--flair3d-slices`` runs
  fewer slices and extrapolates time linearly, saying so; memory is then a lower bound).

``*_cpu_seconds`` (process CPU time, all threads) and the 1-minute load average before and
after help read wall times on a shared machine: with both cores free, wall is about half
the CPU time. ``--wait-idle`` polls the load average every 10 s (up to 5 minutes) until
it is below 1.0 before measuring, and records what it got.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from machine import describe  # benchmarks/machine.py

DMC_SEMI_AXES = (85, 70, 22)  # rows, columns, slices of the ellipsoidal brain


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="msws")
    parser.add_argument("--loc", default="ffcl")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 48),
                        metavar=("H", "W", "Z"))
    parser.add_argument("--patch-voxels", type=int, default=512,
                        help="brain voxels timed patch-wise (0: dense only)")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per dense pass")
    parser.add_argument("--fft-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flair3d-slices", type=int, default=192,
                        help="slices of the 256x256x192 case actually run (0: skip it)")
    parser.add_argument("--brain-depth", type=int, default=0,
                        help="slices of the volume whose brain ellipsoid is used (0: Z); "
                             "Z < brain depth runs its middle Z slices")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--wait-idle", action="store_true",
                        help="wait (<= 5 min) for 1-minute load average < 1.0 first")
    return parser.parse_args(argv)


def wait_for_idle(threshold: float = 1.0, poll_s: float = 10.0, limit_s: float = 300.0) -> dict:
    """Polls the 1-minute load average until it is below ``threshold`` or ``limit_s``."""
    start = time.monotonic()
    first = os.getloadavg()[0]
    while os.getloadavg()[0] >= threshold and time.monotonic() - start < limit_s:
        time.sleep(poll_s)
    return {"load_1min_at_start": round(first, 2),
            "waited_for_idle_s": round(time.monotonic() - start, 1),
            "load_1min_before": round(os.getloadavg()[0], 2)}


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def setup_tensorflow(threads: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    return keras, tf


def make_case(shape, semi_axes=DMC_SEMI_AXES, seed: int = 0):
    """Random (Z, H, W, 2) images, (Z, H, W, 8) location maps, ellipsoidal brain mask."""
    import numpy as np

    height, width, depth = shape
    rng = np.random.default_rng(seed)
    images = rng.random((depth, height, width, 2), dtype=np.float32)
    loc_maps = rng.random((depth, height, width, 8), dtype=np.float32)
    z, row, col = np.ogrid[:depth, :height, :width]
    brain = (((row - height / 2) / semi_axes[0]) ** 2 + ((col - width / 2) / semi_axes[1]) ** 2
             + ((z - depth / 2) / semi_axes[2]) ** 2) < 1
    return images, loc_maps, brain, rng


def build_models(config, fft_size: int):
    """The patch model and its dense twin (MSEF has none: the patch model is used)."""
    from wmh.models import build_dense_model, build_model

    model = build_model(config, 2)
    start = time.perf_counter()
    dense = model if config.arch == "msef" else build_dense_model(model, config, 2, fft_size)
    return model, dense, time.perf_counter() - start


def time_dense(dense, config, images, loc_maps, brain, batch_size: int):
    """Runs ``predict_slices`` on the whole case: (probabilities, wall s, CPU s)."""
    from wmh.models import predict_slices

    start, start_cpu = time.perf_counter(), time.process_time()
    probabilities = predict_slices(dense, config, images, loc_maps, brain,
                                   batch_size=batch_size)
    return probabilities, time.perf_counter() - start, time.process_time() - start_cpu


def time_patchwise(model, images, loc_maps, brain, n_voxels: int, rng):
    """Patch-wise probabilities of ``n_voxels`` random brain voxels: (voxels (n, 3) as
    (z, row, col), probabilities, wall seconds extrapolated to all brain voxels)."""
    import numpy as np

    from wmh.models import predict_patchwise

    voxels = np.argwhere(brain)
    chosen = voxels[rng.choice(len(voxels), min(n_voxels, len(voxels)), replace=False)]
    chosen = chosen[np.argsort(chosen[:, 0], kind="stable")]
    patchwise = np.empty(len(chosen), np.float32)
    predict_patchwise(model, images[0], loc_maps[0], chosen[:1, 1], chosen[:1, 2])  # warm-up
    start = time.perf_counter()
    for slice_index in np.unique(chosen[:, 0]):
        here = chosen[:, 0] == slice_index
        patchwise[here] = predict_patchwise(model, images[slice_index], loc_maps[slice_index],
                                            chosen[here, 1], chosen[here, 2])
    seconds = (time.perf_counter() - start) * len(voxels) / len(chosen)
    return chosen, patchwise, seconds


def run_case(args) -> dict:
    """Dense (and, with ``--patch-voxels``, patch-wise) on one case of ``args.shape``."""
    import numpy as np

    keras, tf = setup_tensorflow(args.threads)
    from wmh.config import ModelConfig

    height, width, depth = args.shape
    # The brain's slice semi-axis scales with the volume's depth (22 of 48 slices); a run
    # on fewer slices keeps the full volume's ellipsoid and takes its middle (largest) slices.
    semi_z = round(DMC_SEMI_AXES[2] * (args.brain_depth or depth) / 48)
    semi_axes = (*DMC_SEMI_AXES[:2], semi_z)
    images, loc_maps, brain, rng = make_case(args.shape, semi_axes)
    config = ModelConfig(arch=args.arch, loc=args.loc, width=args.width)
    model, dense, build_seconds = build_models(config, args.fft_size)
    probabilities, dense_s, dense_cpu_s = time_dense(dense, config, images, loc_maps, brain,
                                                     args.batch_size)
    result = {
        "arch": args.arch, "loc": args.loc, "width": args.width,
        "shape_hwz": [height, width, depth], "brain_voxels": int(brain.sum()),
        "brain_mask": f"ellipsoid, semi-axes {semi_axes[0]} x {semi_axes[1]} voxels in "
                      f"plane, {semi_axes[2]} slices",
        "dense_build_s": round(build_seconds, 2),
        "dense_s": round(dense_s, 2), "dense_cpu_s": round(dense_cpu_s, 2),
        "peak_rss_gb_after_dense": round(peak_rss_gb(), 3),
    }
    if args.patch_voxels > 0:
        chosen, patchwise, patch_s = time_patchwise(model, images, loc_maps, brain,
                                                    args.patch_voxels, rng)
        result.update({
            "patchwise_s": round(patch_s, 1),
            "patchwise_s_note": f"measured on {len(chosen)} random brain voxels, "
                                "extrapolated linearly to all brain voxels",
            "ratio": round(patch_s / dense_s, 1),
            "max_abs_diff": float(np.abs(probabilities[tuple(chosen.T)] - patchwise).max()),
            "max_abs_diff_note": f"over the {len(chosen)} patch-wise voxels",
        })
    result.update({"peak_rss_gb": round(peak_rss_gb(), 3),
                   "tensorflow": tf.__version__, "keras": keras.__version__})
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:  # one case, its own JSON (the 3D case's fresh process)
        print(json.dumps(run_case(args)))
        return
    load = wait_for_idle() if args.wait_idle else {
        "load_1min_before": round(os.getloadavg()[0], 2)}
    result = {"benchmark": "segment_dense_vs_patchwise", **load}
    result.update(run_case(args))
    if args.flair3d_slices > 0:
        # A fresh process, so the 3D case's peak RSS is its own.
        child = [sys.executable, os.path.abspath(__file__), "--arch", args.arch, "--loc",
                 args.loc, "--width", str(args.width), "--shape", "256", "256",
                 str(args.flair3d_slices), "--brain-depth", "192", "--patch-voxels", "0",
                 "--flair3d-slices", "0",
                 "--batch-size", str(args.batch_size), "--fft-size", str(args.fft_size),
                 "--threads", str(args.threads), "--child"]
        flair3d = json.loads(subprocess.run(child, check=True, capture_output=True,
                                            text=True).stdout)
        scale = 192 / args.flair3d_slices
        result["flair3d_256x256x192"] = {
            key: flair3d[key] for key in ("shape_hwz", "brain_voxels", "brain_mask",
                                          "dense_s", "dense_cpu_s", "peak_rss_gb")}
        if scale != 1:
            result["flair3d_256x256x192"].update({
                "dense_s_extrapolated": round(flair3d["dense_s"] * scale, 1),
                "note": f"ran the middle {args.flair3d_slices} of 192 slices; time "
                        "extrapolated linearly (an upper bound: middle slices hold the most "
                        "brain), peak RSS is that of the smaller run (a lower bound)"})
        result["flair3d_256x256x192"]["note_process"] = "dense only, separate process"
    result.update({
        "load_1min_after": round(os.getloadavg()[0], 2),
        "batch_size_slices": args.batch_size, "fft_size": args.fft_size,
        "threads": args.threads, "machine": describe(), "python": platform.python_version(),
        "targets": {"dense_s_per_256x256x48": "<= 20", "ratio": ">= 30",
                    "peak_rss_256x256x192": "bounded"},
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
