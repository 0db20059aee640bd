"""benchmarks/machine.py names the CPU's vector extensions: figures from an AVX2-only host and
an AVX-512 BF16 host of the same model name are not comparable."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "machine.py"


def load_machine():
    spec = importlib.util.spec_from_file_location("bench_machine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_cpuinfo(path, flags):
    path.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n\n")
    return str(path)


def test_vector_isa_lists_the_extensions_widest_first(tmp_path):
    machine = load_machine()
    zen4 = write_cpuinfo(tmp_path / "zen4", "fma avx2 avx512f avx512_bf16 avx512vl")
    zen3 = write_cpuinfo(tmp_path / "zen3", "avx2 fma")
    old = write_cpuinfo(tmp_path / "old", "sse4_2")
    assert machine.vector_isa(zen4) == "avx512_bf16 avx512f avx2 fma"
    assert machine.vector_isa(zen3) == "avx2 fma"
    assert machine.vector_isa(old) == "no AVX2"
    assert machine.vector_isa(str(tmp_path / "missing")) == "unknown"


def test_machine_line_says_whether_onednn_was_on(monkeypatch):
    machine = load_machine()
    assert machine.describe().endswith("oneDNN on")  # importing wmh set the default
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert machine.describe().endswith("oneDNN off")
