"""`wmh demo` end to end on a tiny synthetic cohort: every stage runs for real."""

import csv
import json
from pathlib import Path

import mlflow
import pytest

from wmh.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_stage_and_labels_results_synthetic(tmp_path, mlflow_tmp, capsys,
                                                            tiny_synthetic_cache):
    overrides = {"data.cache_dir": str(tiny_synthetic_cache), "synth.subjects": 6,
                 "synth.profile": "test", "train.epochs": 1, "model.width": 0.1,
                 "train.max_train_samples": 2000, "train.max_validation_samples": 1000,
                 "sampling.validation_fraction": 0.2, "sampling.test_fraction": 0.2,
                 "train.experiment": "demo-test"}
    arguments = ["demo", "--config", str(ROOT / "experiments" / "demo.yaml"),
                 "--out", str(tmp_path / "out")]
    for key, value in overrides.items():
        arguments += ["--set", f"{key}={value}"]
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC data" in out and "mean" in out

    with open(tmp_path / "out" / "segment" / "volumes.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1  # 6 subjects: 1 test subject
    subject = rows[0]["subject_id"]
    for name in ("wmh_probability.nii.gz", "wmh_mask.nii.gz", "qc.png", "report.json"):
        assert (tmp_path / "out" / "segment" / subject / name).is_file()
    assert 0.0 <= float(rows[0]["dice"]) <= 1.0

    runs = mlflow.search_runs(experiment_names=["demo-test"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["data_label"] == "synthetic"
    assert run.data.metrics["test_dice"] == pytest.approx(float(rows[0]["dice"]))
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "test")}
    assert "test/volumes.csv" in artifacts
    # The paper's evaluation (inside the brain mask) is stored for `wmh report --run`.
    from wmh.evaluation.tracking_io import method_result_from_mlflow
    result = method_result_from_mlflow(run.info.run_id)
    assert result.name == "MSWS + Loc" and result.case_ids == (subject,)
    assert result.dice(1) == pytest.approx(run.data.metrics["test_dice_obs1"])
    assert result.threshold == pytest.approx(run.data.metrics["threshold"])

    # The demo registers its model (alias newest, and best: the first version) and the run
    # shows its data: training, validation and test datasets.
    from wmh import io, registry
    versions = registry.registered_versions("wmh-demo")
    assert [(v["version"], v["run_id"]) for v in versions] == [(1, run.info.run_id)]
    assert sorted(versions[0]["aliases"]) == ["best", "newest"]
    assert versions[0]["source"] == f"models:/{registry.run_model_id(run.info.run_id)}"
    contexts = sorted(tag.value for dataset_input in run.inputs.dataset_inputs
                      for tag in dataset_input.tags if tag.key == "mlflow.data.context")
    assert contexts == ["test", "training", "validation"]
    assert "registered wmh-demo version 1 (aliases newest, best)" in out

    # `wmh segment --model models:/wmh-demo@best` segments a synthetic subject as the
    # demo did: same model, same threshold, and the same volume up to what preparing the
    # raw files again moves (the demo segmented its cached preparation, made in worker
    # processes; SimpleITK's threaded registration differs in the last digits between
    # processes, which moved 0.05-0.07 mL of 260 near the threshold in some runs).
    found = [s for root in tiny_synthetic_cache.glob("synth/*") for s in io.discover(root)
             if s.subject_id == subject]
    files = [str(path) for path in (found[0].flair, found[0].t1) if path is not None]
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--model", "models:/wmh-demo@best", *files, "--subject-id", subject,
              "--out", str(tmp_path / "by-alias"), "--quiet"])
    assert exit_info.value.code == 0
    with open(tmp_path / "by-alias" / "volumes.csv") as handle:
        again = list(csv.DictReader(handle))
    assert [row["status"] for row in again] == ["ok"]
    assert float(again[0]["total_ml"]) == pytest.approx(float(rows[0]["total_ml"]), rel=2e-3)
    demo_report, alias_report = (
        json.loads((folder / subject / "report.json").read_text())
        for folder in (tmp_path / "out" / "segment", tmp_path / "by-alias"))
    assert alias_report["model_sha256"] == demo_report["model_sha256"]
    assert alias_report["threshold"] == demo_report["threshold"] == pytest.approx(
        run.data.metrics["threshold"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--model", "models:/wmh-demo@nope", *files, "--out",
              str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("wmh: error: --model models:/wmh-demo@nope: cannot download (")
    assert not (tmp_path / "nope").exists()


def test_synthetic_root_follows_the_profiles_generator_version(monkeypatch):
    """A new randomised generator version gets its own cache folder (the old folder's
    cohort.json would refuse it); the default profile's folder does not move with it."""
    from wmh import config as config_module
    from wmh.pipeline import synthetic_root
    from wmh.synth import cohort

    randomised = config_module.load_config(None, ["synth.profile=randomised"])
    default = config_module.load_config(None, [])
    before = synthetic_root(randomised), synthetic_root(default)
    monkeypatch.setattr(cohort, "RANDOMISED_SYNTH_VERSION", cohort.RANDOMISED_SYNTH_VERSION + 1)
    assert synthetic_root(randomised) != before[0]
    assert synthetic_root(randomised).name.startswith("randomised-n")
    assert synthetic_root(default) == before[1]
