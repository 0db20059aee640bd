"""NIfTI I/O: orientation round trips never misplace a voxel; bad files fail clearly."""

import math

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmh import io
from wmh.errors import WMHError


def rotation(axis_angles):
    rx, ry, rz = axis_angles
    cx, sx, cy, sy, cz, sz = (math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry),
                              math.cos(rz), math.sin(rz))
    x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return z @ y @ x


def make_affine(permutation, flips, spacing, angles, origin=(-90.0, 110.0, -60.0)):
    """Voxel axes permuted and flipped, scaled by spacing, then rotated (oblique)."""
    base = np.zeros((3, 3))
    for voxel_axis, world_axis in enumerate(permutation):
        base[world_axis, voxel_axis] = (-1 if flips[voxel_axis] else 1) * spacing[voxel_axis]
    affine = np.eye(4)
    affine[:3, :3] = rotation(angles) @ base
    affine[:3, 3] = origin
    return affine


def write(tmp_path, data, affine, name="img.nii.gz", sform_code=1, qform_code=1, **kw):
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_sform(affine, code=sform_code)
    header.set_qform(affine, code=qform_code)
    for key, value in kw.items():
        header[key] = value
    # affine=None: nibabel keeps the header's forms and codes exactly as set above.
    image = nib.Nifti1Image(data, None, header)
    path = tmp_path / name
    nib.save(image, path)
    return path


orientations = st.tuples(
    st.permutations([0, 1, 2]),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
    st.sampled_from([(0.47, 0.47, 8.0), (1.2, 1.0, 6.0), (1.0, 1.0, 1.0), (0.9, 1.1, 5.0)]),
    st.tuples(*[st.floats(-0.35, 0.35)] * 3),
    st.tuples(st.integers(3, 9), st.integers(3, 9), st.integers(2, 6)),
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(orientations)
def test_working_round_trip_lands_on_input_grid(tmp_path_factory, case):
    permutation, flips, spacing, angles, shape = case
    tmp_path = tmp_path_factory.mktemp("rt")
    affine = make_affine(permutation, flips, spacing, angles)
    rng = np.random.default_rng(0)
    native = rng.normal(100, 20, size=shape).astype(np.float32)
    path = write(tmp_path, native, affine)

    working, grid = io.load_image(path)
    # The working array is RAS: its affine's columns point mostly along +x, +y, +z.
    codes = nib.aff2axcodes(grid.working_affine)
    assert codes == ("R", "A", "S")
    # Every working voxel maps to the same world point as its native twin.
    index = tuple(int(s) - 1 for s in working.shape)
    world_working = grid.working_affine @ np.array([*index, 1.0])
    stored_affine = nib.load(path).affine  # the file holds the affine in float32
    native_index = np.linalg.solve(stored_affine, world_working)[:3]
    assert np.allclose(native_index, np.round(native_index), atol=1e-5)
    assert working[index] == native[tuple(np.round(native_index).astype(int))]

    # A mask made in working space lands voxel for voxel on the input grid.
    mask_working = (working > np.median(working)).astype(np.uint8)
    out = io.save_like(mask_working, grid, tmp_path / "out" / "mask.nii.gz", np.uint8)
    written = nib.load(out)
    np.testing.assert_array_equal(np.asarray(written.dataobj), (native > np.median(native)))
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    original = nib.load(path).header
    np.testing.assert_allclose(written.header.get_sform(), original.get_sform(), atol=1e-6)
    np.testing.assert_allclose(written.header.get_qform(), original.get_qform(), atol=1e-5)
    assert int(written.header["sform_code"]) == int(original["sform_code"])
    assert int(written.header["qform_code"]) == int(original["qform_code"])
    np.testing.assert_allclose(written.header.get_zooms(), original.get_zooms(), atol=1e-6)


@pytest.mark.parametrize("spacing", [(0.47, 0.47, 8.0), (1.2, 1.0, 6.0)])
@pytest.mark.parametrize("orientation", ["RAS", "LPS", "oblique"])
def test_named_orientations_round_trip_anisotropic(tmp_path, spacing, orientation):
    flips = (orientation == "LPS",) * 2 + (False,)
    angles = (0.2, -0.1, 0.25) if orientation == "oblique" else (0.0, 0.0, 0.0)
    affine = make_affine((0, 1, 2), flips, spacing, angles)
    native = np.arange(7 * 6 * 4, dtype=np.int16).reshape(7, 6, 4)
    path = write(tmp_path, native, affine)
    working, grid = io.load_image(path)
    np.testing.assert_allclose(sorted(grid.working_spacing), sorted(spacing), atol=1e-6)
    assert grid.working_spacing[2] == pytest.approx(spacing[2])  # slices stay last
    out = io.save_like(working, grid, tmp_path / "back.nii", np.int16)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), native)
    np.testing.assert_allclose(nib.load(out).affine, affine, atol=1e-6)


def test_lps_working_orientation_is_flipped(tmp_path):
    affine = make_affine((0, 1, 2), (True, True, False), (1.0, 1.0, 1.0), (0, 0, 0))
    native = np.zeros((4, 5, 3), np.float32)
    native[0, 0, 0] = 7.0  # most right-posterior... LPS index 0 = most Right? no: most Left
    native[1, 1, 1] = 3.0
    working, grid = io.load_image(write(tmp_path, native, affine))
    # LPS index (0, 0) is the most left/posterior voxel -> last along RAS x and y.
    assert working[3, 4, 0] == 7.0
    assert working[2, 3, 1] == 3.0


def test_scaling_int_dtype_and_singleton_4d(tmp_path):
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    image = nib.Nifti1Image(data, affine)
    image.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, path)
    working, grid = io.load_image(path)
    assert working.shape == (2, 3, 4)
    assert working.dtype == np.float32
    np.testing.assert_allclose(working, data[..., 0] * 0.5 + 10.0)


def test_qform_only_image_uses_qform(tmp_path):
    affine = make_affine((1, 0, 2), (False, True, False), (1.2, 1.0, 5.0), (0.1, 0, 0))
    data = np.random.default_rng(2).random((5, 6, 3)).astype(np.float32)
    path = write(tmp_path, data, affine, sform_code=0, qform_code=1)
    _, grid = io.load_image(path)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-5)
    out = io.save_like(grid.to_working(data), grid, tmp_path / "o.nii.gz")
    written = nib.load(out)
    assert int(written.header["sform_code"]) == 0
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), data)


# ------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    with pytest.raises(WMHError, match=r"missing\.nii\.gz: file not found"):
        io.load_image(tmp_path / "missing.nii.gz")


def test_corrupt_gzip(tmp_path):
    good = write(tmp_path, np.random.default_rng(0).random((20, 20, 20)), np.eye(4))
    raw = good.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WMHError, match=r"bad\.nii\.gz: corrupt or truncated gzip"):
        io.load_image(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.nii"
    bad.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(WMHError, match=r"garbage\.nii: cannot read NIfTI"):
        io.load_image(bad)


def test_not_3d(tmp_path):
    path = write(tmp_path, np.random.default_rng(0).random((4, 4, 4, 2)), np.eye(4))
    with pytest.raises(WMHError, match=r"img\.nii\.gz: expected a 3D image, got shape \(4, 4, 4, 2\)"):
        io.load_image(path)


def test_nan(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    with pytest.raises(WMHError, match=r"img\.nii\.gz: contains NaN or Inf values"):
        io.load_image(write(tmp_path, data, np.eye(4)))


def test_constant(tmp_path):
    with pytest.raises(WMHError, match=r"img\.nii\.gz: image is constant \(every voxel = 5"):
        io.load_image(write(tmp_path, np.full((4, 4, 4), 5.0, np.float32), np.eye(4)))


def test_mask_values_outside_labels(tmp_path):
    flair = write(tmp_path, np.random.default_rng(0).random((4, 4, 4)), np.eye(4), "f.nii.gz")
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0, 0, 0] = 3
    mask_path = write(tmp_path, mask, np.eye(4), "m.nii.gz")
    _, grid = io.load_image(flair)
    with pytest.raises(WMHError, match=r"m\.nii\.gz: mask values outside \{0, 1, 2\}: 3"):
        io.load_labels(mask_path, grid)


def test_mask_grid_differs(tmp_path):
    flair = write(tmp_path, np.random.default_rng(0).random((4, 4, 4)), np.eye(4), "f.nii.gz")
    mask_path = write(tmp_path, np.zeros((4, 4, 5), np.uint8), np.eye(4), "m.nii.gz")
    _, grid = io.load_image(flair)
    with pytest.raises(WMHError, match=r"m\.nii\.gz: grid \(4, 4, 5\) differs from .*f\.nii\.gz"):
        io.load_labels(mask_path, grid)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    mask_path = write(tmp_path, np.zeros((4, 4, 4), np.uint8), shifted, "m2.nii.gz")
    with pytest.raises(WMHError, match=r"m2\.nii\.gz: affine differs from .*f\.nii\.gz"):
        io.load_labels(mask_path, grid)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.nii.gz"

    def broken_save(image, filename):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", broken_save)
    grid = io.NativeGrid((2, 2, 2), np.eye(4), nib.Nifti1Header())
    with pytest.raises(OSError):
        io.save_like(np.zeros((2, 2, 2)), grid, target)
    assert list(tmp_path.iterdir()) == []


def test_check_output_dir_refuses_a_file_and_a_path_below_a_file(tmp_path):
    from wmh.io import check_output_dir
    existing = tmp_path / "taken.txt"
    existing.write_text("x")
    with pytest.raises(WMHError, match=r"^--out .*taken.txt: exists and is not a folder$"):
        check_output_dir(existing)
    with pytest.raises(WMHError, match=r"^--where .*taken.txt/sub: .*taken.txt is not a folder$"):
        check_output_dir(existing / "sub", "--where")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing created


def test_check_output_dir_refuses_an_unwritable_parent(tmp_path, monkeypatch):
    from wmh import io as wmh_io
    monkeypatch.setattr(wmh_io.os, "access", lambda path, mode: False)
    with pytest.raises(WMHError, match=r"is not writable$"):
        wmh_io.check_output_dir(tmp_path / "out")
