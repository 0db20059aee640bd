"""NIfTI in and out without misplacing a voxel, and subject discovery.

* Loading: any 3D NIfTI (.nii, .nii.gz) nibabel reads, RAS/LPS/oblique affines (sform
  or qform as nibabel resolves them), integer or float data with scl_slope/inter
  applied, a singleton 4th dimension squeezed. Bad files raise :class:`WMHError` with
  a one-line message naming the file.
* Orientation: the working orientation is canonical RAS with axial slices last
  (x, y, z). An oblique affine is mapped to its nearest RAS axes, so the conversion is
  only axis permutations and flips of the voxel array: exact both ways. A
  :class:`NativeGrid` remembers the input's shape, affine and header, and
  :func:`save_like` writes a working-space array back onto exactly that grid.
* Discovery: the MICCAI WMH 2017 challenge layout, a BIDS-like layout and a CSV
  manifest each yield :class:`Subject` records (paths only; nothing is loaded).
* Writing is atomic: a temporary file in the target folder renamed into place, so a
  killed run never leaves a half-written image under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import hashlib
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Iterable, Optional

import nibabel as nib
import numpy as np
from nibabel.orientations import (apply_orientation, axcodes2ornt, inv_ornt_aff,
                                  io_orientation, ornt_transform)

from wmh.errors import WMHError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_VALUES = (0, 1, 2)  # background, WMH, other pathology (ignored)
GRID_ATOL_MM = 1e-3  # affines closer than this (mm) are the same grid


# --------------------------------------------------------------------------- loading

def strip_nifti_suffix(name: str) -> str:
    """'sub-01_FLAIR.nii.gz' -> 'sub-01_FLAIR'."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_nifti(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Reads a 3D NIfTI image and checks that it is readable, 3D and finite.

    Returns:
        The voxel data (scl_slope/inter applied; a singleton 4th dimension removed) in
        the file's own voxel order, and the nibabel image (header untouched).

    Raises:
        WMHError: missing or unreadable file, corrupt gzip, not 3D, NaN or Inf values.
    """
    path = Path(path)
    if not path.exists():
        raise WMHError(f"{path}: file not found")
    if not path.is_file():
        raise WMHError(f"{path}: not a file")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise WMHError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise WMHError(f"{path}: corrupt or truncated gzip ({error})") from None
    except PermissionError:
        raise WMHError(f"{path}: permission denied") from None
    except Exception as error:  # nibabel raises many types for unreadable headers
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WMHError(f"{path}: cannot read NIfTI ({first_line})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise WMHError(f"{path}: expected a 3D image, got shape {tuple(data.shape)}")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise WMHError(f"{path}: contains NaN or Inf values")
    return data, image


def load_image(path: str | Path) -> tuple[np.ndarray, "NativeGrid"]:
    """Loads an intensity image in the working orientation.

    Returns:
        (x, y, z) float32 array in canonical RAS orientation, and the native grid that
        :func:`save_like` needs to write results back onto the input.

    Raises:
        WMHError: everything :func:`load_nifti` rejects, and constant images.
    """
    data, image = load_nifti(path)
    data = np.asarray(data, dtype=np.float32)
    if data.size == 0 or data.min() == data.max():
        value = data.flat[0] if data.size else "none"
        raise WMHError(f"{path}: image is constant (every voxel = {value})")
    grid = NativeGrid.from_image(image, path)
    return grid.to_working(data), grid


def load_labels(path: str | Path, reference: Optional["NativeGrid"] = None,
                ) -> tuple[np.ndarray, "NativeGrid"]:
    """Loads a label mask (0 background, 1 WMH, 2 other pathology) in working orientation.

    Args:
        path: the mask file.
        reference: the FLAIR's grid; the mask must lie on exactly that grid.

    Returns:
        (x, y, z) uint8 labels and the mask's native grid.

    Raises:
        WMHError: unreadable, non-integer or out-of-range values, grid unlike the FLAIR.
    """
    data, image = load_nifti(path)
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise WMHError(f"{path}: mask has non-integer values")
    unexpected = np.setdiff1d(np.unique(rounded), LABEL_VALUES)
    if unexpected.size:
        shown = ", ".join(f"{v:g}" for v in unexpected[:5])
        raise WMHError(f"{path}: mask values outside {{0, 1, 2}}: {shown}")
    grid = NativeGrid.from_image(image, path)
    if reference is not None:
        check_same_grid(reference, grid, why="mask must lie on the FLAIR grid")
    return grid.to_working(rounded.astype(np.uint8)), grid


def check_same_grid(reference: "NativeGrid", other: "NativeGrid", why: str) -> None:
    """Raises a WMHError naming ``other``'s file when its grid differs from ``reference``."""
    if other.shape != reference.shape:
        raise WMHError(f"{other.path}: grid {other.shape} differs from "
                       f"{reference.path} {reference.shape} ({why})")
    if not np.allclose(other.affine, reference.affine, atol=GRID_ATOL_MM):
        raise WMHError(f"{other.path}: affine differs from {reference.path} ({why})")


# ----------------------------------------------------------------------- orientation

@dataclasses.dataclass(frozen=True)
class NativeGrid:
    """The input image's grid, and the exact map between it and the working orientation.

    Attributes:
        shape: native voxel array shape (3 ints).
        affine: native voxel -> world (RAS+ mm) 4x4 affine.
        header: the input NIfTI header (sform/qform codes, pixdim, units are kept).
        path: the file it came from (for messages).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Optional[Path] = None

    @classmethod
    def from_image(cls, image: nib.Nifti1Image, path: str | Path | None = None) -> "NativeGrid":
        header = image.header.copy()
        shape = tuple(int(n) for n in image.shape[:3])
        header.set_data_shape(shape)
        return cls(shape, np.array(image.affine, dtype=np.float64), header,
                   Path(path) if path is not None else None)

    @property
    def to_working_ornt(self) -> np.ndarray:
        """nibabel orientation transform native -> RAS (permutation + flips)."""
        return ornt_transform(io_orientation(self.affine), axcodes2ornt("RAS"))

    @property
    def working_shape(self) -> tuple[int, int, int]:
        ornt = self.to_working_ornt
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(ornt):
            shape[int(target)] = self.shape[axis]
        return tuple(shape)

    @property
    def working_affine(self) -> np.ndarray:
        """Working voxel -> world affine (same world as the input, axes reordered)."""
        return self.affine @ inv_ornt_aff(self.to_working_ornt, self.shape)

    @property
    def working_spacing(self) -> np.ndarray:
        """(3,) voxel sizes in mm along the working x, y, z axes."""
        return np.sqrt((self.working_affine[:3, :3] ** 2).sum(axis=0))

    def to_working(self, native: np.ndarray) -> np.ndarray:
        """Native voxel array -> working orientation (exact: permutes and flips only)."""
        if tuple(native.shape[:3]) != self.shape:
            raise ValueError(f"array shape {native.shape} does not match grid {self.shape}")
        return np.ascontiguousarray(apply_orientation(native, self.to_working_ornt))

    def to_native(self, working: np.ndarray) -> np.ndarray:
        """Working-orientation array -> the native voxel order (inverse of to_working)."""
        if tuple(working.shape[:3]) != self.working_shape:
            raise ValueError(f"array shape {working.shape} does not match working grid "
                             f"{self.working_shape}")
        back = ornt_transform(axcodes2ornt("RAS"), io_orientation(self.affine))
        return np.ascontiguousarray(apply_orientation(working, back))


def save_like(working: np.ndarray, grid: NativeGrid, path: str | Path,
              dtype: np.dtype | type = np.float32) -> Path:
    """Writes a working-orientation array onto the input's native grid, atomically.

    The written file has the input's shape, affine, sform/qform (with their codes),
    pixdim and units; only the data type changes, and scaling is reset (slope 1, inter 0).

    Args:
        working: (x, y, z) array in working orientation.
        grid: the native grid of the image this result belongs to.
        path: target .nii or .nii.gz path; its folder is created.
        dtype: stored data type (e.g. np.uint8 for masks).
    """
    native = grid.to_native(np.asarray(working)).astype(dtype)
    header = grid.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(native.shape)
    image = nib.Nifti1Image(native, grid.affine, header)
    # nibabel promotes the affine into the sform; restore both of the input's forms and codes.
    source = grid.header
    image.header.set_sform(source.get_sform(), code=int(source["sform_code"]))
    image.header.set_qform(source.get_qform(), code=int(source["qform_code"]))
    image.header.set_slope_inter(1.0, 0.0)
    return atomic_save(image, path)


def atomic_save(image: nib.Nifti1Image, path: str | Path) -> Path:
    """nibabel save to a temporary name in the same folder, then rename into place."""
    with atomic_output(path) as temporary:
        nib.save(image, temporary)
    return Path(path)


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yields a temporary path beside ``path`` (same extension) to write to; on success it
    is renamed onto ``path`` (readable as a file made by open() would be), on any error
    it is removed. So a killed run never leaves a half-written file under the final name.
    The folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp made it 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Checks, without creating anything, that ``path`` can become an output folder.

    It may exist as a folder, or not exist below a writable folder. Call it while
    validating options, before any model loads or any folder is made.

    Raises:
        WMHError: ``path`` is an existing file, or its nearest existing parent is not a
            folder or not writable (one line naming the option and the path).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WMHError(f"{option} {path}: exists and is not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise WMHError(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WMHError(f"{option} {path}: {existing} is not writable")
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes a text file atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------- discovery

@dataclasses.dataclass(frozen=True)
class Subject:
    """One subject's files. Only FLAIR is required.

    Attributes:
        subject_id: unique id within the cohort.
        flair: FLAIR image.
        t1: T1 image, or None.
        labels: manual labels (0, 1 WMH, 2 other pathology) on the FLAIR grid, or None.
        site: scanner/site name, or None.
        split: 'train', 'validation' or 'test' when the manifest fixes it, else None.
        coregistered: True when the layout promises T1 already lies on the FLAIR grid
            (challenge ``pre/``), so T1->FLAIR registration is skipped.
        labels_observer2: a second rater's labels, or None.
        brain_mask: a user-supplied brain mask on the FLAIR grid, or None.
        participant: the person the scan belongs to (BIDS ``sub-`` entity, or a
            manifest's ``participant`` column); None: derived from the subject id
            (:func:`participant_of`). Splits keep a participant's sessions together.
    """

    subject_id: str
    flair: Path
    t1: Optional[Path] = None
    labels: Optional[Path] = None
    site: Optional[str] = None
    split: Optional[str] = None
    coregistered: bool = False
    labels_observer2: Optional[Path] = None
    brain_mask: Optional[Path] = None
    participant: Optional[str] = None

    @property
    def participant_id(self) -> str:
        """The participant: the explicit one, else derived from the subject id."""
        return self.participant or participant_of(self.subject_id)


SPLITS = ("train", "validation", "test")  # the subject splits (a manifest's split column, splits.json)
_BIDS_SUBJECT = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_ses-[A-Za-z0-9]+)?$")


def participant_of(subject_id: str) -> str:
    """The participant a subject id belongs to: ``sub-X`` for a BIDS ``sub-X_ses-Y``
    id, otherwise the id itself (one scan per participant)."""
    match = _BIDS_SUBJECT.match(subject_id)
    return match.group(1) if match else subject_id


def discover(source: str | Path) -> list[Subject]:
    """Finds the subjects of a cohort, whatever its layout.

    ``source`` may be a CSV manifest, a BIDS-like folder (``sub-*/``), a MICCAI WMH 2017
    challenge folder (``<site>/<id>/{pre,orig}/FLAIR.nii.gz``), one challenge site
    (``<id>/...``) or one challenge subject folder.

    Raises:
        WMHError: unknown layout, missing files, duplicate subject ids.
    """
    source = Path(source)
    if not source.exists():
        raise WMHError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return discover_manifest(source)
        raise WMHError(f"{source}: expected a folder or a .csv manifest")
    if any(source.glob("sub-*")):
        return discover_bids(source)
    subjects = discover_challenge(source)
    if not subjects:
        raise WMHError(f"{source}: no subjects found (expected the challenge layout "
                       "<site>/<id>/pre|orig/FLAIR.nii.gz, BIDS-like sub-*/anat/*_FLAIR.nii.gz, "
                       "or a CSV manifest)")
    return subjects


def _challenge_subject(folder: Path, site: Optional[str]) -> Optional[Subject]:
    for variant, coregistered in (("pre", True), ("orig", False)):
        flair = _find_nifti(folder / variant, "FLAIR")
        if flair is not None:
            return Subject(
                subject_id=folder.name, flair=flair, t1=_find_nifti(folder / variant, "T1"),
                labels=_find_nifti(folder, "wmh"), site=site, coregistered=coregistered,
                labels_observer2=_find_nifti(folder, "wmh_observer2"),
                brain_mask=_find_nifti(folder / variant, "brainmask"))
    return None


CHALLENGE_SPLIT_FOLDERS = ("training", "test", "testing")  # not part of a site name


def discover_challenge(root: str | Path) -> list[Subject]:
    """Challenge subjects (``<id>/pre|orig/FLAIR.nii.gz``) at any depth below ``root``.

    ``root`` may be one subject folder, one site, a challenge folder, or the public
    release's root, whose Amsterdam scanners nest a level deeper
    (``training/Amsterdam/GE3T/100``, ``test/Amsterdam/Philips_VU_PETMR_01/...``, beside
    ``training/Singapore/50``). The site is the path between ``root`` and the subject
    folder without ``training``/``test`` components (``Amsterdam/GE3T``); a subject
    folder given directly has no site. A subject folder is not searched further.

    Raises:
        WMHError: a folder holds ``wmh.nii.gz`` but no ``pre/`` or ``orig/`` FLAIR (it
            would otherwise be skipped silently), or duplicate subject ids.
    """
    root = Path(root)
    subject = _challenge_subject(root, None)
    if subject is not None:
        return [subject]
    subjects = []
    for folder, children, _ in os.walk(root):
        children.sort()
        folder = Path(folder)
        if folder == root:
            continue
        parts = [part for part in folder.relative_to(root).parent.parts
                 if part.lower() not in CHALLENGE_SPLIT_FOLDERS]
        site = "/".join(parts) if parts else (
            root.name if root.name.lower() not in CHALLENGE_SPLIT_FOLDERS else None)
        subject = _challenge_subject(folder, site)
        if subject is not None:
            subjects.append(subject)
            children[:] = []  # pre/ and orig/ are the subject's own
        elif _find_nifti(folder, "wmh") is not None:
            raise WMHError(f"{folder}: has wmh.nii.gz but no pre/FLAIR.nii.gz or "
                           "orig/FLAIR.nii.gz")
    _check_unique(subjects, root)
    return subjects


def discover_bids(root: str | Path) -> list[Subject]:
    """``sub-<label>[/ses-<label>]/anat/*_FLAIR.nii[.gz]`` with ``*_T1w`` and WMH masks.

    A WMH mask is ``*_label-WMH_mask.nii[.gz]`` beside the FLAIR, or the same name under
    ``derivatives/*/sub-<label>/...``.
    """
    root = Path(root)
    subjects = []
    for flair in sorted(root.glob("sub-*/**/anat/*_FLAIR.nii*")):
        if not flair.name.endswith(NIFTI_SUFFIXES):
            continue
        relative = flair.relative_to(root)
        entities = [part for part in relative.parts[:-2] if part.startswith(("sub-", "ses-"))]
        subject_id = "_".join(entities)
        prefix = strip_nifti_suffix(flair.name)[: -len("_FLAIR")]
        t1 = _first_existing(flair.parent, [f"{prefix}_T1w"])
        mask_names = [f"{prefix}_label-WMH_mask", f"{prefix}_space-FLAIR_label-WMH_mask"]
        labels = _first_existing(flair.parent, mask_names)
        if labels is None:
            for derivative in sorted((root / "derivatives").glob("*")):
                labels = _first_existing(derivative / relative.parent, mask_names)
                if labels is not None:
                    break
        brain = _first_existing(flair.parent, [f"{prefix}_desc-brain_mask"])
        subjects.append(Subject(subject_id=subject_id, flair=flair, t1=t1, labels=labels,
                                site=None, brain_mask=brain, participant=entities[0]))
    if not subjects:
        raise WMHError(f"{root}: BIDS-like folder has no sub-*/anat/*_FLAIR.nii.gz")
    _check_unique(subjects, root)
    return subjects


MANIFEST_COLUMNS = ("subject_id", "flair", "t1", "mask", "site", "split", "participant")


def discover_manifest(path: str | Path) -> list[Subject]:
    """A CSV with columns subject_id, flair, t1, mask, site, split, participant (only the
    first two required; also optional: brain_mask, mask_observer2). ``participant`` groups
    several scans (sessions) of one person, so a split never separates them. Relative
    paths are relative to the CSV's folder."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise WMHError(f"{path}: cannot read CSV manifest ({error})") from None
    if not rows:
        raise WMHError(f"{path}: manifest has no rows")
    columns = set(rows[0])
    missing = [c for c in ("subject_id", "flair") if c not in columns]
    if missing:
        raise WMHError(f"{path}: manifest lacks column '{missing[0]}' "
                       f"(columns: {', '.join(MANIFEST_COLUMNS)})")
    known = set(MANIFEST_COLUMNS) | {"brain_mask", "mask_observer2"}
    unknown = sorted(columns - known - {None})
    if unknown:
        raise WMHError(f"{path}: unknown manifest column '{unknown[0]}'")

    def optional_path(row: dict, column: str, line: int) -> Optional[Path]:
        value = (row.get(column) or "").strip()
        if not value:
            return None
        resolved = Path(value) if Path(value).is_absolute() else path.parent / value
        if not resolved.exists():
            raise WMHError(f"{path}: line {line}: {column} file not found: {value}")
        return resolved

    subjects = []
    for line, row in enumerate(rows, start=2):
        subject_id = (row.get("subject_id") or "").strip()
        if not subject_id:
            raise WMHError(f"{path}: line {line}: empty subject_id")
        if not (row.get("flair") or "").strip():
            raise WMHError(f"{path}: line {line}: subject '{subject_id}' has no flair")
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise WMHError(f"{path}: line {line}: split '{split}' is not one of "
                           f"{', '.join(SPLITS)}")
        subjects.append(Subject(
            subject_id=subject_id, flair=optional_path(row, "flair", line),
            t1=optional_path(row, "t1", line), labels=optional_path(row, "mask", line),
            site=(row.get("site") or "").strip() or None, split=split,
            brain_mask=optional_path(row, "brain_mask", line),
            labels_observer2=optional_path(row, "mask_observer2", line),
            participant=(row.get("participant") or "").strip() or None))
    _check_unique(subjects, path)
    return subjects


def _find_nifti(folder: Path, stem: str) -> Optional[Path]:
    return _first_existing(folder, [stem])


def _first_existing(folder: Path, stems: Iterable[str]) -> Optional[Path]:
    for stem in stems:
        for suffix in NIFTI_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _check_unique(subjects: list[Subject], source: Path) -> None:
    seen: dict[str, Path] = {}
    for subject in subjects:
        if subject.subject_id in seen:
            raise WMHError(f"{source}: duplicate subject id '{subject.subject_id}' "
                           f"({seen[subject.subject_id]} and {subject.flair})")
        seen[subject.subject_id] = subject.flair


# ------------------------------------------------------------------------ validation

@dataclasses.dataclass
class LoadedSubject:
    """A subject's images in working orientation, validated.

    Attributes:
        subject: the file record.
        flair: (x, y, z) float32.
        t1: (x', y', z') float32 on its own grid (the FLAIR grid when coregistered), or None.
        labels: (x, y, z) uint8 on the FLAIR grid, or None.
        flair_grid, t1_grid: native grids.
    """

    subject: Subject
    flair: np.ndarray
    flair_grid: NativeGrid
    t1: Optional[np.ndarray] = None
    t1_grid: Optional[NativeGrid] = None
    labels: Optional[np.ndarray] = None
    labels_observer2: Optional[np.ndarray] = None
    brain_mask: Optional[np.ndarray] = None


def load_subject(subject: Subject, use_t1: bool = True) -> LoadedSubject:
    """Loads and validates every file of a subject.

    Raises:
        WMHError: any bad file (named), T1 off the FLAIR grid where the layout promises
            co-registration, masks off the FLAIR grid or with labels outside {0, 1, 2}.
    """
    flair, flair_grid = load_image(subject.flair)
    loaded = LoadedSubject(subject=subject, flair=flair, flair_grid=flair_grid)
    if use_t1 and subject.t1 is not None:
        loaded.t1, loaded.t1_grid = load_image(subject.t1)
        if subject.coregistered:
            check_same_grid(flair_grid, loaded.t1_grid,
                            why="the layout promises T1 co-registered to FLAIR")
    if subject.labels is not None:
        loaded.labels, _ = load_labels(subject.labels, flair_grid)
    if subject.labels_observer2 is not None:
        loaded.labels_observer2, _ = load_labels(subject.labels_observer2, flair_grid)
    if subject.brain_mask is not None:
        brain, _ = load_labels(subject.brain_mask, flair_grid)
        if brain.max() > 1:
            raise WMHError(f"{subject.brain_mask}: brain mask must be binary (0/1)")
        loaded.brain_mask = brain.astype(bool)
    return loaded
