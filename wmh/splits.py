"""The prepared cohort as records, and its participant-grouped subject splits (pure numpy).

Records (:func:`read_prepared_cohort`): what the split needs of each prepared subject file
(id, site, participant, a split fixed by a CSV manifest, whether it is labelled, its cache
key), read from the HDF5 attributes only; :func:`cohort_hash` keys the prepared cohort
(the sample set's key and the prior stage's key start from it).

Splits (:func:`make_splits`), seeded and saved once per sample set as ``splits.json``
(by :mod:`wmh.sampling`):

* A subject whose prepared file carries a ``split`` (from a CSV manifest) keeps it.
* The other labelled subjects are shuffled with ``SamplingConfig.seed`` and dealt out:
  ``test_fraction`` and ``validation_fraction`` of them (rounded, at least one each when
  the fraction is positive), the rest train. Sessions of one participant (BIDS ``sub-``,
  a manifest's ``participant`` column) are dealt together, and follow a split the
  manifest fixed for one of them, so a person never straddles two splits. With
  ``split_by_site`` whole sites are dealt out instead, so no site of a non-fixed subject
  straddles two splits.
* Unlabelled subjects cannot be sampled: they are listed as ``unlabelled`` (or stay in a
  fixed ``test`` split); a fixed ``train``/``validation`` split without labels is an error.
* ``train_size_fraction`` (paper, Table 6) keeps the first share of a seeded order of the
  training subjects, so the 50% subset is inside the 100% set; the rest is listed as
  ``train_unused``. Validation and test do not depend on it.

The prior stage splits the cohort with exactly this code before the samples are drawn, so
both stages hash it (:data:`wmh.tracking.STAGE_CODE`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np

from wmh import io
from wmh.config import SamplingConfig
from wmh.errors import WMHError
from wmh.io import SPLITS
from wmh.tracking import hash_files

MANIFEST_FILE = "manifest.json"
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                 "val": "validation", "valid": "validation", "test": "test",
                 "testing": "test"}


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass(frozen=True)
class PreparedRecord:
    """What the split needs to know about one prepared subject file (attributes only).

    Attributes:
        path: the subject's HDF5 file.
        subject_id: unique id within the cohort.
        site: scanner/site, or None.
        split: 'train' / 'validation' / 'test' fixed by the manifest, or None.
        labelled: whether the file holds manual labels.
        cache_key: the prepare stage's key for the file ('' when absent).
        participant: the person scanned (several sessions share it); defaults to the one
            the subject id implies (:func:`wmh.io.participant_of`).
    """

    path: Path
    subject_id: str
    site: Optional[str]
    split: Optional[str]
    labelled: bool
    cache_key: str
    participant: str = ""

    @property
    def participant_id(self) -> str:
        return self.participant or io.participant_of(self.subject_id)




def text_attr(attrs, name: str) -> Optional[str]:
    """An HDF5 text attribute as str, None when absent, empty or 'None'."""
    value = attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    value = str(value)
    return value if value and value != "None" else None


def read_prepared_cohort(prepared_dir: str | Path) -> list[PreparedRecord]:
    """The prepared subjects in a folder (``*.h5`` written by ``wmh prepare``), by id.

    Raises:
        WMHError: missing folder, no subjects, an unreadable file, an unknown split
            name or a duplicated subject id (each naming the file).
    """
    import h5py

    prepared_dir = Path(prepared_dir)
    if not prepared_dir.is_dir():
        raise WMHError(f"{prepared_dir}: prepared folder not found (run wmh prepare)")
    paths = _manifest_files(prepared_dir)
    if paths is None:  # no manifest: every subject file in the folder
        paths = sorted(p for p in prepared_dir.glob("*.h5") if not p.name.startswith("."))
    if not paths:
        raise WMHError(f"{prepared_dir}: no prepared subject files (*.h5)")
    records, seen = [], {}
    for path in paths:
        try:
            with h5py.File(path, "r") as file:
                attrs = file.attrs
                subject_id = text_attr(attrs, "subject_id") or path.stem
                split = text_attr(attrs, "split")
                record = PreparedRecord(path=path, subject_id=subject_id,
                                        site=text_attr(attrs, "site"), split=None,
                                        labelled="labels" in file,
                                        cache_key=text_attr(attrs, "cache_key") or "",
                                        participant=text_attr(attrs, "participant") or "")
                if "images" not in file or "brain_mask" not in file or "location" not in file:
                    raise WMHError(f"{path}: prepared subject file lacks images, brain_mask "
                                   "or location")
        except OSError as error:
            first_line = str(error).splitlines()[0] if str(error) else "unreadable"
            raise WMHError(f"{path}: corrupt prepared subject file ({first_line})") from None
        if split is not None:
            if split.lower() not in SPLIT_ALIASES:
                raise WMHError(f"{path}: unknown split '{split}' (expected train, "
                               "validation or test)")
            record = dataclasses.replace(record, split=SPLIT_ALIASES[split.lower()])
        if subject_id in seen:
            raise WMHError(f"{path}: subject id '{subject_id}' also in {seen[subject_id]}")
        seen[subject_id] = path
        records.append(record)
    return sorted(records, key=lambda record: record.subject_id)


def _manifest_files(prepared_dir: Path) -> Optional[list[Path]]:
    """The subject files ``manifest.json`` lists (stale files of subjects that left the
    cohort are ignored), or None without a manifest."""
    path = prepared_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text()).get("subjects", [])
        if isinstance(entries, dict):  # {subject_id: cache_key}
            names = [f"{subject_id}.h5" for subject_id in entries]
        else:  # wmh.preprocess.write_manifest: [{"subject_id", "file", ...}]
            names = [entry.get("file") or f"{entry['subject_id']}.h5" for entry in entries]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        raise WMHError(f"{path}: unreadable prepared-cohort manifest (run wmh prepare "
                       "again)") from None
    files = sorted(prepared_dir / name for name in names)
    for file in files:
        if not file.is_file():
            raise WMHError(f"{file}: listed in {path} but missing (run wmh prepare again)")
    return files


def cohort_hash(prepared_dir: str | Path, records: list[PreparedRecord]) -> str:
    """Hash of the prepared cohort: ``manifest.json`` and each subject's cache key
    (a subject file without a cache key is hashed byte for byte)."""
    prepared_dir = Path(prepared_dir)
    manifest = prepared_dir / MANIFEST_FILE
    keyed = [(r.path.name, r.subject_id, r.cache_key) for r in records if r.cache_key]
    unkeyed = [r.path for r in records if not r.cache_key]
    files = ([manifest] if manifest.is_file() else []) + unkeyed
    return hash_files(files, extra=json.dumps(keyed))


# ------------------------------------------------------------------------------ splits

def check_fraction(name: str, value: float, upper_inclusive: bool = False) -> None:
    """``sampling.<name>`` lies in [0, 1) (or [0, 1]).

    Raises:
        WMHError: naming the option.
    """
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        raise WMHError(f"option sampling.{name}: must be in [0, 1{']' if upper_inclusive else ')'}"
                       f", got {value}")


def share(fraction: float, total: int) -> int:
    """round(fraction x total), at least 1 when the fraction is positive and total > 0."""
    if fraction <= 0 or total == 0:
        return 0
    return max(1, int(round(fraction * total)))


def make_splits(records: list[PreparedRecord], config: SamplingConfig) -> dict[str, list[str]]:
    """Subject-level train/validation/test split (see the module docstring).

    Args:
        records: the cohort (:func:`read_prepared_cohort`).
        config: seed, fractions, ``split_by_site``, ``train_size_fraction``.

    Returns:
        ``{"train", "train_unused", "validation", "test", "unlabelled"}`` -> sorted
        subject ids; ``train`` holds the ``train_size_fraction`` subset actually used.

    Raises:
        WMHError: bad fractions, too few subjects or sites, or a fixed train/validation
            split on a subject without labels (naming its file).
    """
    check_fraction("test_fraction", config.test_fraction)
    check_fraction("validation_fraction", config.validation_fraction)
    if not 0.0 < config.train_size_fraction <= 1.0:
        raise WMHError("option sampling.train_size_fraction: must be in (0, 1], got "
                       f"{config.train_size_fraction}")
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    splits["unlabelled"] = []
    fixed = _participant_splits(records)
    free = []
    for record in records:
        split = record.split or fixed.get(record.participant_id)
        if split is not None:
            if not record.labelled and split != "test":
                raise WMHError(f"{record.path}: split '{split}' fixed by the manifest "
                               "but the subject has no labels to sample")
            splits[split].append(record.subject_id)
        elif record.labelled:
            free.append(record)
        else:
            splits["unlabelled"].append(record.subject_id)
    rng = np.random.default_rng([config.seed, 0])
    total = len(free)
    n_test = share(config.test_fraction, total)
    n_validation = share(config.validation_fraction, total)
    if total and n_test + n_validation >= total:
        raise WMHError(f"options sampling.test_fraction and validation_fraction leave no "
                       f"training subject among {total} unfixed labelled subjects")
    if config.split_by_site:
        by_site: dict[str, list[str]] = {}
        for record in free:
            by_site.setdefault(record.site or "", []).append(record.subject_id)
        sites = sorted(by_site)
        needed = 1 + (n_test > 0) + (n_validation > 0)
        if total and len(sites) < needed:
            raise WMHError(f"option sampling.split_by_site: needs at least {needed} sites, "
                           f"found {len(sites)}")
        order = [sites[i] for i in rng.permutation(len(sites))]
        # Deal whole sites, test first, then validation, while each is short of its share,
        # always keeping a site for each split still to be served.
        dealt: dict[str, list[str]] = {name: [] for name in SPLITS}
        for position, site in enumerate(order):
            sites_left = len(order) - position
            validation_waiting = 1 if n_validation and not dealt["validation"] else 0
            if len(dealt["test"]) < n_test and sites_left > 1 + validation_waiting:
                target = "test"
            elif len(dealt["validation"]) < n_validation and sites_left > 1:
                target = "validation"
            else:
                target = "train"
            dealt[target].extend(by_site[site])
        for name in SPLITS:
            splits[name].extend(dealt[name])
    else:
        # Deal whole participants (one or more sessions each) in a seeded order: test until
        # it holds its share of subjects, then validation, the rest train. With one scan per
        # participant this is a plain shuffle of the subjects.
        by_participant: dict[str, list[str]] = {}
        for record in free:
            by_participant.setdefault(record.participant_id, []).append(record.subject_id)
        people = sorted(by_participant)
        for index in rng.permutation(len(people)):
            ids = by_participant[people[index]]
            if len(splits["test"]) < n_test:
                splits["test"].extend(ids)
            elif len(splits["validation"]) < n_validation:
                splits["validation"].extend(ids)
            else:
                splits["train"].extend(ids)
        if total and not splits["train"]:
            raise WMHError(f"options sampling.test_fraction and validation_fraction leave no "
                           f"training participant among {len(people)} (sessions of one "
                           "participant stay together)")
    if splits["train"] and not splits["validation"]:
        raise WMHError(f"option sampling.validation_fraction: {config.validation_fraction} "
                       "leaves no validation subject and the manifest fixes none; training "
                       "needs one to keep the best epoch and choose the threshold")
    used = training_subset(splits["train"], config.train_size_fraction, config.seed)
    splits["train_unused"] = sorted(set(splits["train"]) - set(used))
    splits["train"] = sorted(used)
    for name in ("validation", "test", "unlabelled"):
        splits[name] = sorted(splits[name])
    return splits


def _participant_splits(records: list[PreparedRecord]) -> dict[str, str]:
    """participant -> the split the manifest fixed for one of their sessions, so their
    other sessions follow it.

    Raises:
        WMHError: two sessions of one participant fixed to different splits.
    """
    fixed: dict[str, PreparedRecord] = {}
    for record in records:
        if record.split is None:
            continue
        other = fixed.setdefault(record.participant_id, record)
        if other.split != record.split:
            raise WMHError(f"{record.path}: participant '{record.participant_id}' is fixed to "
                           f"split '{record.split}' here and '{other.split}' in {other.path}")
    return {participant: record.split for participant, record in fixed.items()}


def training_subset(train_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The first ``ceil(fraction x n)`` (at least 1) of a seeded order of the training
    subjects: nested, so a smaller fraction's subjects are inside a larger one's."""
    ids = sorted(train_ids)
    if not ids or fraction >= 1.0:
        return ids
    order = np.random.default_rng([seed, 1]).permutation(len(ids))
    keep = max(1, int(np.ceil(fraction * len(ids) - 1e-9)))
    return [ids[i] for i in order[:keep]]
