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


def describe() -> str:
    """One line: CPU model, core count, operating system, Python version."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}, "
            f"Python {platform.python_version()}")
