"""Balanced voxel samples and the sample set on disk (pure numpy: no TensorFlow here).

The subjects are split first (:func:`wmh.splits.make_splits`: participant-grouped, seeded,
written here as ``splits.json``); this module draws each sampled subject's voxels and
writes and reads the sample set.

Voxel samples (:func:`sample_subject`), per training and validation subject, seeded by
(seed, subject id) so a subject's samples do not depend on which other subjects exist: a
random ``positive_fraction`` (paper: 50%) of its WMH voxels (label 1), at most
``max_positives_per_subject`` of them when that is set (so that one heavy load does not
outweigh many moderate ones), and ``negative_ratio`` (paper: 1) times as many negatives
from label-0 voxels inside the brain mask; label 2 (other pathology) is never sampled.
``hard_negative_fraction`` of the negatives come from *hard* voxels: label-0 brain voxels
brighter on FLAIR than the ``hard_negative_percentile`` of the brain, or within
``hard_negative_margin_voxels`` in-plane of other pathology (e.g. around lacunes, the
paper's false positives). Test subjects are not sampled: they are segmented whole.

The sample set (:func:`build_samples`) is the folder ``<out_dir>/<key>/`` where key
hashes the prepared cohort (``manifest.json`` and each subject's cache key), the sampling
config and the format version: a rerun with the same inputs returns the existing folder
without work; a different cohort or config builds a new keyed folder beside it, never
mixing the two. It is written under a temporary name and renamed when complete, so an
interrupted build leaves nothing that :func:`open_samples` trusts. Files:

* ``splits.json``: the splits, the key and the hashes it came from.
* ``samples.h5``: for each sampled subject its images, cropped to the bounding box of
  brain and non-zero voxels, as ``volumes/<index>`` (Z', X', Y', C) float16, one axial
  slice per chunk; per split ``<split>/samples`` (N,) records of ``SAMPLE_DTYPE``
  (subject index, slice z, row x, col y on the working grid, label 0/1, the 8 location
  features; 41 bytes); ``<split>/slices`` (M, 4) int64 = subject index,
  z, first sample, sample count, one row per sampled slice (samples are stored sorted by
  subject, z, x, y). Every dataset carries a Fletcher-32 checksum per chunk.

Why volumes and not patches (measured by ``benchmarks/bench_pipeline.py`` on a
simulated paper-scale set, figures in ``BENCHMARKS.md``): stored patches cost
3 scales x C x 32 x 32 values per sample, 12.3 kB in float16 for FLAIR + T1, so the
paper's 3.88 M training samples need 48 GB uncompressed or 39 GB with lzf (over the
25 GB budget), and reshuffling reads them at random. Cropped float16 volumes plus a
41-byte record per sample take 1.9 GB for 378 + 42 subjects and 4.3 M samples, and
:mod:`wmh.data` cuts patches on the fly far faster than training consumes them.
float16 keeps 11 significant bits: images in [0, 1] are stored within 2.5e-4 of the
prepared values (well below MRI noise); patches are computed in float32 from the stored
values, so training and the value tests see exactly ``extract_patches`` of the stored
volume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from wmh import __version__
from wmh.config import SamplingConfig
from wmh.errors import WMHError
from wmh.io import SPLITS
from wmh.splits import (check_fraction, cohort_hash, make_splits, read_prepared_cohort, share,
                        text_attr)

FORMAT_VERSION = 1
SAMPLES_FILE = "samples.h5"
SPLITS_FILE = "splits.json"
SAMPLED_SPLITS = ("train", "validation")  # test subjects are segmented whole, not sampled
INDEX_CHUNK = 1024  # samples per chunk of the per-split sample table (small: read by slice)
SAMPLE_DTYPE = np.dtype([("subject", np.int16), ("slice", np.int16), ("row", np.int16),
                         ("col", np.int16), ("label", np.uint8),
                         ("location", np.float32, (8,))])  # one stored sample, 41 bytes
WMH_LABEL = 1
OTHER_PATHOLOGY_LABEL = 2


# ------------------------------------------------------------------------ sample index

@dataclasses.dataclass(frozen=True)
class SampleIndex:
    """Voxel samples of one split: sample i is voxel (row[i], col[i]) of axial slice
    slice[i] of subject ``subject_ids[subject[i]]``, on the working grid.

    Attributes:
        subject_ids: ids of the subjects the indices refer to.
        subject: (N,) int32 index into ``subject_ids``.
        slice: (N,) int32 axial slice z.
        row: (N,) int32 x.
        col: (N,) int32 y.
        label: (N,) uint8, 1 WMH and 0 normal.
    """

    subject_ids: tuple[str, ...]
    subject: np.ndarray
    slice: np.ndarray
    row: np.ndarray
    col: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])


# ---------------------------------------------------------------------------------- keys

def config_hash(config: SamplingConfig) -> str:
    """Hash of the sampling config, the sample format and the sampling code (the ``sample``
    stage of :data:`wmh.tracking.STAGE_CODE`), 16 hex digits."""
    from wmh.tracking import stage_code_hash

    text = json.dumps(dataclasses.asdict(config), sort_keys=True)
    code = stage_code_hash("sample")
    return hashlib.sha256(f"{text}|{FORMAT_VERSION}|{code}".encode()).hexdigest()[:16]


def samples_key(cohort: str, config: str) -> str:
    """The sample-set key: one hash of the cohort hash and the config hash."""
    return hashlib.sha256(f"{cohort}|{config}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------- voxel sampling

def subject_seed(seed: int, subject_id: str) -> list[int]:
    """Seed sequence of one subject's samples: (config seed, stable hash of the id)."""
    digest = hashlib.sha256(subject_id.encode()).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def hard_negative_mask(labels: np.ndarray, brain_mask: np.ndarray, flair: np.ndarray,
                       config: SamplingConfig) -> np.ndarray:
    """Label-0 brain voxels that look like lesions: bright on FLAIR or next to other
    pathology.

    Args:
        labels: (X, Y, Z) uint8, 0/1/2.
        brain_mask: (X, Y, Z) bool.
        flair: (X, Y, Z) float FLAIR intensities.
        config: ``hard_negative_percentile`` and ``hard_negative_margin_voxels``.

    Returns:
        (X, Y, Z) bool.
    """
    from scipy import ndimage

    normal = brain_mask & (labels == 0)
    hard = np.zeros_like(normal)
    if normal.any():
        threshold = np.percentile(flair[brain_mask], config.hard_negative_percentile)
        hard |= normal & (flair > threshold)
    other = labels == OTHER_PATHOLOGY_LABEL
    if config.hard_negative_margin_voxels > 0 and other.any():
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
        ring = ndimage.binary_dilation(other, in_plane,
                                       iterations=config.hard_negative_margin_voxels)
        hard |= normal & ring
    return hard


def sample_subject(labels: np.ndarray, brain_mask: np.ndarray, config: SamplingConfig,
                   rng: np.random.Generator, flair: Optional[np.ndarray] = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Balanced voxel samples of one subject (see the module docstring).

    Args:
        labels: (X, Y, Z) uint8 manual labels, 0 normal, 1 WMH, 2 other pathology.
        brain_mask: (X, Y, Z) bool.
        config: ``positive_fraction``, ``max_positives_per_subject``, ``negative_ratio``,
            ``hard_negative_*``.
        rng: the subject's generator (``np.random.default_rng(subject_seed(...))``).
        flair: (X, Y, Z) FLAIR, needed when ``hard_negative_fraction`` > 0.

    Returns:
        (N, 3) int64 voxel coordinates (x, y, z) sorted by z, x, y, and (N,) uint8
        labels (1 WMH, 0 normal).
    """
    check_fraction("positive_fraction", config.positive_fraction, upper_inclusive=True)
    check_fraction("hard_negative_fraction", config.hard_negative_fraction,
                    upper_inclusive=True)
    if config.negative_ratio < 0:
        raise WMHError(f"option sampling.negative_ratio: must be >= 0, got "
                       f"{config.negative_ratio}")
    labels = np.asarray(labels)
    brain = np.asarray(brain_mask, dtype=bool)
    if labels.shape != brain.shape:
        raise ValueError(f"labels {labels.shape} and brain mask {brain.shape} differ")
    positives = np.flatnonzero(labels.ravel() == WMH_LABEL)
    n_positive = share(config.positive_fraction, positives.size)
    if config.max_positives_per_subject > 0:
        n_positive = min(n_positive, int(config.max_positives_per_subject))
    chosen_positive = rng.choice(positives, n_positive, replace=False)
    normal = brain.ravel() & (labels.ravel() == 0)
    n_negative = min(int(round(config.negative_ratio * n_positive)), int(normal.sum()))
    chosen_hard = np.zeros(0, np.int64)
    if config.hard_negative_fraction > 0 and n_negative:
        if flair is None:
            raise ValueError("sample_subject: hard negatives need the FLAIR image")
        hard = np.flatnonzero(hard_negative_mask(labels, brain, np.asarray(flair),
                                                 config).ravel())
        n_hard = min(int(round(config.hard_negative_fraction * n_negative)), hard.size)
        chosen_hard = rng.choice(hard, n_hard, replace=False)
        normal[chosen_hard] = False
    rest = rng.choice(np.flatnonzero(normal), n_negative - chosen_hard.size, replace=False)
    flat = np.concatenate([chosen_positive, chosen_hard, rest]).astype(np.int64)
    sample_labels = np.concatenate([np.ones(chosen_positive.size, np.uint8),
                                    np.zeros(chosen_hard.size + rest.size, np.uint8)])
    coordinates = np.stack(np.unravel_index(flat, labels.shape), axis=1)
    order = np.lexsort((coordinates[:, 1], coordinates[:, 0], coordinates[:, 2]))
    return coordinates[order], sample_labels[order]


# ------------------------------------------------------------------------- the sample set

def crop_box(images: np.ndarray, brain_mask: np.ndarray,
             coordinates: Optional[np.ndarray] = None) -> tuple[slice, slice, slice]:
    """Bounding box of brain or non-zero voxels, grown to hold every sample ``coordinates``
    (N, 3) x, y, z: a labelled lesion voxel may lie outside the brain mask where the images
    were zeroed (an imperfect mask), and its slice must still be stored. Outside the box the
    images are 0, so cutting patches from the crop (zero-padded) gives exactly the patches
    of the full grid."""
    occupied = brain_mask | np.any(images != 0, axis=-1)
    samples = np.zeros((0, 3), np.int64) if coordinates is None else np.asarray(coordinates)
    if not occupied.any() and not len(samples):
        return slice(0, 1), slice(0, 1), slice(0, 1)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.concatenate([np.flatnonzero(occupied.any(axis=other)),
                                  samples[:, axis]]).astype(np.int64)
        box.append(slice(int(present.min()), int(present.max()) + 1))
    return tuple(box)


class SampleWriter:
    """Writes ``samples.h5``: subjects' cropped volumes and per-split sample indices.

    Use as a context manager; :meth:`add_subject` appends one subject's samples to a
    split, :meth:`close` records the keys last (a file without them is not trusted).
    """

    def __init__(self, path: str | Path, channels: tuple[str, ...], attrs: dict):
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "w")
        self._attrs = dict(attrs, channels=json.dumps(list(channels)))
        self.channels = tuple(channels)
        self.subject_ids: list[str] = []
        self._max_slice_shape = [1, 1]
        self._counts = {split: 0 for split in SAMPLED_SPLITS}
        self._slices = {split: [] for split in SAMPLED_SPLITS}
        for split in SAMPLED_SPLITS:
            group = self._file.create_group(split)
            group.create_dataset("samples", shape=(0,), maxshape=(None,), dtype=SAMPLE_DTYPE,
                                 chunks=(INDEX_CHUNK,), fletcher32=True)
        self._file.create_group("volumes")

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Closes the file without marking it complete (it will not be trusted)."""
        try:
            self._file.close()
        except Exception:  # already closed, or the HDF5 library is shutting down
            pass

    def add_subject(self, split: str, subject_id: str, images: np.ndarray,
                    brain_mask: np.ndarray, coordinates: np.ndarray, labels: np.ndarray,
                    location: np.ndarray) -> None:
        """Appends one subject.

        Args:
            split: 'train' or 'validation'.
            subject_id: the subject's id.
            images: (X, Y, Z, C) float32 working-grid images.
            brain_mask: (X, Y, Z) bool.
            coordinates: (N, 3) voxel (x, y, z), sorted by z, x, y.
            labels: (N,) uint8 sample labels.
            location: (N, 8) float32 location features of the samples.
        """
        if len(coordinates) == 0:
            return
        if max(images.shape[:3]) > np.iinfo(np.int16).max:
            raise WMHError(f"subject {subject_id}: working grid {images.shape[:3]} too large")
        index = len(self.subject_ids)
        self.subject_ids.append(subject_id)
        box = crop_box(images, brain_mask, coordinates)
        cropped = np.ascontiguousarray(
            np.moveaxis(images[box[0], box[1], box[2]], 2, 0).astype(np.float16))
        dataset = self._file["volumes"].create_dataset(
            str(index), data=cropped, chunks=(1,) + cropped.shape[1:], fletcher32=True)
        dataset.attrs["origin"] = np.array([b.start for b in box], np.int64)  # x0, y0, z0
        self._max_slice_shape = [max(self._max_slice_shape[0], cropped.shape[1]),
                                 max(self._max_slice_shape[1], cropped.shape[2])]
        count = len(coordinates)
        start = self._counts[split]
        group = self._file[split]
        table = np.empty(count, SAMPLE_DTYPE)
        table["subject"] = index
        table["slice"] = coordinates[:, 2]
        table["row"] = coordinates[:, 0]
        table["col"] = coordinates[:, 1]
        table["label"] = labels
        table["location"] = location
        group["samples"].resize(start + count, axis=0)
        group["samples"][start:start + count] = table
        z_values, first, counts = np.unique(coordinates[:, 2], return_index=True,
                                            return_counts=True)
        for z, offset, n in zip(z_values, first, counts):
            self._slices[split].append((index, int(z), start + int(offset), int(n)))
        self._counts[split] = start + count

    def close(self) -> None:
        """Writes the subject table, slice tables and attributes; closes the file."""
        import h5py

        file = self._file
        file.create_dataset("subject_ids", data=np.array(self.subject_ids, dtype=object),
                            dtype=h5py.string_dtype())
        for split in SAMPLED_SPLITS:
            table = np.array(self._slices[split], np.int64).reshape(-1, 4)
            file[split].create_dataset("slices", data=table, maxshape=(None, 4),
                                       chunks=(max(1, min(len(table), 65536)), 4),
                                       fletcher32=True)
            file[split].attrs["count"] = self._counts[split]
        for name, value in self._attrs.items():
            file.attrs[name] = value
        file.attrs["max_slice_shape"] = np.array(self._max_slice_shape, np.int64)
        file.attrs["format_version"] = FORMAT_VERSION
        file.attrs["complete"] = True
        file.close()


def _clean_stale_builds(out_dir: Path, key: str) -> None:
    """Removes temporary folders of killed builds of this key (their process is gone)."""
    for stale in out_dir.glob(f".{key}.tmp-*"):
        try:
            pid = int(stale.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
            continue  # a build in progress
        except (ValueError, IndexError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(stale, ignore_errors=True)


def build_samples(prepared_dir: str | Path, out_dir: str | Path,
                  config: SamplingConfig) -> Path:
    """Splits the prepared cohort and writes its balanced sample set.

    Args:
        prepared_dir: folder of ``wmh prepare`` (``<subject_id>.h5`` + ``manifest.json``).
        out_dir: parent folder; the set goes to ``<out_dir>/<key>/`` (module docstring).
        config: the sampling config.

    Returns:
        The sample-set folder (``splits.json`` + ``samples.h5``), for
        :func:`wmh.data.make_dataset`.

    Raises:
        WMHError: unreadable prepared files, bad options, or an existing folder of this
            key that is corrupt (naming the file).
    """
    from wmh.preprocess import PreparedSubject

    records = read_prepared_cohort(prepared_dir)
    cohort = cohort_hash(prepared_dir, records)
    configuration = config_hash(config)
    key = samples_key(cohort, configuration)
    out_dir = Path(out_dir)
    final = out_dir / key
    if final.exists():
        open_samples(final)  # raises, naming the file, if it is not a complete set
        return final
    splits = make_splits(records, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_builds(out_dir, key)
    temporary = out_dir / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    writer = None
    try:
        by_id = {record.subject_id: record for record in records}
        work = [(split, subject_id) for split in SAMPLED_SPLITS for subject_id in splits[split]]
        attrs = {"key": key, "cohort_hash": cohort, "config_hash": configuration,
                 "config": json.dumps(dataclasses.asdict(config), sort_keys=True),
                 "prepared_dir": str(Path(prepared_dir).resolve()), "wmh_version": __version__}
        channels = None
        counts = {split: {"positive": 0, "negative": 0} for split in SAMPLED_SPLITS}
        for split, subject_id in tqdm(work, desc="sampling subjects", unit="subject",
                                      disable=None):
            prepared = PreparedSubject.load(by_id[subject_id].path)
            if channels is None:
                channels = tuple(prepared.channels)
                writer = SampleWriter(temporary / SAMPLES_FILE, channels, attrs)
            elif tuple(prepared.channels) != channels:
                raise WMHError(f"{by_id[subject_id].path}: channels {prepared.channels} differ "
                               f"from the cohort's {channels}")
            rng = np.random.default_rng(subject_seed(config.seed, subject_id))
            coordinates, labels = sample_subject(prepared.labels, prepared.brain_mask, config,
                                                 rng, prepared.images[..., 0])
            x, y, z = coordinates.T
            writer.add_subject(split, subject_id, prepared.images, prepared.brain_mask,
                               coordinates, labels,
                               prepared.location[x, y, z].astype(np.float32))
            counts[split]["positive"] += int(labels.sum())
            counts[split]["negative"] += int(labels.size - labels.sum())
        if writer is None:
            raise WMHError(f"{prepared_dir}: no labelled training or validation subject "
                           "to sample")
        writer.close()
        document = dict(splits, key=key, cohort_hash=cohort, config_hash=configuration,
                        prepared_dir=attrs["prepared_dir"], samples=counts,
                        seed=config.seed)
        (temporary / SPLITS_FILE).write_text(json.dumps(document, indent=1) + "\n")
        try:
            os.rename(temporary, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(temporary, ignore_errors=True)  # a concurrent build finished first
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


# ------------------------------------------------------------------------- reading a set

@dataclasses.dataclass(frozen=True)
class SamplesInfo:
    """A verified sample set (:func:`open_samples`).

    Attributes:
        folder: the sample-set folder.
        samples_path: its ``samples.h5``.
        key: the sample-set key (dataset hash).
        channels: stored channel names (FLAIR first).
        counts: samples per split.
        max_slice_shape: largest cropped (X', Y') over the stored volumes.
    """

    folder: Path
    samples_path: Path
    key: str
    channels: tuple[str, ...]
    counts: dict[str, int]
    max_slice_shape: tuple[int, int]


def _corrupt(path: Path, why: str) -> WMHError:
    return WMHError(f"{path}: {why}; delete {path.parent} and run wmh sample again")


def load_splits(out_dir: str | Path) -> dict[str, list[str]]:
    """The subject ids of each split of a sample set.

    Args:
        out_dir: the folder :func:`build_samples` returned.

    Returns:
        ``{"train", "validation", "test"}`` -> subject ids (train: the subjects sampled,
        i.e. the ``train_size_fraction`` subset).

    Raises:
        WMHError: missing or unreadable ``splits.json`` (naming it).
    """
    document = _read_splits_document(Path(out_dir))
    return {name: list(document[name]) for name in SPLITS}


def _read_splits_document(folder: Path) -> dict:
    path = folder / SPLITS_FILE
    if not path.is_file():
        raise WMHError(f"{path}: not found (pass the folder that wmh sample printed)")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise _corrupt(path, f"unreadable splits file ({error})") from None
    if not isinstance(document, dict) or not all(
            isinstance(document.get(name), list) for name in SPLITS) or "key" not in document:
        raise _corrupt(path, "splits file lacks train/validation/test lists or its key")
    return document


def open_samples(samples_dir: str | Path) -> SamplesInfo:
    """Checks a sample set and returns what streaming needs to know about it.

    Raises:
        WMHError: a missing, truncated or corrupt file, an incomplete build, a format
            from another version, or files from two different builds (naming the file).
    """
    import h5py

    folder = Path(samples_dir)
    document = _read_splits_document(folder)
    path = folder / SAMPLES_FILE
    if not path.is_file():
        raise WMHError(f"{path}: not found (pass the folder that wmh sample printed)")
    try:
        with h5py.File(path, "r") as file:
            attrs = file.attrs
            if not attrs.get("complete", False):
                raise _corrupt(path, "incomplete sample file (interrupted build)")
            if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
                raise _corrupt(path, f"sample format {attrs.get('format_version')}, expected "
                                     f"{FORMAT_VERSION}")
            key = text_attr(attrs, "key")
            if key != document["key"]:
                raise WMHError(f"{path}: built from a different prepared cohort or sampling "
                               f"config (key {key}) than {folder / SPLITS_FILE} "
                               f"({document['key']}); delete {folder} and run wmh sample again")
            counts = {split: int(file[split].attrs["count"]) for split in SAMPLED_SPLITS}
            for split in SAMPLED_SPLITS:
                if file[split]["samples"].shape[0] != counts[split]:
                    raise _corrupt(path, f"split {split} holds {file[split]['samples'].shape[0]}"
                                         f" samples, expected {counts[split]}")
            return SamplesInfo(folder=folder, samples_path=path, key=key,
                               channels=tuple(json.loads(attrs["channels"])), counts=counts,
                               max_slice_shape=tuple(int(n) for n in attrs["max_slice_shape"]))
    except WMHError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _corrupt(path, f"corrupt or truncated sample file ({first_line})") from None


def load_index(samples_dir: str | Path, split: str) -> SampleIndex:
    """The whole sample index of a split (for analysis and tests; streaming reads it in
    slices instead).

    Raises:
        WMHError: unknown split or a bad sample set.
    """
    import h5py

    if split not in SAMPLED_SPLITS:
        raise WMHError(f"split '{split}': only {', '.join(SAMPLED_SPLITS)} are sampled")
    info = open_samples(samples_dir)
    with h5py.File(info.samples_path, "r") as file:
        table = file[split]["samples"][()]
        ids = tuple(name.decode() if isinstance(name, bytes) else str(name)
                    for name in file["subject_ids"][()])
    return SampleIndex(subject_ids=ids, subject=table["subject"].astype(np.int32),
                       slice=table["slice"].astype(np.int32),
                       row=table["row"].astype(np.int32), col=table["col"].astype(np.int32),
                       label=table["label"])
