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
