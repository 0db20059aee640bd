"""The files ``wmh segment`` writes, and how they reach a shared output folder safely.

A subject's outputs are written into a private staging folder inside OUT, then swapped
into its unit (``OUT/<subject_id>/``, or ``OUT/sub-X[/ses-Y]/`` in the BIDS layout: see
:mod:`.layouts`) with renames under an exclusive lock (``OUT/.wmh.lock``), and the cohort
files (``volumes.csv``, ``index.html``, in BIDS ``wmh_volumes.tsv``) are rebuilt, under
the same lock, from every subject's report in OUT. So
several calls (a cluster job array) may write into one OUT: each adds or replaces its own
subjects and the table lists them all. Folders follow the user's umask as files do.
Temporary folders carry their writer's ``pid@host``, so those a killed process left behind
are removed by the next writer on that host.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from wmh import io
from wmh.segment.layouts import BIDS_VOLUMES_FILE, FOLDERS, REPORT_FILE, FolderLayout
from wmh.segment.page import cohort_page

LOCK_FILE = ".wmh.lock"
VOLUMES_FILE = "volumes.csv"
INDEX_FILE = "index.html"

# Every file `wmh segment` writes: per subject in OUT/<subject_id>/, and VOLUMES_FILE in OUT.
# The README's "Outputs of `wmh segment`" section describes each (a test keeps them equal).
OUTPUT_FILES = {
    "wmh_probability.nii.gz": "P(WMH) per voxel, float32 in [0, 1], exactly 0 outside "
                              "brain_mask; native FLAIR grid",
    "wmh_mask.nii.gz": "the segmentation, uint8 0/1: wmh_probability >= threshold (the "
                       "threshold in report.json) inside the brain mask",
    "wmh_lesions.nii.gz": "int32 lesion labels 1..lesion_count (26-connected components of "
                          "wmh_mask), 0 elsewhere; labels as in lesions.csv",
    "lesions.csv": "one row per lesion: label, volume_ml, centroid_x/y/z_mm (scanner "
                   "coordinates, mm), region (periventricular or deep), max_probability",
    "brain_mask.nii.gz": "uint8 0/1 brain mask the voxels were classified in",
    "wmh_uncertainty.nii.gz": "only with --mc-samples N: float32 standard deviation of "
                              "P(WMH) over N Monte Carlo dropout passes",
    "qc.png": "QC image: FLAIR with the mask, and the probability map with the "
              "periventricular band outlined, on evenly spaced axial slices",
    REPORT_FILE: "the subject's volumes (mL), settings, metrics and provenance; status "
                 "'failed' and the error for a subject that failed (then the only file)",
    VOLUMES_FILE: "in OUT: one row per subject folder (every scalar field of report.json)",
    INDEX_FILE: "in OUT: the cohort QC page, every subject's QC image, volumes, status, "
                "warnings and error in a sortable table",
}
# Files only the BIDS layout writes, in OUT (the derivatives dataset root).
BIDS_OUTPUT_FILES = {
    "dataset_description.json": "BIDS derivative dataset description: BIDSVersion, "
                                "DatasetType derivative, GeneratedBy (wmh version, model)",
    BIDS_VOLUMES_FILE: "participant_id, session_id, then the volumes.csv columns, one row "
                       "per subject ('n/a' where not known)",
    ".bidsignore": "the files of OUT that BIDS does not define, for the BIDS validator",
}

# The columns of volumes.csv, in order: every scalar field a report.json may hold.
REPORT_COLUMNS = (
    "subject_id", "status", "error",
    "total_ml", "periventricular_ml", "deep_ml", "lesion_count", "brain_ml",
    "threshold", "calibration", "mask_rule", "periventricular_mm", "mc_samples", "precision",
    "dice", "hd95_mm", "avd_percent", "lesion_recall", "lesion_f1",
    "warnings", "model", "model_version", "model_path", "model_arch", "model_sha256",
    "wmh_version", "date_utc",
    "flair", "flair_sha256", "t1", "t1_sha256", "seconds",
)


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_staging_dir(out_dir: Path, subject_id: str) -> Path:
    """A new hidden folder inside ``out_dir`` (created) to write one subject into, with
    the permissions an ordinary ``mkdir`` would give (mkdtemp makes 0700)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{subject_id}.{_owner()}.", suffix=".staging",
                                    dir=out_dir))
    os.chmod(staging, 0o777 & ~current_umask())
    return staging


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``OUT/.wmh.lock`` (blocks until free; released on exit,
    also when the process dies)."""
    descriptor = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def publish_subject(staging: Path, out_dir: Path, subject_id: str,
                    layout: FolderLayout = FOLDERS) -> Path:
    """Swaps ``staging`` into the subject's unit (``OUT/<subject_id>``) and rebuilds the
    cohort files, under the lock.

    The previous folder is renamed aside first and removed only after the new one is in
    place, so the unit is at every moment either the old or the new outputs.
    """
    unit = layout.unit(subject_id)
    final = out_dir / unit
    with out_dir_lock(out_dir):
        final.parent.mkdir(parents=True, exist_ok=True)
        previous = None
        if final.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{subject_id}.{_owner()}.",
                                             suffix=".old", dir=out_dir))
            os.replace(final, previous / subject_id)
        os.replace(staging, final)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        remove_abandoned(out_dir)
        layout.publish(out_dir, read_report(final / layout.file(unit, REPORT_FILE)) or {})
        rebuild_tables(out_dir, layout)
    return final


def _owner() -> str:
    """'<pid>@<host>' of this process, in the names of its temporary folders."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())
    return f"{os.getpid()}@{host}"


def remove_abandoned(out_dir: Path) -> list[Path]:
    """Removes the temporary folders (``.*.staging``, ``.*.old``) that a process of this
    host left behind when it was killed (its pid no longer runs); call under the lock.
    Folders of live processes and of other hosts are kept."""
    host = _owner().split("@", 1)[1]
    removed = []
    for entry in out_dir.glob(".*@*"):
        if not entry.name.endswith((".staging", ".old")) or not entry.is_dir():
            continue
        owner = next((part for part in entry.name.split(".") if "@" in part), "")
        pid, _, owner_host = owner.partition("@")
        if owner_host != host or not pid.isdigit() or _is_running(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def write_subject_folder(out_dir: Path, subject_id: str, write,
                         layout: FolderLayout = FOLDERS) -> Path:
    """Calls ``write(staging_folder)`` then publishes it; on any error nothing is left.
    ``write`` puts each output at ``layout.file(layout.unit(subject_id), name)``."""
    staging = make_staging_dir(out_dir, str(layout.unit(subject_id)).replace(os.sep, "_"))
    try:
        write(staging)
        return publish_subject(staging, out_dir, subject_id, layout)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def json_value(value):
    """A JSON-safe scalar: numpy types to Python, NaN/Inf to None."""
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_report(folder: Path, report: dict, name: str | Path = REPORT_FILE) -> Path:
    """``report.json`` (or ``name`` in ``folder``): scalars, plus lists (warnings) and
    dicts kept as they are."""
    values = {key: (json_value(value) if not isinstance(value, (list, tuple, dict))
                    else list(value) if isinstance(value, tuple) else value)
              for key, value in report.items()}
    return io.atomic_write_text(folder / name, json.dumps(values, indent=2) + "\n")


def read_report(path: Path) -> dict | None:
    """A report (``path``, or ``path/report.json`` for a folder), or None when missing or
    unreadable."""
    path = Path(path)
    try:
        return json.loads((path / REPORT_FILE if path.is_dir() else path).read_text())
    except (OSError, ValueError):
        return None


def csv_row(report: dict) -> dict:
    """The volumes.csv row of a report: every column, lists joined with '; '."""
    row = {}
    for column in REPORT_COLUMNS:
        value = report.get(column)
        if isinstance(value, (list, tuple)):
            value = "; ".join(str(item) for item in value)
        value = json_value(value)
        row[column] = "" if value is None else value
    return row


def subject_reports(out_dir: Path, layout: FolderLayout = FOLDERS) -> list[tuple[Path, dict]]:
    """(unit, report) of every subject unit in ``out_dir`` (hidden entries skipped), in
    the order of their folders."""
    entries = []
    for unit in layout.units(out_dir):
        report = read_report(out_dir / unit / layout.file(unit, REPORT_FILE))
        if report is not None:
            entries.append((unit, report))
    return entries


def rebuild_tables(out_dir: Path, layout: FolderLayout = FOLDERS) -> Path:
    """Rewrites ``OUT/volumes.csv``, ``OUT/index.html`` and, in the BIDS layout,
    ``OUT/wmh_volumes.tsv`` from every subject present (call under the lock). Returns
    the path of volumes.csv."""
    entries = subject_reports(out_dir, layout)
    path = out_dir / VOLUMES_FILE
    _write_table(path, REPORT_COLUMNS, [csv_row(report) for _, report in entries], ",")
    if layout.name == "bids":
        rows = [{**layout.entities(unit), **{key: "n/a" if value == "" else value
                                             for key, value in csv_row(report).items()}}
                for unit, report in entries]
        _write_table(out_dir / BIDS_VOLUMES_FILE,
                     ("participant_id", "session_id", *REPORT_COLUMNS), rows, "\t")
    pages = []
    for unit, report in entries:
        image = unit / layout.file(unit, "qc.png")
        pages.append((report, image if (out_dir / image).is_file() else None,
                      unit / layout.file(unit, REPORT_FILE)))
    title = f"wmh segment, {out_dir.resolve().name}/"
    io.atomic_write_text(out_dir / INDEX_FILE, cohort_page(pages, title))
    return path


def _write_table(path: Path, columns, rows: list[dict], delimiter: str) -> None:
    with io.atomic_output(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, delimiter=delimiter,
                                lineterminator="\n" if delimiter == "\t" else "\r\n")
        writer.writeheader()
        writer.writerows(rows)
