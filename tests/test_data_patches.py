"""The patch definition, checked against a brute-force cut of each window."""

import numpy as np
import pytest

from wmh.patches import PATCH_SIZE, SCALES, box_mean, extract_patches


def brute_force_patch(image, row, col, k):
    height, width, channels = image.shape
    side = PATCH_SIZE * k
    window = np.zeros((side, side, channels))
    for i in range(side):
        for j in range(side):
            r, c = row - PATCH_SIZE // 2 * k + i, col - PATCH_SIZE // 2 * k + j
            if 0 <= r < height and 0 <= c < width:
                window[i, j] = image[r, c]
    return window.reshape(PATCH_SIZE, k, PATCH_SIZE, k, channels).mean(axis=(1, 3))


def test_patches_equal_pooled_windows_including_borders():
    rng = np.random.default_rng(0)
    image = rng.random((37, 45, 2)).astype(np.float32)
    rows = np.array([0, 36, 18, 1, 35, 7])
    cols = np.array([0, 44, 22, 43, 2, 30])
    patches = extract_patches(image, rows, cols)
    for name, k in zip(("s1", "s2", "s3"), SCALES):
        assert patches[name].shape == (len(rows), 32, 32, 2)
        for index, (r, c) in enumerate(zip(rows, cols)):
            np.testing.assert_allclose(patches[name][index], brute_force_patch(image, r, c, k),
                                       atol=1e-6)


def test_centre_voxel_sits_at_index_16():
    image = np.zeros((50, 50, 1), np.float32)
    image[20, 30, 0] = 1.0
    patch = extract_patches(image, np.array([20]), np.array([30]))["s1"][0, :, :, 0]
    assert patch[16, 16] == 1.0 and patch.sum() == 1.0


def test_box_mean_matches_direct_mean():
    rng = np.random.default_rng(1)
    image = rng.random((9, 7, 1))
    means = box_mean(image, 3)
    padded = np.pad(image, ((0, 3), (0, 3), (0, 0)))
    assert means[2, 4, 0] == pytest.approx(padded[2:5, 4:7, 0].mean(), abs=1e-6)
    assert means[8, 6, 0] == pytest.approx(image[8, 6, 0] / 9, abs=1e-6)


def test_rejects_coordinates_outside_slice():
    with pytest.raises(ValueError, match="outside the slice"):
        extract_patches(np.zeros((10, 10, 1), np.float32), np.array([10]), np.array([0]))
