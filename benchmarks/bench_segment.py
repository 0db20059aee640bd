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

Precision (issue 20), in the same run and on the same inputs and weights: the dense
pass is timed in fp32 (``dense_s_fp32``, = ``dense_s``) and with the towers in bfloat16
(``dense_s_bf16``), alternately ``--repeats`` times each (the minimum is reported, the
median beside it: the machine is shared); ``bf16_speedup`` = fp32 / bf16 minimum;
``bf16_max_abs_diff`` the largest |bf16 - fp32| probability over all brain voxels;
``cpu_bf16_isa`` what ``/proc/cpuinfo`` shows. ``stages_fp32`` / ``stages_bf16`` split
one more pass of each into the towers, the FFT first fully connected layer and the rest
(window gathering, box means, polyphase split, interleave, location, head, NumPy), by
running the trunk layer by layer with timers (:class:`StagedTrunk`; its probabilities
are checked against the plain pass: ``staged_max_abs_diff``).

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
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed dense passes per precision (min and median reported)")
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


def time_dense(dense, config, images, loc_maps, brain, batch_size: int,
               precision: str = "fp32"):
    """Runs ``predict_slices`` on the whole case: (probabilities, wall s, CPU s)."""
    from wmh.models import InferenceOptions, predict_slices

    start, start_cpu = time.perf_counter(), time.process_time()
    probabilities = predict_slices(dense, config, images, loc_maps, brain,
                                   InferenceOptions(batch_size=batch_size, precision=precision))
    return probabilities, time.perf_counter() - start, time.process_time() - start_cpu


class StagedTrunk:
    """Stands in for the dense model's ``trunk``: runs its layers one by one, as its
    functional graph does (see ``wmh.models.dense``), timing the towers and the FFT
    first fully connected layer (eager TensorFlow ops on the CPU are synchronous)."""

    def __init__(self, trunk, config):
        self.trunk, self.config = trunk, config
        self.seconds = {"towers": 0.0, "fft_fc1": 0.0}

    def _timed(self, stage, layer, inputs):
        start = time.perf_counter()
        outputs = layer(inputs)
        self.seconds[stage] += time.perf_counter() - start
        return outputs

    def __call__(self, inputs, training=False):
        from wmh.patches import SCALE_NAMES
        from wmh.models.dense import context, used_scales

        layer, arch = self.trunk.get_layer, self.config.arch
        margin, streams = context(self.config), []
        for name, k in zip(SCALE_NAMES, used_scales(self.config)):
            suffix = "" if arch == "ss" else f"_{name}"
            view = inputs["image"]
            if margin > 16 * k:
                view = layer(f"crop{suffix}")(view)
            if k > 1:
                view = layer(f"box_mean{suffix}")(view)
            tower = layer("tower" if arch in ("ss", "msws") else f"tower{suffix}")
            features = self._timed("towers", tower, layer(f"phases{suffix}")(view))
            features = self._timed("fft_fc1", layer(f"fc1_conv{suffix}"), features)
            features = layer(f"interleave{suffix}")(features)
            if self.config.loc == "lcl":
                location = layer(f"fc1_loc{suffix}")(layer("loc_scaled")(inputs["loc"]))
                features = layer(f"fc1_add_loc{suffix}")([features, location])
            streams.append(layer(f"fc1_relu{suffix}")(features))
        return streams[0] if len(streams) == 1 else layer("fc1")(streams)


def time_stages(dense, config, images, loc_maps, brain, batch_size: int, precision: str):
    """One dense pass with :class:`StagedTrunk`: (probabilities, {stage: seconds})."""
    trunk = StagedTrunk(dense.get_layer("trunk"), config)
    get_layer = dense.get_layer
    dense.get_layer = lambda name: trunk if name == "trunk" else get_layer(name)
    try:
        probabilities, seconds, _ = time_dense(dense, config, images, loc_maps, brain,
                                               batch_size, precision)
    finally:
        del dense.get_layer
    stages = {stage: round(value, 2) for stage, value in trunk.seconds.items()}
    stages["rest"] = round(seconds - sum(trunk.seconds.values()), 2)
    stages["total"] = round(seconds, 2)
    return probabilities, stages


def compare_precisions(dense, config, images, loc_maps, brain, args) -> dict:
    """fp32 and bf16 dense passes, alternated ``args.repeats`` times, then one staged
    pass each: the precision keys of the JSON (see the module docstring)."""
    import numpy as np

    from wmh.models.precision import cpu_bf16_isa

    seconds = {"fp32": [], "bf16": []}
    cpu_seconds = {"fp32": [], "bf16": []}
    probabilities = {}
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            probabilities[precision], wall, cpu = time_dense(
                dense, config, images, loc_maps, brain, args.batch_size, precision)
            seconds[precision].append(wall)
            cpu_seconds[precision].append(cpu)
    result = {"cpu_bf16_isa": cpu_bf16_isa(), "repeats": args.repeats}
    for precision in ("fp32", "bf16"):
        result[f"dense_s_{precision}"] = round(min(seconds[precision]), 2)
        result[f"dense_s_{precision}_median"] = round(float(np.median(seconds[precision])), 2)
        result[f"dense_cpu_s_{precision}"] = round(min(cpu_seconds[precision]), 2)
    result["bf16_speedup"] = round(min(seconds["fp32"]) / min(seconds["bf16"]), 3)
    result["bf16_speedup_median"] = round(float(np.median(seconds["fp32"]))
                                          / float(np.median(seconds["bf16"])), 3)
    difference = np.abs(probabilities["bf16"] - probabilities["fp32"])[brain]
    result["bf16_max_abs_diff"] = float(difference.max())
    result["bf16_mean_abs_diff"] = float(difference.mean())
    if config.arch != "msef":  # patch-wise: no trunk to split
        staged_difference = 0.0
        for precision in ("fp32", "bf16"):
            staged, result[f"stages_{precision}"] = time_stages(
                dense, config, images, loc_maps, brain, args.batch_size, precision)
            staged_difference = max(staged_difference, float(
                np.abs(staged - probabilities[precision])[brain].max()))
        result["staged_max_abs_diff"] = staged_difference
        result["stage_speedups"] = {
            stage: round(result["stages_fp32"][stage] / max(result["stages_bf16"][stage], 1e-9),
                         2) for stage in result["stages_fp32"]}
    return result, probabilities["fp32"]


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
    middle = slice(depth // 2, depth // 2 + 1)  # warm-up: first calls trace and allocate
    for precision in ("fp32", "bf16"):
        time_dense(dense, config, images[middle], loc_maps[middle], brain[middle],
                   args.batch_size, precision)
    if args.repeats > 0:  # fp32 against bf16; ``dense_s`` is the fp32 minimum
        precisions, probabilities = compare_precisions(dense, config, images, loc_maps,
                                                       brain, args)
        dense_s, dense_cpu_s = precisions["dense_s_fp32"], precisions["dense_cpu_s_fp32"]
    else:
        precisions = {}
        probabilities, dense_s, dense_cpu_s = time_dense(dense, config, images, loc_maps,
                                                         brain, args.batch_size)
    result = {
        "arch": args.arch, "loc": args.loc, "width": args.width,
        "shape_hwz": [height, width, depth], "brain_voxels": int(brain.sum()),
        "brain_mask": f"ellipsoid, semi-axes {semi_axes[0]} x {semi_axes[1]} voxels in "
                      f"plane, {semi_axes[2]} slices",
        "dense_build_s": round(build_seconds, 2),
        "dense_s": round(dense_s, 2), "dense_cpu_s": round(dense_cpu_s, 2),
        "peak_rss_gb_after_dense": round(peak_rss_gb(), 3), **precisions,
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
                 "--flair3d-slices", "0", "--repeats", "0",
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
                    "peak_rss_256x256x192": "bounded",
                    "bf16_speedup": ">= 2 with amx_bf16, >= 1.4 with avx512_bf16 only",
                    "bf16_max_abs_diff": "<= 0.02"},
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
