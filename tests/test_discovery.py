"""Subject discovery for the challenge, BIDS-like and CSV layouts, and subject validation."""

import nibabel as nib
import numpy as np
import pytest

from wmh import io
from wmh.cli import main
from wmh.errors import WMHError

RNG = np.random.default_rng(0)


def image(path, shape=(6, 6, 4), affine=None, data=None, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = RNG.random(shape).astype(dtype) if data is None else data
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def labels(path, shape=(6, 6, 4), values=(0, 1, 2)):
    data = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        data.flat[i] = v
    return image(path, data=data)


def challenge_subject(root, site, sid, variant="pre", t1=True, mask=True):
    folder = root / site / sid
    image(folder / variant / "FLAIR.nii.gz")
    if t1:
        image(folder / variant / "T1.nii.gz")
    if mask:
        labels(folder / "wmh.nii.gz")
    return folder


def test_challenge_layout(tmp_path):
    challenge_subject(tmp_path, "Utrecht", "0")
    challenge_subject(tmp_path, "Utrecht", "2", variant="orig", mask=False)
    challenge_subject(tmp_path, "Singapore", "50", t1=False)
    subjects = io.discover(tmp_path)
    assert [s.subject_id for s in subjects] == ["50", "0", "2"]
    by_id = {s.subject_id: s for s in subjects}
    assert by_id["0"].site == "Utrecht" and by_id["0"].coregistered
    assert by_id["0"].t1.name == "T1.nii.gz" and by_id["0"].labels.name == "wmh.nii.gz"
    assert not by_id["2"].coregistered and by_id["2"].labels is None
    assert by_id["50"].t1 is None and by_id["50"].site == "Singapore"
    # one site folder, and one subject folder, are accepted too
    assert [s.subject_id for s in io.discover(tmp_path / "Utrecht")] == ["0", "2"]
    assert [s.subject_id for s in io.discover(tmp_path / "Utrecht" / "0")] == ["0"]


def test_challenge_duplicate_ids(tmp_path):
    challenge_subject(tmp_path, "A", "7")
    challenge_subject(tmp_path, "B", "7")
    with pytest.raises(WMHError, match=r"duplicate subject id '7'"):
        io.discover(tmp_path)


def test_bids_layout_with_derivatives_and_sessions(tmp_path):
    image(tmp_path / "sub-01/anat/sub-01_FLAIR.nii.gz")
    image(tmp_path / "sub-01/anat/sub-01_T1w.nii.gz")
    labels(tmp_path / "sub-01/anat/sub-01_label-WMH_mask.nii.gz")
    image(tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_FLAIR.nii")
    labels(tmp_path / "derivatives/manual/sub-02/ses-1/anat/sub-02_ses-1_label-WMH_mask.nii.gz")
    subjects = io.discover(tmp_path)
    assert [s.subject_id for s in subjects] == ["sub-01", "sub-02_ses-1"]
    assert subjects[0].t1 is not None and subjects[0].labels is not None
    assert subjects[1].t1 is None
    assert "derivatives" in str(subjects[1].labels)


def test_csv_manifest(tmp_path):
    image(tmp_path / "a_flair.nii.gz")
    image(tmp_path / "a_t1.nii.gz")
    labels(tmp_path / "a_mask.nii.gz")
    image(tmp_path / "b_flair.nii.gz")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("subject_id,flair,t1,mask,site,split\n"
                        "a,a_flair.nii.gz,a_t1.nii.gz,a_mask.nii.gz,siteA,train\n"
                        f"b,{tmp_path / 'b_flair.nii.gz'},,,siteB,test\n")
    subjects = io.discover(manifest)
    assert [(s.subject_id, s.site, s.split) for s in subjects] == [
        ("a", "siteA", "train"), ("b", "siteB", "test")]
    assert subjects[0].t1 == tmp_path / "a_t1.nii.gz" and subjects[1].t1 is None


@pytest.mark.parametrize("content, message", [
    ("subject_id,flair\na,x.nii.gz\na,x.nii.gz\n", r"cohort\.csv: duplicate subject id 'a'"),
    ("subject_id,flair\na,missing.nii.gz\n",
     r"cohort\.csv: line 2: flair file not found: missing\.nii\.gz"),
    ("subject,flair\na,x.nii.gz\n", r"cohort\.csv: manifest lacks column 'subject_id'"),
    ("subject_id,flair,split\na,x.nii.gz,training\n",
     r"cohort\.csv: line 2: split 'training' is not one of train, validation, test"),
    ("subject_id,flair,colour\na,x.nii.gz,red\n", r"cohort\.csv: unknown manifest column 'colour'"),
    ("subject_id,flair\n", r"cohort\.csv: manifest has no rows"),
])
def test_manifest_errors(tmp_path, content, message):
    image(tmp_path / "x.nii.gz")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(content)
    with pytest.raises(WMHError, match=message):
        io.discover(manifest)


def test_unknown_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WMHError, match=r"empty: no subjects found"):
        io.discover(tmp_path / "empty")


def test_load_subject_rejects_t1_off_grid_when_coregistered(tmp_path):
    folder = challenge_subject(tmp_path, "S", "1", t1=False)
    image(folder / "pre" / "T1.nii.gz", shape=(6, 6, 5))
    subject = io.discover(tmp_path)[0]
    with pytest.raises(WMHError, match=r"T1\.nii\.gz: grid \(6, 6, 5\) differs from .*FLAIR\.nii\.gz \(6, 6, 4\)"
                                       r" \(the layout promises T1 co-registered to FLAIR\)"):
        io.load_subject(subject)
    # the orig/ layout makes no such promise: a T1 on its own grid is fine there
    orig = challenge_subject(tmp_path / "o", "S", "1", variant="orig", t1=False)
    image(orig / "orig" / "T1.nii.gz", shape=(6, 6, 5))
    loaded = io.load_subject(io.discover(tmp_path / "o")[0])
    assert loaded.t1.shape == (6, 6, 5)
    assert loaded.labels is not None and set(np.unique(loaded.labels)) == {0, 1, 2}


def test_cli_check_reports_subjects_and_bad_files(tmp_path, capsys):
    challenge_subject(tmp_path, "S", "1")
    folder = challenge_subject(tmp_path, "S", "2")
    with pytest.raises(SystemExit) as exit_info:
        main(["check", str(tmp_path)])
    assert exit_info.value.code == 0
    assert "2 subjects OK" in capsys.readouterr().out
    labels(folder / "wmh.nii.gz", values=(0, 1, 5))
    with pytest.raises(SystemExit) as exit_info:
        main(["check", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert "S/2/wmh.nii.gz: mask values outside {0, 1, 2}: 5" in err


def test_public_release_tree_at_any_depth(tmp_path):
    """The public MICCAI WMH 2017 release: training/ and test/, Amsterdam's scanners a
    level deeper than Singapore and Utrecht; every subject found, site names kept."""
    release = tmp_path / "wmh2017"
    layout = {"training/Amsterdam/GE3T": ["100", "101"], "training/Singapore": ["50"],
              "training/Utrecht": ["0"], "test/Amsterdam/GE1T5": ["137"],
              "test/Amsterdam/GE3T": ["102"], "test/Amsterdam/Philips_VU_PETMR_01": ["144"],
              "test/Singapore": ["51"], "test/Utrecht": ["1"]}
    for site, ids in layout.items():
        for sid in ids:
            folder = challenge_subject(release, site, sid)
            image(folder / "orig" / "FLAIR.nii.gz")  # the release ships both variants
            image(folder / "orig" / "3DT1.nii.gz")
    subjects = io.discover(release)
    expected = {sid: site.split("/", 1)[1] for site, ids in layout.items() for sid in ids}
    assert {s.subject_id: s.site for s in subjects} == expected
    assert all(s.coregistered and s.flair.parent.name == "pre" for s in subjects)
    # one split folder, and one scanner folder, give their own subjects
    training = {s.subject_id: s.site for s in io.discover(release / "training")}
    assert training == {"100": "Amsterdam/GE3T", "101": "Amsterdam/GE3T",
                        "50": "Singapore", "0": "Utrecht"}
    assert [s.site for s in io.discover(release / "training" / "Amsterdam")] == ["GE3T"] * 2
    assert main_exit(["check", str(release)]) == 0


def main_exit(argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return stop.value.code


def test_challenge_folder_with_mask_but_no_flair_is_named(tmp_path):
    challenge_subject(tmp_path, "Utrecht", "0")
    labels(tmp_path / "Utrecht" / "4" / "wmh.nii.gz")
    with pytest.raises(WMHError, match=r"Utrecht/4: has wmh.nii.gz but no pre/FLAIR"):
        io.discover(tmp_path)


def test_bids_and_manifest_participants(tmp_path):
    for sub, ses in (("01", "1"), ("01", "2"), ("02", "1")):
        image(tmp_path / "bids" / f"sub-{sub}" / f"ses-{ses}" / "anat"
              / f"sub-{sub}_ses-{ses}_FLAIR.nii.gz")
    subjects = io.discover(tmp_path / "bids")
    assert [(s.subject_id, s.participant_id) for s in subjects] == [
        ("sub-01_ses-1", "sub-01"), ("sub-01_ses-2", "sub-01"), ("sub-02_ses-1", "sub-02")]
    image(tmp_path / "a.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,flair,participant\nv1,a.nii.gz,P7\nv2,a.nii.gz,P7\n"
                        "v3,a.nii.gz,\n")
    assert [s.participant_id for s in io.discover(manifest)] == ["P7", "P7", "v3"]
    assert io.participant_of("sub-abc_ses-2") == "sub-abc"
    assert io.participant_of("sub-1_run-2") == "sub-1_run-2"  # not a session id
