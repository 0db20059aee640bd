"""Code-aware keys: a change to one stage's source changes that stage's key (and those after
it), never an earlier stage's."""

import pytest

from wmh import tracking
from wmh.config import ExperimentConfig, PreprocessConfig, SamplingConfig


def keys():
    from wmh import lifecycle, reproduce, sampling
    from wmh.preprocess import keys as prepare_keys

    sample = sampling.samples_key("cohort-hash", sampling.config_hash(SamplingConfig()))
    run = lifecycle.run_key(ExperimentConfig(), sample)
    return {"prepare": prepare_keys.code_version(),
            "prepare_config": prepare_keys.config_hash(PreprocessConfig(), True),
            "sample": sample, "train": run, "evaluate": reproduce.result_key(run)}


def edit_module(monkeypatch, tmp_path, module):
    """As if ``module``'s source changed: one more file among its sources."""
    extra = tmp_path / "edit.py"
    extra.write_text("# a bug fix\n")
    original = tracking.source_files
    monkeypatch.setattr(tracking, "source_files", lambda name: original(name)
                        + ([extra] if name == module else []))


def test_source_files_of_modules_and_packages():
    assert [path.name for path in tracking.source_files("wmh.sampling")] == ["sampling.py"]
    names = {path.name for path in tracking.source_files("wmh.segment")}
    assert {"__init__.py", "subject.py", "cohort.py"} <= names
    assert tracking.code_hash("wmh.sampling") != tracking.code_hash("wmh.evaluation.metrics")
    assert tracking.code_hash("wmh.sampling") == tracking.code_hash("wmh.sampling")
    with pytest.raises(ValueError, match="no source for module wmh.nothing_here"):
        tracking.code_hash("wmh.nothing_here")


@pytest.mark.parametrize("module, changed", [
    ("wmh.location", "prepare"),
    ("wmh.sampling", "sample"),
    ("wmh.splits", "sample"),  # the sample set holds the splits
    ("wmh.models", "train"),
    ("wmh.patches", "train"),  # the patch definition the networks see
    ("wmh.evaluation.metrics", "train"),  # it picks the best epoch and the threshold
    ("wmh.evaluation.cases", "evaluate"),
])
def test_a_code_change_invalidates_its_stage_and_later_ones_only(monkeypatch, tmp_path,
                                                                 module, changed):
    before = keys()
    edit_module(monkeypatch, tmp_path, module)
    after = keys()
    order = ["prepare", "sample", "train", "evaluate"]
    position = order.index(changed)
    assert before["prepare_config"] == after["prepare_config"]
    for stage in order[:position]:
        assert before[stage] == after[stage], stage
    assert before[changed] != after[changed]
    if changed != "prepare":  # prepared files reach the samples through their cache keys
        for stage in order[position:]:
            assert before[stage] != after[stage], stage


@pytest.mark.parametrize("module, prepare_changes", [("wmh.prior", False),
                                                     ("wmh.splits", False),
                                                     ("wmh.location", True)])
def test_the_prior_stage_is_keyed_by_its_own_code(monkeypatch, tmp_path, module,
                                                  prepare_changes):
    """Editing the prior stage (after the split) keeps the prepared files; editing the
    location features changes both."""
    from wmh.preprocess import keys as prepare_keys

    before = (prepare_keys.code_version(), tracking.stage_code_hash("prior"))
    edit_module(monkeypatch, tmp_path, module)
    after = (prepare_keys.code_version(), tracking.stage_code_hash("prior"))
    assert (before[0] != after[0]) == prepare_changes
    assert before[1] != after[1]


def test_drawing_voxels_is_not_part_of_the_prior_stage(monkeypatch, tmp_path):
    """The prior stage runs the split (wmh.splits), not the voxel sampling: editing
    wmh.sampling keeps the training split's prior and its view."""
    before = tracking.stage_code_hash("prior")
    edit_module(monkeypatch, tmp_path, "wmh.sampling")
    assert tracking.stage_code_hash("prior") == before
    assert "wmh.splits" in tracking.STAGE_CODE["prior"]
