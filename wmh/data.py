"""tf.data streaming of a sample set's multi-scale patches (:mod:`wmh.patches`).

Streaming (:func:`make_dataset`, :class:`SampleStream`): patches are cut on the fly from
the cropped float16 volumes of a sample set (:mod:`wmh.sampling` explains why volumes are
stored rather than patches: 1.9 GB instead of 48 GB at the paper's scale).

* An epoch is planned up front from (seed, epoch): the split's sampled axial slices are
  permuted and dealt into blocks of ``block_slices`` slices; each block's samples are
  permuted and cut into batches, so a batch mixes up to 64 slices of ~64 subjects, and a
  producer holds one block (~150 MB) whatever the dataset size.
* Per slice, ``padded_box_means`` is computed once and split into its k x k polyphase
  components, so every patch of every scale is a contiguous 32 x 32 window; a chunk of a
  batch is one fancy-indexing gather per scale.
* Producers are worker processes (spawned, each with its own h5py handle: h5py
  serialises reads within a process), writing batches into shared-memory slots; the
  consumer takes blocks in plan order, so the output does not depend on the number of
  workers or their timing. Each batch enters TensorFlow as one byte buffer, split into
  tensors by a ``map`` outside the GIL, then prefetched. Small epochs are cut in-process.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from wmh.errors import WMHError
from wmh.location import N_LOCATION_FEATURES
from wmh.patches import PATCH_SIZE, SCALE_NAMES, SCALES, padded_box_means, scale_margin

DEFAULT_BLOCK_SLICES = 64  # axial slices whose box means a producer holds at once
IN_PROCESS_MAX_SAMPLES = 50_000  # smaller epochs are cut in-process (no worker start-up)
MAX_AUTO_WORKERS = 4
SLOTS_PER_WORKER = 6  # batches a worker may have ready ahead of the consumer
SUBSET_SEED = 5_005  # max_samples keeps the same subset whatever the shuffle seed
_WAIT_S = 1.0  # polling interval while waiting on a worker or the consumer


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How one split of a sample set is streamed (:class:`SampleStream`,
    :func:`make_dataset`).

    Attributes:
        batch_size: samples per batch (paper: 128); the last batch of an epoch may be
            smaller.
        seed: shuffle seed; epoch e's order depends only on (seed, e).
        shuffle: False streams samples in stored order (subject, z, x, y): validation.
        use_t1: False keeps FLAIR only (C = 1) even when T1 is stored.
        max_samples: > 0 keeps a fixed random subset of this many samples (the same for
            every seed: comparable runs).
        workers: producer processes; 0 cuts in the calling thread; None = automatic (0 for
            epochs of at most ``IN_PROCESS_MAX_SAMPLES``, else up to ``MAX_AUTO_WORKERS``
            and the CPU count).
        block_slices: slices per block (RAM per producer ~ block_slices x 2.7 MB at C=2
            and 256 x 256 slices).
    """

    batch_size: int = 128
    seed: int = 0
    shuffle: bool = True
    use_t1: bool = True
    max_samples: int = 0
    workers: Optional[int] = None
    block_slices: int = DEFAULT_BLOCK_SLICES


@dataclasses.dataclass(frozen=True)
class _CutterSpec:
    """What a producer needs to cut one split's patches (picklable: sent to workers).

    Attributes:
        samples_path: the sample set's ``samples.h5``.
        split: 'train' or 'validation'.
        channels: channels kept (C).
        max_slice_shape: largest cropped (X', Y') of the stored volumes.
        block_slices: slices per block.
        batch_size: samples per batch.
    """

    samples_path: Path
    split: str
    channels: int
    max_slice_shape: tuple[int, int]
    block_slices: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class _Block:
    """A group of axial slices cut together; its samples are emitted as one run.

    Attributes:
        rows: (L,) rows of the split's slice table.
        selections: per row, the kept sample offsets within the slice (max_samples), or
            None for all.
        count: samples in the block.
        shuffle_seed: seed of the within-block permutation, None for stored order.
        first_chunk: size of the first chunk, completing the previous block's last batch.
    """

    rows: np.ndarray
    selections: Optional[list]
    count: int
    shuffle_seed: Optional[tuple]
    first_chunk: int


def _epoch_blocks(slice_counts: np.ndarray, selections: Optional[list], epoch: int,
                  options: StreamOptions) -> list[_Block]:
    """Deterministic plan of one epoch: which slices form each block, in which order.

    Shuffled epochs permute the slices with (seed, epoch) and each block's samples with
    (seed, epoch, block); so every batch mixes samples of up to ``block_slices`` slices
    drawn from the whole split, and RAM holds one block per producer.
    """
    seed, block_slices, batch_size = options.seed, options.block_slices, options.batch_size
    counts = (slice_counts if selections is None
              else np.array([len(s) for s in selections], np.int64))
    rows = np.flatnonzero(counts > 0)
    if options.shuffle:
        rows = rows[np.random.default_rng([seed, epoch]).permutation(rows.size)]
    blocks, emitted = [], 0
    for number, first in enumerate(range(0, rows.size, block_slices)):
        block_rows = rows[first:first + block_slices]
        count = int(counts[block_rows].sum())
        blocks.append(_Block(
            rows=block_rows,
            selections=None if selections is None else [selections[r] for r in block_rows],
            count=count, shuffle_seed=(seed, epoch, number) if options.shuffle else None,
            first_chunk=min(count, (batch_size - emitted % batch_size) % batch_size)))
        emitted += count
    return blocks


def _chunk_bounds(block: _Block, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) chunks of a block, aligned with the epoch's batch boundaries."""
    bounds = [(0, block.first_chunk)] if block.first_chunk else []
    bounds += [(start, min(start + batch_size, block.count))
               for start in range(block.first_chunk, block.count, batch_size)]
    return bounds


def _batch_layout(size: int, channels: int) -> list[tuple[str, tuple, np.dtype]]:
    """Fields of a batch buffer, in order: s1..s3 (size, 32, 32, C) float32, loc (size, 8)
    float32, label (size,) int32, index (size,) int64."""
    layout = [(name, (size, PATCH_SIZE, PATCH_SIZE, channels), np.dtype(np.float32))
              for name in SCALE_NAMES]
    return layout + [("loc", (size, N_LOCATION_FEATURES), np.dtype(np.float32)),
                     ("label", (size,), np.dtype(np.int32)),
                     ("index", (size,), np.dtype(np.int64))]


def _batch_nbytes(size: int, channels: int) -> int:
    return sum(int(np.prod(shape)) * dtype.itemsize
               for _, shape, dtype in _batch_layout(size, channels))


def _batch_views(buffer, size: int, channels: int) -> dict[str, np.ndarray]:
    """Named array views on a batch buffer of ``size`` samples (any writable buffer)."""
    views, offset = {}, 0
    for name, shape, dtype in _batch_layout(size, channels):
        count = int(np.prod(shape))
        views[name] = np.frombuffer(buffer, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
    return views


class _BlockCutter:
    """Cuts the patches of a block's samples (one per producer: its own HDF5 handle).

    For each slice of the block it keeps ``padded_box_means`` split into its k x k
    polyphase components, so that every patch at every scale is a contiguous 32 x 32
    window, gathered for a whole chunk by one fancy-indexing call per scale.
    """

    def __init__(self, spec: _CutterSpec):
        import h5py

        self.samples_path = Path(spec.samples_path)
        self.channels = channels = spec.channels
        block_slices = spec.block_slices
        try:
            self._file = h5py.File(self.samples_path, "r", rdcc_nbytes=16 << 20)
            group = self._file[spec.split]
            self._table = group["samples"]
            self._slices = group["slices"][()]
        except (OSError, KeyError) as error:
            raise self._error(error) from None
        self._volumes: dict[int, tuple] = {}
        height, width = spec.max_slice_shape
        self._phases, self._windows = {}, {}
        for k in SCALES:
            side_h = (-(-height // 4) * 4 + 2 * scale_margin(k)) // k  # canvas: see _load
            side_w = (-(-width // 4) * 4 + 2 * scale_margin(k)) // k
            phases = np.zeros((block_slices, k, k, side_h, side_w, channels), np.float32)
            strides = phases.strides
            self._phases[k] = phases
            self._windows[k] = np.lib.stride_tricks.as_strided(
                phases, shape=(block_slices, k, k, side_h - PATCH_SIZE + 1,
                               side_w - PATCH_SIZE + 1, PATCH_SIZE, PATCH_SIZE, channels),
                strides=strides[:5] + strides[3:5] + strides[5:], writeable=False)
        self._samples: dict[str, np.ndarray] = {}

    def _error(self, error: BaseException) -> Exception:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return WMHError(f"{self.samples_path}: corrupt or truncated sample file "
                        f"({first_line}); delete {self.samples_path.parent} and run wmh "
                        "sample again")

    def _volume(self, subject: int):
        if subject not in self._volumes:
            dataset = self._file["volumes"][str(subject)]
            self._volumes[subject] = (dataset, dataset.attrs["origin"].astype(np.int64))
        return self._volumes[subject]

    def load(self, block: _Block) -> None:
        """Reads the block's slices and samples and prepares their box means."""
        try:
            self._load(block)
        except (OSError, KeyError) as error:
            raise self._error(error) from None

    def _load(self, block: _Block) -> None:
        parts = {name: [] for name in ("slot", "row", "col", "label", "location", "index")}
        for slot, row in enumerate(block.rows):
            subject, z, start, count = (int(v) for v in self._slices[row])
            dataset, origin = self._volume(subject)
            image = dataset[z - origin[2], :, :, :self.channels]
            # A canvas of a multiple of 4 (zeros beyond the crop are zeros of the grid), so
            # each scale's box means split into k x k phases by one reshape.
            height, width = image.shape[:2]
            canvas = np.zeros((-(-height // 4) * 4, -(-width // 4) * 4, self.channels),
                              np.float32)
            canvas[:height, :width] = image
            means = padded_box_means(canvas)
            for k in SCALES:
                rows, cols = means[k].shape[0] // k, means[k].shape[1] // k
                phases = self._phases[k][slot]
                phases[:, :, :rows, :cols] = means[k].reshape(
                    rows, k, cols, k, self.channels).transpose(1, 3, 0, 2, 4)
                phases[:, :, rows:] = 0.0
                phases[:, :, :rows, cols:] = 0.0
            table = self._table[start:start + count]
            offsets = np.arange(count)
            if block.selections is not None:
                offsets = block.selections[slot]
                table = table[offsets]
            parts["slot"].append(np.full(len(offsets), slot, np.int64))
            parts["row"].append(table["row"].astype(np.int64) - origin[0])
            parts["col"].append(table["col"].astype(np.int64) - origin[1])
            parts["label"].append(table["label"].astype(np.int32))
            parts["location"].append(table["location"])
            parts["index"].append(start + offsets)
        samples = {name: np.concatenate(values) for name, values in parts.items()}
        if block.shuffle_seed is not None:
            order = np.random.default_rng(list(block.shuffle_seed)).permutation(block.count)
            samples = {name: values[order] for name, values in samples.items()}
        self._samples = samples

    def cut(self, start: int, stop: int, out: dict[str, np.ndarray]) -> None:
        """Writes samples [start, stop) of the loaded block into ``out[...][:stop-start]``."""
        samples = {name: values[start:stop] for name, values in self._samples.items()}
        size = stop - start
        slot, row, col = samples["slot"], samples["row"], samples["col"]
        for name, k in zip(SCALE_NAMES, SCALES):
            out[name][:size] = self._windows[k][slot, row % k, col % k, row // k, col // k]
        out["loc"][:size] = samples["location"]
        out["label"][:size] = samples["label"]
        out["index"][:size] = samples["index"]

    def close(self) -> None:
        self._file.close()


class _BufferPool:
    """Batch buffers reused once nothing else references them: a fresh multi-megabyte
    allocation per batch costs more in page faults than cutting the batch. A buffer still
    referenced (by a consumer's arrays, or by TensorFlow were it ever to alias it) is never
    reused."""

    MAX_BUFFERS = 8

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self._buffers: list[np.ndarray] = []

    def take(self) -> np.ndarray:
        for buffer in self._buffers:
            if sys.getrefcount(buffer) <= 3:  # the list, this loop variable, the argument
                return buffer
        buffer = np.empty(self.nbytes, np.uint8)
        if len(self._buffers) < self.MAX_BUFFERS:
            self._buffers.append(buffer)
        return buffer


class _Assembler:
    """Turns block-aligned chunks into batch buffers of exactly ``batch_size`` samples (the
    last of an epoch may hold fewer). A batch travels as one uint8 buffer laid out by
    :func:`_batch_layout` for ``batch_size`` samples, plus its sample count: one copy
    and one conversion per batch on the consumer side."""

    def __init__(self, batch_size: int, channels: int):
        self.batch_size, self.channels = batch_size, channels
        self.pool = _BufferPool(_batch_nbytes(batch_size, channels))
        self._carry, self._views, self._filled = None, None, 0

    def add(self, buffer: np.ndarray, size: int, copy: bool):
        """Yields the (buffer, count) batches completed by a chunk of ``size`` samples;
        ``copy`` when ``buffer`` is about to be overwritten (a shared-memory slot)."""
        if self._filled == 0 and size == self.batch_size:
            if copy:
                target = self.pool.take()
                np.copyto(target, buffer)
                buffer = target
            yield buffer, size
            return
        if self._carry is None:
            self._carry = self.pool.take()
            self._views = _batch_views(self._carry, self.batch_size, self.channels)
        chunk = _batch_views(buffer, self.batch_size, self.channels)
        for name, values in self._views.items():
            values[self._filled:self._filled + size] = chunk[name][:size]
        self._filled += size
        if self._filled == self.batch_size:
            carry, self._carry, self._views, self._filled = self._carry, None, None, 0
            yield carry, self.batch_size

    def finish(self):
        """Yields the last, partial batch of the epoch, if any."""
        if self._filled:
            carry, filled = self._carry, self._filled
            self._carry, self._views, self._filled = None, None, 0
            yield carry, filled


def _worker_main(spec: _CutterSpec, blocks, buffer, free_slots, results,
                 parent_pid) -> None:
    """A producer process: cuts its blocks' chunks into shared-memory slots, in order."""
    import queue

    batch_size, channels = spec.batch_size, spec.channels
    slot_bytes = _batch_nbytes(batch_size, channels)
    memory = np.frombuffer(buffer, np.uint8)
    slots = [_batch_views(memory[i * slot_bytes:(i + 1) * slot_bytes], batch_size, channels)
             for i in range(SLOTS_PER_WORKER)]
    try:
        cutter = _BlockCutter(spec)
        for block in blocks:
            cutter.load(block)
            for start, stop in _chunk_bounds(block, batch_size):
                while True:
                    try:
                        slot = free_slots.get(timeout=_WAIT_S)
                        break
                    except queue.Empty:
                        if os.getppid() != parent_pid:
                            return  # the consumer is gone
                cutter.cut(start, stop, slots[slot])
                results.put(("chunk", slot, stop - start))
            results.put(("end",))
        cutter.close()
    except BaseException as error:  # reported to the consumer, which raises it
        message = str(error) if str(error) else type(error).__name__
        results.put(("error", f"{type(error).__name__}: {message}"))


class SampleStream:
    """Batches of one split of a sample set, as numpy arrays (no TensorFlow).

    Args:
        samples_dir: the folder :func:`wmh.sampling.build_samples` returned.
        split: 'train' or 'validation'.
        options: batch size, order, channels, subset, workers (:class:`StreamOptions`).

    Worker processes are spawned, so a script that streams with workers needs the usual
    ``if __name__ == "__main__":`` guard (notebooks, pytest and the CLI need nothing).

    Raises:
        WMHError: bad sample set (naming the file), unknown split or bad option.
    """

    def __init__(self, samples_dir, split: str, options: StreamOptions = StreamOptions()):
        import h5py

        from wmh.sampling import SAMPLED_SPLITS, open_samples

        if split not in SAMPLED_SPLITS:
            raise WMHError(f"split '{split}': only {', '.join(SAMPLED_SPLITS)} are sampled "
                           "(test subjects are segmented whole)")
        batch_size, max_samples = options.batch_size, options.max_samples
        for name, value, lowest in (("batch_size", batch_size, 1), ("block_slices",
                                    options.block_slices, 1), ("max_samples", max_samples, 0)):
            if value < lowest:
                raise WMHError(f"option {name}: must be >= {lowest}, got {value}")
        self.info = open_samples(samples_dir)
        self.split, self.options, self.batch_size = split, options, batch_size
        self.channels = 1 if not options.use_t1 else len(self.info.channels)
        try:
            with h5py.File(self.info.samples_path, "r") as file:
                table = file[split]["slices"][()]
        except (OSError, KeyError) as error:
            raise WMHError(f"{self.info.samples_path}: corrupt sample file ({error})") from None
        self._slice_counts = table[:, 3].astype(np.int64)
        total = int(self._slice_counts.sum())
        self._selections = None
        if 0 < max_samples < total:
            chosen = np.sort(np.random.default_rng(SUBSET_SEED).choice(
                total, max_samples, replace=False))
            starts = np.concatenate([[0], np.cumsum(self._slice_counts)])
            edges = np.searchsorted(chosen, starts)
            self._selections = [chosen[edges[i]:edges[i + 1]] - starts[i]
                                for i in range(len(table))]
            total = max_samples
        self.size = total
        workers = options.workers
        if workers is None:
            workers = (0 if total <= IN_PROCESS_MAX_SAMPLES
                       else max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1)))
        self.workers = workers

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-self.size // self.batch_size)

    def blocks(self, epoch: int) -> list[_Block]:
        """The plan of one epoch."""
        return _epoch_blocks(self._slice_counts, self._selections, epoch, self.options)

    def epoch(self, epoch: int):
        """Yields the batches of one epoch: dicts of s1, s2, s3 (B, 32, 32, C) float32,
        loc (B, 8) float32, label (B,) int32 and index (B,) int64 (row in the split)."""
        for buffer, size in self.raw_epoch(epoch):
            views = _batch_views(buffer, self.batch_size, self.channels)
            yield {name: values[:size] for name, values in views.items()}

    def raw_epoch(self, epoch: int):
        """Yields the batches of one epoch as (uint8 buffer, sample count); the buffer is
        laid out by ``_batch_layout(batch_size, channels)`` and owned by the caller."""
        blocks = self.blocks(epoch)
        if not blocks:
            return
        if self.workers <= 0:
            yield from self._epoch_in_process(blocks)
        else:
            yield from self._epoch_with_workers(blocks)

    def _cutter(self) -> _BlockCutter:
        return _BlockCutter(self._spec())

    def _spec(self) -> _CutterSpec:
        return _CutterSpec(self.info.samples_path, self.split, self.channels,
                           self.info.max_slice_shape, self.options.block_slices,
                           self.batch_size)

    def _epoch_in_process(self, blocks):
        cutter = self._cutter()
        assembler = _Assembler(self.batch_size, self.channels)
        try:
            for block in blocks:
                cutter.load(block)
                for start, stop in _chunk_bounds(block, self.batch_size):
                    chunk = assembler.pool.take()
                    cutter.cut(start, stop, _batch_views(chunk, self.batch_size, self.channels))
                    yield from assembler.add(chunk, stop - start, copy=False)
                    del chunk
            yield from assembler.finish()
        finally:
            cutter.close()

    def _epoch_with_workers(self, blocks):
        import multiprocessing
        import queue

        context = multiprocessing.get_context("spawn")  # never fork a TensorFlow process
        count = min(self.workers, max(1, len(blocks)))
        slot_bytes = _batch_nbytes(self.batch_size, self.channels)
        buffers, free_queues, result_queues, processes = [], [], [], []
        assembler = _Assembler(self.batch_size, self.channels)
        try:
            for worker in range(count):
                buffer = context.RawArray("B", slot_bytes * SLOTS_PER_WORKER)
                free, results = context.Queue(), context.Queue()
                for slot in range(SLOTS_PER_WORKER):
                    free.put(slot)
                process = context.Process(
                    target=_worker_main, daemon=True, name=f"wmh-data-{worker}",
                    args=(self._spec(), blocks[worker::count], buffer, free, results,
                          os.getpid()))
                process.start()
                memory = np.frombuffer(buffer, np.uint8)
                buffers.append([memory[i * slot_bytes:(i + 1) * slot_bytes]
                                for i in range(SLOTS_PER_WORKER)])
                free_queues.append(free)
                result_queues.append(results)
                processes.append(process)
            for number in range(len(blocks)):
                worker = number % count
                while True:
                    try:
                        message = result_queues[worker].get(timeout=_WAIT_S)
                    except queue.Empty:
                        if not processes[worker].is_alive():
                            raise WMHError(
                                f"{self.info.samples_path}: a data worker died (exit code "
                                f"{processes[worker].exitcode}); a script that streams with "
                                "workers needs an `if __name__ == '__main__':` guard, or pass "
                                "workers=0") from None
                        continue
                    if message[0] == "end":
                        break
                    if message[0] == "error":
                        kind, text = message[1].split(": ", 1)
                        if kind == "WMHError":
                            raise WMHError(text)
                        raise RuntimeError(f"data worker failed: {message[1]}")
                    _, slot, size = message
                    batches = list(assembler.add(buffers[worker][slot], size, copy=True))
                    free_queues[worker].put(slot)
                    yield from batches
            yield from assembler.finish()
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=5)
            for channel in free_queues + result_queues:
                channel.close()
                channel.cancel_join_thread()


def sample_channels(samples_dir, use_t1: bool = True) -> tuple[str, ...]:
    """Channel names the batches of a sample set carry: ("FLAIR", "T1") or ("FLAIR",)."""
    from wmh.sampling import open_samples

    channels = open_samples(samples_dir).channels
    return channels if use_t1 else channels[:1]


def count_samples(samples_dir, split: str) -> int:
    """Samples stored for a split ('train' or 'validation')."""
    from wmh.sampling import open_samples

    counts = open_samples(samples_dir).counts
    if split not in counts:
        raise WMHError(f"split '{split}': only {', '.join(counts)} are sampled")
    return counts[split]


def positive_share(samples_dir, split: str = "train") -> float:
    """The WMH share of a split's samples: the class prior the network was trained at
    (:mod:`wmh.calibration` corrects for it). NaN for an empty split."""
    import h5py

    from wmh.sampling import open_samples

    info = open_samples(samples_dir)
    if split not in info.counts:
        raise WMHError(f"split '{split}': only {', '.join(info.counts)} are sampled")
    with h5py.File(info.samples_path, "r") as file:
        labels = file[split]["samples"].fields("label")[()]
    return float(np.mean(labels == 1)) if labels.size else float("nan")


def dataset_hash(samples_dir) -> str:
    """The sample set's key: a hash of the prepared cohort, the sampling config and the
    format version (what MLflow records as the dataset hash)."""
    from wmh.sampling import open_samples

    return open_samples(samples_dir).key


def make_dataset(samples_dir, split: str, options: StreamOptions = StreamOptions(), *,
                 repeat: bool = False, include_index: bool = False):
    """A tf.data pipeline of one split: ``({"s1", "s2", "s3", "loc"}, label)`` batches.

    Each iteration over the dataset is a new epoch with a new order, deterministic given
    ``options.seed`` and the epoch number (the first iteration is epoch 0, and two datasets made
    with the same arguments give the same sequence). Patches are cut on the fly from the
    stored volumes by :class:`SampleStream` (producer processes for large epochs), then
    prefetched.

    Args:
        samples_dir: the folder :func:`wmh.sampling.build_samples` returned.
        split: 'train' or 'validation'.
        options: batch size, seed, order, channels, subset, workers
            (:class:`StreamOptions`).
        repeat: repeat epochs forever (each with a new order).
        include_index: add ``"index"`` (B,) int64, the sample's row in the split.

    Returns:
        A ``tf.data.Dataset`` of ({"s1", "s2", "s3": (B, 32, 32, C) float32,
        "loc": (B, 8) float32}, label (B,) int32).

    Raises:
        WMHError: a missing, corrupt or truncated sample set (naming the file), an
            unknown split or a bad option. Errors met while streaming (e.g. a corrupted
            chunk) surface as TensorFlow errors whose message names the file.
    """
    import itertools

    import tensorflow as tf

    stream = SampleStream(samples_dir, split, options)
    batch_size = options.batch_size
    names = SCALE_NAMES + ("loc",) + (("index",) if include_index else ())
    epochs = itertools.count()
    layout = _batch_layout(batch_size, stream.channels)

    def generate():
        yield from stream.raw_epoch(next(epochs))

    def split(buffer, size):
        # The batch buffer -> named tensors, in TensorFlow's threads (no Python, no GIL).
        fields, offset = {}, 0
        for name, shape, dtype in layout:
            nbytes = int(np.prod(shape)) * dtype.itemsize
            part = tf.reshape(buffer[offset:offset + nbytes], (-1, dtype.itemsize))
            fields[name] = tf.reshape(tf.bitcast(part, tf.as_dtype(dtype)), shape)[:size]
            offset += nbytes
        return {name: fields[name] for name in names}, fields["label"]

    raw_signature = (tf.TensorSpec((_batch_nbytes(batch_size, stream.channels),), tf.uint8),
                     tf.TensorSpec((), tf.int64))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=raw_signature)
    # A known length lets Keras show progress and end epochs without an "ran out of data"
    # warning; the plan guarantees exactly len(stream) batches.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(stream)))
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
