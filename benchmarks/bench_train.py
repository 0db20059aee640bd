"""Training throughput against the machine's fp32 matmul peak (issue 6); prints JSON.

Usage: ``.venv/bin/python benchmarks/bench_train.py [--steps 8 --warmup 2 --wait-idle]``

1. Peak: ``tf.linalg.matmul`` of two random ``--matmul-n`` square float32 matrices
   (default 4096), ``--matmul-repeats`` timed repeats after one warm-up, 2 intra-op
   threads; GFLOP/s = 2 n^3 / t, the best repeat (``matmul_peak_gflops``) and the median.
2. For each architecture (ss, msef, msiw, msws; location at ffcl, paper width 1.0, FLAIR +
   T1 = 2 channels) the real model (``build_model`` + ``compile_model``: RMSprop, sparse
   categorical cross-entropy) trains with ``model.train_on_batch`` on random batches of
   ``--batch-size`` (128, the paper's) samples: ``--warmup`` steps (graph tracing), then
   ``--steps`` timed steps; ``samples_per_s`` = batch x steps / seconds.
3. ``flops_per_sample`` is an ESTIMATE computed analytically from the layer sizes (see
   :func:`training_flops_per_sample`): forward multiply-adds x 2 FLOPs x 3 for forward +
   backward (the backward pass costs about twice the forward: gradients of the inputs and
   of the weights). Bias adds, activations, softmax, dropout, loss and the optimizer
   update are left out (< 1 %).
4. ``fraction_of_peak`` = samples_per_s x flops_per_sample / (matmul peak FLOP/s).
5. Precision (issue 20): each architecture also trains under Keras ``mixed_bfloat16``
   (``wmh.models.precision.precision_scope("bf16")``: float32 weights and loss), in the
   same run, on the same batches. Each precision runs ``--repeats`` blocks of ``--steps``
   timed steps after its warm-up; ``samples_per_s`` is the fastest block (the median
   beside it: the machine is shared). ``bf16_speedup`` = bf16 / fp32 samples/s (best
   blocks), ``bf16_speedup_median`` the same with medians; ``bf16_matmul_peak_gflops``
   is the bfloat16 matmul rate next to the fp32 peak.

``--wait-idle`` polls the 1-minute load average every 10 s (up to 5 minutes) until it is
below 1.0 before measuring; the load before and after is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from machine import describe  # benchmarks/machine.py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_segment import peak_rss_gb, wait_for_idle

ARCHS = ("ss", "msef", "msiw", "msws")


def tower_macs(n_channels: int, width: float) -> int:
    """Forward multiply-adds of one tower on a 32x32 patch: for each valid convolution,
    out_side^2 x filters x kernel^2 x in_channels."""
    from wmh.patches import PATCH_SIZE
    from wmh.models.patch import CONV_FILTERS, CONV_KERNEL_SIZES, scaled_width

    macs, side, channels = 0, PATCH_SIZE, n_channels
    for filters, size in zip(CONV_FILTERS, CONV_KERNEL_SIZES):
        filters = scaled_width(filters, width)
        side = side - size + 1
        macs += side * side * filters * size * size * channels
        channels = filters
    return macs


def forward_macs_per_sample(arch: str, loc: str, width: float, n_channels: int) -> dict:
    """Forward multiply-adds per sample by part, from the layer sizes of wmh.models.patch.

    Tower: sum over the 4 convolutions of out_side^2 * filters * k^2 * in_channels.
    SS: 1 tower (n_channels); MSEF: 1 tower on 3 * n_channels; MSIW/MSWS: 3 towers (MSWS
    shares the weights, not the work). FC: features x units per dense layer, + 8 inputs
    wherever location is concatenated.
    """
    from wmh.location import N_LOCATION_FEATURES
    from wmh.models.patch import (
        CONV_FILTERS,
        FC_UNITS,
        N_CLASSES,
        SCALE_FC_UNITS,
        TOWER_OUTPUT_SIDE,
        scaled_width,
    )

    flat = TOWER_OUTPUT_SIDE ** 2 * scaled_width(CONV_FILTERS[-1], width)
    extra = {where: (N_LOCATION_FEATURES if loc == where else 0)
             for where in ("lcl", "ffcl", "sfcl")}
    fc2 = scaled_width(FC_UNITS[1], width)
    if arch in ("ss", "msef"):
        towers = tower_macs(n_channels * (3 if arch == "msef" else 1), width)
        fc1_units = scaled_width(FC_UNITS[0], width)
        fc1 = (flat + extra["lcl"]) * fc1_units
    else:
        towers = 3 * tower_macs(n_channels, width)
        fc1_units = 3 * scaled_width(SCALE_FC_UNITS, width)
        fc1 = 3 * (flat + extra["lcl"]) * scaled_width(SCALE_FC_UNITS, width)
    fc_rest = (fc1_units + extra["ffcl"]) * fc2 + (fc2 + extra["sfcl"]) * N_CLASSES
    return {"conv": towers, "fc": fc1 + fc_rest, "total": towers + fc1 + fc_rest}


def training_flops_per_sample(arch: str, loc: str = "ffcl", width: float = 1.0,
                              n_channels: int = 2) -> int:
    """ESTIMATE of training FLOPs per sample: forward MACs x 2 FLOPs x 3 (fwd + bwd)."""
    return 2 * 3 * forward_macs_per_sample(arch, loc, width, n_channels)["total"]


def matmul_peak(tf, n: int, repeats: int, dtype: str = "float32") -> dict:
    """GFLOP/s of tf.linalg.matmul on n x n matrices (2 n^3 / t) in ``dtype``."""
    a = tf.cast(tf.random.uniform((n, n)), dtype)
    b = tf.cast(tf.random.uniform((n, n)), dtype)
    tf.linalg.matmul(a, b).numpy()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        rates.append(2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return {"best": max(rates), "median": statistics.median(rates)}


def train_throughput(keras, arch: str, loc: str, width: float, batch_size: int,
                     warmup: int, steps: int, precision: str = "fp32",
                     repeats: int = 1) -> dict:
    """Training steps per second of one architecture in ``precision`` (fp32 or bf16):
    the fastest of ``repeats`` blocks of ``steps`` steps after ``warmup`` steps."""
    import numpy as np

    from wmh.config import ModelConfig
    from wmh.models import build_model
    from wmh.models.precision import precision_scope
    from wmh.train import compile_model

    keras.utils.set_random_seed(0)
    with precision_scope(precision):
        model = compile_model(build_model(ModelConfig(arch=arch, loc=loc, width=width), 2),
                              1e-4)
        rng = np.random.default_rng(0)
        batch = {name: rng.random((batch_size, 32, 32, 2), dtype=np.float32)
                 for name in ("s1", "s2", "s3")}
        batch["loc"] = rng.random((batch_size, 8), dtype=np.float32)
        labels = rng.integers(0, 2, batch_size).astype(np.int32)
        start = time.perf_counter()
        for _ in range(warmup):
            model.train_on_batch(batch, labels)
        warmup_s = time.perf_counter() - start
        blocks = []
        for _ in range(max(repeats, 1)):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                model.train_on_batch(batch, labels)
            blocks.append((time.perf_counter() - start, time.process_time() - start_cpu))
    seconds, cpu = min(blocks)
    return {"samples_per_s": batch_size * steps / seconds, "step_s": seconds / steps,
            "samples_per_s_median": batch_size * steps / statistics.median(
                wall for wall, _ in blocks),
            "cpu_s_per_step": cpu / steps, "warmup_s": warmup_s,
            "parameters": int(model.count_params())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--loc", default="ffcl")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed blocks of --steps per architecture and precision")
    parser.add_argument("--wait-idle", action="store_true",
                        help="wait (<= 5 min) for 1-minute load average < 1.0 first")
    args = parser.parse_args()

    load = wait_for_idle() if args.wait_idle else {
        "load_1min_before": round(os.getloadavg()[0], 2)}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from wmh.models.precision import cpu_bf16_isa

    peak = matmul_peak(tf, args.matmul_n, args.matmul_repeats)
    peak_bf16 = matmul_peak(tf, args.matmul_n, args.matmul_repeats, "bfloat16")
    result = {"benchmark": "train_throughput_vs_matmul_peak", **load,
              "matmul_peak_gflops": round(peak["best"], 1),
              "matmul_median_gflops": round(peak["median"], 1),
              "bf16_matmul_peak_gflops": round(peak_bf16["best"], 1),
              "cpu_bf16_isa": cpu_bf16_isa(), "repeats": args.repeats,
              "matmul_note": f"tf.linalg.matmul float32 {args.matmul_n}x{args.matmul_n}, "
                             f"best of {args.matmul_repeats}, 2 n^3 / t",
              "flops_per_sample_note": "estimate: forward multiply-adds from the layer sizes "
                                       "x 2 FLOPs x 3 (forward + backward)",
              "loc": args.loc, "width": args.width, "channels": 2,
              "batch_size": args.batch_size, "warmup_steps": args.warmup,
              "timed_steps": args.steps}
    for arch in args.archs:
        measured = train_throughput(keras, arch, args.loc, args.width, args.batch_size,
                                    args.warmup, args.steps, "fp32", args.repeats)
        bf16 = train_throughput(keras, arch, args.loc, args.width, args.batch_size,
                                args.warmup, args.steps, "bf16", args.repeats)
        macs = forward_macs_per_sample(arch, args.loc, args.width, 2)
        flops = training_flops_per_sample(arch, args.loc, args.width, 2)
        result[arch] = {
            "samples_per_s": round(measured["samples_per_s"], 1),
            "flops_per_sample": flops,
            "fraction_of_peak": round(measured["samples_per_s"] * flops
                                      / (peak["best"] * 1e9), 4),
            "achieved_gflops": round(measured["samples_per_s"] * flops / 1e9, 1),
            "conv_share_of_flops": round(macs["conv"] / macs["total"], 3),
            "step_s": round(measured["step_s"], 3),
            "cpu_s_per_step": round(measured["cpu_s_per_step"], 3),
            "warmup_s": round(measured["warmup_s"], 1),
            "parameters": measured["parameters"],
            "samples_per_s_median": round(measured["samples_per_s_median"], 1),
            "samples_per_s_bf16": round(bf16["samples_per_s"], 1),
            "samples_per_s_bf16_median": round(bf16["samples_per_s_median"], 1),
            "bf16_speedup": round(bf16["samples_per_s"] / measured["samples_per_s"], 3),
            "bf16_speedup_median": round(bf16["samples_per_s_median"]
                                         / measured["samples_per_s_median"], 3),
        }
        print(f"{arch}: {result[arch]}", file=sys.stderr, flush=True)
    result.update({"load_1min_after": round(os.getloadavg()[0], 2),
                   "target_fraction_of_peak": 0.6,
                   "target_bf16_speedup": ">= 2 with amx_bf16, >= 1.3 with avx512_bf16 only",
                   "peak_rss_gb": round(peak_rss_gb(), 3), "threads": args.threads,
                   "machine": describe(), "python": platform.python_version(),
                   "tensorflow": tf.__version__, "keras": keras.__version__})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
