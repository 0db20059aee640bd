"""wmh.data streaming: batches of on-the-fly patches from a sample set, checked by value
against the patch definition; reshuffling; corrupt, interrupted and mismatched sets."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil

import h5py
import numpy as np
import pytest
from fake_prepared import fake_subject, write_cohort

from wmh import data, sampling, splits
from wmh.config import SamplingConfig
from wmh.errors import WMHError
from wmh.patches import extract_patches
from wmh.preprocess import PreparedSubject

CONFIG = SamplingConfig(test_fraction=0.2, validation_fraction=0.2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    prepared = write_cohort(root / "prepared", count=10)
    samples = sampling.build_samples(prepared, root / "samples", CONFIG)
    return prepared, samples


def labels_of(dataset):
    return np.concatenate([label.numpy() for _, label in dataset])


def test_batches_have_the_model_contract(cohort, tf_seeded):
    _, samples = cohort
    dataset = data.make_dataset(samples, "train", data.StreamOptions(16, seed=0))
    features, label = next(iter(dataset))
    assert set(features) == {"s1", "s2", "s3", "loc"}
    for name in ("s1", "s2", "s3"):
        assert features[name].shape == (16, 32, 32, 2) and features[name].dtype == tf_seeded.float32
    assert features["loc"].shape == (16, 8) and features["loc"].dtype == tf_seeded.float32
    assert label.shape == (16,) and label.dtype == tf_seeded.int32
    total = data.count_samples(samples, "train")
    sizes = [int(label.shape[0]) for _, label in dataset]
    assert sum(sizes) == total and all(size == 16 for size in sizes[:-1])
    assert data.sample_channels(samples) == ("FLAIR", "T1")
    assert data.sample_channels(samples, use_t1=False) == ("FLAIR",)
    assert data.dataset_hash(samples) == samples.name


def test_patches_equal_the_patch_definition_on_the_stored_volume(cohort, tf_seeded):
    prepared, samples = cohort
    index = sampling.load_index(samples, "train")
    subjects = {}
    dataset = data.make_dataset(samples, "train", data.StreamOptions(40, seed=5, block_slices=3),
                                include_index=True)
    checked = 0
    for features, label in dataset.take(3):
        for j, i in enumerate(features["index"].numpy()):
            subject_id = index.subject_ids[index.subject[i]]
            if subject_id not in subjects:
                subjects[subject_id] = PreparedSubject.load(prepared / f"{subject_id}.h5")
            subject = subjects[subject_id]
            x, y, z = index.row[i], index.col[i], index.slice[i]
            stored = subject.images[:, :, z, :].astype(np.float16).astype(np.float32)
            expected = extract_patches(stored, np.array([x]), np.array([y]))
            for name in ("s1", "s2", "s3"):
                np.testing.assert_array_equal(features[name][j].numpy(), expected[name][0])
            np.testing.assert_array_equal(features["loc"][j].numpy(), subject.location[x, y, z])
            assert label[j] == subject.labels[x, y, z] == index.label[i]
            checked += 1
    assert checked == 120
    assert np.abs(subject.images.astype(np.float16) - subject.images).max() <= 2.5e-4


def test_each_epoch_is_a_new_permutation_reproducible_by_seed(cohort, tf_seeded):
    _, samples = cohort

    def indices(dataset):
        return np.concatenate([f["index"].numpy() for f, _ in dataset])

    first = data.make_dataset(samples, "train", data.StreamOptions(32, seed=1, block_slices=4),
                              include_index=True)
    twin = data.make_dataset(samples, "train", data.StreamOptions(32, seed=1, block_slices=4),
                             include_index=True)
    epoch0, epoch1 = indices(first), indices(first)
    assert not np.array_equal(epoch0, epoch1)
    assert np.array_equal(np.sort(epoch0), np.arange(data.count_samples(samples, "train")))
    assert np.array_equal(np.sort(epoch1), np.sort(epoch0))
    assert np.array_equal(indices(twin), epoch0) and np.array_equal(indices(twin), epoch1)
    other = data.make_dataset(samples, "train", data.StreamOptions(32, seed=2, block_slices=4),
                              include_index=True)
    assert not np.array_equal(indices(other), epoch0)
    ordered = data.make_dataset(samples, "validation", data.StreamOptions(32, shuffle=False),
                                include_index=True)
    assert np.array_equal(indices(ordered), np.arange(data.count_samples(samples,
                                                                          "validation")))
    repeated = data.make_dataset(samples, "train", data.StreamOptions(32, seed=1, block_slices=4),
                                 repeat=True, include_index=True)
    batches_per_epoch = len(data.SampleStream(samples, "train", data.StreamOptions(32)))
    stream = np.concatenate([f["index"].numpy() for f, _ in
                             repeated.take(2 * batches_per_epoch)])
    assert np.array_equal(stream, np.concatenate([epoch0, epoch1]))


def test_flair_only_and_max_samples(cohort, tf_seeded):
    _, samples = cohort
    both = data.make_dataset(samples, "train", data.StreamOptions(64, shuffle=False))
    flair = data.make_dataset(samples, "train",
                              data.StreamOptions(64, shuffle=False, use_t1=False))
    (features_both, _), (features_flair, _) = next(iter(both)), next(iter(flair))
    assert features_flair["s2"].shape == (64, 32, 32, 1)
    np.testing.assert_array_equal(features_flair["s3"].numpy()[..., 0],
                                  features_both["s3"].numpy()[..., 0])
    capped = [data.make_dataset(samples, "train",
                                data.StreamOptions(64, seed=seed, max_samples=100),
                                include_index=True) for seed in (0, 1)]
    chosen = [np.concatenate([f["index"].numpy() for f, _ in d]) for d in capped]
    assert len(chosen[0]) == 100 and np.array_equal(np.sort(chosen[0]), np.sort(chosen[1]))


def _cut_all(samples, workers):
    stream = data.SampleStream(samples, "train",
                               data.StreamOptions(48, seed=4, workers=workers, block_slices=3))
    return [batch for batch in stream.epoch(1)]


def test_worker_processes_give_the_same_batches_as_in_process(cohort):
    _, samples = cohort
    in_process, with_workers = _cut_all(samples, 0), _cut_all(samples, 2)
    assert len(in_process) == len(with_workers)
    for a, b in zip(in_process, with_workers):
        for name in ("s1", "s2", "s3", "loc", "label", "index"):
            np.testing.assert_array_equal(a[name], b[name])
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("wmh-data")]


def test_truncated_or_corrupt_sample_file_is_named(cohort, tmp_path):
    _, samples = cohort
    truncated = tmp_path / "truncated"
    shutil.copytree(samples, truncated)
    path = truncated / sampling.SAMPLES_FILE
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2])
    with pytest.raises(WMHError, match=rf"{path}: corrupt or truncated sample file"):
        data.make_dataset(truncated, "train")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(samples, corrupt)
    path = corrupt / sampling.SAMPLES_FILE
    with h5py.File(path, "r") as file:
        volume = file["volumes"]["0"]
        offset = volume.id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as handle:
        handle.seek(offset + 100)
        handle.write(os.urandom(64))
    stream = data.SampleStream(corrupt, "train", data.StreamOptions(32, shuffle=False, workers=0))
    with pytest.raises(WMHError, match=rf"{path}: corrupt or truncated sample file"):
        list(stream.epoch(0))
    (corrupt / sampling.SPLITS_FILE).write_text("{not json")
    with pytest.raises(WMHError, match=r"splits\.json: unreadable splits file"):
        data.count_samples(corrupt, "train")


def test_interrupted_build_leaves_nothing_trusted(tmp_path, monkeypatch):
    prepared = write_cohort(tmp_path / "prepared", count=6)
    calls = []
    original = sampling.SampleWriter.add_subject

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-build
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sampling.SampleWriter, "add_subject", failing)
    with pytest.raises(KeyboardInterrupt):
        sampling.build_samples(prepared, tmp_path / "samples", CONFIG)
    assert list((tmp_path / "samples").iterdir()) == []
    monkeypatch.undo()
    # A hard kill leaves its temporary folder: it is never trusted, and cleaned up later.
    key = sampling.samples_key(
        splits.cohort_hash(prepared, splits.read_prepared_cohort(prepared)),
        sampling.config_hash(CONFIG))
    stale = tmp_path / "samples" / f".{key}.tmp-999999999-deadbeef"
    stale.mkdir()
    (stale / sampling.SPLITS_FILE).write_text(json.dumps({"key": key}))
    (stale / sampling.SAMPLES_FILE).write_bytes(b"half written")
    folder = sampling.build_samples(prepared, tmp_path / "samples", CONFIG)
    assert folder.name == key and not stale.exists()
    assert data.count_samples(folder, "train") > 0
    with h5py.File(folder / sampling.SAMPLES_FILE, "r+") as file:
        del file.attrs["complete"]  # as if the build had stopped before its last step
    with pytest.raises(WMHError, match="incomplete sample file"):
        data.make_dataset(folder, "train")


def test_a_different_cohort_or_config_is_detected_by_its_hash(tmp_path):
    prepared = write_cohort(tmp_path / "prepared", count=6)
    first = sampling.build_samples(prepared, tmp_path / "samples", CONFIG)
    other_config = sampling.build_samples(prepared, tmp_path / "samples",
                                          SamplingConfig(seed=9, test_fraction=0.2,
                                                         validation_fraction=0.2))
    changed = fake_subject("sub-03", seed=77)
    changed.save(prepared / "sub-03.h5")
    other_cohort = sampling.build_samples(prepared, tmp_path / "samples", CONFIG)
    assert len({first, other_config, other_cohort}) == 3
    assert data.dataset_hash(first) != data.dataset_hash(other_cohort)
    shutil.copy(other_cohort / sampling.SAMPLES_FILE, first / sampling.SAMPLES_FILE)
    with pytest.raises(WMHError, match=rf"{first / sampling.SAMPLES_FILE}: built from a "
                                       "different prepared cohort or sampling config"):
        data.make_dataset(first, "train")


def test_bad_split_and_missing_folder(cohort, tmp_path):
    _, samples = cohort
    with pytest.raises(WMHError, match="split 'test': only train, validation are sampled"):
        data.count_samples(samples, "test")
    with pytest.raises(WMHError, match="splits.json: not found"):
        data.make_dataset(tmp_path / "nowhere", "train")
