"""The prior stage: the WMH prior of a training split, and the prepared subjects seen
through it (after :mod:`wmh.preprocess`, before :mod:`wmh.sampling`).

Location feature 8 (the WMH prior at each voxel's MNI coordinate) must not carry test
labels. With ``preprocess.prior: training`` (the default) the pipeline
(:func:`wmh.pipeline.ensure_prior`) splits the prepared cohort, builds the prior from the
training subjects' labels alone (:func:`split_prior`: their stored MNI coordinates, no
registration runs again) and writes a *prior view* of the prepared folder
(:func:`write_prior_view`), on which sampling, training, validation and the test
segmentation then run. A view folder holds:

* ``prior.nii.gz``: the training split's prior (the file the model folder copies);
* ``prior.json``: the training subjects, their counts, the prior's hash;
* ``<subject_id>.h5`` for every prepared subject (train, validation, test, unlabelled):
  every volume is an HDF5 external link (relative) into the original prepared file, but
  ``location``, whose feature 8 is recomputed with the new prior
  (:func:`wmh.location.prior_feature`, exactly what preparing the subject with that prior
  gives); the root attributes are copied, and the cache key and provenance are those of
  preparing the subject with the new prior, so ``wmh segment`` with a model trained here
  reuses the files instead of preparing the subjects again;
* ``manifest.json`` and ``origin.json`` as in a prepared folder (failures kept).

A training split with fewer than :data:`MIN_LESION_SUBJECTS` subjects holding WMH cannot
give a prior worth the name: the shipped (synthetic) prior is used instead, with a warning
the pipeline prints and records on the run (tag ``prior_warning``), and ``prior.json``
records the fallback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import h5py

from wmh import location
from wmh.config import PreprocessConfig, to_dict
from wmh.errors import WMHError
from wmh.preprocess import PreparedSubject, prepare_cohort
from wmh.preprocess.keys import code_version, config_hash
from wmh.tracking import content_hash, hash_files

PRIOR_FILE = "prior.nii.gz"
INFO_FILE = "prior.json"
MANIFEST_FILE = "manifest.json"
ORIGIN_FILE = "origin.json"
MIN_LESION_SUBJECTS = 3  # training subjects with WMH needed to build a prior
PRIOR_SPACING_MM = 4.0  # the prior grid (as `wmh prior build`'s default)


def split_prior(files: Sequence[Path], smoothing_mm: float,
                ) -> tuple[Optional[location.Prior], str]:
    """The prior of the training subjects' prepared files (Gaussian sigma ``smoothing_mm``,
    ``preprocess.prior_smoothing_mm``), or (None, why) when fewer than
    :data:`MIN_LESION_SUBJECTS` of them hold WMH voxels."""
    if not any(_has_labels_and_mni(path) for path in files):
        return None, "no labelled training subject with MNI coordinates"
    prior = build_prior_from_files(files, PRIOR_SPACING_MM, smoothing_mm)
    if (prior.lesion_subjects or 0) < MIN_LESION_SUBJECTS:
        return None, (f"{prior.lesion_subjects} of {prior.subjects} training subjects hold WMH"
                      f" (a prior needs {MIN_LESION_SUBJECTS})")
    return prior, ""


def _has_labels_and_mni(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as file:
            return "labels" in file and "mni_coordinates" in file
    except OSError:
        raise WMHError(f"{path}: corrupt prepared subject file (delete it and run wmh "
                       "prepare again)") from None


def prepared_files(prepared_dir: Path) -> list[Path]:
    """The subject files of a prepared folder: those its manifest lists, else every
    ``*.h5``."""
    manifest = _read_json(Path(prepared_dir) / MANIFEST_FILE)
    if manifest and isinstance(manifest.get("subjects"), list):
        return [Path(prepared_dir) / (entry.get("file") or f"{entry['subject_id']}.h5")
                for entry in manifest["subjects"]]
    return sorted(p for p in Path(prepared_dir).glob("*.h5") if not p.name.startswith("."))


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_info(view: Path) -> Optional[dict]:
    """A finished prior stage's ``prior.json``, or None."""
    return _read_json(Path(view) / INFO_FILE)


def write_prior_view(prepared_dir: Path, out: Path, train_ids: Sequence[str],
                     config: PreprocessConfig, use_t1: bool,
                     keys: Optional[Callable[[str, PreprocessConfig], Optional[str]]] = None,
                     ) -> dict:
    """Builds the prior of ``train_ids`` and the prior view of ``prepared_dir`` in ``out``
    (module docstring), atomically: written under a temporary name, then renamed.

    Args:
        prepared_dir: the prepared folder (``wmh prepare``).
        out: the view folder to create (must not exist).
        train_ids: the training split's subject ids.
        config: the preprocessing config the folder was prepared with.
        use_t1: whether the T1 channel was used.
        keys: (subject id, ``config`` with the new prior) -> that subject's cache key
            prepared so (:func:`wmh.preprocess.cache_key`), or None; a subject without
            one gets a key derived from its file's key and the prior's hash.

    Returns:
        The ``prior.json`` contents; ``fallback`` holds the warning when the split had
        too few lesions (no view is written then: only ``prior.json``).

    Raises:
        WMHError: a prepared file without MNI coordinates (naming it).
    """
    prepared_dir, out = Path(prepared_dir), Path(out)
    by_id = {path.stem: path for path in prepared_files(prepared_dir)}
    train_files = [by_id[subject_id] for subject_id in train_ids if subject_id in by_id]
    prior, why = split_prior(train_files, config.prior_smoothing_mm)
    info = {"train": sorted(train_ids), "prepared": str(prepared_dir.resolve()),
            "smoothing_mm": config.prior_smoothing_mm}
    temporary = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir(parents=True)
    try:
        if prior is None:
            info["fallback"] = (f"training split too small for a WMH prior ({why}): the "
                                "shipped synthetic prior gives location feature 8")
        else:
            prior_path = prior.save(temporary / PRIOR_FILE)
            saved = location.load_prior(prior_path)  # quantised: what the model folder holds
            sha = content_hash(prior_path)
            with_prior = dataclasses.replace(config, prior_path=str(prior_path))
            hashed_config = config_hash(with_prior, use_t1)
            final_config = {**to_dict(config), "prior_path": str(out.resolve() / PRIOR_FILE)}
            entries = []
            for subject_id, source in sorted(by_id.items()):
                key = _write_view_file(source, temporary / source.name, out, saved, sha,
                                       keys(subject_id, with_prior) if keys else None,
                                       hashed_config, final_config)
                entries.append({"subject_id": subject_id, "file": source.name,
                                "cache_key": key})
            _write_manifest(prepared_dir, temporary, entries, hashed_config, use_t1, sha)
            origin = prepared_dir / ORIGIN_FILE
            if origin.is_file():
                shutil.copyfile(origin, temporary / ORIGIN_FILE)
            info.update(prior_sha256=sha, subjects=prior.subjects,
                        lesion_subjects=prior.lesion_subjects,
                        lesion_voxels=prior.lesion_voxels)
        (temporary / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        try:
            os.rename(temporary, out)
        except OSError:
            if not (out / INFO_FILE).is_file():
                raise
            shutil.rmtree(temporary, ignore_errors=True)  # a concurrent build finished first
            return read_info(out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return info


def _write_view_file(source: Path, target: Path, out: Path, prior: location.Prior, sha: str,
                     key: Optional[str], hashed_config: str, final_config: dict) -> str:
    """One subject's view file (module docstring); returns its cache key."""
    # The view folder will be renamed to `out`, a sibling of the temporary folder: links
    # relative to `out` stay right.
    link = os.path.relpath(source.resolve(), out.resolve())
    with h5py.File(source, "r") as original, h5py.File(target, "w") as view:
        if "mni_coordinates" not in original:
            raise WMHError(f"{source}: no MNI coordinates to compute the training prior's "
                           "feature from (prepared by an older wmh: run wmh prepare again)")
        for name in original:
            if name != "location":
                view[name] = h5py.ExternalLink(link, f"/{name}")
        features = original["location"][()]
        features[..., location.PRIOR_INDEX] = location.prior_feature(
            original["mni_coordinates"][()], original["brain_mask"][()], prior)
        view.create_dataset("location", data=features, chunks=original["location"].chunks,
                            compression="lzf")
        for name, value in original.attrs.items():
            view.attrs[name] = value
        source_key = str(original.attrs.get("cache_key", ""))
        key = key or hash_files([], extra=f"{source_key}|prior={sha}")
        provenance = json.loads(original.attrs.get("provenance", "{}"))
        provenance.update(config=final_config, config_hash=hashed_config,
                          prior=final_config["prior_path"], prior_sha256=sha,
                          prior_view_of={"file": str(source.resolve()), "cache_key": source_key})
        view.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        view.attrs["cache_key"] = key
    return key


def _write_manifest(prepared_dir: Path, folder: Path, entries: list[dict],
                    hashed_config: str, use_t1: bool, sha: str) -> None:
    """The view's ``manifest.json``: its subjects and keys, the original's failures."""
    original = _read_json(prepared_dir / MANIFEST_FILE) or {}
    sites = {entry.get("subject_id"): entry for entry in original.get("subjects", [])
             if isinstance(entry, dict)}
    for entry in entries:
        known = sites.get(entry["subject_id"], {})
        entry.update(site=known.get("site"), split=known.get("split"))
    cohort = hash_files([], extra="\n".join(f"{e['subject_id']}:{e['cache_key']}"
                                            for e in entries))
    manifest = {"cohort_hash": cohort, "code_version": code_version(),
                "config_hash": hashed_config, "use_t1": bool(use_t1), "prior_sha256": sha,
                "prior_view_of": str(prepared_dir.resolve()), "subjects": entries,
                "failed": original.get("failed", {})}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def build_prior_from_files(paths: Iterable[str | Path], spacing_mm: float = 4.0,
                           smoothing_mm: float = 4.0) -> location.Prior:
    """:func:`wmh.location.build_prior` over PreparedSubject files; unlabelled subjects are skipped.

    Raises:
        WMHError: an unreadable file (named), or no labelled subject among them.
    """
    def labelled():
        for path in paths:
            prepared = PreparedSubject.load(path)
            if prepared.labels is not None and prepared.mni_coordinates is not None:
                yield prepared.mni_coordinates, prepared.labels, prepared.brain_mask

    return location.build_prior(labelled(), spacing_mm, smoothing_mm)


def build_prior_from_cohort(data: str | Path, config, spacing_mm: float = 4.0,
                            smoothing_mm: float = 4.0, workers: Optional[int] = None,
                            subject_ids: Optional[Iterable[str]] = None,
                            option: str = "--subjects") -> location.Prior:
    """The prior of a prepared folder (``*.h5``) or of a raw cohort, prepared first into
    ``<config.data.cache_dir>/prepared``.

    Args:
        data: prepared folder, cohort folder or CSV manifest.
        config: the experiment config (data and preprocess sections are used).
        workers: parallel subjects when preparing; None = ``preprocess.workers``.
        subject_ids: only these subjects (e.g. a training split); None = every labelled
            subject of ``data``, test subjects included.
        option: the option that gave ``subject_ids``, for error messages.

    Returns:
        The prior (``prior.subjects``: the labelled subjects it was built from).

    Raises:
        WMHError: nothing usable in ``data`` (named), or a subject of ``subject_ids`` not
            in it.
    """
    data = Path(data)
    files = sorted(data.glob("*.h5")) if data.is_dir() else []
    if not files:
        out = Path(config.data.cache_dir) / "prepared"
        report = prepare_cohort(data, out, config.preprocess, use_t1=config.data.use_t1,
                                workers=config.preprocess.workers if workers is None
                                else workers)
        files = sorted({**report.skipped, **report.prepared}.values())
    if subject_ids is not None:
        wanted = set(subject_ids)
        missing = sorted(wanted - {path.stem for path in files})
        if missing:
            raise WMHError(f"{option}: subject '{missing[0]}' is not among the prepared "
                           f"subjects of {data} ({len(missing)} missing)")
        files = [path for path in files if path.stem in wanted]
    return build_prior_from_files(files, spacing_mm, smoothing_mm)
