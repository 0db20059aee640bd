"""What every benchmark records about the machine it ran on (imported by the scripts)."""

import os
import platform

import wmh  # noqa: F401  TF_ENABLE_ONEDNN_OPTS=1 unless set, as for every wmh command


def cpu_model() -> str:
    """The CPU's model name (as ``lscpu``'s "Model name" shows it), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


# The vector extensions TensorFlow's kernels and wmh's bf16 path use, widest first. Hosts
# sold under one model name differ here (an "AMD EPYC" with AVX-512 BF16 in one session, AVX2
# only in another): a figure without its ISA cannot be compared with another. (The 3-4x
# dearer dense inference once put down to the missing AVX-512 was mostly TensorFlow leaving
# oneDNN off on such a CPU; wmh now turns it on, and describe() says whether it was on.)
ISA_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "fma")


def vector_isa(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vector extensions among :data:`ISA_FLAGS` ("avx512f avx512_bf16 ..."), or
    "unknown" where /proc/cpuinfo cannot be read."""
    try:
        with open(cpuinfo) as lines:
            flags = next((line.split(":", 1)[1].split() for line in lines
                          if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [flag for flag in ISA_FLAGS if flag in flags]
    return " ".join(found) if found else "no AVX2"


def describe() -> str:
    """One line: CPU model, its vector extensions, core count, operating system, Python,
    and whether TensorFlow's oneDNN kernels were asked for (``TF_ENABLE_ONEDNN_OPTS``)."""
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")
    return (f"{cpu_model()} ({vector_isa()}), {os.cpu_count()} cores, {platform.system()}, "
            f"Python {platform.python_version()}, oneDNN {'off' if onednn == '0' else 'on'}")
