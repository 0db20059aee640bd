"""wmh segment --layout bids: a BIDS derivatives dataset (names, sidecars, dataset
description, volumes TSV) for BIDS and non-BIDS inputs, with resume, failures and the
same checks as the folders layout."""

import csv
import json
import re
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest

from segment_helpers import (prepare_from_files, tiny_model,  # noqa: F401 (fixture)
                             write_bids_subject, write_subject)
from test_segment_page import assert_self_contained, parse_page
from wmh import __version__, io
from wmh.cli import main
from wmh.errors import WMHError
from wmh.preprocess import PreparationFailed
from wmh.segment import SegmentOptions, bids_labels, run_cohort

SESSIONS = (("01", "1"), ("01", "2"), ("02", None))  # (participant, session)
# BIDS 1.9 file name: entities in their fixed order, each label alphanumeric, a suffix.
BIDS_NAME = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?"
                       r"(?:_space-[A-Za-z0-9]+)?(?:_label-[A-Za-z0-9]+)?"
                       r"(?:_desc-[A-Za-z0-9]+)?_(?P<suffix>[a-z]+)"
                       r"(?P<extension>\.nii\.gz|\.json|\.csv|\.png)$")
ENTITY_ORDER = ("sub", "ses", "space", "label", "desc")


def check_bids_name(relative: Path) -> re.Match:
    """Hand-written BIDS naming check of one derivative file below the dataset root:
    folder sub-X[/ses-Y]/<datatype>, entity order, labels, and entities equal to the
    folders'."""
    match = BIDS_NAME.match(relative.name)
    assert match, relative
    keys = [part.split("-")[0] for part in relative.name.split(".")[0].split("_")[:-1]]
    assert keys == sorted(keys, key=ENTITY_ORDER.index), relative  # order
    folders = relative.parts[:-1]
    assert folders[0] == f"sub-{match['sub']}", relative
    if match["ses"]:
        assert folders[1] == f"ses-{match['ses']}" and len(folders) == 3, relative
    else:
        assert len(folders) == 2, relative
    assert folders[-1] in ("anat", "figures"), relative
    return match


def _run(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def _tsv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture(scope="module")
def derivatives(tmp_path_factory, tiny_model):
    """A BIDS tree (sub-01 with two sessions, sub-02 without) segmented into
    ``bids/derivatives/wmh`` at threshold 0.45."""
    root = tmp_path_factory.mktemp("bids")
    bids, prepared_dir = root / "bids", root / "prepared"
    for seed, (participant, session) in enumerate(SESSIONS):
        write_bids_subject(bids, prepared_dir, participant, session, seed=seed)
    monkeypatch = pytest.MonkeyPatch()
    calls = prepare_from_files(monkeypatch, prepared_dir)
    out = bids / "derivatives" / "wmh"
    argv = ["segment", "--model", str(tiny_model), str(bids), "--out", str(out),
            "--layout", "bids", "--threshold", "0.45", "--quiet"]
    try:
        assert _run(argv) == 0
        first_calls = list(calls)
        assert _run(argv) == 0  # resume: everything is done already
        second_calls = calls[len(first_calls):]
    finally:
        monkeypatch.undo()
    return {"bids": bids, "out": out, "model": tiny_model, "first": first_calls,
            "second": second_calls}


def test_derivative_file_names(derivatives):
    out = derivatives["out"]
    files = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    expected = {"dataset_description.json", ".bidsignore", "wmh_volumes.tsv",
                "volumes.csv", "index.html", ".wmh.lock"}
    for participant, session in SESSIONS:
        unit = f"sub-{participant}" + (f"/ses-{session}" if session else "")
        prefix = unit.replace("/", "_")
        expected |= {f"{unit}/anat/{prefix}_{name}" for name in (
            "space-FLAIR_label-WMH_desc-wmh_probseg.nii.gz",
            "space-FLAIR_label-WMH_desc-wmh_probseg.json",
            "space-FLAIR_label-WMH_desc-wmh_mask.nii.gz",
            "space-FLAIR_label-WMH_desc-wmh_mask.json",
            "space-FLAIR_desc-brain_mask.nii.gz",
            "space-FLAIR_desc-wmhlesions_dseg.nii.gz",
            "space-FLAIR_desc-wmhlesions_lesions.csv",
            "desc-wmh_report.json")}
        expected.add(f"{unit}/figures/{prefix}_desc-wmh_qc.png")
    assert files == expected
    for name in files:
        if name.startswith("sub-"):
            check_bids_name(Path(name))
    # The predictions are not mistaken for manual masks when the BIDS tree is read again.
    assert [subject.labels for subject in io.discover(derivatives["bids"])] == [None] * 3


def test_dataset_description_and_resume(derivatives):
    out = derivatives["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.9.0"
    assert description["DatasetType"] == "derivative" and description["Name"]
    [generator] = description["GeneratedBy"]  # written once, not once per subject
    assert generator["Name"] == "wmh" and generator["Version"] == __version__
    report = json.loads((out / "sub-02/anat/sub-02_desc-wmh_report.json").read_text())
    assert report["model_sha256"] in generator["Description"]
    assert str(derivatives["model"]) in generator["Description"]
    assert description["DatasetLinks"] == {"raw": "../.."}  # OUT is bids/derivatives/wmh
    assert (out / description["DatasetLinks"]["raw"]).resolve() == derivatives["bids"]
    assert derivatives["first"] == ["sub-01_ses-1", "sub-01_ses-2", "sub-02"]
    assert derivatives["second"] == []


def test_sidecars_point_at_the_inputs_and_hold_the_volumes(derivatives):
    out, bids = derivatives["out"], derivatives["bids"]
    anat = out / "sub-01" / "ses-2" / "anat"
    report = json.loads((anat / "sub-01_ses-2_desc-wmh_report.json").read_text())
    assert report["subject_id"] == "sub-01_ses-2" and report["threshold"] == 0.45
    mask_image = nib.load(anat / "sub-01_ses-2_space-FLAIR_label-WMH_desc-wmh_mask.nii.gz")
    mask = np.asarray(mask_image.dataobj) > 0
    probability = np.asarray(nib.load(
        anat / "sub-01_ses-2_space-FLAIR_label-WMH_desc-wmh_probseg.nii.gz").dataobj)
    brain = np.asarray(nib.load(anat / "sub-01_ses-2_space-FLAIR_desc-brain_mask.nii.gz")
                       .dataobj) > 0
    np.testing.assert_array_equal(mask, (probability >= 0.45) & brain)
    voxel_ml = abs(np.linalg.det(mask_image.affine[:3, :3])) / 1000
    for name in ("probseg", "mask"):
        sidecar = json.loads((anat / f"sub-01_ses-2_space-FLAIR_label-WMH_desc-wmh_{name}"
                                     ".json").read_text())
        assert sidecar["Sources"] == ["bids:raw:sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz"]
        raw = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]["raw"]
        assert (out / raw / sidecar["Sources"][0][len("bids:raw:"):]).is_file()
        assert sidecar["Threshold"] == 0.45 and sidecar["SkullStripped"] is False
        assert sidecar["Description"]
        assert sidecar["Model"]["model_sha256"] == report["model_sha256"]
        assert sidecar["Volumes"]["total_ml"] == pytest.approx(mask.sum() * voxel_ml)
        assert sidecar["Volumes"]["lesion_count"] == report["lesion_count"]
    assert (bids / "sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz").is_file()


def test_volumes_tsv_and_the_qc_page(derivatives):
    out = derivatives["out"]
    rows = _tsv(out / "wmh_volumes.tsv")
    assert [(row["participant_id"], row["session_id"]) for row in rows] == [
        ("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "n/a")]
    for row in rows:
        unit = out / row["participant_id"] / ("" if row["session_id"] == "n/a"
                                              else row["session_id"])
        report = json.loads(next(unit.glob("anat/*_desc-wmh_report.json")).read_text())
        assert row["subject_id"] == report["subject_id"] and row["status"] == "ok"
        assert float(row["total_ml"]) == pytest.approx(report["total_ml"])
        assert row["dice"] == "n/a"  # no manual masks: BIDS's missing value
    with open(out / "volumes.csv", newline="") as handle:
        assert [row["subject_id"] for row in csv.DictReader(handle)] == [
            "sub-01_ses-1", "sub-01_ses-2", "sub-02"]
    page = parse_page(out / "index.html")
    assert_self_contained(page)
    assert [row["cells"][1] for row in page.rows] == ["sub-01_ses-1", "sub-01_ses-2",
                                                      "sub-02"]
    image = page.rows[1]["links"][1]
    assert image == "sub-01/ses-2/figures/sub-01_ses-2_desc-wmh_qc.png"
    assert (out / unquote(image)).read_bytes()[:4] == b"\x89PNG"


def test_non_bids_inputs_get_sanitised_labels_and_failures_are_recorded(
        tmp_path, tiny_model, monkeypatch):
    cohort, prepared = tmp_path / "cohort", tmp_path / "prepared"
    for index, name in enumerate(("case_1", "P.7")):
        write_subject(cohort, prepared, name, seed=index)
    prepare_from_files(monkeypatch, prepared, fail={"P.7": PreparationFailed("P.7: bad")})
    out = tmp_path / "derivatives"
    result = run_cohort(tiny_model, [cohort], out, SegmentOptions(layout="bids"),
                        progress=False)
    assert result.segmented == ["case_1"] and result.failed == ["P.7"]
    mask = out / "sub-case1/anat/sub-case1_space-FLAIR_label-WMH_desc-wmh_mask.json"
    flair = cohort / "site" / "case_1" / "pre" / "FLAIR.nii.gz"
    assert (out / json.loads(mask.read_text())["Sources"][0]).resolve() == flair.resolve()
    assert "DatasetLinks" not in json.loads((out / "dataset_description.json").read_text())
    assert sorted(p.relative_to(out).as_posix() for p in (out / "sub-P7").rglob("*")) == [
        "sub-P7/anat", "sub-P7/anat/sub-P7_desc-wmh_report.json"]  # a failure: the report only
    rows = _tsv(out / "wmh_volumes.tsv")
    assert [(row["participant_id"], row["subject_id"], row["status"], row["error"])
            for row in rows] == [("sub-P7", "P.7", "failed", "P.7: bad"),
                                 ("sub-case1", "case_1", "ok", "n/a")]
    page = parse_page(out / "index.html")
    assert [row["class"] for row in page.rows] == ["failed", "ok"]


@pytest.mark.parametrize("subject_id, labels", [
    ("sub-01_ses-2", ("01", "2")), ("sub-01", ("01", None)), ("case_01", ("case01", None)),
    ("sub-01_acq-x", ("sub01acqx", None)), ("Ü-7", ("7", None))])
def test_bids_labels(subject_id, labels):
    assert bids_labels(subject_id) == labels


def _subjects(tmp_path, *ids):
    flair = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), flair)
    return [io.Subject(subject_id=name, flair=flair) for name in ids]


@pytest.mark.parametrize("ids, message", [
    (("a_1", "a-1"), r"^--layout bids: subject ids 'a_1' and 'a-1' both become sub-a1 "
                     r"\(BIDS labels keep letters and digits only\); rename one$"),
    (("__",), r"^--layout bids: subject id '__' has no letter or digit to make a BIDS "
              r"label of$")])
def test_bad_ids_stop_before_anything_is_written(tmp_path, ids, message):
    out = tmp_path / "out"
    with pytest.raises(WMHError, match=message):
        run_cohort(tmp_path / "no-model", _subjects(tmp_path, *ids), out,
                   SegmentOptions(layout="bids"), progress=False)
    assert not out.exists()


def test_layouts_do_not_mix_in_one_folder(tmp_path):
    subjects = _subjects(tmp_path, "s1")
    folders = tmp_path / "folders"
    (folders / "x").mkdir(parents=True)
    (folders / "x" / "report.json").write_text("{}")
    with pytest.raises(WMHError, match=rf"^--out {folders}: holds folder-layout outputs "
                                       r"\(<subject>/report.json\); use --layout folders"):
        run_cohort(tmp_path / "m", subjects, folders, SegmentOptions(layout="bids"))
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text("{}")
    with pytest.raises(WMHError, match=rf"^--out {bids}: holds BIDS derivatives "
                                       r"\(dataset_description.json\); use --layout bids"):
        run_cohort(tmp_path / "m", subjects, bids, SegmentOptions())
    # An id taken in OUT by another subject's outputs.
    (bids / "sub-s1" / "anat").mkdir(parents=True)
    (bids / "sub-s1/anat/sub-s1_desc-wmh_report.json").write_text('{"subject_id": "s_1"}')
    with pytest.raises(WMHError, match=r"^--layout bids: subject id 's1' becomes sub-s1, "
                                       r"which OUT already holds for 's_1'; rename one$"):
        run_cohort(tmp_path / "m", subjects, bids, SegmentOptions(layout="bids"))


def test_inputs_from_two_bids_datasets_are_refused(tmp_path):
    first = _subjects(tmp_path, "x")[0].flair
    subjects = []
    for dataset in ("d1", "d2"):
        anat = tmp_path / dataset / "sub-01" / "anat"
        anat.mkdir(parents=True)
        path = anat / "sub-01_FLAIR.nii.gz"
        path.write_bytes(first.read_bytes())
        subjects.append(io.Subject(subject_id=f"{dataset}01", flair=path))
    with pytest.raises(WMHError, match=r"^--layout bids: the inputs \(and OUT's "
                                       r"dataset_description.json\) name 2 BIDS "
                                       r"datasets \(.*d1, .*d2\); a derivatives folder "
                                       r"belongs to one raw dataset: use one --out per "
                                       r"dataset$"):
        run_cohort(tmp_path / "m", subjects, tmp_path / "out", SegmentOptions(layout="bids"))
    # A later call from another dataset into an OUT already linked to the first one.
    out = tmp_path / "d1" / "derivatives" / "wmh"
    out.mkdir(parents=True)
    (out / "dataset_description.json").write_text('{"DatasetLinks": {"raw": "../.."}}')
    with pytest.raises(WMHError, match=r"name 2 BIDS datasets \(.*d1, .*d2\)"):
        run_cohort(tmp_path / "m", subjects[1:], out, SegmentOptions(layout="bids"))
    assert sorted(p.name for p in out.iterdir()) == ["dataset_description.json"]


def test_readme_documents_the_bids_files():
    from test_segment_outputs import _readme_section
    from wmh.segment import BIDS_NAMES, BIDS_OUTPUT_FILES, OUTPUT_FILES
    from wmh.segment.layouts import BIDSIGNORE

    section = _readme_section()
    assert set(BIDS_NAMES) <= set(OUTPUT_FILES)  # every output has its BIDS name
    for output, name in BIDS_NAMES.items():
        assert f"| `{name.format(p='P')}`" in section and f"| `{output}` |" in section, name
    for name in BIDS_OUTPUT_FILES:
        assert f"| `{name}` |" in section, name
    for pattern in BIDSIGNORE:
        assert f"`{pattern}`" in section, pattern
    assert "--layout bids" in section and "`index.html`" in section
