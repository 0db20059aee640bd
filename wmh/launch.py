"""The ``wmh`` console script: quiets TensorFlow's start-up lines, then runs :mod:`wmh.cli`.

TensorFlow prints start-up lines on stderr when it is imported (oneDNN, CPU
instructions, absl's "All log messages before absl::InitializeLog()"), some of them
whatever ``TF_CPP_MIN_LOG_LEVEL`` says. Unless the global ``--verbose`` option is given,
this launcher, before anything imports TensorFlow:

* sets ``TF_CPP_MIN_LOG_LEVEL=3`` (only oneDNN's message is dropped, not the
  optimisation, which the package turns on: :mod:`wmh`);
* wraps the first ``import tensorflow`` so that what it writes to stderr is read back
  and passed on without the known start-up lines (anything else, e.g. a real error, is
  still shown);
* sets absl's Python logging to errors only.

It imports nothing heavy itself, so ``wmh --help`` stays fast. ``python -m wmh`` runs it
too (``wmh/__main__.py``).

Once the command has returned and TensorFlow was imported, the launcher ends the process
itself (:func:`exit_now`): it waits for any non-daemon thread, runs the ``atexit``
handlers (logging, multiprocessing, temporary files, MLflow), flushes stdout and stderr,
then leaves with ``os._exit``. That skips only the interpreter's teardown of TensorFlow's
objects and modules, which cost 1.5-2 s per command on 2 cores (BENCHMARKS.md, issue 15).
Every output is already written and closed by then.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
import threading

# Substrings of TensorFlow's start-up lines (not errors) that are dropped without --verbose.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard",
    "This TensorFlow binary is optimized",
    "To enable the following instructions",
    "rebuild TensorFlow with the appropriate compiler flags",
    "Unable to register cuDNN factory", "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "TF-TRT Warning: Could not find TensorRT",
    "Could not find cuda drivers on your machine",
    "computation placer already registered",
)


def wants_verbose(argv: list[str]) -> bool:
    """True when ``--verbose`` comes among the global options, before the command."""
    for argument in argv:
        if argument == "--verbose":
            return True
        if not argument.startswith("-"):
            return False
    return False


def drop_startup_noise(text: str) -> str:
    """``text`` without the lines that contain a :data:`STARTUP_NOISE` substring."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(noise in line for noise in STARTUP_NOISE))


@contextlib.contextmanager
def filtered_stderr():
    """Captures file descriptor 2 (C++ and Python writes alike) and passes on what was
    written without the start-up noise when the block ends, even by an exception."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = drop_startup_noise(capture.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first ``import tensorflow`` inside :func:`filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and so that find_spec below finds the real one
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            with filtered_stderr():
                execute(module)
            _quiet_absl()

        spec.loader.exec_module = exec_module
        return spec


def _quiet_absl() -> None:
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


def quiet_tensorflow(environ=os.environ) -> None:
    """Sets the environment and the import hook (before TensorFlow is imported)."""
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" in sys.modules:  # too late for the hook
        return
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def run(argv: list[str]) -> int:
    """Runs ``wmh [--verbose] COMMAND ...`` and returns its exit status."""
    if not wants_verbose(argv):
        quiet_tensorflow()
    from wmh.cli import main as cli_main

    try:
        cli_main(argv)
    except SystemExit as stop:
        return exit_status(stop.code)
    return 0


def exit_status(code) -> int:
    """The status ``sys.exit(code)`` gives: 0 for None, the int, else 1 (a message is
    written to stderr, as Python does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def exit_now(status: int) -> None:
    """Ends the process with ``status``: a plain ``sys.exit`` unless TensorFlow is loaded;
    then non-daemon threads are joined, ``atexit`` handlers run and stdio is flushed
    before ``os._exit``, skipping the interpreter's slow teardown of TensorFlow. Files
    still open for writing would lose their buffers: every writer in wmh closes its own."""
    if threading.current_thread() is not threading.main_thread():
        sys.exit(status)  # _shutdown would wait for this very thread
    # What the interpreter does first at exit: threading's own exit callbacks (open thread
    # pools are shut down) and a join of every non-daemon thread (the background model
    # load may still be importing TensorFlow, so it is checked after).
    try:
        threading._shutdown()
    except KeyboardInterrupt:  # as the interpreter does: carry on exiting
        pass
    if "tensorflow" not in sys.modules:
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> None:
    """The console entry point: ``wmh [--verbose] COMMAND ...``."""
    exit_now(run(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    main()
