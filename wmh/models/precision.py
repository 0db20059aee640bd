"""Numeric precision: detect the CPU's bfloat16 units, resolve ``auto``, scope the policy.

Three settings (``train.precision``, ``--precision``): ``fp32``; ``bf16``; ``auto`` (the
default), which picks bf16 only where the CPU has bfloat16 units **and** the measurements
in ``BENCHMARKS.md`` ("bfloat16 inference and training") show that it pays and holds
accuracy for that job; fp32 elsewhere. The choice is made per job:

* training: Keras ``mixed_bfloat16`` (float32 master weights, bf16 compute) for the
  towers (but their first convolution) and the first fully connected layer; the layers
  after it (location, second fully connected layer, softmax) and the loss stay float32
  (:mod:`wmh.models.patch`);
* inference: bf16 compute for the towers' convolutions only (but the first, which reads
  the raw intensities); the FFT stage of the first fully connected layer, location,
  head and probabilities stay float32 (:func:`tower_precision`).

Weights are always stored float32, so a model trained in one precision segments in the
other. The ISA comes from ``/proc/cpuinfo`` flags: ``amx_bf16`` (Intel AMX tiles) or
``avx512_bf16`` (AVX-512 BF16 dot products, e.g. AMD EPYC Zen 4).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Literal

from wmh.errors import WMHError

PRECISIONS = ("auto", "fp32", "bf16")
ISAS = ("amx_bf16", "avx512_bf16", "none")  # best first
JOBS = ("train", "inference")
Precision = Literal["fp32", "bf16"]

# What ``auto`` picks per ISA and job. The measurements behind each entry are in
# BENCHMARKS.md ("bfloat16 inference and training"), taken on an AMD EPYC with
# avx512_bf16 (no AMX), 2 shared cores:
# * inference -> bf16: bf16 towers made the dense path 1.21x faster in wall time (1.23x
#   in CPU time; towers 1.91x, the float32 FFT stage, half the fp32 time, unchanged),
#   with probabilities within 0.013 of fp32 on demo-trained weights and test Dice
#   changes of +0.0005 / -0.0003 (SYNTHETIC). It pays and holds accuracy, so bf16
#   wherever the CPU has bfloat16 units (AMX speeds up the same convolutions more).
# * training -> fp32, on both ISAs: mixed_bfloat16 trained 1.5-1.8x faster, but on the
#   demo recipe at equal samples the test Dice moved by -0.041 (seed 0; target <= 0.005)
#   and the validation Dice by +0.014 (seed 1; target <= 0.01): accuracy not shown to
#   hold. That is a property of the bf16 arithmetic, not of the ISA, so AMX would not
#   change the verdict; ask for bf16 explicitly to trade it for speed.
AUTO_BF16 = {
    ("amx_bf16", "train"): False,
    ("amx_bf16", "inference"): True,
    ("avx512_bf16", "train"): False,
    ("avx512_bf16", "inference"): True,
}

_KERAS_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def cpu_bf16_isa(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The best bfloat16 instruction set the CPU reports: "amx_bf16", "avx512_bf16"
    or "none" (also when the file cannot be read, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return "none"
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return next((isa for isa in ISAS[:-1] if isa in flags), "none")


def check_precision(value: str, option: str = "train.precision") -> str:
    """Returns ``value`` if it is a precision setting, else a one-line WMHError naming
    ``option``."""
    if value not in PRECISIONS:
        raise WMHError(f"{option}: {value!r} is not one of {', '.join(PRECISIONS)}")
    return value


def resolve_precision(requested: str, job: str, isa: str | None = None) -> Precision:
    """The precision a job runs in: "fp32" or "bf16".

    Args:
        requested: "auto", "fp32" or "bf16".
        job: "train" or "inference".
        isa: the CPU's bfloat16 ISA (default: :func:`cpu_bf16_isa` of this machine).

    Returns:
        ``requested`` unless it is "auto"; then bf16 where ``AUTO_BF16`` says the
        measurements justify it for this ISA and job, fp32 elsewhere.

    Raises:
        WMHError: unknown precision (ValueError for an unknown job: a programming error).
    """
    check_precision(requested, "precision")
    if job not in JOBS:
        raise ValueError(f"job {job!r} is not one of {JOBS}")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    isa = cpu_bf16_isa() if isa is None else isa
    return "bf16" if AUTO_BF16.get((isa, job), False) else "fp32"


def keras_policy(precision: str) -> str:
    """The Keras dtype policy name of a resolved precision."""
    if precision not in _KERAS_POLICY:
        raise ValueError(f"precision {precision!r} is not resolved (fp32 or bf16)")
    return _KERAS_POLICY[precision]


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[str]:
    """Sets the global Keras dtype policy for layers built inside; restores it after.

    Layers keep the policy they were built with, so build, compile and fit a model
    inside the scope; nothing outside it (other code, other tests) sees the policy.
    Yields the Keras policy name.
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(keras_policy(precision))
    try:
        yield keras_policy(precision)
    finally:
        keras.config.set_dtype_policy(previous)


def _tower_convolutions(model) -> list:
    """The Conv2D layers that may run in bf16 (all but
    ``wmh.models.patch.FLOAT32_TOWER_LAYERS``) of a tower model, or of every nested
    ``tower*`` model of a patch or dense model."""
    import keras

    from wmh.models.patch import FLOAT32_TOWER_LAYERS

    def towers(container):
        for layer in container.layers:
            if isinstance(layer, keras.Model):
                yield from [layer] if layer.name.startswith("tower") else towers(layer)

    found = [model] if model.name.startswith("tower") else towers(model)
    unique = {id(tower): tower for tower in found}.values()  # MSWS: one tower, 3 calls
    return [layer for tower in unique for layer in tower.layers
            if isinstance(layer, keras.layers.Conv2D)
            and layer.name not in FLOAT32_TOWER_LAYERS]


def set_tower_precision(model, precision: str) -> None:
    """Runs the towers' convolutions of ``model`` (patch or dense) in ``precision``.

    Only the compute dtype changes: the weights stay float32 under both policies, and
    every other layer (the FFT first layer, location, head, softmax) keeps its own.
    """
    import keras

    policy = keras.dtype_policies.get(keras_policy(precision))
    for layer in _tower_convolutions(model):
        layer.dtype_policy = policy


def tower_precision_of(model) -> Precision:
    """"bf16" if the towers of ``model`` compute in bfloat16, else "fp32"."""
    layers = _tower_convolutions(model)
    bf16 = bool(layers) and all(layer.compute_dtype == "bfloat16" for layer in layers)
    return "bf16" if bf16 else "fp32"


@contextlib.contextmanager
def tower_precision(model, precision: str) -> Iterator[None]:
    """Runs the towers of ``model`` in ``precision`` inside the block, then restores
    the precision they had (the caller's model is left as it was)."""
    before = tower_precision_of(model)
    set_tower_precision(model, precision)
    try:
        yield
    finally:
        set_tower_precision(model, before)
