"""Shared test setup: deterministic, small, no GPU, no network; TensorFlow gets both cores
of the 2-core CI machine, or one per worker when pytest-xdist runs two (``make test``)."""

import contextlib
import os
import random
import shutil
import sqlite3
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Under pytest-xdist (``-n 2``) each worker is one of two processes sharing the 2 cores:
# one thread for TensorFlow's ops and for NumPy's BLAS in each, set before either loads
# (the environment reaches the `wmh`/`mlflow` subprocesses that tests start as well). Set,
# not defaulted: the workers inherit the environment of the controlling pytest process,
# whose own import of this file defaulted TensorFlow to 2 threads.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
THREADS = 1 if XDIST_WORKER else 2
if XDIST_WORKER:
    for _name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                  "MKL_NUM_THREADS"):
        os.environ[_name] = "1"
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(THREADS))
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# The atlas's disk cache (wmh.preprocess.atlas) goes to one throwaway folder per test run,
# made by the controlling process (the xdist workers inherit it) and removed at its exit.
if "WMH_CACHE_HOME" not in os.environ:
    import atexit
    import tempfile

    os.environ["WMH_CACHE_HOME"] = tempfile.mkdtemp(prefix="wmh-test-cache-")
    atexit.register(shutil.rmtree, os.environ["WMH_CACHE_HOME"], True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_tf_configured = False


def configure_tensorflow():
    """``THREADS`` intra-op threads (2, or 1 per xdist worker) and fixed seeds, set once."""
    global _tf_configured
    import tensorflow as tf
    if not _tf_configured:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(THREADS)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised by an earlier import
            pass
        _tf_configured = True
    import keras
    keras.utils.set_random_seed(0)
    return tf


@pytest.fixture(autouse=True)
def _seed_everything(request):
    random.seed(0)
    np.random.seed(0)
    import sys
    if "tensorflow" in sys.modules:
        configure_tensorflow()
    yield


@pytest.fixture(autouse=True)
def _precision_agnostic(monkeypatch):
    """precision "auto" resolves to fp32 in every test, whatever this CPU has: tests that
    test bf16 ask for it explicitly (and skip where the CPU lacks bfloat16 units)."""
    from wmh.models import precision

    monkeypatch.setattr(precision, "cpu_bf16_isa", lambda cpuinfo="/proc/cpuinfo": "none")
    yield


@pytest.fixture(autouse=True)
def _isolate_mlflow():
    """mlflow.set_experiment leaves MLFLOW_EXPERIMENT_ID in os.environ and a module
    global; clear both (and any run left active) so one test's store never leaks into
    the next."""
    yield
    import sys
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        os.environ.pop(name, None)
    if "mlflow" in sys.modules:
        import mlflow
        from mlflow.tracking import fluent
        while mlflow.active_run() is not None:
            mlflow.end_run()
        fluent._active_experiment_id = None
        from mlflow.tracking._model_registry import utils as registry_utils
        registry_utils._registry_uri = None  # the registry follows the tracking store


@pytest.fixture
def tf_seeded():
    """TensorFlow with threads and seeds set; request it in tests that build models."""
    return configure_tensorflow()


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory):
    """An empty SQLite MLflow store, created once: creating one runs every schema
    migration (about 2 CPU s), copying it takes milliseconds."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the Default experiment's artifacts: ./mlruns/0
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder


def copy_empty_mlflow_store(template: Path, folder: Path) -> str:
    """``folder/mlflow.db``, a copy of the empty store ``template/mlflow.db`` whose
    Default experiment keeps its artifacts under ``folder/mlruns`` (as a store created
    with ``folder`` as the working directory does); returns its URI."""
    target = folder / "mlflow.db"
    shutil.copyfile(template / "mlflow.db", target)
    with contextlib.closing(sqlite3.connect(target)) as connection, connection:
        moved = connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0 "
            "AND artifact_location = ?",
            (str(folder / "mlruns" / "0"), str(template / "mlruns" / "0"))).rowcount
    assert moved == 1, "the MLflow template store's Default experiment changed form"
    return f"sqlite:///{target}"


@pytest.fixture
def mlflow_tmp(tmp_path, monkeypatch, _empty_mlflow_store):
    """An MLflow tracking store private to the test (a copy of an empty store)."""
    uri = copy_empty_mlflow_store(_empty_mlflow_store, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(scope="session")
def tiny_synthetic_cache(tmp_path_factory):
    """A data cache shared by the end-to-end tests that run on the tiny synthetic cohort
    (``synth.profile=test``, 6 subjects, ``preprocess.workers=2``): the cohort is
    synthesised and prepared once per session, each test still samples and trains itself."""
    return tmp_path_factory.mktemp("tiny-synthetic-cache")


# --- pytest-xdist (`make test`: -n 2 --dist loadfile): what runs together, and first ----

# The default suite's modules whose tests use ``tiny_synthetic_cache``: one work unit, so
# the tiny cohort is synthesised and prepared once, on the worker that runs them all
# (checked at collection: a module missing here fails the run with its name).
SHARED_COHORT_MODULES = ("tests/test_pipeline.py", "tests/test_reproduce.py")
SHARED_COHORT_UNIT = "tiny-synthetic-cohort"
# The longest work units (bench_suite.py durations) start first, so that neither worker is
# left running one of them alone at the end; the rest keep collection order.
FIRST_UNITS = (SHARED_COHORT_UNIT, "tests/test_tune.py", "tests/test_mlproject.py",
               "tests/test_train.py", "tests/test_baseline.py", "tests/test_finetune.py")


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its module (module-scoped fixtures are built once,
    on one worker), all of ``SHARED_COHORT_MODULES`` together."""
    module = nodeid.split("::", 1)[0]
    return SHARED_COHORT_UNIT if module in SHARED_COHORT_MODULES else module


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown without it
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with :func:`work_unit`'s units, in collection order (the workers
    collect ``FIRST_UNITS`` first); any other ``--dist`` is xdist's own."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class WorkUnitScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # not by test count: FIRST_UNITS lead
    return WorkUnitScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Checks ``SHARED_COHORT_MODULES``; on an xdist worker, collects ``FIRST_UNITS``
    first (the same order on every worker, as xdist requires)."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if ("tiny_synthetic_cache" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("slow") is None
                and module not in SHARED_COHORT_MODULES):
            raise pytest.UsageError(f"{module} uses tiny_synthetic_cache: add it to "
                                    "SHARED_COHORT_MODULES in tests/conftest.py")
    if XDIST_WORKER:
        def rank(item):
            unit = work_unit(item.nodeid)
            return FIRST_UNITS.index(unit) if unit in FIRST_UNITS else len(FIRST_UNITS)

        items.sort(key=rank)  # stable: collection order within and after FIRST_UNITS
