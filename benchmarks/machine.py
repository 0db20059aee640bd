"""What every benchmark records about the machine it ran on (imported by the scripts)."""

import os
import platform


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
# only in another), and dense inference costs 3-4x the CPU seconds without AVX-512: a figure
# without its ISA cannot be compared with another.
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
    """One line: CPU model, its vector extensions, core count, operating system, Python."""
    return (f"{cpu_model()} ({vector_isa()}), {os.cpu_count()} cores, {platform.system()}, "
            f"Python {platform.python_version()}")
