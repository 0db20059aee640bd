"""The PreparedSubject: one preprocessed subject on the working grid, and its HDF5 file.

HDF5 layout of a PreparedSubject file (``<out>/<subject_id>.h5``); X, Y, Z is the
working grid, every volume dataset is chunked one slice (working z) per chunk and
lzf-compressed, so ``file["images"][:, :, z, :]`` reads one slice:

============================  ====================  ===========================================
dataset                        shape, dtype          meaning
============================  ====================  ===========================================
``images``                     (X, Y, Z, C) float32  FLAIR[, T1] in [0, 1], 0 outside brain
``brain_mask``                 (X, Y, Z) bool        brain
``labels``                     (X, Y, Z) uint8       0/1 WMH/2 other (absent: no labels)
``labels_observer2``           (X, Y, Z) uint8       second rater (absent: none)
``location``                   (X, Y, Z, 8) float32  the 8 features in [0, 1], 0 outside brain
``ventricles``                 (X, Y, Z) uint8       1 left, 2 right lateral ventricle
``mni_coordinates``            (X, Y, Z, 3) float16  raw MNI x, y, z in mm (absent: none)
============================  ====================  ===========================================

Root attributes: ``format_version`` (int), ``subject_id``, ``site``, ``split`` and
``participant`` (absent when None), ``channels`` (JSON list), ``location_features`` (JSON list),
``spacing`` (3,) mm, ``affine`` (4, 4) working voxel -> world (RAS mm),
``native_shape`` (3,), ``native_affine`` (4, 4), ``native_header`` (the FLAIR's 348-byte
NIfTI-1 header, opaque bytes), ``cache_key``, ``provenance`` (JSON: code version,
config hash, input hashes, quality figures) and ``warnings`` (JSON list of short strings:
fallbacks and doubtful quality met while preparing; absent = none).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import h5py
import nibabel as nib
import numpy as np

from wmh.errors import WMHError
from wmh.io import NativeGrid, atomic_output
from wmh.location import LOCATION_FEATURES, MNI_DTYPE
from wmh.preprocess.grid import IDENTITY_ATOL, resample_voxels


FORMAT_VERSION = 1


_VOLUMES = ("images", "brain_mask", "labels", "labels_observer2", "location", "ventricles",
            "mni_coordinates")


class PreparationFailed(WMHError):
    """A subject's preprocessing produced an implausible result. No longer raised by
    :mod:`wmh.preprocess` (doubtful results become :attr:`PreparedSubject.warnings`);
    kept so that code catching it still imports."""


@dataclasses.dataclass
class PreparedSubject:
    """One preprocessed subject on the working grid (X, Y, Z): FLAIR space, RAS axes with
    the acquired slice axis last (axial, coronal or sagittal), in-plane spacing
    ``spacing[:2]`` mm, native slices kept.

    Attributes:
        subject_id: unique id within the cohort.
        site: scanner/site name from the manifest, or None.
        split: 'train' / 'validation' / 'test' from the manifest, or None.
        images: (X, Y, Z, C) float32, FLAIR then T1; [0, 1] inside the brain, 0 outside.
        channels: channel names, e.g. ("FLAIR", "T1") or ("FLAIR",).
        brain_mask: (X, Y, Z) bool.
        labels: (X, Y, Z) uint8 (0 background, 1 WMH, 2 other pathology) or None.
        labels_observer2: (X, Y, Z) uint8 second rater, or None.
        location: (X, Y, Z, 8) float32 in [0, 1], order ``LOCATION_FEATURES``; 0 outside
            the brain.
        ventricles: (X, Y, Z) uint8, 1 left and 2 right lateral ventricle.
        spacing: (3,) float64 working voxel size in mm.
        affine: (4, 4) float64 working voxel -> world (RAS+ mm).
        native_shape: (3,) the FLAIR file's voxel array shape.
        native_affine: (4, 4) the FLAIR file's affine.
        native_header: the FLAIR file's NIfTI-1 header bytes (348).
        cache_key: hash of inputs, config and code version.
        provenance: code version, config hash, input hashes, quality figures.
        mni_coordinates: (X, Y, Z, 3) float32 raw MNI coordinates in mm (stored as
            float16), or None.
        warnings: short strings, one per fallback or doubtful quality met while
            preparing (e.g. "atlas registration fell back to affine (NMI 0.031)");
            empty when all went as planned.
        participant: the person scanned when the layout names one (BIDS ``sub-``, a
            manifest's ``participant`` column), so splits keep their sessions together.
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
    warnings: tuple[str, ...] = ()
    participant: Optional[str] = None

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
        with atomic_output(path) as temporary:
            with h5py.File(temporary, "w") as file:
                self._write(file)
        return Path(path)

    def _write(self, file: h5py.File) -> None:
        for name in _VOLUMES:
            array = getattr(self, name)
            if array is None:
                continue
            # MNI millimetres need no float32: float16 keeps 0.06 mm at 100 mm, half the disk
            array = np.asarray(array, MNI_DTYPE if name == "mni_coordinates" else None)
            chunks = array.shape[:2] + (1,) + array.shape[3:]
            file.create_dataset(name, data=array, chunks=chunks, compression="lzf")
        attrs = file.attrs
        attrs["format_version"] = FORMAT_VERSION
        attrs["subject_id"] = self.subject_id
        if self.site is not None:
            attrs["site"] = self.site
        if self.split is not None:
            attrs["split"] = self.split
        if self.participant is not None:
            attrs["participant"] = self.participant
        attrs["channels"] = json.dumps(list(self.channels))
        attrs["location_features"] = json.dumps(list(LOCATION_FEATURES))
        attrs["spacing"] = np.asarray(self.spacing, dtype=np.float64)
        attrs["affine"] = np.asarray(self.affine, dtype=np.float64)
        attrs["native_shape"] = np.asarray(self.native_shape, dtype=np.int64)
        attrs["native_affine"] = np.asarray(self.native_affine, dtype=np.float64)
        attrs["native_header"] = np.void(bytes(self.native_header))
        attrs["cache_key"] = self.cache_key
        attrs["provenance"] = json.dumps(self.provenance, sort_keys=True)
        attrs["warnings"] = json.dumps([str(w) for w in self.warnings])

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
            mni_coordinates=(None if "mni_coordinates" not in file
                             else file["mni_coordinates"][()].astype(np.float32)),
            warnings=tuple(json.loads(attrs["warnings"])) if "warnings" in attrs else (),
            participant=text("participant"))


def read_cache_key(path: str | Path) -> Optional[str]:
    """The cache key stored in a prepared file, or None when it is missing or unreadable."""
    return read_key_and_warnings(path)[0]


def read_key_and_warnings(path: str | Path) -> tuple[Optional[str], tuple[str, ...]]:
    """A prepared file's cache key and warnings without reading its volumes; (None, ())
    when the file is missing, unreadable or of another format version."""
    try:
        with h5py.File(path, "r") as file:
            if int(file.attrs.get("format_version", -1)) != FORMAT_VERSION:
                return None, ()
            warnings = file.attrs.get("warnings")
            return (str(file.attrs["cache_key"]),
                    tuple(json.loads(warnings)) if warnings is not None else ())
    except (OSError, KeyError, ValueError):
        return None, ()


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
