"""The MNI152 atlas (template, brain, tissues, lateral ventricles) and sampling it at
MNI coordinates."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from wmh.preprocess.grid import resample_voxels
from wmh.preprocess.sitk_bridge import from_sitk, grid_affine, to_sitk
from wmh.tracking import hash_files


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
    ship inside the nilearn wheel (read by :func:`_template`).

    Building it takes about 1.5 s (1 mm) and 1.3 s more (2 mm) of every process that
    prepares a scan, so the arrays are kept on disk (:func:`atlas_cache_folder`, one
    folder per spacing, keyed by this module's source and the template files) and read
    back as read-only memory maps, bit for bit the same.
    """
    folder = atlas_cache_folder(spacing_mm)
    cached = _read_cached_atlas(folder) if folder is not None else None
    if cached is not None:
        return cached
    if spacing_mm != 1.0:
        atlas = _coarse_atlas(load_atlas(1.0), spacing_mm)
    else:
        atlas = _build_atlas()
    if folder is not None:
        _write_cached_atlas(atlas, folder)
    return atlas


ATLAS_CACHE_ENV = "WMH_CACHE_HOME"  # where the atlas arrays are kept (default below)


def atlas_cache_folder(spacing_mm: float) -> Optional[Path]:
    """The folder holding the atlas at ``spacing_mm``: under ``$WMH_CACHE_HOME`` (else
    ``$XDG_CACHE_HOME/wmh``, else ``~/.cache/wmh``), named by a hash of this module's
    source, the template files (path, size, modification time) and the spacing, so a
    new wmh or nilearn never reads an old atlas. None (no disk cache) where
    ``WMH_CACHE_HOME`` is set to an empty string."""
    root = os.environ.get(ATLAS_CACHE_ENV)
    if root == "":
        return None
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wmh"
    templates = []
    for kind in ("t1", "gm", "wm"):
        path = _template_path(kind)
        stat = path.stat() if path is not None else None
        templates.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else "nilearn")
    key = hash_files([__file__], extra=repr((templates, float(spacing_mm))))
    return Path(root) / f"atlas-{float(spacing_mm):g}mm-{key}"


_ATLAS_ARRAYS = tuple(field.name for field in dataclasses.fields(Atlas))


def _read_cached_atlas(folder: Path) -> Optional[Atlas]:
    """The atlas kept in ``folder`` (memory-mapped, read-only), or None where it is not
    there or cannot be read (then it is built again)."""
    try:
        return Atlas(**{name: np.load(folder / f"{name}.npy", mmap_mode="r")
                        for name in _ATLAS_ARRAYS})
    except (OSError, ValueError):
        return None


def _write_cached_atlas(atlas: Atlas, folder: Path) -> None:
    """Keeps ``atlas`` in ``folder``: written into a temporary sibling, then renamed, so
    that a reader sees all of it or none; a cache that cannot be written is skipped."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError:
        return
    try:
        for name in _ATLAS_ARRAYS:
            np.save(staging / f"{name}.npy", np.asarray(getattr(atlas, name)))
        staging.rename(folder)
    except OSError:  # a full disk, or another process wrote it first
        shutil.rmtree(staging, ignore_errors=True)


def _build_atlas() -> Atlas:
    """The 1 mm atlas from the templates (see :func:`load_atlas`)."""
    template = _template("t1")
    affine = np.array(template.affine, dtype=np.float64)
    t1 = np.asarray(template.dataobj, dtype=np.float32)
    t1 /= max(float(t1.max()), 1e-6)
    grey = np.asarray(_template("gm").dataobj, np.float32)
    white = np.asarray(_template("wm").dataobj, np.float32)
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


_TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"  # t1, gm, wm


def _template(kind: str) -> nib.Nifti1Image:
    """A 1 mm ICBM152 2009a template (``kind`` t1, gm or wm) as
    ``nilearn.datasets.load_mni152_*template(resolution=1)`` gives it (float32 scaled to
    a maximum of 1), read straight from the nilearn wheel: importing
    ``nilearn.datasets`` for three file names costs seconds."""
    path = _template_path(kind)
    if path is None:  # another wheel layout: ask nilearn
        from nilearn import datasets

        loader = {"t1": datasets.load_mni152_template, "gm": datasets.load_mni152_gm_template,
                  "wm": datasets.load_mni152_wm_template}[kind]
        return loader(resolution=1)
    image = nib.load(path)
    data = np.asarray(image.dataobj).astype(np.float32)
    data /= data.max()
    return nib.Nifti1Image(data, image.affine, image.header)


def _template_path(kind: str) -> Optional[Path]:
    """The template file inside the installed nilearn wheel, or None if not there."""
    spec = importlib.util.find_spec("nilearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(folder) / "datasets" / "data" / _TEMPLATE_FILE.format(kind)
                 for folder in folders), None)
    return path if path is not None and path.is_file() else None


def _coarse_atlas(atlas: Atlas, spacing_mm: float) -> Atlas:
    shape = tuple(int(np.ceil(n / spacing_mm)) for n in atlas.t1.shape)
    coarse_affine = atlas.affine @ np.diag([spacing_mm] * 3 + [1.0])
    coarse_affine[:3, 3] = atlas.affine[:3, 3] + (spacing_mm - 1.0) / 2.0
    to_fine = np.linalg.solve(atlas.affine, coarse_affine)
    sigma = max(spacing_mm - 1.0, 0.0) / 2.0
    whole = float(spacing_mm).is_integer() and spacing_mm >= 2

    def coarse(volume, order):
        if not order:
            return resample_voxels(volume, to_fine, shape, order)
        smooth = ndimage.gaussian_filter(volume.astype(np.float32), sigma)
        if whole:
            return _block_centres(smooth, int(spacing_mm))
        return resample_voxels(smooth, to_fine, shape, order)

    return Atlas(coarse(atlas.t1, 1), coarse(atlas.brain, 1), coarse(atlas.ventricles, 0),
                 coarse_affine, coarse(atlas.grey, 1), coarse(atlas.white, 1),
                 coarse(atlas.csf, 1))


def _block_centres(volume: np.ndarray, factor: int) -> np.ndarray:
    """Linear samples of ``volume`` at the centres of ``factor``-voxel blocks (voxel
    ``factor * i + (factor - 1) / 2`` along every axis), 0 where that lies beyond the
    last voxel: what :func:`resample_voxels` gives for that map, by strided slicing."""
    out = np.asarray(volume, dtype=np.float32)
    low = (factor - 1) // 2
    fraction = np.float32((factor - 1) / 2.0 - low)
    for axis in range(3):
        size = out.shape[axis]
        count = int(np.ceil(size / factor))
        pad = [(0, 0)] * out.ndim
        pad[axis] = (0, low + factor * (count - 1) + 2 - size)
        padded = np.pad(out, pad)
        index = low + factor * np.arange(count)
        out = np.take(padded, index, axis=axis)
        if fraction:
            out = (1 - fraction) * out + fraction * np.take(padded, index + 1, axis=axis)
        beyond = index + fraction > size - 1  # scipy's "constant" mode: no sample there
        if beyond.any():
            out[(slice(None),) * axis + (beyond,)] = 0.0
    return out


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
