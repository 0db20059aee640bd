"""Shared set-up of the segment tests: a tiny model and tiny challenge-layout subjects whose
preparation is read from prepared files (no registration), so a segmentation takes ~1 s."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohorts import tiny_prepared_subject


def save_tiny_model(folder: Path, threshold: float = 0.5) -> Path:
    """A width-0.1 MSWS + Loc model (FLAIR and T1) with its contract, untrained."""
    from conftest import configure_tensorflow
    from wmh import train
    from wmh.config import ModelConfig
    from wmh.contract import ModelContract
    from wmh.models import build_model

    configure_tensorflow()
    config = ModelConfig(arch="msws", loc="ffcl", width=0.1)
    contract = ModelContract(model=config, channels=("FLAIR", "T1"),
                                   inplane_spacing_mm=1.0, threshold=threshold)
    return train.save_model_dir(build_model(config, 2), contract, folder)


def write_subject(cohort: Path, prepared_dir: Path, subject_id: str, seed: int = 3,
                  zoom: float = 1.0, labels: bool = True, shape=(36, 36, 4)):
    """``cohort/site/<id>/pre/{FLAIR,T1}.nii.gz`` (+ ``wmh.nii.gz``) and
    ``prepared_dir/<id>.h5``. With ``zoom`` < 1 the FLAIR file's grid is finer in-plane
    than the working grid (1 mm), so outputs are resampled onto it."""
    prepared = tiny_prepared_subject(subject_id, shape=shape, seed=seed)
    folder = cohort / "site" / subject_id
    (folder / "pre").mkdir(parents=True, exist_ok=True)
    if zoom == 1.0:
        affine = np.eye(4)
        flair, t1 = prepared.images[..., 0], prepared.images[..., 1]
    else:
        from scipy import ndimage

        affine = np.diag([zoom, zoom, 1.0, 1.0])
        factor = (1 / zoom, 1 / zoom, 1)
        flair = ndimage.zoom(prepared.images[..., 0], factor, order=1)
        t1 = ndimage.zoom(prepared.images[..., 1], factor, order=1)
        header = nib.Nifti1Header()
        header.set_data_shape(flair.shape)
        header.set_sform(affine, code=1)
        prepared.native_shape = flair.shape
        prepared.native_affine = affine
        prepared.native_header = header.binaryblock
    nib.save(nib.Nifti1Image(flair.astype(np.float32), affine), folder / "pre" / "FLAIR.nii.gz")
    nib.save(nib.Nifti1Image(t1.astype(np.float32), affine), folder / "pre" / "T1.nii.gz")
    if labels and zoom == 1.0:
        nib.save(nib.Nifti1Image(prepared.labels, affine), folder / "wmh.nii.gz")
    prepared_dir.mkdir(parents=True, exist_ok=True)
    prepared.save(prepared_dir / f"{subject_id}.h5")
    return prepared


def write_bids_subject(root: Path, prepared_dir: Path, participant: str,
                       session: str | None = None, seed: int = 3):
    """``root/sub-P[/ses-S]/anat/sub-P[_ses-S]_{FLAIR,T1w}.nii.gz`` and
    ``prepared_dir/sub-P[_ses-S].h5`` (the id :func:`wmh.io.discover_bids` gives)."""
    prefix = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    folder = root / f"sub-{participant}" / (f"ses-{session}" if session else "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    prepared = tiny_prepared_subject(prefix, shape=(36, 36, 4), seed=seed)
    for channel, suffix in enumerate(("FLAIR", "T1w")):
        nib.save(nib.Nifti1Image(prepared.images[..., channel].astype(np.float32), np.eye(4)),
                 folder / f"{prefix}_{suffix}.nii.gz")
    prepared_dir.mkdir(parents=True, exist_ok=True)
    prepared.save(prepared_dir / f"{prefix}.h5")
    return prepared


def prepare_from_files(monkeypatch, prepared_dir: Path, fail: dict | None = None,
                       warnings: dict | None = None) -> list[str]:
    """Makes ``wmh.preprocess.prepare_subject`` read ``prepared_dir/<id>.h5`` (fast);
    ``fail`` maps ids to an exception raised instead, ``warnings`` ids to a tuple set on
    the result. Returns the list of ids prepared, in call order."""
    from wmh import preprocess

    calls = []

    def prepare(subject, config, use_t1=True):
        calls.append(subject.subject_id)
        if fail and subject.subject_id in fail:
            raise fail[subject.subject_id]
        prepared = preprocess.PreparedSubject.load(prepared_dir / f"{subject.subject_id}.h5")
        if warnings and subject.subject_id in warnings:
            prepared.warnings = warnings[subject.subject_id]
        return prepared

    monkeypatch.setattr(preprocess, "prepare_subject", prepare)
    return calls


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """One tiny model folder per test module (threshold 0.5)."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "model")
