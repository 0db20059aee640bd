"""benchmarks/bench_suite.py measures what `make test` runs (its pytest-xdist workers),
and tests/conftest.py's xdist work units keep each module, and the modules sharing the
tiny synthetic cohort, on one worker."""

import importlib.util
from pathlib import Path

import pytest

import conftest

ROOT = Path(__file__).resolve().parents[1]


def load_bench_suite(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its `from machine import ...`
    spec = importlib.util.spec_from_file_location("bench_suite",
                                                  ROOT / "benchmarks" / "bench_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_workers_are_the_makefiles(tmp_path, monkeypatch):
    bench = load_bench_suite(monkeypatch)
    assert bench.make_test_workers(ROOT) == ["-n", "2", "--dist", "loadfile"]
    (tmp_path / "Makefile").write_text("test:\n\tpython -m pytest -q\n")
    assert bench.make_test_workers(tmp_path) == []  # an older checkout: one process
    assert bench.make_test_workers(tmp_path / "missing") == []


def test_without_xdist_it_says_so_in_one_line(monkeypatch, capsys):
    bench = load_bench_suite(monkeypatch)
    monkeypatch.setattr(bench, "has_xdist", lambda: False)
    monkeypatch.setattr(bench, "run", lambda *args: pytest.fail("ran pytest"))
    monkeypatch.setattr("sys.argv", ["bench_suite.py", "--root", str(ROOT)])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == ("bench_suite: make test runs pytest-xdist (the Makefile's XDIST), which "
                   "this Python lacks: make install, or --serial\n")


def test_work_units_are_modules_and_the_shared_cohort():
    assert conftest.work_unit("tests/test_io.py::test_a[x::y]") == "tests/test_io.py"
    assert conftest.work_unit("tests/test_pipeline.py::test_demo") == \
        conftest.work_unit("tests/test_reproduce.py::test_tiny") == conftest.SHARED_COHORT_UNIT
    assert conftest.FIRST_UNITS[0] == conftest.SHARED_COHORT_UNIT
    for unit in conftest.FIRST_UNITS[1:]:
        assert (ROOT / unit).is_file(), unit
