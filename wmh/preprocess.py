"""Preprocessing: NIfTI subject -> PreparedSubject (one HDF5 file), all in the FLAIR's space.

Steps (paper, "Preprocessing"), each on the *working grid*: the FLAIR in canonical RAS
orientation (axial slices last), slices kept, in-plane resampled to
``PreprocessConfig.inplane_spacing_mm``:

1. T1 -> FLAIR rigid registration (Mattes mutual information, SimpleITK); skipped when
   the layout promises co-registration (challenge ``pre/``), when the T1 lies on exactly
   the FLAIR grid, or without a T1.
2. Brain mask, offline: a user-supplied mask; else already skull-stripped input is
   detected (zero background around a brain-sized foreground); else the MNI152 brain
   mask warped through the atlas registration (step 6) and intersected with the head.
3. N4 bias-field correction on a shrunk image (SimpleITK).
4. Per-subject intensity normalisation to [0, 1] inside the brain (robust percentiles);
   0 outside the brain.
5. The working grid and its exact map back to the native FLAIR grid.
6. MNI152 (nilearn's template, downsampled) -> subject: affine then B-spline, giving each
   working voxel its MNI coordinate (mm) and the lateral ventricle masks.
7. The 8 location features (:mod:`wmh.location`).
8. One HDF5 file per subject, written atomically and keyed by a hash of inputs, config
   and code version (:func:`prepare_cohort`).

HDF5 layout of a PreparedSubject file (``<out>/<subject_id>.h5``); X, Y, Z is the
working grid, every volume dataset is chunked one axial slice per chunk and
lzf-compressed, so ``file["images"][:, :, z, :]`` reads one slice:

============================  ====================  =====================================
dataset                        shape, dtype          meaning
============================  ====================  =====================================
``images``                     (X, Y, Z, C) float32  FLAIR[, T1] in [0, 1], 0 outside brain
``brain_mask``                 (X, Y, Z) bool        brain
``labels``                     (X, Y, Z) uint8       0/1 WMH/2 other (absent: no labels)
``labels_observer2``           (X, Y, Z) uint8       second rater (absent: none)
``location``                   (X, Y, Z, 8) float32  the 8 features, each in [0, 1]
``ventricles``                 (X, Y, Z) uint8       1 left, 2 right lateral ventricle
``mni_coordinates``            (X, Y, Z, 3) float32  raw MNI x, y, z in mm (absent: none)
============================  ====================  =====================================

Root attributes: ``format_version`` (int), ``subject_id``, ``site`` and ``split``
(absent when None), ``channels`` (JSON list), ``location_features`` (JSON list),
``spacing`` (3,) mm, ``affine`` (4, 4) working voxel -> world (RAS mm),
``native_shape`` (3,), ``native_affine`` (4, 4), ``native_header`` (the FLAIR's 348-byte
NIfTI-1 header, opaque bytes), ``cache_key`` and ``provenance`` (JSON: code version,
config hash, input hashes, quality figures).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import h5py
import nibabel as nib
import numpy as np
from scipy import ndimage

from wmh.errors import WMHError
from wmh.io import NativeGrid

FORMAT_VERSION = 1
LOCATION_FEATURES = ("mni_x", "mni_y", "mni_z", "distance_left_ventricle",
                     "distance_right_ventricle", "distance_cortex",
                     "distance_midsagittal", "wmh_prior")
IDENTITY_ATOL = 1e-6  # voxel units: a working grid this close to the native one is identical
_VOLUMES = ("images", "brain_mask", "labels", "labels_observer2", "location", "ventricles",
            "mni_coordinates")


# ------------------------------------------------------------------------ the format

@dataclasses.dataclass
class PreparedSubject:
    """One preprocessed subject on the working grid (X, Y, Z): FLAIR space, canonical
    RAS, axial slices last, in-plane spacing ``spacing[:2]`` mm, native slices kept.

    Attributes:
        subject_id: unique id within the cohort.
        site: scanner/site name from the manifest, or None.
        split: 'train' / 'validation' / 'test' from the manifest, or None.
        images: (X, Y, Z, C) float32, FLAIR then T1; [0, 1] inside the brain, 0 outside.
        channels: channel names, e.g. ("FLAIR", "T1") or ("FLAIR",).
        brain_mask: (X, Y, Z) bool.
        labels: (X, Y, Z) uint8 (0 background, 1 WMH, 2 other pathology) or None.
        labels_observer2: (X, Y, Z) uint8 second rater, or None.
        location: (X, Y, Z, 8) float32 in [0, 1], order ``LOCATION_FEATURES``.
        ventricles: (X, Y, Z) uint8, 1 left and 2 right lateral ventricle.
        spacing: (3,) float64 working voxel size in mm.
        affine: (4, 4) float64 working voxel -> world (RAS+ mm).
        native_shape: (3,) the FLAIR file's voxel array shape.
        native_affine: (4, 4) the FLAIR file's affine.
        native_header: the FLAIR file's NIfTI-1 header bytes (348).
        cache_key: hash of inputs, config and code version.
        provenance: code version, config hash, input hashes, quality figures.
        mni_coordinates: (X, Y, Z, 3) float32 raw MNI coordinates in mm, or None.
    """

    subject_id: str
    site: Optional[str]
    split: Optional[str]
    images: np.ndarray
    channels: tuple[str, ...]
    brain_mask: np.ndarray
    labels: Optional[np.ndarray]
    labels_observer2: Optional[np.ndarray]
    location: np.ndarray
    ventricles: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    native_header: bytes
    cache_key: str = ""
    provenance: dict = dataclasses.field(default_factory=dict)
    mni_coordinates: Optional[np.ndarray] = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Working grid shape (X, Y, Z)."""
        return tuple(int(n) for n in self.images.shape[:3])

    # ---------------------------------------------------------------- native mapping

    def native_grid(self) -> NativeGrid:
        """The FLAIR file's grid, for :func:`wmh.io.save_like`."""
        header_class = nib.Nifti2Header if len(self.native_header) == 540 else nib.Nifti1Header
        header = header_class.from_fileobj(_BytesReader(self.native_header))
        header.set_data_shape(self.native_shape)
        return NativeGrid(tuple(int(n) for n in self.native_shape),
                          np.asarray(self.native_affine, dtype=np.float64), header)

    def working_to_native_voxels(self) -> np.ndarray:
        """(4, 4) affine: working voxel index -> native working-orientation voxel index."""
        grid = self.native_grid()
        return np.linalg.solve(grid.working_affine, np.asarray(self.affine, np.float64))

    def is_identity_mapping(self) -> bool:
        """True when the working grid is the FLAIR's own (reoriented) grid."""
        grid = self.native_grid()
        return (tuple(grid.working_shape) == self.shape
                and np.allclose(self.working_to_native_voxels(), np.eye(4),
                                atol=IDENTITY_ATOL))

    def to_native_working(self, working: np.ndarray, order: int) -> np.ndarray:
        """Working-grid array -> the FLAIR's own grid in working (RAS) orientation.

        Args:
            working: (X, Y, Z) array on the working grid.
            order: 1 (linear, for probabilities) or 0 (nearest, for masks/labels).

        Returns:
            Array of shape ``native_grid().working_shape`` and the input's dtype; outside
            the working field of view it is 0. Identity (a copy) when the grids coincide.
        """
        working = np.asarray(working)
        if working.shape[:3] != self.shape:
            raise ValueError(f"array shape {working.shape} does not match the working "
                             f"grid {self.shape}")
        if self.is_identity_mapping():
            return working.copy()
        grid = self.native_grid()
        native_to_working = np.linalg.inv(self.working_to_native_voxels())
        return resample_voxels(working, native_to_working, grid.working_shape, order)

    def to_native(self, working: np.ndarray, order: int) -> np.ndarray:
        """Working-grid array -> the FLAIR file's native voxel order and grid.

        Args:
            working: (X, Y, Z) array on the working grid.
            order: 1 for probabilities, 0 for masks.

        Returns:
            Array with the FLAIR file's shape (``native_shape``), voxel for voxel.
        """
        grid = self.native_grid()
        return grid.to_native(self.to_native_working(working, order))

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Writes the HDF5 file atomically (temporary name in the folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent)
        os.close(handle)
        try:
            with h5py.File(temporary, "w") as file:
                self._write(file)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    def _write(self, file: h5py.File) -> None:
        for name in _VOLUMES:
            array = getattr(self, name)
            if array is None:
                continue
            array = np.asarray(array)
            chunks = array.shape[:2] + (1,) + array.shape[3:]
            file.create_dataset(name, data=array, chunks=chunks, compression="lzf")
        attrs = file.attrs
        attrs["format_version"] = FORMAT_VERSION
        attrs["subject_id"] = self.subject_id
        if self.site is not None:
            attrs["site"] = self.site
        if self.split is not None:
            attrs["split"] = self.split
        attrs["channels"] = json.dumps(list(self.channels))
        attrs["location_features"] = json.dumps(list(LOCATION_FEATURES))
        attrs["spacing"] = np.asarray(self.spacing, dtype=np.float64)
        attrs["affine"] = np.asarray(self.affine, dtype=np.float64)
        attrs["native_shape"] = np.asarray(self.native_shape, dtype=np.int64)
        attrs["native_affine"] = np.asarray(self.native_affine, dtype=np.float64)
        attrs["native_header"] = np.void(bytes(self.native_header))
        attrs["cache_key"] = self.cache_key
        attrs["provenance"] = json.dumps(self.provenance, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "PreparedSubject":
        """Reads a file written by :meth:`save`.

        Raises:
            WMHError: missing, unreadable or incomplete file (the message names it).
        """
        path = Path(path)
        if not path.is_file():
            raise WMHError(f"{path}: prepared subject file not found")
        try:
            with h5py.File(path, "r") as file:
                return cls._read(file, path)
        except WMHError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise WMHError(f"{path}: corrupt prepared subject file ({first_line}); "
                           "delete it and run wmh prepare again") from None

    @classmethod
    def _read(cls, file: h5py.File, path: Path) -> "PreparedSubject":
        attrs = file.attrs
        version = int(attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise WMHError(f"{path}: prepared subject format {version}, expected "
                           f"{FORMAT_VERSION}; run wmh prepare again")
        for name in ("images", "brain_mask", "location", "ventricles"):
            if name not in file:
                raise WMHError(f"{path}: prepared subject file lacks dataset '{name}'")

        def optional(name):
            return file[name][()] if name in file else None

        def text(name):
            value = attrs.get(name)
            return None if value is None else str(value)

        return cls(
            subject_id=str(attrs["subject_id"]), site=text("site"), split=text("split"),
            images=file["images"][()], channels=tuple(json.loads(attrs["channels"])),
            brain_mask=file["brain_mask"][()].astype(bool), labels=optional("labels"),
            labels_observer2=optional("labels_observer2"), location=file["location"][()],
            ventricles=file["ventricles"][()], spacing=np.asarray(attrs["spacing"]),
            affine=np.asarray(attrs["affine"]),
            native_shape=tuple(int(n) for n in attrs["native_shape"]),
            native_affine=np.asarray(attrs["native_affine"]),
            native_header=bytes(attrs["native_header"].tobytes()),
            cache_key=str(attrs["cache_key"]), provenance=json.loads(attrs["provenance"]),
            mni_coordinates=optional("mni_coordinates"))


def read_cache_key(path: str | Path) -> Optional[str]:
    """The cache key stored in a prepared file, or None when it is missing or unreadable."""
    try:
        with h5py.File(path, "r") as file:
            if int(file.attrs.get("format_version", -1)) != FORMAT_VERSION:
                return None
            return str(file.attrs["cache_key"])
    except (OSError, KeyError, ValueError):
        return None


class _BytesReader:
    """Minimal file object over bytes, for nibabel's header reader."""

    def __init__(self, data: bytes):
        self._data = bytes(data)
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._position + size
        chunk = self._data[self._position:end]
        self._position += len(chunk)
        return chunk


# ------------------------------------------------------------------------ working grid

SAME_SPACING_MM = 1e-4  # in-plane spacings closer than this to the target are kept as is


def working_grid(grid: NativeGrid, inplane_spacing_mm: float,
                 ) -> tuple[tuple[int, int, int], np.ndarray]:
    """The working grid of a FLAIR: its RAS-oriented grid, slices kept, in-plane
    resampled to ``inplane_spacing_mm`` over the same field of view.

    Working voxel i (along x or y) sits at native continuous index (i + 0.5) r - 0.5,
    r = target / native spacing, so the first and last voxel edges coincide; when the
    native spacing already equals the target (within ``SAME_SPACING_MM``) r = 1 and the
    working grid is the native one.

    Returns:
        (X, Y, Z) shape and the (4, 4) working voxel -> world affine.
    """
    if not inplane_spacing_mm > 0:
        raise WMHError(f"option preprocess.inplane_spacing_mm: must be positive, "
                       f"got {inplane_spacing_mm}")
    native_spacing = grid.working_spacing
    shape = list(grid.working_shape)
    to_native = np.eye(4)
    for axis in (0, 1):
        if abs(native_spacing[axis] - inplane_spacing_mm) < SAME_SPACING_MM:
            continue
        ratio = inplane_spacing_mm / native_spacing[axis]
        shape[axis] = max(1, int(round(shape[axis] / ratio)))
        to_native[axis, axis] = ratio
        to_native[axis, 3] = (ratio - 1.0) / 2.0
    return tuple(shape), grid.working_affine @ to_native


def to_working_grid(array: np.ndarray, grid: NativeGrid, shape: tuple[int, int, int],
                    affine: np.ndarray, order: int) -> np.ndarray:
    """A FLAIR-grid array in working orientation -> the working grid.

    Linear resampling (order 1) smooths in-plane first where it downsamples, against
    aliasing; order 0 (labels) is nearest neighbour. The identity grid returns a copy.
    """
    to_native = np.linalg.solve(grid.working_affine, affine)
    if tuple(shape) == tuple(array.shape[:3]) and np.allclose(to_native, np.eye(4),
                                                              atol=IDENTITY_ATOL):
        return np.array(array, copy=True)
    if order == 1:
        ratios = np.abs(np.diag(to_native)[:3])
        sigma = [max(0.0, (ratio - 1.0) / 2.0) for ratio in ratios[:2]] + [0.0]
        if any(value > 0 for value in sigma):
            sigma += [0.0] * (array.ndim - 3)
            array = ndimage.gaussian_filter(np.asarray(array, np.float32), sigma,
                                            mode="constant")
    return resample_voxels(array, to_native, shape, order)


# ------------------------------------------------------------------------ resampling

def resample_voxels(array: np.ndarray, output_to_input: np.ndarray,
                    output_shape: tuple[int, ...], order: int) -> np.ndarray:
    """Resamples a 3D (or 3D + channels) array with a voxel-to-voxel affine.

    Args:
        array: (X, Y, Z[, C]) input array.
        output_to_input: (4, 4) output voxel index -> input voxel index.
        output_shape: (X', Y', Z') output grid.
        order: 0 nearest, 1 linear.

    Returns:
        (X', Y', Z'[, C]) array of the input's dtype; 0 outside the input.
    """
    array = np.asarray(array)
    if array.ndim == 4:
        return np.stack([resample_voxels(array[..., c], output_to_input, output_shape, order)
                         for c in range(array.shape[3])], axis=-1)
    matrix, offset = output_to_input[:3, :3], output_to_input[:3, 3]
    source = array.astype(np.float32) if array.dtype == bool else array
    if order == 0:
        # Nearest neighbour by rounding our own coordinates: scipy's order 0 rounds
        # half-way points differently across versions.
        grid = np.indices(output_shape, dtype=np.float64).reshape(3, -1)
        coords = np.rint(matrix @ grid + offset[:, None]).astype(np.int64)
        inside = np.all((coords >= 0) & (coords < np.array(array.shape)[:, None]), axis=0)
        out = np.zeros(int(np.prod(output_shape)), dtype=array.dtype)
        out[inside] = array[tuple(coords[:, inside])]
        return out.reshape(output_shape)
    result = ndimage.affine_transform(source.astype(np.float32), matrix, offset,
                                      output_shape=tuple(output_shape), order=order,
                                      mode="constant", cval=0.0)
    return result.astype(array.dtype) if array.dtype != bool else result > 0.5
