"""wmh.preprocess: the PreparedSubject format, the working grid and its native mapping,
and the preprocessing pipeline checked against known transforms and synthetic truth."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest

from wmh.errors import WMHError
from wmh.io import NativeGrid, load_image, save_like
from wmh.preprocess import (PreparedSubject, resample_voxels, to_working_grid,
                            working_grid)


def lps_image(shape=(40, 36, 6), spacing=(0.47, 0.47, 8.0), seed=0) -> nib.Nifti1Image:
    """A small LPS-oriented image with random content (shape in native voxel order)."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [10.0, 20.0, -30.0]
    data = np.random.default_rng(seed).random(shape).astype(np.float32) + 0.1
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    return image


def make_prepared(grid: NativeGrid, spacing_mm: float, seed: int = 0,
                  with_labels: bool = True) -> PreparedSubject:
    shape, affine = working_grid(grid, spacing_mm)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, shape).astype(np.uint8) if with_labels else None
    return PreparedSubject(
        subject_id="s01", site="siteA", split=None,
        images=rng.random(shape + (2,)).astype(np.float32), channels=("FLAIR", "T1"),
        brain_mask=rng.random(shape) > 0.5, labels=labels, labels_observer2=None,
        location=rng.random(shape + (8,)).astype(np.float32),
        ventricles=rng.integers(0, 3, shape).astype(np.uint8),
        spacing=np.sqrt((affine[:3, :3] ** 2).sum(0)), affine=affine,
        native_shape=grid.shape, native_affine=grid.affine,
        native_header=grid.header.binaryblock, cache_key="abc", provenance={"x": 1})


def test_save_load_round_trip_and_slice_chunks(tmp_path):
    path = tmp_path / "lps.nii.gz"
    nib.save(lps_image(), path)
    _, grid = load_image(path)
    prepared = make_prepared(grid, 1.0)
    saved = prepared.save(tmp_path / "out" / "s01.h5")
    loaded = PreparedSubject.load(saved)
    for name in ("images", "brain_mask", "labels", "location", "ventricles", "affine",
                 "spacing", "native_affine"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(prepared, name))
    assert loaded.labels_observer2 is None and loaded.split is None
    assert loaded.site == "siteA" and loaded.channels == ("FLAIR", "T1")
    assert loaded.cache_key == "abc" and loaded.provenance == {"x": 1}
    assert loaded.warnings == ()  # none by default
    warned = dataclasses.replace(prepared, warnings=("atlas registration fell back to affine "
                                                     "(NMI 0.031)",))
    assert PreparedSubject.load(warned.save(tmp_path / "w" / "s01.h5")).warnings == \
        warned.warnings
    assert loaded.participant is None
    person = dataclasses.replace(prepared, participant="P7")
    saved_person = person.save(tmp_path / "p" / "s01.h5")
    assert PreparedSubject.load(saved_person).participant == "P7"
    from wmh.splits import read_prepared_cohort  # the splitter groups by it
    assert [r.participant_id for r in read_prepared_cohort(saved_person.parent)] == ["P7"]
    assert loaded.brain_mask.dtype == bool and loaded.images.dtype == np.float32
    with h5py.File(saved) as file:
        x, y, _ = prepared.shape
        assert file["images"].chunks == (x, y, 1, 2)
        assert file["labels"].chunks == (x, y, 1)
    assert [p.name for p in saved.parent.iterdir()] == ["s01.h5"]


def test_working_grid_spacing_and_field_of_view(tmp_path):
    path = tmp_path / "lps.nii.gz"
    nib.save(lps_image(shape=(512, 512, 4)), path)
    _, grid = load_image(path)
    shape, affine = working_grid(grid, 1.0)
    assert shape == (241, 241, 4)
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), [1.0, 1.0, 8.0])
    # RAS: x and y axes point right and anterior.
    assert affine[0, 0] > 0 and affine[1, 1] > 0 and affine[2, 2] > 0
    # The working field of view starts at the native one's edge.
    native_corner = grid.working_affine @ np.array([-0.5, -0.5, 0, 1])
    working_corner = affine @ np.array([-0.5, -0.5, 0, 1])
    np.testing.assert_allclose(native_corner, working_corner, atol=1e-9)


def test_native_round_trip_exact_when_spacing_unchanged(tmp_path):
    path = tmp_path / "lps1mm.nii.gz"
    nib.save(lps_image(spacing=(1.0, 1.0, 3.0)), path)
    flair, grid = load_image(path)
    prepared = make_prepared(grid, 1.0)
    assert prepared.is_identity_mapping()
    assert prepared.shape == flair.shape
    working = to_working_grid(flair, grid, *working_grid(grid, 1.0), order=1)
    np.testing.assert_array_equal(working, flair)
    native = prepared.to_native(working, order=1)
    np.testing.assert_array_equal(native, np.asarray(nib.load(path).dataobj))


def test_mask_written_back_lands_on_flair_grid(tmp_path):
    path = tmp_path / "lps.nii.gz"
    nib.save(lps_image(shape=(64, 60, 5)), path)
    flair, grid = load_image(path)
    prepared = make_prepared(grid, 1.0)
    assert not prepared.is_identity_mapping()
    # A block mask drawn on the native grid survives native -> working -> native.
    mask = np.zeros(flair.shape, dtype=np.uint8)
    mask[20:40, 10:30, 2] = 1
    working_mask = to_working_grid(mask, grid, prepared.shape, prepared.affine, order=0)
    assert working_mask.sum() > 0
    back = prepared.to_native_working(working_mask, order=0)
    assert back.shape == flair.shape
    disagreement = (back != mask).sum() / mask.sum()
    assert disagreement < 0.15  # only boundary voxels can move (0.47 vs 1 mm)
    written = save_like(back, prepared.native_grid(), tmp_path / "mask.nii.gz", np.uint8)
    image = nib.load(written)
    source = nib.load(path)
    assert image.shape == source.shape
    np.testing.assert_allclose(image.affine, source.affine)
    assert int(image.header["sform_code"]) == 2
    np.testing.assert_array_equal(np.asarray(image.dataobj), grid.to_native(back))


def oriented_image(codes: str, spacing, shape, seed=0) -> nib.Nifti1Image:
    """Random content stored with voxel axes ``codes`` (e.g. 'LIP'), ``spacing`` and
    ``shape`` in the stored order, under an oblique-free affine."""
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    ras_shape = [0, 0, 0]
    ras_spacing = [0.0, 0.0, 0.0]
    ornt = ornt_transform(axcodes2ornt(tuple(codes)), axcodes2ornt("RAS"))
    for stored_axis, (ras_axis, _) in enumerate(ornt):
        ras_shape[int(ras_axis)] = shape[stored_axis]
        ras_spacing[int(ras_axis)] = spacing[stored_axis]
    ras_affine = np.diag(list(ras_spacing) + [1.0])
    ras_affine[:3, 3] = [-40.0, 25.0, -30.0]
    affine = ras_affine @ inv_ornt_aff(ornt_transform(axcodes2ornt("RAS"),
                                                      axcodes2ornt(tuple(codes))), ras_shape)
    data = np.random.default_rng(seed).random(tuple(shape)).astype(np.float32) + 0.1
    return nib.Nifti1Image(data, affine)


@pytest.mark.parametrize("codes, spacing, plane_axis, working_spacing", [
    ("LIP", (1.0, 1.0, 5.5), 1, (1.0, 1.0, 5.5)),  # coronal 2D, slices stored last
    ("PIL", (0.9, 0.9, 4.4), 0, (1.0, 1.0, 4.4)),  # sagittal 2D, resampled in plane
    ("LAS", (0.9, 0.9, 6.5), 2, (1.0, 1.0, 6.5)),  # axial 2D
    ("RAS", (1.0, 1.0, 1.2), 2, (1.0, 1.0, 1.2)),  # 3D: axial working grid
    ("ASL", (4.0, 1.0, 1.0), 1, (1.0, 1.0, 4.0)),  # coronal slices stored first
])
def test_working_grid_slices_along_the_acquired_axis(tmp_path, codes, spacing, plane_axis,
                                                     working_spacing):
    from wmh.preprocess.grid import slice_axis

    path = tmp_path / "scan.nii.gz"
    nib.save(oriented_image(codes, spacing, (20, 18, 12)), path)
    flair, grid = load_image(path)
    assert slice_axis(grid) == plane_axis
    shape, affine = working_grid(grid, 1.0)
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), working_spacing,
                               atol=1e-9)
    # the working slices (last axis) run along the acquired axis of the RAS grid
    to_native = np.linalg.solve(grid.working_affine, affine)
    assert np.argmax(np.abs(to_native[:3, 2])) == plane_axis
    assert shape[2] == grid.working_shape[plane_axis]
    # labels drawn on the working grid map back onto the exact input grid and affine
    prepared = make_prepared(grid, 1.0)
    native = prepared.to_native(prepared.labels, order=0)
    source = nib.load(path)
    assert native.shape == source.shape
    written = save_like(prepared.to_native_working(prepared.labels, order=0),
                        prepared.native_grid(), tmp_path / "labels.nii.gz", np.uint8)
    np.testing.assert_allclose(nib.load(written).affine, source.affine)
    if np.allclose(spacing[:2], 1.0) or np.allclose(sorted(spacing)[:2], 1.0):
        # unchanged spacing: working <-> native is a pure permutation, exact both ways
        working = to_working_grid(flair, grid, shape, affine, order=1)
        np.testing.assert_array_equal(prepared.to_native(working, order=1),
                                      np.asarray(source.dataobj))
        np.testing.assert_array_equal(
            to_working_grid(grid.to_working(native), grid, shape, affine, order=0),
            prepared.labels)


def test_resample_voxels_nearest_identity():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(resample_voxels(array, np.eye(4), (2, 3, 4), 0), array)


def test_corrupt_prepared_file_names_it(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"not an HDF5 file at all")
    with pytest.raises(WMHError, match="broken.h5"):
        PreparedSubject.load(path)
    with pytest.raises(WMHError, match="missing.h5"):
        PreparedSubject.load(tmp_path / "missing.h5")


# --------------------------------------------------------------------------- pipeline
# One tiny synthetic subject (the 'test' profile: 2 mm in plane, 6 mm slices) is
# prepared once per module with a fast configuration and checked against its truth.

import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import SimpleITK as sitk  # noqa: E402

from wmh.cli import main as cli_main  # noqa: E402
from wmh.config import PreprocessConfig  # noqa: E402
from wmh.io import discover, load_labels  # noqa: E402
from wmh.preprocess import (check_brain_mask, cache_key, normalise_intensities,  # noqa: E402
                            from_sitk, load_atlas, mni_coordinate_map, prepare_cohort,
                            prepare_subject, register_atlas_affine, skull_stripped_mask,
                            to_sitk)

FAST = PreprocessConfig(inplane_spacing_mm=2.0, registration_iterations=60,
                        deformable_iterations=15, n4_iterations=10)


def dice(first: np.ndarray, second: np.ndarray) -> float:
    return 2.0 * np.logical_and(first, second).sum() / (first.sum() + second.sum())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A synthetic subject and a corrupt one, prepared once: (root, out, report)."""
    from wmh.config import SynthConfig
    from wmh.synth import synthesize_cohort

    root = tmp_path_factory.mktemp("cohort")
    synthesize_cohort(root / "synth", SynthConfig(subjects=1, seed=3, profile="test"),
                      cache_dir=None)
    good = root / "synth" / "synth-test" / "s000"
    broken = root / "synth" / "synth-test" / "s999"
    (broken / "orig").mkdir(parents=True)
    data = (good / "orig" / "FLAIR.nii.gz").read_bytes()
    (broken / "orig" / "FLAIR.nii.gz").write_bytes(data[: len(data) // 3])  # truncated
    out = root / "prepared"
    report = prepare_cohort(root / "synth", out, FAST, progress=False)
    return good, out, report


def truth_on_working(prepared: PreparedSubject, subject_folder, name, order=0):
    _, grid = load_image(subject_folder / "orig" / "FLAIR.nii.gz")
    data = np.asarray(nib.load(subject_folder / "truth" / f"{name}.nii.gz").dataobj)
    return to_working_grid(grid.to_working(data), grid, prepared.shape, prepared.affine, order)


def test_prepared_subject_matches_synthetic_truth(cohort):
    folder, out, report = cohort
    assert set(report.prepared) == {"s000"}
    prepared = PreparedSubject.load(out / "s000.h5")
    assert prepared.channels == ("FLAIR", "T1") and prepared.site == "synth-test"
    np.testing.assert_allclose(prepared.spacing, [2.0, 2.0, 6.0], atol=1e-6)
    assert prepared.images.dtype == np.float32 and prepared.images.shape[-1] == 2
    assert prepared.images.min() >= 0 and prepared.images.max() <= 1
    assert np.all(prepared.images[~prepared.brain_mask] == 0)
    assert prepared.location.shape == prepared.shape + (8,)
    assert prepared.location.min() >= 0 and prepared.location.max() <= 1

    brain = truth_on_working(prepared, folder, "brainmask") > 0
    assert dice(brain, prepared.brain_mask) >= 0.95
    mni = truth_on_working(prepared, folder, "mni_coordinates", order=1)
    error = np.linalg.norm(mni - prepared.mni_coordinates, axis=-1)[brain]
    assert np.median(error) <= 2.5  # mm (fast test settings; the benchmark uses defaults)
    ventricles = truth_on_working(prepared, folder, "ventricles")
    for side in (1, 2):
        assert dice(ventricles == side, prepared.ventricles == side) >= 0.6
    # left is left: the left ventricle lies at negative MNI x
    assert prepared.mni_coordinates[prepared.ventricles == 1][:, 0].mean() < 0


def test_labels_round_trip_exactly_to_the_flair_file(cohort, tmp_path):
    folder, out, _ = cohort
    prepared = PreparedSubject.load(out / "s000.h5")
    assert prepared.is_identity_mapping()  # 2 mm in plane = the working spacing
    source = np.asarray(nib.load(folder / "wmh.nii.gz").dataobj)
    np.testing.assert_array_equal(prepared.to_native(prepared.labels, order=0), source)
    written = save_like(prepared.to_native_working(prepared.labels, order=0),
                        prepared.native_grid(), tmp_path / "labels.nii.gz", np.uint8)
    reread, _ = load_labels(written, reference=load_image(folder / "wmh.nii.gz")[1])
    assert reread.shape == prepared.shape


def test_failed_subject_is_reported_and_leaves_nothing(cohort):
    _, out, report = cohort
    assert set(report.failed) == {"s999"}
    assert "s999" in report.failed["s999"] and "FLAIR.nii.gz" in report.failed["s999"]
    assert "FAILED s999" in report.summary()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "prepare_summary.csv",
                                                     "s000.h5"]
    with open(out / "prepare_summary.csv") as handle:
        rows = {row["subject_id"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"s000", "s999"}
    assert rows["s000"]["status"] == "prepared" and rows["s000"]["error"] == ""
    assert rows["s000"]["file"] == "s000.h5" and float(rows["s000"]["seconds"]) > 0
    assert rows["s999"]["status"] == "failed" and "FLAIR.nii.gz" in rows["s999"]["error"]
    assert rows["s999"]["file"] == ""
    manifest = json.loads((out / "manifest.json").read_text())
    assert [entry["subject_id"] for entry in manifest["subjects"]] == ["s000"]
    assert manifest["subjects"][0]["cache_key"] == PreparedSubject.load(out / "s000.h5").cache_key
    assert "s999" in manifest["failed"] and len(manifest["cohort_hash"]) == 16


def test_rerun_skips_up_to_date_and_cli_exit_code(cohort, tmp_path, capsys):
    folder, out, _ = cohort
    before = (out / "s000.h5").stat().st_mtime_ns
    report = prepare_cohort(folder.parent.parent, out, FAST, progress=False)
    assert set(report.skipped) == {"s000"} and not report.prepared
    assert report.warnings["s000"] == PreparedSubject.load(out / "s000.h5").warnings
    assert (out / "s000.h5").stat().st_mtime_ns == before
    with open(out / "prepare_summary.csv") as handle:
        assert {row["subject_id"]: row["status"] for row in csv.DictReader(handle)} == {
            "s000": "skipped", "s999": "failed"}
    # the CLI lists the failure and exits 1 (the good subject is skipped again)
    config = tmp_path / "fast.yaml"
    config.write_text(json.dumps({"preprocess": {
        "inplane_spacing_mm": 2.0, "registration_iterations": 60,
        "deformable_iterations": 15, "n4_iterations": 10}}))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", str(folder.parent.parent), "--out", str(out),
                  "--config", str(config)])
    assert exit_info.value.code == 1
    assert (out / "s000.h5").stat().st_mtime_ns == before
    assert "1 of 2 subjects failed: s999" in capsys.readouterr().err
    # --overwrite prepares the up-to-date subject again
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", str(folder.parent.parent), "--out", str(out),
                  "--config", str(config), "--overwrite"])
    assert exit_info.value.code == 1
    assert (out / "s000.h5").stat().st_mtime_ns != before
    with open(out / "prepare_summary.csv") as handle:
        assert {row["subject_id"]: row["status"] for row in csv.DictReader(handle)} == {
            "s000": "prepared", "s999": "failed"}


def test_cli_single_bad_file_and_bad_options_exit_2(cohort, tmp_path, capsys):
    folder, _, _ = cohort
    broken = folder.parent / "s999" / "orig" / "FLAIR.nii.gz"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", str(broken), "--out", str(tmp_path / "one")])
    assert exit_info.value.code == 2
    assert f"{broken}: corrupt or truncated gzip" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()  # nothing written
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", str(folder), "--out", str(tmp_path / "two"), "--workers", "0"])
    assert exit_info.value.code == 2
    assert "--workers 0: must be at least 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", str(folder), "--out", str(tmp_path / "file")])
    assert exit_info.value.code == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()


def test_cache_key_follows_inputs_and_config(cohort):
    folder, _, _ = cohort
    subject = discover(folder)[0]
    key = cache_key(subject, FAST, True)
    assert cache_key(subject, dataclasses.replace(FAST, workers=4, threads=1), True) == key
    assert cache_key(subject, dataclasses.replace(FAST, n4_iterations=11), True) != key
    assert cache_key(subject, dataclasses.replace(FAST, normalise_ceiling=2.0), True) != key
    assert cache_key(subject, FAST, False) != key


def test_normalise_ceiling_keeps_contrast_above_the_high_percentile():
    """Ceiling 1 saturates every voxel above the 99th percentile (a x1.5 and a x3 lesion
    read alike); a higher ceiling keeps them apart, up to the ceiling."""
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 5.0, size=(40, 40, 20)).astype(np.float32)
    brain = np.zeros(image.shape, bool)
    brain[2:38, 2:38, 2:18] = True
    image[10:13, 10:13, 10] = 150.0  # 9 voxels: far fewer than the top 1 % of the brain
    image[20:23, 20:23, 10] = 300.0
    low, high = np.percentile(image[brain], (1.0, 99.0))
    clipped = normalise_intensities(image, brain, (1.0, 99.0))
    assert clipped[11, 11, 10] == clipped[21, 21, 10] == 1.0
    kept = normalise_intensities(image, brain, (1.0, 99.0), ceiling=3.0)
    assert kept[11, 11, 10] == pytest.approx((150.0 - low) / (high - low), rel=1e-5)
    assert kept[21, 21, 10] == 3.0  # (300 - low) / (high - low) is about 9: clipped
    below = image < high
    np.testing.assert_array_equal(kept[brain & below], clipped[brain & below])
    assert not kept[~brain].any()


def test_atlas_registration_recovers_a_known_affine():
    """The MNI template under a known affine: the registration must find it again."""
    atlas = load_atlas(2.0)
    rotation = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.12, -0.08, 0.1, (6.0, -9.0, 5.0))
    known = sitk.AffineTransform(3)
    known.SetMatrix(rotation.GetMatrix())
    known.SetTranslation(rotation.GetTranslation())
    known.Scale((1.06, 0.95, 1.02))  # subject -> MNI, in world (LPS) coordinates
    template = atlas.image("t1")
    subject = sitk.Resample(template, template, known, sitk.sitkLinear, 0.0)
    found = register_atlas_affine(subject, np.array(subject.TransformContinuousIndexToPhysicalPoint(
        [s / 2 for s in subject.GetSize()])), atlas, FAST).GetInverse()
    brain = from_sitk(sitk.Resample(atlas.image("brain"), template, known)) > 0.5
    truth = mni_coordinate_map(known, template)
    estimate = mni_coordinate_map(found, template)
    error = np.linalg.norm(truth - estimate, axis=-1)[brain]
    assert np.median(error) < 1.5  # mm


def test_skull_stripped_input_detected():
    spacing = np.array([1.0, 1.0, 3.0])
    image = np.zeros((120, 140, 40), dtype=np.float32)
    xx, yy, zz = np.indices(image.shape)
    ellipsoid = ((xx - 60) / 55) ** 2 + ((yy - 70) / 65) ** 2 + ((zz - 20) / 18) ** 2 < 1
    image[ellipsoid] = 1.0
    image[50:70, 60:80, 18:22] = 0.0  # dark ventricles inside stay in the mask
    mask = skull_stripped_mask(image, spacing)
    assert mask is not None and mask[60, 70, 20] and mask.sum() == ellipsoid.sum()
    with_skull = image + 0.2 * (((xx - 60) / 59) ** 2 + ((yy - 70) / 69) ** 2 < 1)
    with_skull[:, :, :] += 0.01
    assert skull_stripped_mask(with_skull, spacing) is None


def test_implausible_brain_mask_gives_a_warning():
    spacing = np.array([1.0, 1.0, 1.0])
    tiny = np.zeros((50, 50, 50), dtype=bool)
    tiny[20:30, 20:30, 20:30] = True
    quality = {}
    warnings = check_brain_mask(tiny, spacing, FAST, quality)
    assert len(warnings) == 1 and "implausible brain volume 1 ml" in warnings[0]
    assert quality["brain_volume_ml"] == pytest.approx(1.0)
    full = np.ones((120, 120, 120), dtype=bool)
    anything = dataclasses.replace(FAST, brain_volume_ml=(0.0, 1e9))
    warnings = check_brain_mask(full, spacing, anything, {})
    assert len(warnings) == 1 and "field of view on 100%" in warnings[0]
    # the border is the slice planes' border: a mask filling the slices only is fine
    slab = np.zeros((120, 120, 120), dtype=bool)
    slab[:, 10:110, :] = True  # fills the field of view along x and z
    assert check_brain_mask(slab, spacing, anything, {}) == []
    assert check_brain_mask(slab, spacing, anything, {}, slice_axis=1) != []


def coregistered_copy(folder, destination):
    """The subject in the challenge pre/ layout: T1 resampled onto the FLAIR grid (by
    rigid registration) and the true brain mask supplied as pre/brainmask.nii.gz."""
    from wmh.preprocess import downsample, register_rigid, resample

    (destination / "pre").mkdir(parents=True)
    flair, flair_grid = load_image(folder / "orig" / "FLAIR.nii.gz")
    t1, t1_grid = load_image(folder / "orig" / "T1.nii.gz")
    flair_image = to_sitk(flair, flair_grid.working_affine)
    t1_image = to_sitk(t1, t1_grid.working_affine)
    flair_to_t1 = register_rigid(downsample(t1_image, 2.0), flair_image, FAST).GetInverse()
    save_like(from_sitk(resample(t1_image, flair_image, flair_to_t1)), flair_grid,
              destination / "pre" / "T1.nii.gz")
    shutil.copy(folder / "orig" / "FLAIR.nii.gz", destination / "pre" / "FLAIR.nii.gz")
    shutil.copy(folder / "truth" / "brainmask.nii.gz", destination / "pre" / "brainmask.nii.gz")
    shutil.copy(folder / "wmh.nii.gz", destination / "wmh.nii.gz")


def test_coregistered_layout_with_supplied_mask(cohort, tmp_path):
    folder, _, _ = cohort
    coregistered_copy(folder, tmp_path / "site" / "c000")
    subject = discover(tmp_path / "site")[0]
    assert subject.coregistered and subject.brain_mask is not None
    prepared = prepare_subject(subject, FAST, use_t1=True)
    quality = prepared.provenance["quality"]
    assert quality["t1_registration"] == "skipped (co-registered)"
    assert quality["brain_mask"] == "supplied"
    truth = truth_on_working(prepared, folder, "brainmask") > 0
    np.testing.assert_array_equal(prepared.brain_mask, truth)
    assert prepared.channels == ("FLAIR", "T1")


@pytest.mark.slow
def test_parallel_workers_match_serial(tmp_path):
    from wmh.config import SynthConfig
    from wmh.synth import synthesize_cohort

    synthesize_cohort(tmp_path / "synth", SynthConfig(subjects=2, seed=4, profile="test"),
                      cache_dir=None)
    serial = prepare_cohort(tmp_path / "synth", tmp_path / "serial", FAST, progress=False)
    parallel = prepare_cohort(tmp_path / "synth", tmp_path / "parallel", FAST, workers=2,
                              progress=False)
    assert set(serial.prepared) == set(parallel.prepared) == {"s000", "s001"}
    for subject_id in ("s000", "s001"):
        first = PreparedSubject.load(serial.prepared[subject_id])
        second = PreparedSubject.load(parallel.prepared[subject_id])
        assert first.cache_key == second.cache_key
        np.testing.assert_array_equal(first.brain_mask, second.brain_mask)
        np.testing.assert_allclose(first.images, second.images, atol=1e-5)


def test_coronal_acquisition_gives_a_brain_mask_on_its_own_grid(tmp_path):
    """A coronal 2D FLAIR (slices along anterior-posterior, stored LIP): the working grid
    slices coronally, and the brain mask written back onto the FLAIR's own grid overlaps
    the generator's truth."""
    from wmh.config import SynthConfig
    from wmh.synth import synthesize_cohort

    synthesize_cohort(tmp_path / "synth",
                      SynthConfig(subjects=1, seed=5, profile="test-coronal", flair_only=True),
                      cache_dir=None)
    subject = discover(tmp_path / "synth")[0]
    prepared = prepare_subject(subject, FAST, use_t1=False)
    assert prepared.provenance["quality"]["slice_plane"] == "coronal"
    np.testing.assert_allclose(prepared.spacing, [2.0, 2.0, 6.0], atol=1e-6)
    # working z runs anterior-posterior: its direction is the world y axis
    direction = prepared.affine[:3, 2] / np.linalg.norm(prepared.affine[:3, 2])
    assert abs(direction[1]) > 0.99
    source = nib.load(subject.flair)
    native_mask = prepared.to_native(prepared.brain_mask.astype(np.uint8), order=0) > 0
    assert native_mask.shape == source.shape
    truth = np.asarray(nib.load(subject.flair.parent.parent / "truth" / "brainmask.nii.gz")
                       .dataobj) > 0
    assert dice(native_mask, truth) >= 0.95
    # 2 mm in plane = the native spacing: the labels map back exactly
    np.testing.assert_array_equal(prepared.to_native(prepared.labels, order=0),
                                  np.asarray(nib.load(subject.labels).dataobj))
    # location distances stay axial: the left-ventricle distance is 0 on the ventricle
    left = prepared.ventricles == 1
    assert left.any() and float(prepared.location[..., 3][left].max()) == 0.0


def test_principal_axes_recover_a_known_tilt():
    from wmh.preprocess.registration import _rotation_degrees, principal_axes_rotation

    atlas = load_atlas(2.0)
    template = atlas.image("brain") > 0.5
    tilt = sitk.Euler3DTransform(template.TransformContinuousIndexToPhysicalPoint(
        [s / 2 for s in template.GetSize()]), np.radians(18.0), 0.0, 0.0)
    # the subject is the template turned 18 degrees about the left-right axis (nodding)
    subject = sitk.Resample(template, template, tilt.GetInverse(), sitk.sitkNearestNeighbor, 0)
    rotation = principal_axes_rotation(subject, template)
    truth = np.reshape(tilt.GetMatrix(), (3, 3))
    assert rotation is not None
    assert _rotation_degrees(rotation.T @ truth) < 4.0
    assert principal_axes_rotation(template, template) is not None
    assert _rotation_degrees(principal_axes_rotation(template, template)) < 0.5


def test_head_geometry_crops_the_neck():
    from wmh.preprocess.registration import (MNI_BRAIN_TOP_ABOVE_CENTROID_MM,
                                             NECK_CROP_BELOW_TOP_MM, SCALP_MM, head_geometry)

    spacing = 2.0
    x, y, z = np.indices((100, 110, 160)) * spacing  # RAS mm, z up from -100
    z = z - 100.0
    head = ((x - 100) / 72) ** 2 + ((y - 110) / 90) ** 2 + ((z - 40) / 75) ** 2 < 1
    neck = ((x - 100) / 55) ** 2 + ((y - 105) / 50) ** 2 < 1
    image = np.where(head | (neck & (z < 0)), 100.0, 1.0).astype(np.float32)
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = [0.0, 0.0, -100.0]
    centre, cropped, mask = head_geometry(to_sitk(image, affine))
    top = np.percentile(z[head | (neck & (z < 0))], 99.5)  # the head's superior extent
    kept = from_sitk(cropped) > 0
    assert not kept[z < top - NECK_CROP_BELOW_TOP_MM - spacing].any()
    assert kept[z > top - NECK_CROP_BELOW_TOP_MM + spacing].any()
    ras_centre = np.diag([-1.0, -1.0, 1.0]) @ centre
    expected_z = top - SCALP_MM - MNI_BRAIN_TOP_ABOVE_CENTROID_MM
    assert abs(ras_centre[2] - expected_z) < 3.0 and abs(ras_centre[0] - 100) < 3.0
    assert from_sitk(mask).sum() < (head | (neck & (z < 0))).sum()


def test_nothing_but_an_unreadable_file_fails(tmp_path):
    """Noise is no head: preparation still ends, with warnings saying what is doubtful."""
    rng = np.random.default_rng(0)
    affine = np.diag([3.0, 3.0, 6.0, 1.0])
    affine[:3, 3] = [-90.0, -110.0, -70.0]
    data = (100 * rng.random((60, 72, 26))).astype(np.float32)
    (tmp_path / "site" / "n01" / "orig").mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "site" / "n01" / "orig" / "FLAIR.nii.gz")
    subject = discover(tmp_path / "site")[0]
    prepared = prepare_subject(subject, FAST, use_t1=False)
    assert prepared.warnings, "a registration onto noise must be flagged"
    assert any("atlas registration" in w or "brain" in w for w in prepared.warnings)
    assert prepared.brain_mask.shape == prepared.shape


def test_templates_read_from_the_wheel_match_nilearns_loaders():
    """The atlas reads nilearn's template files itself (importing nilearn.datasets costs
    seconds): the same arrays and affine as nilearn's own loaders."""
    from nilearn import datasets

    from wmh.preprocess.atlas import _template

    for kind, loader in (("t1", datasets.load_mni152_template),
                         ("gm", datasets.load_mni152_gm_template),
                         ("wm", datasets.load_mni152_wm_template)):
        ours, theirs = _template(kind), loader(resolution=1)
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj,
                                                                   dtype=np.float32))
        assert np.allclose(ours.affine, theirs.affine)


@pytest.mark.parametrize("factor, shape", [(2, (9, 8, 7)), (3, (10, 11, 7))])
def test_block_centres_equal_linear_resampling(factor, shape):
    from wmh.preprocess.atlas import _block_centres

    volume = np.random.default_rng(factor).random(shape, dtype=np.float32)
    to_fine = np.diag([float(factor)] * 3 + [1.0])
    to_fine[:3, 3] = (factor - 1) / 2.0
    coarse_shape = tuple(int(np.ceil(n / factor)) for n in shape)
    expected = resample_voxels(volume, to_fine, coarse_shape, 1)
    np.testing.assert_allclose(_block_centres(volume, factor), expected, atol=1e-6)


def test_demons_stop_once_an_iteration_gains_little(monkeypatch):
    """The deformable atlas stage stops when an iteration lowers the demons' mean squared
    difference by less than DEMONS_MIN_GAIN (or raises it); without that test it runs
    them all."""
    from wmh.preprocess import registration

    atlas = load_atlas(2.0)
    known = sitk.AffineTransform(3)
    known.Scale((1.05, 0.96, 1.0))
    template = atlas.image("t1")
    subject = sitk.Resample(template, template, known, sitk.sitkLinear, 0.0)
    elapsed = []

    class Demons(sitk.FastSymmetricForcesDemonsRegistrationFilter):
        def Execute(self, *images):
            field = super().Execute(*images)
            elapsed.append(self.GetElapsedIterations())
            return field

    monkeypatch.setattr(registration.sitk, "FastSymmetricForcesDemonsRegistrationFilter",
                        Demons)
    config = dataclasses.replace(FAST, deformable_iterations=30)
    registration.register_atlas_deformable(subject, known, atlas, config)
    monkeypatch.setattr(registration, "DEMONS_MIN_GAIN", -np.inf)
    registration.register_atlas_deformable(subject, known, atlas, config)
    assert 1 < elapsed[0] < 30 and elapsed[1] == 30


def skull_phantom(cut_mm: float = 0.0, seed: int = 0):
    """An ellipsoidal head with skull on a 2 mm grid, made at 1 mm and block-averaged (the
    partial volume of a real 2 mm grid) with magnitude noise: brain (white matter 1, a grey rim 1.15,
    ventricles 0.1) inside CSF (0.1, 2 mm), inner table (0.05, 1.5 mm), marrow (0.5,
    3 mm), outer table (0.05, 1 mm), fat (1.1, 4 mm) and skin (0.55, 1.5 mm); the
    scalp is as bright as the brain. ``cut_mm`` removes the bottom of the head (the field
    of view cuts it open). Returns (image, brain truth, head truth), 2 mm voxels."""
    rng = np.random.default_rng(seed)
    x, y, z = np.indices((160, 190, 160), dtype=np.float32) - np.array(
        [80, 95, 80], np.float32)[:, None, None, None]
    radius = np.sqrt((x / 66) ** 2 + (y / 82) ** 2 + (z / 62) ** 2)  # 1 at the brain edge
    depth = (radius - 1) * 66  # mm outside the brain, roughly
    image = np.full(radius.shape, 0.0, np.float32)
    for level, outer in ((0.1, 2.0), (0.05, 3.5), (0.5, 6.5), (0.05, 7.5), (1.1, 11.5),
                         (0.55, 13.0)):
        image[(depth > 0) & (depth <= outer) & (image == 0)] = level
    brain = depth <= 0
    image[brain] = np.where(depth[brain] > -4, 1.15, 1.0)
    ventricles = ((x + 12) / 8) ** 2 + (y / 25) ** 2 + ((z - 8) / 10) ** 2 < 1
    ventricles |= ((x - 12) / 8) ** 2 + (y / 25) ** 2 + ((z - 8) / 10) ** 2 < 1
    image[ventricles] = 0.1
    if cut_mm:
        image[:, :, :int(cut_mm)] = 0

    def blocks(volume):
        return volume.reshape(80, 2, 95, 2, 80, 2).mean(axis=(1, 3, 5))

    image = np.abs(blocks(image) + rng.normal(0, 0.03, (80, 95, 80))).astype(np.float32)
    return image, blocks(brain.astype(np.float32)) > 0.5, blocks(
        (depth <= 13.0).astype(np.float32)) > 0.5


def test_holes_filled_plane_by_plane_in_one_pass():
    """fill_holes_per_plane equals filling every plane on its own (2D, 4-connected), and
    a hole open only through a neighbouring plane is still filled."""
    from scipy import ndimage

    from wmh.preprocess.brain_mask import fill_holes_per_plane

    rng = np.random.default_rng(3)
    for shape in ((9, 14, 11), (30, 7, 23)):
        mask = rng.random(shape) < 0.6
        for axis in range(3):
            planes = [ndimage.binary_fill_holes(plane) for plane in np.moveaxis(mask, axis, 0)]
            assert np.array_equal(fill_holes_per_plane(mask, axis),
                                  np.stack(planes, axis=axis))
    ring = np.zeros((3, 9, 9), bool)
    ring[:, 2:7, 2:7] = True
    ring[:, 4, 4] = False  # a tube through every plane: open in 3D, a hole in each plane
    assert not ndimage.binary_fill_holes(ring)[1, 4, 4]
    assert fill_holes_per_plane(ring, 0)[:, 4, 4].all()
    assert not fill_holes_per_plane(ring, 1)[1, 4, 4]  # across axis 1 the tube is no hole


@pytest.mark.parametrize("cut_mm", [0.0, 20.0])
def test_brain_extraction_of_a_head_with_skull(cut_mm):
    """The brain comes out of a head whose scalp is as bright as the brain, also when the
    field of view cuts the head open at the bottom (no closed shell to fill)."""
    from wmh.preprocess.brain_mask import extract_brain, head_mask

    image, brain, head = skull_phantom(cut_mm)
    assert dice(head_mask(image), head & (image > 0)) >= 0.95
    extracted = extract_brain(image, (2.0, 2.0, 2.0))
    assert extracted is not None
    assert dice(extracted, brain) >= 0.95
    assert dice(head, brain) < 0.8  # what the test would see if the scalp stayed in
    # no voxel lies 25 mm inside a head this small: nothing to extract
    assert extract_brain(image[30:50, 35:60, 30:50], (2.0, 2.0, 2.0)) is None


def test_head_with_skull_registers_its_extracted_brain(cohort):
    """The test subject has a skull: the atlas was registered to its extracted brain."""
    folder, out, _ = cohort
    prepared = PreparedSubject.load(out / "s000.h5")
    quality = prepared.provenance["quality"]
    assert quality["brain_mask"] == "atlas" and quality["brain_extraction"] == "used"
    truth_ml = float((truth_on_working(prepared, folder, "brainmask") > 0).sum()
                     * np.prod(prepared.spacing) / 1000)
    assert quality["brain_extraction_ml"] == pytest.approx(truth_ml, rel=0.15)


@pytest.mark.parametrize("brain_nmi, head_nmi, affine_searches, kept", [
    (0.05, 0.06, 1, "brain"),  # confident on the brain: the whole head is not registered
    (0.03, 0.02, 3, "brain"),  # both below 0.04: the more similar (the head's retried)
    (0.01, 0.05, 2, "head"),
])
def test_extracted_brain_or_whole_head_kept_by_similarity(monkeypatch, brain_nmi, head_nmi,
                                                          affine_searches, kept):
    """Which registration _atlas_registration keeps (the registrations stubbed: the
    similarity of a masked image is ``brain_nmi``, of the whole head ``head_nmi``)."""
    from wmh.preprocess import registration

    image, _, _ = skull_phantom()
    box = np.zeros(image.shape, bool)
    box[10:70, 10:85, 10:70] = True  # a plausible brain volume
    monkeypatch.setattr(registration, "extract_brain", lambda array, spacing: box)
    searches = []
    monkeypatch.setattr(registration, "register_atlas_affine",
                        lambda *args, **kwargs: searches.append(1) or sitk.AffineTransform(3))

    def similarity(subject_image, transform, atlas):
        masked = np.mean(sitk.GetArrayViewFromImage(subject_image) == 0) > 0.3
        return brain_nmi if masked else head_nmi

    monkeypatch.setattr(registration, "_atlas_similarity", similarity)
    config = dataclasses.replace(FAST, atlas_deformable=False)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    quality, warnings = {}, []
    registration._atlas_registration(to_sitk(image, affine), None, None, None, affine,
                                     config, quality, warnings)
    assert len(searches) == affine_searches
    assert quality["atlas_extracted_brain_similarity"] == brain_nmi
    assert quality["atlas_similarity"] == (brain_nmi if kept == "brain" else head_nmi)
    whole_head = [w for w in warnings if "used the whole head" in w]
    assert len(whole_head) == (kept == "head")
    assert any("doubtful" in w for w in warnings) == (quality["atlas_similarity"] < 0.025)


@pytest.mark.slow
def test_doubtful_extracted_brain_falls_back_to_the_whole_head(monkeypatch, tmp_path):
    """A wrong brain extraction (a box in a corner of the field of view) registers badly;
    the whole head is then registered, kept as the more similar, and a warning says so."""
    from wmh.config import SynthConfig
    from wmh.preprocess import prepare_subject
    from wmh.preprocess import registration
    from wmh.io import discover
    from wmh.synth import synthesize_cohort

    def corner_box(image, spacing):
        box = np.zeros(image.shape, bool)  # a plausible volume, 1/8 of the field of view
        box[tuple(slice(0, size // 2) for size in image.shape)] = True
        return box

    monkeypatch.setattr(registration, "extract_brain", corner_box)
    synthesize_cohort(tmp_path / "synth", SynthConfig(subjects=1, seed=3, profile="test",
                                                      flair_only=True), cache_dir=None)
    subject = discover(tmp_path / "synth")[0]
    prepared = prepare_subject(subject, FAST, use_t1=False)
    quality = prepared.provenance["quality"]
    assert quality["brain_extraction"] == "used"
    assert quality["atlas_extracted_brain_similarity"] < quality["atlas_similarity"]
    assert quality["atlas_similarity"] >= FAST.min_similarity
    assert any("used the whole head: its extracted brain registered less similarly" in w
               for w in prepared.warnings)
    brain = truth_on_working(prepared, subject.flair.parent.parent, "brainmask") > 0
    assert dice(brain, prepared.brain_mask) >= 0.95


def test_only_a_head_with_its_background_is_brain_extracted(monkeypatch):
    """Extraction is for heads with skull: a zeroed background (skull-stripped input too
    large to be recognised as a brain, or masked by a tool) is registered as it is."""
    from wmh.preprocess import registration
    from wmh.preprocess.brain_mask import zero_background

    image, _, _ = skull_phantom()
    stripped = np.where(image > 0.2, image, 0.0).astype(np.float32)
    assert not zero_background(image) and zero_background(stripped)
    calls = []
    monkeypatch.setattr(registration, "extract_brain",
                        lambda array, spacing: calls.append(array.shape))
    monkeypatch.setattr(registration, "register_atlas_affine",
                        lambda *args, **kwargs: sitk.AffineTransform(3))
    config = dataclasses.replace(FAST, atlas_deformable=False)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for array, expected_calls in ((stripped, 0), (image, 1)):
        quality, warnings = {}, []
        registration._atlas_registration(to_sitk(array, affine), None, None, None, affine,
                                         config, quality, warnings)
        assert len(calls) == expected_calls
        assert ("brain_extraction" in quality) == bool(expected_calls)
