"""wmh segment: subject ids, and every check that must come before the model loads."""

import gzip
import re

import nibabel as nib
import numpy as np
import pytest

from segment_helpers import tiny_model, write_subject  # noqa: F401 (fixture)
from wmh.cli import main
from wmh.errors import WMHError
from wmh.segment import SegmentOptions, default_subject_id, resolve_inputs, segment
from wmh.segment.subject import SegmentModel


@pytest.mark.parametrize("path, expected", [
    ("/data/wmh/Utrecht/17/pre/FLAIR.nii.gz", "17"),
    ("/data/wmh/Utrecht/17/orig/FLAIR.nii", "17"),
    ("/bids/sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz", "sub-01_ses-02"),
    ("/bids/sub-01/anat/sub-01_acq-2d_FLAIR.nii.gz", "sub-01"),
    ("/scans/patient7_flair.nii.gz", "patient7_flair"),
    ("/openms/patient07/flair.nii.gz", "patient07"),
])
def test_default_subject_id_from_the_layout(path, expected):
    assert default_subject_id(path) == expected


def test_subject_id_option_and_its_checks(tmp_path):
    flair = tmp_path / "s002" / "orig" / "FLAIR.nii.gz"
    flair.parent.mkdir(parents=True)
    flair.write_bytes(b"")
    assert resolve_inputs([flair]).subjects[0].subject_id == "s002"
    assert resolve_inputs([flair], "P-17").subjects[0].subject_id == "P-17"
    assert resolve_inputs([flair]).direct
    with pytest.raises(WMHError, match=r"^--subject-id 'a/b': a subject id cannot hold a "
                                       r"path separator$"):
        resolve_inputs([flair], "a/b")
    with pytest.raises(WMHError, match=r"^--subject-id: empty subject id$"):
        resolve_inputs([flair], " ")
    with pytest.raises(WMHError, match=r"^--subject-id '\.\.': a subject id cannot start "):
        resolve_inputs([flair], "..")
    with pytest.raises(WMHError, match=r"^--subject-id: only with FLAIR \[T1\] image files"):
        resolve_inputs([tmp_path], "x")


def _forbid_model_load(monkeypatch):
    def fail(self):
        raise AssertionError("the model loaded before the inputs were checked")
    monkeypatch.setattr(SegmentModel, "load", fail)


@pytest.mark.parametrize("options, message", [
    (["--threshold", "-0.1"], r"--threshold -0\.1: must lie in \[0, 1\]"),
    (["--threshold", "1.5"], r"--threshold 1\.5: must lie in \[0, 1\]"),
    (["--mc-samples", "-1"], r"--mc-samples -1: must be 0 or more"),
    (["--periventricular-mm", "0"], r"--periventricular-mm 0\.0: must be more than 0"),
    (["--subject-id", "a/b"], r"--subject-id 'a/b': a subject id cannot hold a path"),
])
def test_bad_options_exit_2_before_anything(tmp_path, tiny_model, monkeypatch, capsys,
                                            options, message):
    write_subject(tmp_path / "cohort", tmp_path / "prepared", "c1")
    _forbid_model_load(monkeypatch)
    flair = tmp_path / "cohort" / "site" / "c1" / "pre" / "FLAIR.nii.gz"
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--model", str(tiny_model), str(flair), "--out",
              str(tmp_path / "out"), *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wmh: error: ")
    assert re.search(message, err[0])
    assert not (tmp_path / "out").exists()


def _bad_files(folder):
    """name -> (path, message pattern) for files whose header cannot be used."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(b"this is not gzip at all" * 20)
    truncated_gzip = folder / "truncated.nii.gz"
    truncated_gzip.write_bytes(gzip.compress(b"\x00" * 40))
    four_d = folder / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), four_d)
    return {"corrupt": (corrupt, r"corrupt\.nii\.gz: cannot read NIfTI header"),
            "truncated": (truncated_gzip, r"truncated\.nii\.gz: cannot read NIfTI header"),
            "4d": (four_d, r"4d\.nii\.gz: expected a 3D image, got shape \(4, 4, 4, 2\)"),
            "missing": (folder / "missing.nii.gz", r"missing\.nii\.gz: file not found")}


@pytest.mark.parametrize("case", ["corrupt", "truncated", "4d", "missing"])
def test_a_bad_file_given_directly_exits_2_naming_it(tmp_path, tiny_model, monkeypatch,
                                                     capsys, case):
    path, message = _bad_files(tmp_path / "bad")[case]
    _forbid_model_load(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--model", str(tiny_model), str(path), "--out",
              str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0])
    assert not (tmp_path / "out").exists()


def test_a_bad_t1_given_directly_is_found_before_the_model_loads(tmp_path, tiny_model,
                                                                monkeypatch):
    write_subject(tmp_path / "cohort", tmp_path / "prepared", "c1")
    flair = tmp_path / "cohort" / "site" / "c1" / "pre" / "FLAIR.nii.gz"
    t1, message = _bad_files(tmp_path / "bad")["corrupt"]
    _forbid_model_load(monkeypatch)
    with pytest.raises(WMHError, match=message):
        segment(tiny_model, [flair, t1], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file(tmp_path, tiny_model, monkeypatch):
    write_subject(tmp_path / "cohort", tmp_path / "prepared", "c1")
    (tmp_path / "taken").write_text("a file")
    _forbid_model_load(monkeypatch)
    with pytest.raises(WMHError, match=r"^--out .*taken: exists and is not a folder$"):
        segment(tiny_model, [tmp_path / "cohort"], tmp_path / "taken", SegmentOptions(),
                progress=False)


def test_model_needing_t1_on_flair_only_input(tmp_path, tiny_model, capsys):
    write_subject(tmp_path / "cohort", tmp_path / "prepared", "c1")
    flair = tmp_path / "cohort" / "site" / "c1" / "pre" / "FLAIR.nii.gz"
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--model", str(tiny_model), str(flair), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "FLAIR.nii.gz: the model needs FLAIR and T1" in err and "has no T1" in err
    assert not (tmp_path / "o").exists()


def test_missing_model(tmp_path):
    write_subject(tmp_path / "cohort", tmp_path / "prepared", "c1")
    with pytest.raises(WMHError, match=r"--model .*nowhere: missing model\.keras"):
        segment(tmp_path / "nowhere", [tmp_path / "cohort"], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_segment_options_carry_every_field_of_the_segment_config():
    import dataclasses

    from wmh.config import SegmentConfig
    from wmh.segment.subject import SegmentOptions

    config = SegmentConfig(threshold=0.3, mc_samples=2, periventricular_mm=5.0,
                           precision="fp32")
    options = SegmentOptions.from_config(config)
    assert {field.name: getattr(options, field.name)
            for field in dataclasses.fields(SegmentConfig)} == dataclasses.asdict(config)
    assert (options.overwrite, options.layout, options.calibration) == (False, "folders", None)
