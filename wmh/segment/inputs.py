"""What ``wmh segment`` is given: subjects, their ids, and a cheap check of every file.

Ids: ``--subject-id`` when given, else from the layout: the challenge folder
(``.../<id>/pre/FLAIR.nii.gz`` or ``orig/``), the BIDS entities of the file name
(``sub-X[_ses-Y]``), the folder of a file named only ``flair.nii.gz`` (or a like generic
name), else the file name without its suffix. An id names a folder in OUT,
so it must be a plain name (no path separator, not empty, not hidden).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib

from wmh import io
from wmh.errors import WMHError

# File names that say only what the image is: the folder above names the subject.
GENERIC_STEMS = ("flair", "t2_flair", "flair_t2", "t2flair", "flair_brain")
_BIDS_ENTITY = re.compile(r"(?:^|_)((?:sub|ses)-[A-Za-z0-9]+)")


def default_subject_id(flair: Path) -> str:
    """The id a FLAIR file's place implies: challenge folder, BIDS entities, or its stem."""
    flair = Path(flair)
    if flair.parent.name in ("pre", "orig") and flair.parent.parent.name:
        return flair.parent.parent.name
    entities = _BIDS_ENTITY.findall(io.strip_nifti_suffix(flair.name))
    if entities and entities[0].startswith("sub-"):
        return "_".join(entities[:2] if len(entities) > 1 and
                        entities[1].startswith("ses-") else entities[:1])
    stem = io.strip_nifti_suffix(flair.name)
    if stem.lower() in GENERIC_STEMS and flair.parent.name:  # .../patient07/flair.nii.gz
        return flair.parent.name
    return stem


def check_subject_id(subject_id: str, source: str = "--subject-id") -> str:
    """Returns ``subject_id`` when it can name a folder; else a one-line WMHError."""
    if not subject_id or not subject_id.strip():
        raise WMHError(f"{source}: empty subject id")
    if "/" in subject_id or "\\" in subject_id or "\0" in subject_id:
        raise WMHError(f"{source} '{subject_id}': a subject id cannot hold a path separator")
    if subject_id.startswith(".") or subject_id != subject_id.strip():
        raise WMHError(f"{source} '{subject_id}': a subject id cannot start with '.' or "
                       "space")
    return subject_id


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Resolved inputs: the subjects, and whether they came as FLAIR [T1] files (one
    subject given directly: any bad file stops the command with exit 2)."""

    subjects: tuple[io.Subject, ...]
    direct: bool


def resolve_inputs(inputs: Sequence[str | Path | io.Subject],
                   subject_id: Optional[str] = None) -> Inputs:
    """Subjects from ``wmh segment`` arguments: FLAIR [T1] files, folders/CSV manifests,
    or :class:`wmh.io.Subject` records.

    Raises:
        WMHError: nothing given, mixed or too many files, a missing file, a bad or
            duplicate id, ``subject_id`` with anything but image files.
    """
    if inputs and all(isinstance(item, io.Subject) for item in inputs):
        if subject_id is not None:
            raise WMHError("--subject-id: only with FLAIR [T1] image files")
        subjects, direct = list(inputs), False
    else:
        paths = [Path(p) for p in inputs]
        if not paths:
            raise WMHError("wmh segment: give a subject folder, a cohort, or FLAIR [T1] files")
        images = [p for p in paths if p.name.endswith(io.NIFTI_SUFFIXES)]
        if images:
            if len(images) != len(paths) or len(images) > 2:
                raise WMHError("wmh segment: give either FLAIR [T1] image files or folders, "
                               f"not {len(paths)} mixed inputs")
            for path in images:
                if not path.is_file():
                    raise WMHError(f"{path}: file not found")
            name = default_subject_id(images[0]) if subject_id is None else subject_id
            subjects = [io.Subject(subject_id=check_subject_id(name), flair=images[0],
                                   t1=images[1] if len(images) == 2 else None)]
            return Inputs(tuple(subjects), direct=True)
        if subject_id is not None:
            raise WMHError("--subject-id: only with FLAIR [T1] image files, not folders "
                           "or manifests (their ids come from the layout)")
        subjects, direct = [s for path in paths for s in io.discover(path)], False
    seen = set()
    for subject in subjects:
        check_subject_id(subject.subject_id, f"{subject.flair}: subject id")
        if subject.subject_id in seen:
            raise WMHError(f"wmh segment: duplicate subject id '{subject.subject_id}' "
                           "among the inputs")
        seen.add(subject.subject_id)
    return Inputs(tuple(subjects), direct)


def check_header(path: Path) -> None:
    """Reads a NIfTI header only (fast): missing, unreadable, corrupt gzip, not 3D ->
    a one-line WMHError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise WMHError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        shape = tuple(image.header.get_data_shape())
    except PermissionError:
        raise WMHError(f"{path}: permission denied") from None
    except Exception as error:  # nibabel and gzip raise many types for unreadable headers
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WMHError(f"{path}: cannot read NIfTI header ({first_line})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise WMHError(f"{path}: expected a 3D image, got shape {shape}")
