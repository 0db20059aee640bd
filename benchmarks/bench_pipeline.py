"""Sample-set storage and tf.data pipeline throughput at the paper's scale; prints JSON.

Usage: ``.venv/bin/python benchmarks/bench_pipeline.py [--subjects 8 --seconds 20]``

How the paper's scale (3.88 M training samples from 378 subjects, 430 k validation
samples from 42) is simulated:

1. ``--subjects`` prepared subjects are simulated at the size of ``bench_dense.py``'s
   case: a 256 x 256 x 48 working grid, an ellipsoidal brain (semi-axes 85 x 70 voxels
   in plane, 22 slices), FLAIR + T1, 8 location maps, and exactly 10,265 WMH voxels
   each (so 50% of them plus as many negatives give 3.88 M / 378 samples). They are
   written with ``PreparedSubject.save`` and sampled by ``wmh.sampling.build_samples``:
   ``build_s_per_subject`` is measured there.
2. The paper-scale sample set is then written for real by ``wmh.sampling.SampleWriter``:
   420 subjects (378 train, 42 validation) cycling through the simulated volumes, each
   freshly sampled with its own seed. Its ``samples.h5`` is the measured
   ``paper_scale_disk_gb``; its writing time plus 420 x the measured per-subject
   prepared-file load gives ``paper_scale_build_s``.
3. Streaming runs in a child process on that paper-scale training split for
   ``--seconds`` after a warm-up; ``peak_ram_gb`` is the peak summed PSS of the child
   and its worker processes (sampled every 0.2 s), with TensorFlow loaded.
4. The alternative design (patches stored): the patches of the first ``--patch-samples``
   samples are written to HDF5 (float16, 128 samples per chunk, uncompressed and lzf);
   bytes per sample are measured and multiplied by 3.88 M; random-chunk reads are timed.
5. Training consumption: ``train_on_batch`` samples/s of the real SS model
   (``build_model(ModelConfig(arch='ss', loc='ffcl'), 2)``) and of MSWS, on real batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py

import numpy as np

PAPER_TRAIN_SUBJECTS = 378
PAPER_VALIDATION_SUBJECTS = 42
PAPER_TRAIN_SAMPLES = 3_880_000
WMH_VOXELS = 10_265  # 50% of it, plus as many negatives, x 378 = 3.88 M
SHAPE = (256, 256, 48)


def simulated_subject(subject_id: str, seed: int):
    """A RUN DMC-sized prepared subject (see the module docstring)."""
    import nibabel as nib

    from wmh.preprocess import PreparedSubject

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    brain = (((x - 128) / 85) ** 2 + ((y - 128) / 70) ** 2 + ((z - 24) / 22) ** 2) < 1
    labels = np.zeros(SHAPE, np.uint8)
    while (labels == 1).sum() < WMH_VOXELS:
        cx, cy, cz = rng.integers(70, 186), rng.integers(80, 176), rng.integers(10, 38)
        radius = rng.integers(3, 9)
        blob = ((x - cx) ** 2 + (y - cy) ** 2 <= radius ** 2) & (np.abs(z - cz) <= 1) & brain
        labels[blob] = 1
    excess = np.flatnonzero(labels.ravel() == 1)
    labels.ravel()[rng.choice(excess, excess.size - WMH_VOXELS, replace=False)] = 0
    smooth = np.sin(x / 9.0 + seed) * np.cos(y / 11.0) * 0.1
    flair = np.where(brain, 0.35 + smooth + 0.05 * rng.standard_normal(SHAPE), 0)
    flair[labels == 1] += 0.4
    t1 = np.where(brain, 0.6 - smooth + 0.05 * rng.standard_normal(SHAPE), 0)
    images = np.clip(np.stack([flair, t1], -1), 0, 1).astype(np.float32) * brain[..., None]
    location = np.stack([x / 255, y / 255, z / 47] + [rng.random(SHAPE, np.float32)] * 5,
                        -1).astype(np.float32)
    affine = np.diag([1.0, 1.0, 6.0, 1.0])
    return PreparedSubject(
        subject_id=subject_id, site=None, split=None, images=images, channels=("FLAIR", "T1"),
        brain_mask=brain, labels=labels, labels_observer2=None, location=location,
        ventricles=np.zeros(SHAPE, np.uint8), spacing=np.array([1.0, 1.0, 6.0]),
        affine=affine, native_shape=SHAPE, native_affine=affine,
        native_header=nib.Nifti1Header().binaryblock, cache_key=f"sim-{seed}", provenance={})


class PeakMemory:
    """Peak summed PSS (proportional set size) of a process and its children."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        import psutil

        self._root = psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                processes = [self._root] + self._root.children(recursive=True)
            except psutil.Error:
                break
            for process in processes:
                try:
                    total += process.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            time.sleep(interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes / 1e9


def child(arguments: list[str]) -> tuple[dict, float]:
    """Runs this script in a child mode; returns its JSON and its peak RAM (GB)."""
    process = subprocess.Popen([sys.executable, __file__] + arguments, stdout=subprocess.PIPE,
                               text=True)
    monitor = PeakMemory(process.pid)
    output, _ = process.communicate()
    peak = monitor.stop()
    if process.returncode != 0:
        raise SystemExit(f"child {arguments} failed with exit code {process.returncode}")
    return json.loads(output.strip().splitlines()[-1]), peak


def configure_tensorflow(threads: int = 2):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def stream_child(folder: str, workers: int, seconds: float, use_tf: bool) -> dict:
    """Samples/s of streaming the training split (after a warm-up of 20 batches)."""
    from wmh import data

    if use_tf:
        configure_tensorflow()
        started = time.perf_counter()
        iterator = iter(data.make_dataset(folder, "train",
                                          data.StreamOptions(128, seed=0, workers=workers)))
        take = lambda: int(next(iterator)[1].shape[0])  # noqa: E731
    else:
        started = time.perf_counter()
        batches = data.SampleStream(folder, "train",
                                    data.StreamOptions(128, seed=0, workers=workers)).epoch(0)
        take = lambda: int(next(batches)["label"].shape[0])  # noqa: E731
    for _ in range(20):
        take()
    first_batches_s = time.perf_counter() - started
    cpu_start = cpu_seconds()
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        samples += take()
    elapsed = time.perf_counter() - start
    cpu_main, cpu_workers = (end - begin for end, begin in zip(cpu_seconds(), cpu_start))
    return {"samples_per_s": samples / elapsed, "samples": samples,
            "warmup_20_batches_s": first_batches_s,
            "cpu_us_per_sample_consumer": 1e6 * cpu_main / samples,
            "cpu_us_per_sample_workers": 1e6 * cpu_workers / samples}


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its live children."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    children = 0.0
    for process in me.children(recursive=True):
        try:
            child_times = process.cpu_times()
            children += child_times.user + child_times.system
        except psutil.Error:
            pass
    return times.user + times.system, children


def train_child(folder: str, arch: str) -> dict:
    """train_on_batch samples/s of a paper-size model on real batches of 128."""
    configure_tensorflow()
    import keras

    from wmh import data
    from wmh.config import ModelConfig
    from wmh.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(arch=arch, loc="ffcl"), 2)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    batches = list(data.make_dataset(folder, "train",
                                     data.StreamOptions(128, seed=0, workers=0)).take(4))
    for features, label in batches[:2]:
        model.train_on_batch(features, label)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 15 or steps < 5:
        features, label = batches[steps % len(batches)]
        model.train_on_batch(features, label)
        steps += 1
    return {"samples_per_s": steps * 128 / (time.perf_counter() - start), "steps": steps,
            "parameters": int(model.count_params())}


def stored_patches_design(folder: Path, work: Path, count: int) -> dict:
    """Design A: patches stored in HDF5 (float16). Bytes/sample, write and read rates."""
    import h5py

    from wmh import data

    stream = data.SampleStream(folder, "train", data.StreamOptions(128, shuffle=False, workers=0))
    batches = []
    for batch in stream.epoch(0):
        batches.append(batch)
        if len(batches) * 128 >= count:
            break
    count = len(batches) * 128
    result = {"samples_measured": count}
    for compression in (None, "lzf"):
        path = work / f"patches-{compression}.h5"
        start = time.perf_counter()
        with h5py.File(path, "w") as file:
            patches = file.create_dataset("patches", (count, 3, 32, 32, 2), np.float16,
                                          chunks=(128, 3, 32, 32, 2), compression=compression)
            for number, batch in enumerate(batches):
                stacked = np.stack([batch[name] for name in ("s1", "s2", "s3")], axis=1)
                patches[number * 128:(number + 1) * 128] = stacked.astype(np.float16)
        write_s = time.perf_counter() - start
        per_sample = path.stat().st_size / count + 8 * 4 + 1  # + location + label
        order = np.random.default_rng(0).permutation(len(batches))
        start = time.perf_counter()
        with h5py.File(path, "r") as file:
            for number in order:
                file["patches"][number * 128:(number + 1) * 128].astype(np.float32)
        read_s = time.perf_counter() - start
        name = compression or "uncompressed"
        result[name] = {"bytes_per_sample": per_sample,
                        "paper_scale_disk_gb": per_sample * PAPER_TRAIN_SAMPLES / 1e9,
                        "write_samples_per_s": count / write_s,
                        "random_chunk_read_samples_per_s_1_process": count / read_s}
        path.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8, help="simulated prepared subjects")
    parser.add_argument("--seconds", type=float, default=20.0, help="streaming time per run")
    parser.add_argument("--patch-samples", type=int, default=20480)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--stream", nargs=3, metavar=("FOLDER", "WORKERS", "TF"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--train", nargs=2, metavar=("FOLDER", "ARCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream:
        folder, workers, use_tf = args.stream
        print(json.dumps(stream_child(folder, int(workers), args.seconds, use_tf == "tf")))
        return
    if args.train:
        print(json.dumps(train_child(*args.train)))
        return

    from wmh import sampling
    from wmh.config import SamplingConfig
    from wmh.preprocess import PreparedSubject

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"machine": describe(), "load_average_start": os.getloadavg()}
    try:
        # 1. simulated prepared subjects, sampled by build_samples
        prepared = work / "prepared"
        start = time.perf_counter()
        for number in range(args.subjects):
            simulated_subject(f"sim-{number:02d}", number).save(prepared / f"sim-{number:02d}.h5")
        simulate_s = time.perf_counter() - start
        config = SamplingConfig(validation_fraction=0.0, test_fraction=0.0)
        start = time.perf_counter()
        small = sampling.build_samples(prepared, work / "samples", config)
        build_s_per_subject = (time.perf_counter() - start) / args.subjects
        start = time.perf_counter()
        subjects = [PreparedSubject.load(path) for path in sorted(prepared.glob("*.h5"))]
        load_s_per_subject = (time.perf_counter() - start) / args.subjects

        # 2. the paper-scale sample set, written for real
        paper = work / "paper" / "paper-scale"
        paper.mkdir(parents=True)
        start = time.perf_counter()
        counts = {"train": 0, "validation": 0}
        splits = {"train": [], "validation": [], "test": []}
        with sampling.SampleWriter(paper / sampling.SAMPLES_FILE, ("FLAIR", "T1"),
                                   {"key": "paper-scale"}) as writer:
            total = PAPER_TRAIN_SUBJECTS + PAPER_VALIDATION_SUBJECTS
            for number in range(total):
                split = "train" if number < PAPER_TRAIN_SUBJECTS else "validation"
                subject = subjects[number % len(subjects)]
                subject_id = f"paper-{number:03d}"
                rng = np.random.default_rng(sampling.subject_seed(0, subject_id))
                coordinates, labels = sampling.sample_subject(subject.labels,
                                                              subject.brain_mask, config, rng)
                x, y, z = coordinates.T
                writer.add_subject(split, subject_id, subject.images, subject.brain_mask,
                                   coordinates, labels, subject.location[x, y, z])
                counts[split] += len(labels)
                splits[split].append(subject_id)
        (paper / sampling.SPLITS_FILE).write_text(json.dumps(dict(splits, key="paper-scale")))
        write_s = time.perf_counter() - start
        del subjects
        disk = (paper / sampling.SAMPLES_FILE).stat().st_size
        report.update({
            "paper_scale_disk_gb": disk / 1e9,
            "paper_scale": {
                "train_samples": counts["train"], "validation_samples": counts["validation"],
                "train_subjects": PAPER_TRAIN_SUBJECTS,
                "validation_subjects": PAPER_VALIDATION_SUBJECTS,
                "simulated": f"{args.subjects} simulated {SHAPE} subjects (brain 170 x 140 x "
                             f"44 voxels, {WMH_VOXELS} WMH voxels each) cycled over 420 "
                             "subjects, each sampled with its own seed; samples.h5 written "
                             "for real and measured",
                "write_s": write_s,
                "build_s_per_subject_measured": build_s_per_subject,
                "prepared_load_s_per_subject": load_s_per_subject,
                "paper_scale_build_s": write_s + total * load_s_per_subject,
                "build_note": "paper_scale_build_s = measured write of the 420-subject set "
                              "+ 420 x measured PreparedSubject.load (extrapolated)",
                "bytes_per_train_sample_total": disk / (counts["train"] + counts["validation"]),
                "simulate_prepared_s": simulate_s,
            }})

        # 3. streaming throughput and RAM on the paper-scale set
        runs = {}
        for workers in (0, 1, 2):
            result, peak = child(["--stream", str(paper), str(workers), "tf",
                                  "--seconds", str(args.seconds)])
            runs[f"tf_workers_{workers}"] = dict(result, peak_ram_gb=peak)
        result, peak = child(["--stream", str(paper), "2", "numpy", "--seconds",
                              str(args.seconds)])
        runs["numpy_workers_2"] = dict(result, peak_ram_gb=peak)
        best = max((runs[f"tf_workers_{w}"] for w in (0, 1, 2)),
                   key=lambda run: run["samples_per_s"])
        report["samples_per_s"] = runs["tf_workers_2"]["samples_per_s"]
        report["peak_ram_gb"] = runs["tf_workers_2"]["peak_ram_gb"]
        report["best_samples_per_s"] = best["samples_per_s"]
        report["streaming"] = runs
        cpu = (runs["tf_workers_2"]["cpu_us_per_sample_consumer"]
               + runs["tf_workers_2"]["cpu_us_per_sample_workers"])
        report["cpu_us_per_sample"] = cpu
        report["samples_per_s_upper_bound_2_idle_cores"] = 2e6 / cpu

        # 4. training consumption
        for arch in ("ss", "msws"):
            result, _ = child(["--train", str(small), arch])
            report[f"train_samples_per_s_{arch}"] = result["samples_per_s"]
            report[f"train_{arch}"] = result
        report["pipeline_over_ss_consumption"] = (report["samples_per_s"]
                                                  / report["train_samples_per_s_ss"])

        # 5. the alternative design: patches stored
        report["design_patches_stored"] = stored_patches_design(small, work,
                                                                args.patch_samples)
        report["design_volumes_cut_on_the_fly"] = {
            "paper_scale_disk_gb": disk / 1e9,
            "bytes_per_sample_including_volumes": disk / (counts["train"]
                                                          + counts["validation"])}
        report["load_average_end"] = os.getloadavg()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
