"""`wmh` (the console script, `python -m wmh`) keeps TensorFlow's start-up lines off
stderr unless --verbose."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from wmh import launch

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("oneDNN", "cpu_feature_guard", "This TensorFlow binary", "absl::InitializeLog")


def run_wmh(arguments, tmp_path, **environment):
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_CPP")}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI="", WMH_HOME=str(tmp_path / "home"),
               **environment)
    return subprocess.run([sys.executable, "-m", "wmh", *arguments], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_no_tensorflow_startup_lines_unless_verbose(tmp_path):
    flair = tmp_path / "FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), flair)
    # Loading the model imports TensorFlow (through keras), then fails in one line: a
    # model folder with the shipped contract and plan, but weights that are not a model.
    model = tmp_path / "model"
    shutil.copytree(ROOT / "wmh" / "pretrained" / "flair", model,
                    ignore=shutil.ignore_patterns("model.keras", "pretrained.json"))
    (model / "model.keras").write_bytes(b"not a keras file")
    arguments = ["segment", "--model", str(model), str(flair), "--out", str(tmp_path / "seg")]
    verbose = run_wmh(["--verbose", *arguments], tmp_path)
    assert verbose.returncode == 2
    # TensorFlow prints some of them (even at TF_CPP_MIN_LOG_LEVEL=2; which ones depends
    # on the CPU: the oneDNN line on Intel, the CPU-instructions lines everywhere) ...
    assert any(noise in verbose.stderr for noise in NOISE)
    quiet = run_wmh(arguments, tmp_path, TF_CPP_MIN_LOG_LEVEL="2")
    assert quiet.returncode == 2
    # ... and without --verbose only the error is left.
    assert quiet.stderr.splitlines() == [verbose.stderr.splitlines()[-1]]
    assert quiet.stderr.startswith(f"wmh: error: {model / 'model.keras'}: cannot load model")
    assert not any(noise in quiet.stderr for noise in NOISE)


def test_only_startup_lines_are_dropped():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written "
            "to STDERR\nI0000 port.cc:153] oneDNN custom operations are on. ...\n"
            "E0000 something real went wrong\n"
            "I0000 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...\n"
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
            "TensorFlow with the appropriate compiler flags.\n")
    assert launch.drop_startup_noise(text) == "E0000 something real went wrong\n"


def test_verbose_is_a_global_option():
    assert launch.wants_verbose(["--verbose", "segment", "--model", "m"])
    assert not launch.wants_verbose(["segment", "--verbose"])  # an option of the command
    assert not launch.wants_verbose(["config"])
    from click.testing import CliRunner

    from wmh.cli import cli

    assert CliRunner().invoke(cli, ["--verbose", "config"]).exit_code == 0
    assert "--verbose" in CliRunner().invoke(cli, ["--help"]).output


def test_console_script_points_at_the_launcher():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"wmh": "wmh.launch:main"}


def _exit_child(tmp_path, body: str):
    """Runs ``body`` then ``launch.exit_now`` in a fresh interpreter with a stand-in
    'tensorflow' module (the fast path, without TensorFlow's import cost)."""
    script = tmp_path / "child.py"
    script.write_text(
        "import atexit, sys, threading, time, types\n"
        "from pathlib import Path\n"
        "sys.modules['tensorflow'] = types.ModuleType('tensorflow')\n"
        "from wmh import launch\n"
        f"out = Path({str(tmp_path)!r})\n" + body)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_fast_exit_joins_threads_runs_atexit_and_keeps_the_status(tmp_path):
    done = _exit_child(tmp_path, (
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    (out / 'thread.txt').write_text('written')\n"
        "threading.Thread(target=late).start()\n"
        "import concurrent.futures\n"
        "pool = concurrent.futures.ThreadPoolExecutor(1)  # left open: must not hang the exit\n"
        "pool.submit(lambda: (time.sleep(0.2), (out / 'pool.txt').write_text('pool')))\n"
        "atexit.register(lambda: print('atexit handler ran'))\n"
        "sys.stdout.write('buffered, no newline')\n"
        "launch.exit_now(3)\n"
        "print('not reached')\n"))
    assert done.returncode == 3
    assert (tmp_path / "thread.txt").read_text() == "written"  # the thread was joined
    assert (tmp_path / "pool.txt").read_text() == "pool"  # the pool's work was finished
    assert done.stdout == "buffered, no newlineatexit handler ran\n"  # flushed, in order
    assert done.stderr == ""


def test_exit_status_follows_sys_exit():
    assert launch.exit_status(None) == 0 and launch.exit_status(2) == 2
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert launch.exit_status("wmh: error: bad") == 1
    assert stderr.getvalue() == "wmh: error: bad\n"


def test_run_returns_the_commands_status(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "quiet_tensorflow", lambda: None)  # no process-wide hook
    monkeypatch.setenv("WMH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert launch.run(["config", "--set", "model.arch=nope"]) == 2
    assert launch.run(["config"]) == 0
