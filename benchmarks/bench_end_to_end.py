"""``wmh segment`` end to end, per stage (issue 15 item 5); prints one JSON object.

Usage: ``.venv/bin/python benchmarks/bench_end_to_end.py [--model DIR] [--seed 15]
[--cases thick,3d] [--flair PATH [--t1 PATH]] [--repeats 1] [--wait-idle]``

Each case runs the real command, ``wmh segment FLAIR [T1] --model M --out OUT``
(:func:`wmh.launch.run` and then its exit, as the console script does), in a fresh Python
process, so that importing TensorFlow and loading the model count as they do for a user.
Inside that process the benchmark only wraps functions of the code path with timers (wall
and CPU seconds: the process's CPU time, all threads); nothing else changes. The cases:

* ``thick``: a SYNTHETIC clinical thick-slice 1.5 T axial FLAIR with skull, neck and
  shoulders (``wmh synth`` profile ``clinical-neck``: 256 x 256 x 36, 0.9 x 0.9 x 6.5 mm,
  LAS), subject 0 of the cohort with ``--seed``;
* ``3d``: a SYNTHETIC 1 mm-class 3D FLAIR (profile ``flair-3d``), or the files given
  with ``--flair`` [``--t1``] (e.g. a real 182 x 218 x 182 case; never committed).

The T1 is passed when the model's channels include it (synthetic cases have one).
Without ``--model`` a random-weights model of the paper's shipped configuration
(MSWS + ffcl, FLAIR only, width 0.5) is built once: speed does not depend on the weights.

Stages (``stages``: wall ``s`` and ``cpu_s``; ``calls`` when a function ran more than once):

* ``python_start_and_exit``: what the parent measures of the child process beyond the
  child's own clock (interpreter start-up, and the exit, which ends as the console
  script's does: :func:`wmh.launch.exit_now`); ``import_cli``: the child's first line to
  running the command;
* ``resolve_model``: finds the model and its contract;
* ``model_load``: imports TensorFlow, loads the weights and builds the dense twin, up
  front (code before the background load); since then ``model_load_background``: the
  same on its own thread while the first subject is prepared (wall, that thread's CPU
  seconds; inside ``prepare``'s process CPU, not added to the totals), and
  ``model_wait``: what the command then waited for it, if anything;
* ``prepare``: what the command waits for the subject's preparation
  (:meth:`wmh.segment.ahead.Preparer.result`; :func:`wmh.preprocess.prepare_subject` runs
  in the preparation worker process, or in the command's process without one), split
  into its own sub-stages (``prepare_stages``: the stage clock it keeps in its
  provenance: load, t1_registration, atlas_registration, masks, bias_and_normalisation,
  ventricles_and_location; with CPU seconds when it ran in the command's process). Its
  ``cpu_s`` includes the worker's CPU seconds (``prepare_worker_cpu_s``, the joined child
  process's own);
* ``infer``: :func:`wmh.train.predict_volume` (dense inference);
* ``write`` (``segment_subject``'s own "write" stage line): back to the native grid
  (``to_native_working``), ventricle distance, lesion labels and volumes
  (``zone_volumes``), ``lesion_table``, re-reading the FLAIR for the QC figure, each NIfTI
  written (``save:<file>``), ``lesions_csv``, ``qc_figure`` and ``qc_png``,
  ``report_json``, and the cohort tables and page (``cohort_files``: what
  ``write_subject_folder`` does besides the subject's own files);
* ``other``: what the stages above leave of ``total`` (input checks, hashing...).

``logged`` holds the stage lines the command itself prints (prepare / infer / write).

``idle_estimate_s`` (per stage, and ``total_idle_estimate_s``) is an ESTIMATE, not a
measurement, of the wall seconds on two free cores, from the scheduler's per-thread
figures (``/proc/self/task/*/schedstat``: seconds on a CPU, seconds runnable but
waiting for one): see :func:`idle_estimate`. Interpreter start-up and exit are
estimated as min(wall, CPU). CPU seconds themselves grow on a loaded machine, so the
estimate errs high. ``main_thread_run_queue_wait_s``: how long the command's main
thread waited for a CPU.
``load_1min_before`` / ``_after``: the 1-minute load average around each case (the
machine is shared: compare CPU seconds; with 2 free cores wall ~ CPU / 1.x).
``--wait-idle`` polls the load (as ``bench_segment.py`` does) before each case.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_CHILD_START = time.perf_counter()
_CHILD_MAIN = (open("/proc/thread-self/schedstat").read().split()[:2]
               if os.path.exists("/proc/thread-self/schedstat") else None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_segment import wait_for_idle  # noqa: E402  the same polling
from machine import describe  # noqa: E402  benchmarks/machine.py

PROFILES = {"thick": "clinical-neck", "3d": "flair-3d"}
TARGETS = {"thick": "<= 15 s wall on 2 cores", "3d": "<= 40 s wall on 2 cores"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (default: random MSWS+ffcl FLAIR-only width 0.5)")
    parser.add_argument("--seed", type=int, default=15, help="synthetic cohort seed")
    parser.add_argument("--cases", default="thick,3d", help="comma-separated: thick, 3d")
    parser.add_argument("--flair", type=Path, default=None, help="3d case: this FLAIR")
    parser.add_argument("--t1", type=Path, default=None, help="3d case: this T1")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the synthetic cases, model and outputs (kept)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="wmh synth anatomy cache folder (default: WORK/cache)")
    parser.add_argument("--out", type=Path, default=None,
                        help="wmh segment's output folder (default: WORK/out)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case (all listed)")
    parser.add_argument("--wait-idle", action="store_true",
                        help="before each case wait (<= 5 min) for 1-min load < 1.0")
    return parser.parse_args(argv)


# ----------------------------------------------------------------- the child process

def thread_stats() -> dict[int, tuple[float, float]]:
    """Seconds on a CPU and seconds runnable but waiting for one (the run queue), per
    live thread of this process (``/proc/self/task/*/schedstat``; {} without it)."""
    stats = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return stats
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as handle:
                run, wait = handle.read().split()[:2]
        except (OSError, ValueError):
            continue
        stats[int(tid)] = (int(run) / 1e9, int(wait) / 1e9)
    return stats


def idle_estimate(wall: float, cpu: float, main: tuple[float, float],
                  others: list[tuple[float, float]], cores: int = 2) -> float:
    """An ESTIMATE of a stage's wall seconds on ``cores`` free cores, from what the
    scheduler recorded on the shared machine: the main thread's seconds on a CPU, plus
    the seconds it slept (waiting for its worker threads, or I/O) scaled by the share of
    the other threads' runnable time they actually ran; the time the main thread itself
    waited for a CPU is dropped. Never below CPU / cores nor the main thread's CPU. CPU
    seconds themselves grow on a loaded machine (caches, spinning thread pools), so this
    stays an upper-side estimate."""
    main_run, main_wait = main
    sleep = max(wall - main_run - main_wait, 0.0)
    run = sum(r for r, _ in others)
    share = run / (run + sum(w for _, w in others)) if run > 0 else 1.0
    return max(main_run + sleep * share, cpu / cores, main_run)


class Timers:
    """Wall and CPU seconds per name, accumulated over calls, with the scheduler's
    figures for :func:`idle_estimate`."""

    def __init__(self):
        # name -> [wall, cpu, calls, idle estimate, main thread's run-queue wait]
        self.values: dict[str, list[float]] = {}
        self.ended: list[tuple[float, float, float]] = []  # (time, run, wait) of threads gone
        self.active: set[str] = set()  # names being timed on the main thread now

    def add(self, name: str, wall: float, cpu: float,
            estimate: tuple[float, float] | None = None) -> None:
        entry = self.values.setdefault(name, [0.0, 0.0, 0, 0.0, 0.0])
        entry[0] += wall
        entry[1] += cpu
        entry[2] += 1
        entry[3] += wall if estimate is None else estimate[0]
        entry[4] += 0.0 if estimate is None else estimate[1]

    def wrap(self, owner, attribute: str, name, method: bool = False) -> None:
        """Replaces ``owner.attribute`` by a timed call; ``name`` may be a function of the
        call's arguments."""
        function = getattr(owner, attribute)
        timers = self

        def timed(*args, **kwargs):
            label = name(*args, **kwargs) if callable(name) else name
            wall, cpu = time.perf_counter(), time.process_time()
            before = thread_stats()
            timers.active.add(label)
            try:
                return function(*args, **kwargs)
            finally:
                timers.active.discard(label)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                timers.add(label, wall, cpu, timers.estimate(wall, cpu, before))

        setattr(owner, attribute, timed)

    def wrap_background(self, owner, attribute: str, name: str) -> None:
        """Times a call made on its own thread: wall, that thread's CPU seconds, and its
        scheduler figures (kept for the stages it overlaps, as the thread is gone by the
        time they end)."""
        function = getattr(owner, attribute)
        timers = self

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            tid = threading.get_native_id()
            before = thread_stats().get(tid, (0.0, 0.0))
            try:
                return function(*args, **kwargs)
            finally:
                after = thread_stats().get(tid, before)
                timers.ended.append((time.perf_counter(), after[0] - before[0],
                                     after[1] - before[1]))
                timers.add(name, time.perf_counter() - wall, time.thread_time() - cpu)

        setattr(owner, attribute, timed)

    def estimate(self, wall: float, cpu: float, before: dict, main: int | None = None,
                 ) -> tuple[float, float]:
        """:func:`idle_estimate` of a stage that began with the snapshot ``before``, and
        the main thread's run-queue wait during it."""
        after, now = thread_stats(), time.perf_counter()
        if not after:
            return wall, 0.0
        main = threading.get_native_id() if main is None else main
        deltas = {tid: (run - before.get(tid, (0.0, 0.0))[0],
                        wait - before.get(tid, (0.0, 0.0))[1])
                  for tid, (run, wait) in after.items()}
        main_delta = deltas.pop(main, (0.0, 0.0))
        others = list(deltas.values()) + [(run, wait) for ended, run, wait in self.ended
                                          if now - wall <= ended <= now]
        return idle_estimate(wall, cpu, main_delta, others), main_delta[1]

    def get(self, name: str) -> tuple[float, float]:
        wall, cpu = self.values.get(name, (0.0, 0.0))[:2]
        return wall, cpu

    def estimated(self, name: str) -> tuple[float, float]:
        """(idle estimate, main thread's run-queue wait) of ``name``."""
        values = self.values.get(name)
        return (values[3], values[4]) if values else (0.0, 0.0)

class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback(module)`` once ``name`` is imported, so that instrumenting a module
    does not import it early (TensorFlow's import must stay where the command does it)."""

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute, callback = spec.loader.exec_module, self.callback

        def exec_module(module):
            execute(module)
            callback(module)

        spec.loader.exec_module = exec_module
        return spec


def after_import(name: str, callback) -> None:
    if name in sys.modules:
        callback(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))


def instrument(timers: Timers, prepare_stages: dict) -> None:
    """Timers around the functions of the ``wmh segment`` code path (nothing else)."""
    from wmh import io
    from wmh.preprocess import format as prepared_format
    from wmh.preprocess import subject as prepare_module
    from wmh.segment import ahead, cohort, measures, outputs
    from wmh.segment import subject as segment_module

    class StageClock(prepare_module._StageClock):  # the same laps, CPU seconds beside
        def __init__(self, quality):
            super().__init__(quality)
            self._cpu = time.process_time()

        def lap(self, stage):
            super().lap(stage)
            now = time.process_time()
            prepare_stages[stage] = {"s": self._seconds[stage],
                                     "cpu_s": round(now - self._cpu, 2)}
            self._cpu = now

    prepare_module._StageClock = StageClock
    timers.wrap(cohort, "resolve_model", "resolve_model")
    # model_load: loading up front (older code) or waiting for the background load
    # (model_wait, inside segment_subject); model_load_background: the load itself on its
    # thread, overlapping prepare (not added to the totals)
    timers.wrap(segment_module.SegmentModel, "load", lambda *a, **k: "model_wait"
                if "segment_subject" in timers.active else "model_load")
    if hasattr(segment_module.SegmentModel, "_load"):
        timers.wrap_background(segment_module.SegmentModel, "_load", "model_load_background")
    # prepare: what the command waits for the subject's preparation, in the worker process
    # (wmh.segment.ahead) or, without one, in this process; its sub-stages are the stage
    # clock above here, the worker's own clock (wall only) there
    timers.wrap(ahead.Preparer, "result", "prepare")
    result = ahead.Preparer.result

    def stages_of(self, subject):
        prepared = result(self, subject)
        if not prepare_stages:
            prepare_stages.update({stage: {"s": seconds} for stage, seconds in
                                   prepared.provenance["quality"]["seconds"].items()})
        return prepared

    ahead.Preparer.result = stages_of
    after_import("wmh.train", lambda train: timers.wrap(train, "predict_volume", "infer"))
    timers.wrap(cohort, "segment_subject", "segment_subject")
    timers.wrap(prepared_format.PreparedSubject, "to_native_working", "to_native_working")
    timers.wrap(measures, "ventricle_distance", "ventricle_distance")
    timers.wrap(measures, "zone_volumes", "zone_volumes")
    timers.wrap(measures, "lesion_table", "lesion_table")
    timers.wrap(io, "load_image", lambda *a, **k: "read_flair_for_qc" if sys._getframe(2)
                .f_code.co_name == "segment_subject" else "read_image")
    timers.wrap(io, "save_like", lambda data, grid, path, *a, **k: f"save:{Path(path).name}")
    timers.wrap(segment_module, "write_lesions_csv", "lesions_csv")
    timers.wrap(segment_module, "qc_figure", "qc_figure")
    after_import("matplotlib.figure",
                 lambda figure: timers.wrap(figure.Figure, "savefig", "qc_png"))
    timers.wrap(outputs, "write_report", "report_json")
    timers.wrap(outputs, "write_subject_folder", "write_subject_folder")


def run_child(command: list[str]) -> dict:
    """Runs ``wmh segment`` with timers; returns the per-stage figures."""
    import contextlib
    import io as text_io

    from wmh import launch

    timers, prepare_stages = Timers(), {}
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    main_start = thread_stats().get(threading.get_native_id(), (0.0, 0.0))
    instrument(timers, prepare_stages)
    instrumented = time.perf_counter()
    captured = text_io.StringIO()
    children = os.times()
    with contextlib.redirect_stderr(captured):
        code = launch.run(command)
    total_wall = time.perf_counter() - start_wall
    # the preparation worker's CPU seconds (a child process, joined by now) count too
    ended = os.times()
    worker_cpu = (ended.children_user + ended.children_system
                  - children.children_user - children.children_system)
    total_cpu = time.process_time() - start_cpu + worker_cpu
    main_end = thread_stats().get(threading.get_native_id(), main_start)
    if code:
        raise SystemExit(f"wmh segment exited {code}: {captured.getvalue()[-2000:]}")
    logged = {match[1]: float(match[2]) for match in
              re.finditer(r": (prepare|wait for the model|infer|write) ([0-9.]+) s",
                          captured.getvalue())}

    def entry(wall, cpu, calls=1, estimate=None):
        values = {"s": round(wall, 2), "cpu_s": round(cpu, 2)}
        if estimate is not None:
            values["idle_estimate_s"] = round(estimate, 2)
        if calls > 1:
            values["calls"] = calls
        return values

    def timed(name):
        wall, cpu, calls, estimate, _ = timers.values.get(name, (0.0, 0.0, 1, 0.0, 0.0))
        return entry(wall, cpu, calls, estimate)

    # before the command: interpreter start-up ended, the CLI imported; one thread
    import_cpu = start_cpu
    import_wait = (main_start[1] - int(_CHILD_MAIN[1]) / 1e9) if _CHILD_MAIN else 0.0
    stages = {"import_cli": entry(start_wall - _CHILD_START, import_cpu, 1,
                                  max(start_wall - _CHILD_START - import_wait, import_cpu))}
    top = ["resolve_model", "model_load", "prepare", "model_wait", "infer"]
    for name in top:
        if name in timers.values or name not in ("model_wait",):
            stages[name] = timed(name)
    # the worker's CPU ran beside the main process, mostly while it waited in prepare
    stages["prepare"]["cpu_s"] = round(stages["prepare"]["cpu_s"] + worker_cpu, 2)
    # write = what segment_subject does after inference (and after waiting for the model)
    subject = timers.values.get("segment_subject", [0.0] * 5)
    inner_names = ("prepare", "model_wait", "infer")
    write = [subject[i] - sum(timers.values.get(n, [0.0] * 5)[i] for n in inner_names)
             for i in (0, 1, 4)]
    # writing runs on the main thread: its run-queue wait dropped, not below CPU / 2
    write[2] = max(write[0] - max(write[2], 0.0), write[1] / 2)
    write_stages = {}
    inner = [0.0, 0.0]
    for name, (wall, cpu, calls, estimate, _) in timers.values.items():
        if name in ("to_native_working", "ventricle_distance", "zone_volumes", "lesion_table",
                    "read_flair_for_qc", "lesions_csv", "qc_figure", "qc_png",
                    "report_json") or name.startswith("save:"):
            write_stages[name] = entry(wall, cpu, calls)
            inner = [inner[0] + wall, inner[1] + cpu]
    folder_wall, folder_cpu = timers.get("write_subject_folder")
    own = [sum(timers.get(n)[i] for n in timers.values if n.startswith("save:")
               or n in ("lesions_csv", "qc_figure", "qc_png", "report_json")) for i in (0, 1)]
    write_stages["cohort_files"] = entry(folder_wall - own[0], folder_cpu - own[1])
    inner = [inner[0] + folder_wall - own[0], inner[1] + folder_cpu - own[1]]
    write_stages["rest"] = entry(write[0] - inner[0], write[1] - inner[1])
    stages["write"] = entry(*write[:2], 1, write[2])
    counted = [sum(stage[k] for stage in stages.values()) for k in ("s", "cpu_s")]
    other = [total_wall + start_wall - _CHILD_START - counted[0],
             total_cpu + start_cpu - counted[1]]
    # the rest ran on the main thread: its run-queue wait outside the timed stages dropped
    main_wait_other = (main_end[1] - main_start[1]) - sum(
        timers.values.get(n, [0.0] * 5)[4] for n in top + ["segment_subject"]
        if n not in inner_names)
    stages["other"] = entry(*other, 1, max(other[0] - max(main_wait_other, 0.0), other[1] / 2))
    if "model_load_background" in timers.values:
        wall, cpu, _, _, _ = timers.values["model_load_background"]
        stages["model_load_background"] = {
            "s": round(wall, 2), "thread_cpu_s": round(cpu, 2),
            "note": "on its own thread while prepare runs: its CPU is inside prepare's "
                    "process CPU seconds, and it is not added to the totals"}
    estimate = sum(stage.get("idle_estimate_s", 0.0) for name, stage in stages.items()
                   if name != "model_load_background")
    return {"stages": stages, "prepare_stages": prepare_stages, "write_stages": write_stages,
            "logged": logged, "child_wall_s": round(total_wall + start_wall - _CHILD_START, 2),
            "child_cpu_s": round(total_cpu + start_cpu, 2),
            "prepare_worker_cpu_s": round(worker_cpu, 2),
            "child_idle_estimate_s": round(estimate, 2),
            "main_thread_run_queue_wait_s": round(main_end[1] - main_start[1], 2),
            "instrument_s": round(instrumented - start_wall, 2)}


# ----------------------------------------------------------------- the parent process

def random_model(folder: Path) -> Path:
    """The paper's shipped configuration, random weights: MSWS + ffcl, FLAIR, width 0.5."""
    if (folder / "wmh_model.json").exists():
        return folder
    code = (
        "import sys, keras; from pathlib import Path; from wmh import train; "
        "from wmh.config import ModelConfig; from wmh.contract import ModelContract; "
        "from wmh.models import build_model; "
        "keras.utils.set_random_seed(0); "
        "config = ModelConfig(arch='msws', loc='ffcl', width=0.5); "
        "contract = ModelContract(model=config, channels=('FLAIR',), "
        "inplane_spacing_mm=1.0, threshold=0.5); "
        "train.save_model_dir(build_model(config, 1), contract, Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                        "TF_CPP_MIN_LOG_LEVEL": "3"})
    return folder


def synthetic_case(work: Path, profile: str, seed: int, cache: Path):
    from wmh.io import discover
    from wmh.config import SynthConfig
    from wmh.synth import synthesize_cohort

    folder = work / f"synth-{profile}-seed{seed}"
    if not (folder / "cohort.json").exists():
        synthesize_cohort(folder, SynthConfig(subjects=1, seed=seed, profile=profile),
                          cache_dir=str(cache), progress=False)
    subject = discover(folder)[0]
    return Path(subject.flair), Path(subject.t1) if subject.t1 else None


def model_channels(model: Path) -> list[str]:
    return json.loads((model / "wmh_model.json").read_text())["channels"]


def run_case(name: str, flair: Path, t1, model: Path, out: Path, wait: bool) -> dict:
    import nibabel as nib

    command = ["segment", str(flair)] + ([str(t1)] if t1 and "T1" in model_channels(model)
                                         else []) + [
        "--model", str(model), "--out", str(out), "--subject-id", name, "--overwrite"]
    waited = wait_for_idle() if wait else {}
    before = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    start = time.perf_counter()
    usage = os.times()
    process = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *command],
                             capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after_usage = os.times()
    if process.returncode:
        raise SystemExit(f"case {name} failed:\n{process.stderr[-3000:]}")
    figures = json.loads(process.stdout.strip().splitlines()[-1])
    cpu = (after_usage.children_user - usage.children_user
           + after_usage.children_system - usage.children_system)
    stages = figures["stages"]
    start_exit = [wall - figures["child_wall_s"], cpu - figures["child_cpu_s"]]
    # interpreter start-up and exit: single-threaded but for TensorFlow's pools winding
    # down; estimated as min(wall, CPU)
    stages = {"python_start_and_exit": {"s": round(start_exit[0], 2),
                                        "cpu_s": round(start_exit[1], 2),
                                        "idle_estimate_s": round(min(start_exit), 2)},
              **stages}
    idle = figures["child_idle_estimate_s"] + min(start_exit)
    image = nib.load(str(flair))
    return {"flair": str(flair), "t1": str(t1) if t1 else None,
            "shape": list(image.shape), "voxel_mm": [round(float(v), 3)
                                                     for v in image.header.get_zooms()[:3]],
            "total_s": round(wall, 2), "total_cpu_s": round(cpu, 2),
            "total_idle_estimate_s": round(idle, 2),
            "main_thread_run_queue_wait_s": figures["main_thread_run_queue_wait_s"],
            "load_1min_before": round(before, 2),
            "load_1min_after": round(os.getloadavg()[0], 2), **waited,
            "stages": stages, "prepare_stages": figures["prepare_stages"],
            "write_stages": figures["write_stages"], "logged": figures["logged"]}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # the timed process: the rest is the wmh command line
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        print(json.dumps(run_child(argv[1:])), flush=True)
        from wmh import launch

        launch.exit_now(0)  # and the process ends as the console script's does
        return
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_end_to_end_"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or random_model(work / "model_msws_ffcl_w05_flair")
    result = {"benchmark": "segment_end_to_end", "model": str(model),
              "model_note": "given" if args.model else
              "random weights, MSWS+ffcl FLAIR-only width 0.5 (speed does not depend on "
              "the weights)", "cases": {}}
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if case == "3d" and args.flair is not None:
            flair, t1, data = args.flair, args.t1, "given files"
        else:
            flair, t1 = synthetic_case(work, PROFILES[case], args.seed,
                                      args.cache or work / "cache")
            data = f"SYNTHETIC, wmh synth profile {PROFILES[case]}, seed {args.seed}"
        runs = [run_case(case, flair, t1, model, args.out or work / "out",
                         args.wait_idle)
                for _ in range(args.repeats)]
        best = min(runs, key=lambda run: run["total_cpu_s"])
        result["cases"][case] = {"data": data, "target": TARGETS[case], **best}
        if len(runs) > 1:
            result["cases"][case]["all_runs_total_s_cpu_s"] = [
                [run["total_s"], run["total_cpu_s"]] for run in runs]
        print(case, best["total_s"], best["total_cpu_s"], file=sys.stderr, flush=True)
    result.update({"machine": describe(), "work": str(work)})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
