"""Synthetic cohort: layout, truth maps, determinism, profiles, realism, CLI errors.

The realism checks run on a 3-subject default cohort (the slow test repeats them on 12
subjects with the issue's bounds). The derived anatomy is cached under the project's
data_cache/ like every other stage's cache.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wmh import cli
from wmh.errors import WMHError
from wmh.io import discover, load_image, load_labels, load_subject
from wmh.config import SynthConfig
from wmh.synth import PROFILES, synthesize_cohort, synthesize_subject
from wmh.synth import realism
from wmh.synth.anatomy import get_anatomy
from wmh.synth.cohort import PROGRESS_FILE
from wmh.synth.subject import compose_mni_images, draw_contrast, generate_subject
from wmh.synth.pathology import Overlay, place_wmh

CACHE = str(Path(__file__).resolve().parents[1] / "data_cache")


@pytest.fixture(scope="module")
def anatomy():
    return get_anatomy(CACHE)


@pytest.fixture(scope="module")
def default_cohort(tmp_path_factory, anatomy):
    out = tmp_path_factory.mktemp("synth") / "cohort"
    return synthesize_cohort(out, SynthConfig(subjects=3, seed=0), cache_dir=CACHE)


@pytest.fixture(scope="module")
def default_realism(default_cohort, anatomy):
    folders = [s.flair.parent.parent for s in discover(default_cohort)]
    return realism.cohort_realism(folders, anatomy)


# ------------------------------------------------------------------ layout and files

def test_layout_is_discoverable_and_loadable(default_cohort):
    subjects = discover(default_cohort)
    assert [s.subject_id for s in subjects] == ["s000", "s001", "s002"]
    for subject in subjects:
        assert subject.site == "synth-default"
        assert subject.flair.parent.name == "orig" and not subject.coregistered
        assert subject.labels.name == "wmh.nii.gz"
        assert subject.labels_observer2.name == "wmh_observer2.nii.gz"
        loaded = load_subject(subject)
        assert set(np.unique(loaded.labels)) <= {0, 1, 2}
        assert (loaded.labels == 1).sum() > 0
        assert loaded.labels.dtype == np.uint8
        # the T1 lies on its own 1 mm grid, not the FLAIR's
        np.testing.assert_allclose(loaded.t1_grid.working_spacing, [1, 1, 1], atol=1e-5)
        assert loaded.t1.shape != loaded.flair.shape


def test_truth_maps_lie_on_the_flair_grid(default_cohort):
    subject = discover(default_cohort)[0]
    folder = subject.flair.parent.parent
    flair, grid = load_image(subject.flair)
    for name in ("brainmask", "ventricles", "hard_negatives"):
        labels, _ = load_labels(folder / "truth" / f"{name}.nii.gz", grid)
        assert labels.shape == flair.shape
    ventricles, _ = load_labels(folder / "truth" / "ventricles.nii.gz", grid)
    assert set(np.unique(ventricles)) == {0, 1, 2}
    coordinates = nib.load(str(folder / "truth" / "mni_coordinates.nii.gz"))
    assert coordinates.shape == grid.shape + (3,)
    np.testing.assert_allclose(coordinates.affine, grid.affine)
    mni = grid.to_working(np.asarray(coordinates.dataobj, dtype=np.float32))
    # left ventricle voxels (label 1) lie at negative MNI x, right at positive
    left, right = mni[ventricles == 1], mni[ventricles == 2]
    assert np.median(left[:, 0]) < -5 and np.median(right[:, 0]) > 5
    assert np.all(np.abs(left[:, 0]) < 40) and np.all(np.abs(right[:, 1] + 15) < 60)


def test_cohort_json_records_subjects_and_transforms(default_cohort):
    cohort = json.loads((default_cohort / "cohort.json").read_text())
    assert cohort["arguments"]["seed"] == 0 and cohort["arguments"]["profile"] == "default"
    assert len(cohort["subjects"]) == 3
    seeds = [record["seed"] for record in cohort["subjects"]]
    assert len(set(seeds)) == 3
    for record in cohort["subjects"]:
        assert record["lesion_volume_ml"] > 0 and record["lesion_count"] >= 1
        transforms = record["transforms"]
        world_to_anatomy = np.array(transforms["anatomy_from_flair_world"])
        assert world_to_anatomy.shape == (4, 4)
        rigid = np.array(transforms["flair_world_from_t1_world"])[:3, :3]
        np.testing.assert_allclose(rigid @ rigid.T, np.eye(3), atol=1e-5)  # T1 -> FLAIR is rigid
        for path in record["files"].values():
            assert (default_cohort / path).is_file()
    # the affine part of the truth matches the MNI coordinates up to the smooth warp
    record = cohort["subjects"][0]
    image = nib.load(str(default_cohort / record["files"]["mni_coordinates"]))
    mni = np.asarray(image.dataobj, dtype=np.float32)
    i, j, k = (np.array(image.shape[:3]) // 2)
    world = image.affine @ [i, j, k, 1]
    anatomy_point = np.array(record["transforms"]["anatomy_from_flair_world"]) @ world
    assert np.linalg.norm(anatomy_point[:3] - mni[i, j, k]) < 15


def test_prior_map_is_saved_in_mni_space(default_cohort):
    prior = nib.load(str(default_cohort / "prior_mni.nii.gz"))
    data = prior.get_fdata()
    assert prior.shape == (197, 233, 189)
    np.testing.assert_allclose(prior.affine[:3, 3], [-98, -134, -72])
    assert 0.5 < data.max() <= 1 and data.min() >= 0
    # periventricular (next to the left frontal horn) far above deep white matter
    horn = data[int(-14 + 98) - 4:int(-14 + 98) + 4, 134 + 18:134 + 30, 72 + 10:72 + 20].max()
    deep = data[int(-30 + 98), 134 - 10, 72 + 35]
    assert horn > 5 * deep


# ------------------------------------------------------------------ realism (3 subjects)

def test_wmh_are_mostly_periventricular_with_deep_lesions(default_realism):
    assert default_realism["periventricular_fraction"] >= 0.5
    assert default_realism["subjects_with_deep_lesions"] >= 2


def test_hard_negatives_are_plentiful(default_realism):
    assert default_realism["hard_negative_ratio"] >= 0.3


def test_observer2_disagrees_realistically(default_realism):
    assert 0.7 <= default_realism["observer2_dice"] <= 0.9


def test_intensity_alone_is_not_enough(default_realism):
    assert default_realism["best_threshold_dice"] <= 0.6
    assert default_realism["oracle_dice"] >= default_realism["best_threshold_dice"] + 0.05


def test_contrasts_order_tissues_like_t1_and_flair(anatomy):
    rng = np.random.default_rng(3)
    contrast = draw_contrast(rng)
    overlay = Overlay.empty(anatomy.shape)
    place_wmh(rng, anatomy, overlay, 10.0, contrast.lesion)
    flair, t1 = compose_mni_images(anatomy, overlay, contrast, skull_stripped=False)
    wm = (anatomy.wm > 0.9) & (overlay.fraction == 0)
    gm = (anatomy.gm > 0.9) & (overlay.fraction == 0)
    ventricle = anatomy.ventricles > 0
    wmh = overlay.wmh > 0.9
    assert np.median(t1[wm]) > np.median(t1[gm]) > np.median(t1[ventricle])
    assert np.median(flair[wmh]) > np.median(flair[gm]) > np.median(flair[wm])
    assert np.median(flair[gm]) < 1.35 * np.median(flair[wm])  # GM only a little brighter
    assert np.median(flair[ventricle]) < 0.35 * np.median(flair[wm])  # CSF suppressed
    assert np.median(t1[wmh]) < np.median(t1[wm])  # WMH mildly dark on T1


# ------------------------------------------------------------------ determinism

def test_same_seed_same_arrays_different_seed_different(anatomy):
    profile = PROFILES["test"]
    first = generate_subject("s000", 11, profile, anatomy)
    again = generate_subject("s000", 11, profile, anatomy)
    other = generate_subject("s000", 12, profile, anatomy)
    for name in ("flair", "t1", "observer1", "observer2", "hard_negatives", "mni_coordinates"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.flair, other.flair)
    assert not np.array_equal(first.observer1, other.observer1)


def test_rerun_on_complete_cohort_is_a_noop(tmp_path):
    out = tmp_path / "c"
    synthesize_cohort(out, SynthConfig(subjects=1, seed=5, profile="test"), cache_dir=CACHE)
    flair = out / "synth-test" / "s000" / "orig" / "FLAIR.nii.gz"
    stamp = (flair.stat().st_mtime_ns, (out / "cohort.json").stat().st_mtime_ns)
    synthesize_cohort(out, SynthConfig(subjects=1, seed=5, profile="test"), cache_dir=CACHE)
    assert (flair.stat().st_mtime_ns, (out / "cohort.json").stat().st_mtime_ns) == stamp


def test_preview_montage_is_written_and_added_on_rerun(tmp_path):
    out = tmp_path / "c"
    synthesize_cohort(out, SynthConfig(subjects=1, seed=6, profile="test"),
                      preview=True, cache_dir=CACHE)
    png = out / "synth-test" / "s000" / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()
    synthesize_cohort(out, SynthConfig(subjects=1, seed=6, profile="test"),
                      preview=True, cache_dir=CACHE)
    assert png.stat().st_size > 10_000


def test_templates_load_without_network(monkeypatch):
    import socket

    from wmh.synth.anatomy import load_templates

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    t1, gm, wm, affine = load_templates()
    assert t1.shape == gm.shape == wm.shape == (197, 233, 189)
    np.testing.assert_allclose(np.diag(affine)[:3], [1, 1, 1])


def test_interrupted_run_of_same_arguments_resumes(tmp_path):
    out = tmp_path / "c"
    synthesize_cohort(out, SynthConfig(subjects=1, seed=5, profile="test"), cache_dir=CACHE)
    arguments = json.loads((out / "cohort.json").read_text())["arguments"]
    (out / "cohort.json").unlink()  # as if killed before the end
    (out / PROGRESS_FILE).write_text(json.dumps({"arguments": arguments}))
    synthesize_cohort(out, SynthConfig(subjects=1, seed=5, profile="test"), cache_dir=CACHE)
    assert (out / "cohort.json").is_file() and not (out / PROGRESS_FILE).exists()


# ------------------------------------------------------------------ profiles and options

def _one(tmp_path, profile, **options):
    record = synthesize_subject(tmp_path, 0, SynthConfig(seed=1, profile=profile, **options),
                                cache_dir=CACHE)
    return record, tmp_path / record["files"]["flair"]


def test_clinical_thick_profile_is_lps_512_thick_slices(tmp_path):
    record, flair = _one(tmp_path, "clinical-thick", flair_only=True)
    image = nib.load(str(flair))
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert image.shape == (512, 512, 18)
    np.testing.assert_allclose(image.header.get_zooms(), [0.47, 0.47, 8.0], atol=1e-4)
    assert record["site"] == "synth-clinical-thick"
    assert "t1" not in record["files"]
    assert not (flair.parent / "T1.nii.gz").exists()


def test_oblique_profile_has_tilted_lps_slices(tmp_path):
    _, flair = _one(tmp_path, "oblique", flair_only=True)
    image = nib.load(str(flair))
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    column = image.affine[:3, 2] / np.linalg.norm(image.affine[:3, 2])
    assert np.degrees(np.arccos(abs(column[2]))) > 8  # slices tilted off the axial plane
    _, grid = load_image(flair)  # the loader maps it to working RAS
    assert grid.working_shape[2] == 36


@pytest.mark.parametrize("profile, codes, thick_axis", [
    ("coronal", ("L", "I", "P"), 1), ("sagittal", ("P", "I", "L"), 0)])
def test_coronal_and_sagittal_profiles_slice_along_their_plane(tmp_path, profile, codes,
                                                               thick_axis):
    record, flair = _one(tmp_path, profile, flair_only=True)
    image = nib.load(str(flair))
    assert nib.aff2axcodes(image.affine) == codes  # slices stored last
    spacing = PROFILES[profile].slice_spacing_mm
    np.testing.assert_allclose(image.header.get_zooms()[2], spacing, atol=1e-4)
    _, grid = load_image(flair)
    assert int(np.argmax(grid.working_spacing)) == thick_axis
    assert record["acquisition"]["plane"] == profile
    # the slice profile blurs across the slices only: in-plane edges stay sharp
    data = np.asarray(image.dataobj, dtype=np.float32)
    inplane = np.abs(np.diff(data, axis=0)).mean() / image.header.get_zooms()[0]
    across = np.abs(np.diff(data, axis=2)).mean() / image.header.get_zooms()[2]
    assert inplane > 2 * across


def test_neck_profile_has_tissue_below_the_skull(tmp_path):
    _, flair = _one(tmp_path, "clinical-neck", flair_only=True)
    data, grid = load_image(flair)
    truth = load_labels(flair.parent.parent / "truth" / "brainmask.nii.gz", grid)[0] > 0
    lowest_brain = int(np.argwhere(truth)[:, 2].min())
    below = data[:, :, : max(lowest_brain - 8, 1)]
    assert below.size and np.percentile(below, 90) > 0.3 * np.percentile(data[truth], 50)


def test_flair_only_and_skull_stripped(tmp_path):
    record, flair_path = _one(tmp_path, "test", flair_only=True, skull_stripped=True)
    subject = discover(tmp_path)[0]
    assert subject.t1 is None
    flair, grid = load_image(flair_path)
    brain, _ = load_labels(tmp_path / "synth-test" / "s000" / "truth" / "brainmask.nii.gz", grid)
    assert np.all(flair[brain == 0] == 0)
    assert np.all(flair[brain == 1] >= 0) and flair[brain == 1].mean() > 50


def test_mixed_profile_draws_scanners_per_subject(tmp_path):
    out = synthesize_cohort(tmp_path / "m",
                            SynthConfig(subjects=3, seed=2, profile="mixed", flair_only=True),
                            cache_dir=CACHE)
    cohort = json.loads((out / "cohort.json").read_text())
    sites = {record["site"] for record in cohort["subjects"]}
    assert len(sites) >= 2
    assert all(record["acquisition"]["drawn_from"] == "mixed" for record in cohort["subjects"])
    assert len(discover(out)) == 3


# ------------------------------------------------------------------ bad options

@pytest.mark.parametrize("arguments, message", [
    (["--profile", "nope"], "option --profile: unknown profile 'nope'"),
    (["--subjects", "0"], "option --subjects: expected an integer >= 1"),
    (["--workers", "0"], "option --workers"),
])
def test_cli_bad_options_exit_2_with_one_line(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", str(tmp_path / "out"), *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_cli_rejects_file_and_foreign_folders(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", str(target), "--subjects", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"wmh: error: OUT {target}: exists and is not a folder\n"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", str(foreign), "--subjects", "1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{foreign}: folder is not empty" in error and error.count("\n") == 1


def test_cli_writes_cohort_and_refuses_other_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(CACHE).parent)  # the CLI caches the anatomy under ./data_cache
    out = tmp_path / "c"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", str(out), "--subjects", "1", "--seed", "3", "--profile", "test"])
    assert exit_info.value.code == 0
    assert len(discover(out)) == 1
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", str(out), "--subjects", "2", "--seed", "3", "--profile", "test"])
    assert exit_info.value.code == 2
    assert "holds a different synthetic cohort" in capsys.readouterr().err


def test_anatomy_is_derived_once_per_process_whatever_the_cache_folder(tmp_path, anatomy,
                                                                      monkeypatch):
    """Two cache folders (and none) in one process: one derivation, written to each folder."""
    from wmh.synth import anatomy as anatomy_module

    calls = []

    def derive():
        calls.append(1)
        return anatomy  # the real anatomy (already through float16: quantising keeps it)

    monkeypatch.setattr(anatomy_module, "derive_anatomy", derive)
    anatomy_module.get_anatomy.cache_clear()
    anatomy_module._derived.cache_clear()
    try:
        first = get_anatomy(str(tmp_path / "a"))
        second = get_anatomy(str(tmp_path / "b"))
        third = get_anatomy(None)
    finally:  # the next caller derives (or loads) for real
        anatomy_module.get_anatomy.cache_clear()
        anatomy_module._derived.cache_clear()
    assert len(calls) == 1
    assert first is second is third
    np.testing.assert_array_equal(first.prior, anatomy.prior)
    written = [anatomy_module._cache_path(tmp_path / name) for name in ("a", "b")]
    assert all(path.is_file() for path in written)
    np.testing.assert_array_equal(anatomy_module._load(written[1]).t1, anatomy.t1)


def test_api_rejects_bad_arguments(tmp_path):
    with pytest.raises(WMHError, match="--subjects"):
        synthesize_cohort(tmp_path / "x", SynthConfig(subjects=0, seed=0))
    with pytest.raises(WMHError, match="--seed"):
        synthesize_cohort(tmp_path / "x", SynthConfig(subjects=1, seed=-1))
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ the full check (slow)

@pytest.mark.slow
def test_realism_on_twelve_default_subjects(tmp_path, anatomy):
    out = synthesize_cohort(tmp_path / "c", SynthConfig(subjects=12, seed=0),
                            workers=2, cache_dir=CACHE)
    folders = [s.flair.parent.parent for s in discover(out)]
    measures = realism.cohort_realism(folders, anatomy)
    assert measures["periventricular_fraction"] >= 0.5
    assert measures["subjects_with_deep_lesions"] >= 10
    assert measures["hard_negative_ratio"] >= 0.3
    assert 0.75 <= measures["observer2_dice"] <= 0.85
    assert measures["best_threshold_dice"] <= 0.6
    assert measures["oracle_dice"] >= measures["best_threshold_dice"] + 0.05
    cohort = json.loads((out / "cohort.json").read_text())
    loads = [r["lesion_volume_ml"] for r in cohort["subjects"]]
    enlargement = [r["transforms"]["warp"]["ventricle_enlargement"] for r in cohort["subjects"]]
    assert np.corrcoef(np.argsort(np.argsort(loads)), np.argsort(np.argsort(enlargement)))[0, 1] > 0.3


@pytest.mark.slow
def test_cold_and_warm_anatomy_cache_give_identical_subjects(anatomy):
    from wmh.synth.anatomy import _quantised, derive_anatomy

    cold = _quantised(derive_anatomy())
    for name in ("t1", "gm", "prior", "d_out"):
        np.testing.assert_array_equal(getattr(cold, name), getattr(anatomy, name))
    first = generate_subject("s000", 3, PROFILES["test"], cold)
    second = generate_subject("s000", 3, PROFILES["test"], anatomy)
    np.testing.assert_array_equal(first.flair, second.flair)
