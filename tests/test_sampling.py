"""wmh.splits and wmh.sampling: seeded subject splits and balanced voxel samples, on tiny fake cohorts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_prepared import fake_subject, write_cohort

from wmh.config import SamplingConfig
from wmh.errors import WMHError
from wmh.sampling import (build_samples, hard_negative_mask, load_index, load_splits,
                          sample_subject, subject_seed)
from wmh.splits import PreparedRecord, make_splits, read_prepared_cohort


def records(count=40, sites=0, fixed=None, unlabelled=()):
    fixed = fixed or {}
    return [PreparedRecord(path=Path(f"/prepared/sub-{i:02d}.h5"), subject_id=f"sub-{i:02d}",
                           site=f"site{i % sites}" if sites else None,
                           split=fixed.get(f"sub-{i:02d}"),
                           labelled=f"sub-{i:02d}" not in unlabelled, cache_key=str(i))
            for i in range(count)]


def test_splits_are_disjoint_complete_and_seeded():
    config = SamplingConfig(seed=3)
    splits = make_splits(records(), config)
    parts = [set(splits[name]) for name in ("train", "validation", "test")]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert set().union(*parts) == {f"sub-{i:02d}" for i in range(40)}
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (28, 4, 8)
    assert make_splits(records(), config) == splits
    assert make_splits(records(), SamplingConfig(seed=4))["test"] != splits["test"]


def test_split_by_site_keeps_each_site_in_one_split():
    cohort = records(count=30, sites=6)
    splits = make_splits(cohort, SamplingConfig(split_by_site=True, seed=1))
    site_of = {record.subject_id: record.site for record in cohort}
    sites = {name: {site_of[s] for s in splits[name]} for name in ("train", "validation",
                                                                   "test")}
    assert all(sites[name] for name in sites)
    assert not (sites["train"] & sites["validation"] or sites["train"] & sites["test"]
                or sites["validation"] & sites["test"])
    with pytest.raises(WMHError, match="split_by_site: needs at least 3 sites"):
        make_splits(records(count=10, sites=2), SamplingConfig(split_by_site=True))


def test_manifest_fixed_splits_and_unlabelled_subjects():
    fixed = {"sub-00": "test", "sub-01": "train", "sub-02": "validation", "sub-03": "test"}
    splits = make_splits(records(fixed=fixed, unlabelled=("sub-03", "sub-04")),
                         SamplingConfig())
    for subject_id, split in fixed.items():
        assert subject_id in splits[split]
    assert splits["unlabelled"] == ["sub-04"]
    assert "sub-04" not in splits["train"] + splits["validation"] + splits["test"]
    with pytest.raises(WMHError, match=r"sub-05\.h5: split 'train' fixed by the manifest"):
        make_splits(records(fixed={"sub-05": "train"}, unlabelled=("sub-05",)),
                    SamplingConfig())


def test_train_size_fraction_gives_nested_subsets_and_fixed_evaluation_splits():
    cohort = records(count=50)
    full = make_splits(cohort, SamplingConfig(seed=2))
    previous = set(full["train"])
    for fraction in (0.5, 0.25, 0.125, 0.0625):
        subset = make_splits(cohort, SamplingConfig(seed=2, train_size_fraction=fraction))
        assert set(subset["train"]) < previous
        assert len(subset["train"]) == int(np.ceil(fraction * len(full["train"])))
        assert set(subset["train"]) | set(subset["train_unused"]) == set(full["train"])
        assert subset["validation"] == full["validation"] and subset["test"] == full["test"]
        previous = set(subset["train"])


@pytest.fixture(scope="module")
def subject():
    return fake_subject("sub-x", seed=7, shape=(48, 52, 6))


def test_positives_are_half_the_wmh_and_negatives_balance_them_inside_the_brain(subject):
    coordinates, labels = sample_subject(subject.labels, subject.brain_mask, SamplingConfig(),
                                         np.random.default_rng(0))
    x, y, z = coordinates.T
    n_wmh = int((subject.labels == 1).sum())
    assert labels.sum() == round(0.5 * n_wmh)
    assert (labels == 0).sum() == labels.sum()
    assert np.all(subject.labels[x, y, z][labels == 1] == 1)
    negatives = labels == 0
    assert np.all(subject.labels[x, y, z][negatives] == 0)  # never WMH, never label 2
    assert np.all(subject.brain_mask[x, y, z][negatives])
    assert len(np.unique(coordinates, axis=0)) == len(coordinates)
    order = np.lexsort((y, x, z))
    assert np.array_equal(order, np.arange(len(order)))  # sorted by z, x, y


def test_sampling_is_seeded_and_ratio_configurable(subject):
    config = SamplingConfig(negative_ratio=2.0, positive_fraction=0.25)
    first = sample_subject(subject.labels, subject.brain_mask, config,
                           np.random.default_rng(subject_seed(0, "sub-x")))
    again = sample_subject(subject.labels, subject.brain_mask, config,
                           np.random.default_rng(subject_seed(0, "sub-x")))
    other = sample_subject(subject.labels, subject.brain_mask, config,
                           np.random.default_rng(subject_seed(1, "sub-x")))
    assert np.array_equal(first[0], again[0]) and not np.array_equal(first[0], other[0])
    n_positive = round(0.25 * (subject.labels == 1).sum())
    assert first[1].sum() == n_positive and (first[1] == 0).sum() == 2 * n_positive


def test_positive_cap_bounds_a_heavy_subjects_samples_and_leaves_light_ones(subject):
    n_wmh = int((subject.labels == 1).sum())
    half = round(0.5 * n_wmh)
    capped = SamplingConfig(max_positives_per_subject=half // 3)
    coordinates, labels = sample_subject(subject.labels, subject.brain_mask, capped,
                                         np.random.default_rng(0))
    x, y, z = coordinates.T
    assert labels.sum() == half // 3 and (labels == 0).sum() == half // 3
    assert np.all(subject.labels[x, y, z][labels == 1] == 1)
    loose = SamplingConfig(max_positives_per_subject=10 * n_wmh)  # above the half: no effect
    _, labels = sample_subject(subject.labels, subject.brain_mask, loose,
                               np.random.default_rng(0))
    assert labels.sum() == half and (labels == 0).sum() == half


def test_a_negative_positive_cap_is_refused_naming_the_option():
    from wmh.config import ExperimentConfig, validate

    bad = ExperimentConfig(sampling=SamplingConfig(max_positives_per_subject=-1))
    with pytest.raises(WMHError, match=r"sampling\.max_positives_per_subject.*>= 0"):
        validate(bad)


def test_hard_negatives_come_from_bright_voxels_and_around_other_pathology(subject):
    config = SamplingConfig(hard_negative_fraction=1.0)
    flair = subject.images[..., 0]
    hard = hard_negative_mask(subject.labels, subject.brain_mask, flair, config)
    assert not (hard & (subject.labels != 0)).any() and not (hard & ~subject.brain_mask).any()
    ring = hard & (flair <= np.percentile(flair[subject.brain_mask], 95.0))
    assert ring.any()  # voxels next to label 2 that are not bright
    coordinates, labels = sample_subject(subject.labels, subject.brain_mask, config,
                                         np.random.default_rng(0), flair)
    x, y, z = coordinates[labels == 0].T
    assert hard[x, y, z].all()
    half = dataclasses.replace(config, hard_negative_fraction=0.5)
    coordinates, labels = sample_subject(subject.labels, subject.brain_mask, half,
                                         np.random.default_rng(0), flair)
    x, y, z = coordinates[labels == 0].T
    assert hard[x, y, z].sum() >= round(0.5 * (labels == 0).sum())


def test_build_writes_splits_and_nested_identical_subject_samples(tmp_path):
    prepared = write_cohort(tmp_path / "prepared", count=10)
    full = build_samples(prepared, tmp_path / "samples", SamplingConfig())
    half = build_samples(prepared, tmp_path / "samples",
                         SamplingConfig(train_size_fraction=0.5))
    assert full != half and full.parent == half.parent
    assert build_samples(prepared, tmp_path / "samples", SamplingConfig()) == full  # no-op
    splits = load_splits(full)
    assert set(splits) == {"train", "validation", "test"}
    assert set(load_splits(half)["train"]) < set(splits["train"])
    index_full, index_half = load_index(full, "train"), load_index(half, "train")
    for subject_id in load_splits(half)["train"]:
        a = index_full.subject == index_full.subject_ids.index(subject_id)
        b = index_half.subject == index_half.subject_ids.index(subject_id)
        assert np.array_equal(index_full.row[a], index_half.row[b])
        assert np.array_equal(index_full.slice[a], index_half.slice[b])
    sampled = {index_full.subject_ids[i] for i in np.unique(index_full.subject)}
    assert sampled == set(splits["train"])
    assert index_full.label.mean() == 0.5


def test_the_manifest_defines_the_cohort(tmp_path):
    prepared = write_cohort(tmp_path / "prepared", count=3)
    fake_subject("sub-old", seed=5).save(prepared / "sub-old.h5")  # left the cohort
    assert [r.subject_id for r in read_prepared_cohort(prepared)] == ["sub-00", "sub-01",
                                                                      "sub-02"]
    (prepared / "sub-01.h5").unlink()
    with pytest.raises(WMHError, match=r"sub-01\.h5: listed in .*manifest\.json but missing"):
        read_prepared_cohort(prepared)
    (prepared / "manifest.json").write_text("{")
    with pytest.raises(WMHError, match=r"manifest\.json: unreadable prepared-cohort manifest"):
        read_prepared_cohort(prepared)


def test_sampling_module_never_imports_tensorflow(tmp_path):
    prepared = write_cohort(tmp_path / "prepared", count=4)
    code = ("import sys\n"
            "from wmh.config import SamplingConfig\n"
            "from wmh.sampling import build_samples, load_splits\n"
            f"out = build_samples({str(prepared)!r}, {str(tmp_path / 's')!r}, "
            "SamplingConfig(test_fraction=0.25, validation_fraction=0.25))\n"
            "load_splits(out)\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def sessions(participants=12, per_participant=3, fixed=None):
    """BIDS-like ids sub-PP_ses-S: several sessions per participant."""
    fixed = fixed or {}
    out = []
    for p in range(participants):
        for s in range(per_participant):
            sid = f"sub-{p:02d}_ses-{s}"
            out.append(PreparedRecord(path=Path(f"/prepared/{sid}.h5"), subject_id=sid,
                                      site=None, split=fixed.get(sid), labelled=True,
                                      cache_key=sid))
    return out


def test_sessions_of_one_participant_never_straddle_splits():
    for seed in range(5):
        splits = make_splits(sessions(), SamplingConfig(seed=seed))
        owner = {}
        for name in ("train", "validation", "test"):
            for sid in splits[name]:
                person = sid.split("_")[0]
                assert owner.setdefault(person, name) == name, (seed, sid)
        assert len(owner) == 12
        assert len(splits["test"]) >= 1 and len(splits["validation"]) >= 1
        assert len(splits["train"]) + len(splits["validation"]) + len(splits["test"]) == 36


def test_an_explicit_participant_groups_and_a_fixed_session_pulls_the_others():
    fixed = {"sub-03_ses-0": "test"}
    splits = make_splits(sessions(fixed=fixed), SamplingConfig(seed=0))
    assert {"sub-03_ses-0", "sub-03_ses-1", "sub-03_ses-2"} <= set(splits["test"])
    # an explicit participant (a manifest column) overrides the id's own
    grouped = [dataclasses.replace(r, participant="P1") if r.subject_id.startswith(
        ("sub-00", "sub-01")) else r for r in sessions()]
    for seed in range(4):
        splits = make_splits(grouped, SamplingConfig(seed=seed))
        where = {name for name in ("train", "validation", "test")
                 for sid in splits[name] if sid.startswith(("sub-00", "sub-01"))}
        assert len(where) == 1


def test_conflicting_fixed_sessions_of_one_participant_are_refused():
    fixed = {"sub-03_ses-0": "test", "sub-03_ses-1": "train"}
    with pytest.raises(WMHError, match=r"sub-03_ses-1.h5: participant 'sub-03' is fixed to "
                                       r"split 'train' here and 'test' in .*sub-03_ses-0.h5"):
        make_splits(sessions(fixed=fixed), SamplingConfig(seed=0))


def test_stored_crop_holds_samples_outside_the_brain(tmp_path):
    """A labelled lesion voxel outside the brain mask, where the images are zero (an
    imperfect mask on a randomised synthetic head), is still sampled: its slice must lie
    inside the stored crop (it once did not: 'Index (26) out of range for (0-24)')."""
    import h5py

    from wmh import sampling

    images = np.zeros((20, 18, 30, 1), np.float32)
    brain = np.zeros((20, 18, 30), bool)
    brain[5:15, 4:14, 3:25] = True
    images[brain] = 1.0
    coordinates = np.array([[6, 6, 10], [2, 16, 27]], np.int64)  # the second: outside
    box = sampling.crop_box(images, brain, coordinates)
    assert box == (slice(2, 15), slice(4, 17), slice(3, 28))
    assert sampling.crop_box(images, brain) == (slice(5, 15), slice(4, 14), slice(3, 25))
    with sampling.SampleWriter(tmp_path / "samples.h5", ("FLAIR",), {}) as writer:
        writer.add_subject("train", "s0", images, brain, coordinates,
                           np.array([1, 1], np.uint8), np.zeros((2, 8), np.float32))
    with h5py.File(tmp_path / "samples.h5", "r") as file:
        volume = file["volumes"]["0"]
        origin = volume.attrs["origin"]
        for x, y, z in coordinates:  # stored as (Z, X, Y, C) from the origin
            assert 0 <= z - origin[2] < volume.shape[0]
            assert 0 <= x - origin[0] < volume.shape[1]
            assert 0 <= y - origin[1] < volume.shape[2]
        assert float(volume[10 - origin[2], 6 - origin[0], 6 - origin[1], 0]) == 1.0
