"""Multi-scale patches: the network's three 32 x 32 inputs of one voxel (pure numpy).

Patch definition (the one place it is written; dense inference in ``wmh.models``
reproduces it exactly, and :mod:`wmh.data` streams these patches for training):

* A sample is one voxel (row r, col c) of one axial slice of the working grid.
* For scale factor k in ``SCALES`` = (1, 2, 4) the patch covers rows r-16k ... r+16k-1
  and columns c-16k ... c+16k-1 (the sample voxel sits at index 16k of the 32k
  window), average-pooled in k x k blocks to ``PATCH_SIZE`` x ``PATCH_SIZE`` = 32 x 32.
  So s1 is the paper's 32x32 patch, s2 the 64x64 patch and s3 the 128x128 patch,
  both downsampled to 32x32 (paper, "Patch preparation").
* Voxels outside the slice are 0, which is also the value of background after
  normalisation, so borders are padded consistently everywhere.

Equivalently, scale-k pixel (m, n) = B_k[r - 16k + k m, c - 16k + k n] where B_k is the
k x k box mean of the zero-padded slice; dense inference uses this identity (a box
filter followed by convolutions dilated by k).
"""

from __future__ import annotations

import numpy as np

PATCH_SIZE = 32  # side of every network input patch, in working-grid voxels
SCALES = (1, 2, 4)  # s1, s2, s3: 32x32, 64x64 and 128x128 windows pooled to 32x32
SCALE_NAMES = ("s1", "s2", "s3")


def _box_sum(padded: np.ndarray, k: int) -> np.ndarray:
    """out[i, j] = sum(padded[i:i+k, j:j+k]) over the valid positions, in float32.

    Separable running sums in a fixed order, so every position is summed identically
    wherever the slice sits in its zero padding (cropped and full slices agree bit for bit).
    """
    height, width = padded.shape[0] - k + 1, padded.shape[1] - k + 1
    rows = padded[0:height].copy()
    for shift in range(1, k):
        rows += padded[shift:shift + height]
    total = rows[:, 0:width].copy()
    for shift in range(1, k):
        total += rows[:, shift:shift + width]
    return total


def box_mean(image: np.ndarray, k: int) -> np.ndarray:
    """k x k box mean of a zero-padded slice: out[i, j] = mean(image[i:i+k, j:j+k]).

    Args:
        image: (H, W, C) float array.
        k: box side in voxels.

    Returns:
        (H, W, C) float32 array (windows running past the bottom/right edge see zeros).
    """
    image = np.asarray(image, dtype=np.float32)
    if k == 1:
        return image.copy()
    height, width = image.shape[:2]
    padded = np.zeros((height + k - 1, width + k - 1) + image.shape[2:], dtype=np.float32)
    padded[:height, :width] = image
    total = _box_sum(padded, k)
    total /= k * k
    return total


def scale_margin(k: int) -> int:
    """Zero padding each side needs so every scale-k window of every voxel is inside."""
    return PATCH_SIZE // 2 * k


def padded_box_means(image: np.ndarray) -> dict[int, np.ndarray]:
    """Box means of the slice zero-padded by each scale's margin, keyed by scale factor k.

    Entry k has shape (H + 2 m_k, W + 2 m_k, C) with m_k = ``scale_margin(k)``; its
    element [r + k m, c + k n] is scale-k patch pixel (m, n) of voxel (r, c).
    (Equal to ``box_mean(np.pad(image, m_k), k)``, without the intermediate copy.)
    """
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape[:2]
    means = {}
    for k in SCALES:
        margin = scale_margin(k)
        padded = np.zeros((height + 2 * margin + k - 1, width + 2 * margin + k - 1)
                          + image.shape[2:], dtype=np.float32)
        padded[margin:margin + height, margin:margin + width] = image
        if k == 1:
            means[k] = padded
            continue
        total = _box_sum(padded, k)
        total /= k * k
        means[k] = total
    return means


def extract_patches(image: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                    box_means: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Cuts the three scales of patches for voxels of one axial slice.

    Args:
        image: (H, W, C) float32 slice in the working grid (FLAIR first, then T1).
        rows, cols: (N,) integer voxel coordinates inside the slice.
        box_means: optional ``padded_box_means(image)``, to reuse across calls.

    Returns:
        ``{"s1", "s2", "s3"}``, each (N, 32, 32, C) float32.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"extract_patches expects an (H, W, C) slice, got {image.shape}")
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    height, width = image.shape[:2]
    if rows.size and (rows.min() < 0 or rows.max() >= height or cols.min() < 0
                      or cols.max() >= width):
        raise ValueError("extract_patches: sample coordinates outside the slice")
    if box_means is None:
        box_means = padded_box_means(image)
    offsets = np.arange(PATCH_SIZE)
    patches = {}
    for name, k in zip(SCALE_NAMES, SCALES):
        # The window of voxel r starts at r - 16k, which is index r in padded coordinates.
        row_index = rows[:, None] + k * offsets[None, :]  # (N, 32)
        col_index = cols[:, None] + k * offsets[None, :]
        patches[name] = box_means[k][row_index[:, :, None], col_index[:, None, :]]
    return patches
