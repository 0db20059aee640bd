"""Where ``wmh segment`` puts each subject's files in OUT: a folder per subject, or BIDS
derivatives.

A layout maps a subject id to its *unit*, the folder below OUT that is written in staging
and swapped in whole (:func:`wmh.segment.outputs.publish_subject`), and each output (named
as in ``OUTPUT_FILES``) to its path inside the unit. The rest of the machinery (lock,
resume, failures, tables, QC page) is the same for both.

* ``folders`` (default): ``OUT/<subject_id>/wmh_probability.nii.gz``, ...
* ``bids``: OUT is a BIDS 1.9 derivatives dataset root (e.g. ``derivatives/wmh``); the unit
  is ``sub-<label>[/ses-<label>]`` and files carry the BIDS entities in the order
  sub, ses, space, label, desc, then the suffix::

      sub-01/ses-2/anat/sub-01_ses-2_space-FLAIR_label-WMH_desc-wmh_probseg.nii.gz

  Naming choice: BIDS 1.9 names the structure of a ``probseg``/``mask`` with ``label-``
  (``label-WMH``), and ``desc-`` tells variants apart. We write both: ``label-WMH`` makes
  the files the canonical WMH segmentation a BIDS tool looks for, and ``desc-wmh`` (this
  tool's prediction) keeps them distinct from manual masks named
  ``sub-X_space-FLAIR_label-WMH_mask``, which :func:`wmh.io.discover_bids` reads from
  ``derivatives/*/`` as *ground truth*; with ``label-WMH`` alone, segmenting into
  ``BIDS/derivatives/wmh`` would make the next training run take predictions for labels.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Optional

from wmh import __version__, io
from wmh.errors import WMHError

REPORT_FILE = "report.json"
DATASET_DESCRIPTION = "dataset_description.json"
BIDS_VERSION = "1.9.0"
BIDS_VOLUMES_FILE = "wmh_volumes.tsv"
BIDSIGNORE_FILE = ".bidsignore"

# Output (its folders-layout name) -> path inside the BIDS unit; {p} is sub-X[_ses-Y].
# The first four are BIDS derivative files; the others keep BIDS-like names with
# suffixes BIDS does not define, so .bidsignore lists them for the validator.
BIDS_NAMES = {
    "wmh_probability.nii.gz": "anat/{p}_space-FLAIR_label-WMH_desc-wmh_probseg.nii.gz",
    "wmh_mask.nii.gz": "anat/{p}_space-FLAIR_label-WMH_desc-wmh_mask.nii.gz",
    "brain_mask.nii.gz": "anat/{p}_space-FLAIR_desc-brain_mask.nii.gz",
    "wmh_lesions.nii.gz": "anat/{p}_space-FLAIR_desc-wmhlesions_dseg.nii.gz",
    "wmh_uncertainty.nii.gz": "anat/{p}_space-FLAIR_label-WMH_desc-wmh_uncertainty.nii.gz",
    "lesions.csv": "anat/{p}_space-FLAIR_desc-wmhlesions_lesions.csv",
    REPORT_FILE: "anat/{p}_desc-wmh_report.json",
    "qc.png": "figures/{p}_desc-wmh_qc.png",
}
# Outputs that get a JSON sidecar (same name, .json), and what each one is.
SIDECAR_DESCRIPTIONS = {
    "wmh_probability.nii.gz": "Probability of white matter hyperintensity per voxel, "
                              "0 outside the brain mask, on the input FLAIR grid",
    "wmh_mask.nii.gz": "White matter hyperintensity mask: probability >= Threshold inside "
                       "the brain mask, on the input FLAIR grid",
}
BIDSIGNORE = ("*_uncertainty.nii.gz", "*_lesions.csv", "*_report.json",
              "figures/", "volumes.csv", "index.html", BIDS_VOLUMES_FILE)
_LABEL = re.compile(r"^sub-([A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?$")


class FolderLayout:
    """``OUT/<subject_id>/<output name>``."""

    name = "folders"

    def unit(self, subject_id: str) -> Path:
        return Path(subject_id)

    def file(self, unit: Path, output: str) -> Path:
        """The path of ``output`` (an ``OUTPUT_FILES`` name) inside ``unit``."""
        return Path(output)

    def units(self, out_dir: Path) -> list[Path]:
        """Every unit in OUT that holds a report (hidden entries skipped), sorted."""
        return [Path(folder.name) for folder in sorted(out_dir.iterdir())
                if not folder.name.startswith(".") and folder.is_dir()
                and (folder / REPORT_FILE).is_file()]

    def entities(self, unit: Path) -> dict:
        return {}

    def check(self, out_dir: Path, subjects: Iterable[io.Subject]) -> None:
        """Refuses an OUT that already holds the other layout's outputs."""
        if (out_dir / DATASET_DESCRIPTION).is_file():
            raise WMHError(f"--out {out_dir}: holds BIDS derivatives "
                           f"({DATASET_DESCRIPTION}); use --layout bids or another folder")

    def write_sidecars(self, folder: Path, unit: Path, out_dir: Path,
                       report: dict) -> None:
        """No sidecars in this layout."""

    def publish(self, out_dir: Path, report: dict) -> None:
        """Nothing dataset-wide to write in this layout (called under the lock)."""


class BidsLayout(FolderLayout):
    """BIDS derivatives: see the module docstring."""

    name = "bids"

    def unit(self, subject_id: str) -> Path:
        participant, session = bids_labels(subject_id)
        unit = Path(f"sub-{participant}")
        return unit / f"ses-{session}" if session else unit

    def file(self, unit: Path, output: str) -> Path:
        return Path(BIDS_NAMES[output].format(p="_".join(unit.parts)))

    def units(self, out_dir: Path) -> list[Path]:
        found = []
        for pattern in ("sub-*/anat/*_desc-wmh_report.json",
                        "sub-*/ses-*/anat/*_desc-wmh_report.json"):
            found += [path.parent.parent.relative_to(out_dir)
                      for path in out_dir.glob(pattern)]
        return sorted(found)

    def entities(self, unit: Path) -> dict:
        """``participant_id`` and ``session_id`` (BIDS 'n/a' when there is no session)."""
        parts = unit.parts
        return {"participant_id": parts[0], "session_id": parts[1] if len(parts) > 1
                else "n/a"}

    def check(self, out_dir: Path, subjects: Iterable[io.Subject]) -> None:
        """Every id must map to its own unit, and the inputs (with OUT's dataset
        description) to one raw dataset; OUT must not hold folder-layout outputs."""
        if any((folder / REPORT_FILE).is_file() for folder in out_dir.glob("*")):
            raise WMHError(f"--out {out_dir}: holds folder-layout outputs "
                           f"(<subject>/{REPORT_FILE}); use --layout folders or another "
                           "folder")
        owners: dict[Path, str] = {}
        for subject in subjects:
            unit = self.unit(subject.subject_id)
            if unit in owners:
                raise WMHError(f"--layout bids: subject ids '{owners[unit]}' and "
                               f"'{subject.subject_id}' both become {'_'.join(unit.parts)} "
                               "(BIDS labels keep letters and digits only); rename one")
            owners[unit] = subject.subject_id
            existing = _read_json(out_dir / unit / self.file(unit, REPORT_FILE))
            if existing and existing.get("subject_id") != subject.subject_id:
                raise WMHError(f"--layout bids: subject id '{subject.subject_id}' becomes "
                               f"{'_'.join(unit.parts)}, which OUT already holds for "
                               f"'{existing.get('subject_id')}'; rename one")
        roots = {raw_root(subject.flair) for subject in subjects} - {None}
        linked = _read_json(out_dir / DATASET_DESCRIPTION).get("DatasetLinks", {}).get("raw")
        if linked is not None:
            roots.add((out_dir / linked).resolve())
        if len(roots) > 1:
            raise WMHError(f"--layout bids: the inputs (and OUT's {DATASET_DESCRIPTION}) "
                           f"name {len(roots)} BIDS datasets "
                           f"({', '.join(sorted(map(str, roots)))}); a derivatives folder "
                           "belongs to one raw dataset: use one --out per dataset")

    def write_sidecars(self, folder: Path, unit: Path, out_dir: Path,
                       report: dict) -> None:
        """The JSON sidecar of the probability map and of the mask (BIDS derivative
        metadata: Description, Sources, SkullStripped; plus the model, threshold and
        volumes)."""
        common = {
            "Sources": [source_uri(report["flair"], out_dir)],
            "SkullStripped": False,  # the input FLAIR's grid, head included
            "Threshold": report.get("threshold"),
            "MaskRule": report.get("mask_rule"),
            "Model": {key: report.get(key) for key in
                      ("model", "model_version", "model_arch", "model_sha256",
                       "wmh_version")},
            "Volumes": {key: report.get(key) for key in
                        ("total_ml", "periventricular_ml", "deep_ml", "lesion_count",
                         "brain_ml", "periventricular_mm")},
        }
        for output, description in SIDECAR_DESCRIPTIONS.items():
            image = folder / self.file(unit, output)
            sidecar = image.with_name(io.strip_nifti_suffix(image.name) + ".json")
            io.atomic_write_text(sidecar, json.dumps(
                {"Description": description, **common}, indent=2) + "\n")

    def publish(self, out_dir: Path, report: dict) -> None:
        """Adds this call's generator to ``dataset_description.json`` (written once, then
        updated atomically when a new wmh version or model writes here) and writes
        ``.bidsignore`` once; under the lock."""
        path = out_dir / DATASET_DESCRIPTION
        description = _read_json(path) or {
            "Name": "wmh: white matter hyperintensity segmentations",
            "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative", "GeneratedBy": []}
        generator = {"Name": "wmh", "Version": report.get("wmh_version") or __version__,
                     "Description": f"WMH segmentation with model {report.get('model')} "
                                    f"({report.get('model_arch')}, weights SHA-256 "
                                    f"{report.get('model_sha256')})"}
        changed = generator not in description["GeneratedBy"]
        if changed:
            description["GeneratedBy"].append(generator)
        root = raw_root(report["flair"]) if report.get("flair") else None
        if root is not None and "raw" not in description.get("DatasetLinks", {}):
            description.setdefault("DatasetLinks", {})["raw"] = os.path.relpath(root, out_dir)
            changed = True
        if changed:
            io.atomic_write_text(path, json.dumps(description, indent=2) + "\n")
        if not (out_dir / BIDSIGNORE_FILE).is_file():
            io.atomic_write_text(out_dir / BIDSIGNORE_FILE, "\n".join(BIDSIGNORE) + "\n")


LAYOUTS = {layout.name: layout for layout in (FolderLayout(), BidsLayout())}
FOLDERS = LAYOUTS["folders"]


def get_layout(name: str) -> FolderLayout:
    """The layout called ``name``; a one-line WMHError for another name."""
    if name not in LAYOUTS:
        raise WMHError(f"--layout {name}: must be one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def bids_labels(subject_id: str) -> tuple[str, Optional[str]]:
    """(participant label, session label or None) of a subject id: the entities of a
    BIDS id ``sub-X[_ses-Y]``, else the id with every character but letters and digits
    removed (``case_01`` -> ``case01``).

    Raises:
        WMHError: no letter or digit in the id.
    """
    match = _LABEL.match(subject_id)
    if match:
        return match.group(1), match.group(2)
    label = re.sub(r"[^A-Za-z0-9]", "", subject_id)
    if not label:
        raise WMHError(f"--layout bids: subject id '{subject_id}' has no letter or digit "
                       "to make a BIDS label of")
    return label, None


def raw_root(flair: str | Path) -> Optional[Path]:
    """The BIDS dataset a FLAIR file lies in (the folder above its ``sub-X`` folder,
    where the file name starts with ``sub-X_``), or None."""
    flair = Path(flair).resolve()
    for folder in flair.parents:
        if folder.name.startswith("sub-") and flair.name.startswith(folder.name + "_"):
            return folder.parent
    return None


def source_uri(flair: str | Path, out_dir: Path) -> str:
    """The input FLAIR as a BIDS URI into the raw dataset (``bids:raw:sub-X/...``, the
    ``raw`` link in dataset_description.json), or a path relative to the derivatives
    root (OUT) for inputs outside a BIDS dataset."""
    flair = Path(flair).resolve()
    root = raw_root(flair)
    if root is not None:
        return f"bids:raw:{flair.relative_to(root).as_posix()}"
    return Path(os.path.relpath(flair, Path(out_dir).resolve())).as_posix()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
