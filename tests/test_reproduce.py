"""`wmh reproduce`: the plan, bad input, and a tiny reproduction end to end with resume."""

import csv
import json
import math
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from wmh import reproduce
from wmh.cli import main
from wmh.errors import WMHError
from wmh.evaluation.paper import paper_method_name
from wmh.splits import share

ROOT = Path(__file__).resolve().parents[1]


def run_cli(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_every_experiment_file_trains_the_method_it_is_named_for():
    names = set()
    for experiment in reproduce.EXPERIMENTS:
        config = reproduce.resolve(experiment, "demo")
        names.add(experiment.method)
        if experiment.method == "Conventional":
            assert config.model.arch == "rf"
            continue
        base = experiment.method.split(" (")[0]  # "MSWS + Loc (50%)" -> "MSWS + Loc"
        expected_arch = {"LCL": "ss", "SFCL": "ss"}.get(base, base.split(" ")[0].lower())
        expected_loc = {"LCL": "lcl", "SFCL": "sfcl"}.get(
            base, "ffcl" if base.endswith("+ Loc") else "none")
        assert (config.model.arch, config.model.loc) == (expected_arch, expected_loc)
        fraction = config.sampling.train_size_fraction
        if "%" in experiment.method:
            assert fraction == pytest.approx(float(experiment.method.split("(")[1][:-2]) / 100)
            assert paper_method_name(experiment.method) is None  # Table 6 only
        else:
            assert fraction == 1.0
            assert paper_method_name(experiment.method) == experiment.method
    # Tables 2, 3 and 5 of the paper: every method is there (FFCL is SS + Loc).
    assert {"SS", "MSEF", "MSIW", "MSWS", "SS + Loc", "MSEF + Loc", "MSIW + Loc",
            "MSWS + Loc", "LCL", "SFCL", "Conventional"} <= names
    assert reproduce.DERIVED == {"FFCL": "SS + Loc"}
    fractions = sorted(reproduce.resolve(e, "demo").sampling.train_size_fraction
                       for e in reproduce.EXPERIMENTS if e.training_size)
    assert fractions == [0.0625, 0.125, 0.25, 0.5, 1.0]


def test_paper_scale_uses_the_papers_cohort_and_every_sample():
    config = reproduce.resolve(reproduce.EXPERIMENTS[0], "paper")
    subjects = config.synth.subjects
    n_test = share(config.sampling.test_fraction, subjects)
    n_validation = share(config.sampling.validation_fraction, subjects)
    assert (subjects - n_test - n_validation, n_validation, n_test) == (378, 42, 50)
    assert config.model.width == 1.0
    assert config.train.max_train_samples == 0 and config.train.max_validation_samples == 0
    assert (config.sampling.positive_fraction, config.sampling.negative_ratio) == (0.5, 1.0)
    assert config.train.batch_size == 128
    demo = reproduce.resolve(reproduce.EXPERIMENTS[0], "demo")
    n_test = share(demo.sampling.test_fraction, demo.synth.subjects)
    n_validation = share(demo.sampling.validation_fraction, demo.synth.subjects)
    # 16 training subjects: the 6.25% subset of Table 6 keeps exactly one.
    assert demo.synth.subjects - n_test - n_validation == 16


def test_dry_run_prints_the_plan_with_user_overrides(capsys):
    code, out, _ = run_cli(["reproduce", "--dry-run", "--scale", "paper", "--experiments",
                            "msws_loc,rf", "--set", "train.epochs=7"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("scale paper: synth.subjects=470")
    assert [line.split()[0] for line in lines[1:]] == ["msws_loc", "rf"]
    assert "epochs=7" in lines[1] and "subjects=470" in lines[1] and "samples/epoch=all" in lines[1]
    assert lines[1].endswith(" alphas=0.1,0.3,1,3,10") and "alphas" not in lines[2]  # rf: none


@pytest.mark.parametrize("arguments, message", [
    (["--scale", "huge"], "--scale huge: unknown scale (known: demo, paper)"),
    (["--experiments", "ss,nope"], "--experiments: unknown experiment 'nope'"),
    (["--set", "train.epochz=3"], "epochz"),
    (["--alphas", "0,1"], "--alphas 0,1: '0' is not a positive number"),
])
def test_bad_options_exit_2_with_one_line(arguments, message, capsys, tmp_path):
    code, out, err = run_cli(["reproduce", "--out", str(tmp_path / "out"), *arguments], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing started


def test_missing_experiment_file_is_named(tmp_path, capsys):
    folder = tmp_path / "experiments"
    folder.mkdir()
    shutil.copy(ROOT / "experiments" / "ss.yaml", folder / "ss.yaml")
    code, _, err = run_cli(["reproduce", "--dry-run", "--experiments", "ss,rf",
                            "--experiments-dir", str(folder)], capsys)
    assert code == 2
    assert f"{folder / 'rf.yaml'}: experiment file not found" in err


def _pooled_dice(predictions, truths, brains):
    tp = fp = fn = 0
    for predicted, truth, brain in zip(predictions, truths, brains):
        region = brain & (truth != 2)
        wmh = (truth == 1) & region
        predicted = predicted & region
        tp += np.count_nonzero(predicted & wmh)
        fp += np.count_nonzero(predicted & ~wmh)
        fn += np.count_nonzero(wmh & ~predicted)
    return 2 * tp / (2 * tp + fp + fn)


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj)


def _read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def tiny_experiments(folder: Path) -> Path:
    """ss_loc and rf as shipped; msws_loc_train50 (Table 6's 50% subset) on the SS network,
    which trains in a fraction of MSWS's time: the reproduction's bookkeeping of a
    training-size experiment is under test here, not the architecture (MSWS + Loc trains,
    segments and is scored end to end in tests/test_pipeline.py's demo, and the shipped
    file's settings are checked by
    test_every_experiment_file_trains_the_method_it_is_named_for)."""
    folder.mkdir()
    for name in ("ss_loc", "rf"):
        shutil.copy(ROOT / "experiments" / f"{name}.yaml", folder / f"{name}.yaml")
    shipped = (ROOT / "experiments" / "msws_loc_train50.yaml").read_text()
    assert shipped.count("arch: msws\n") == 1
    (folder / "msws_loc_train50.yaml").write_text(shipped.replace("arch: msws\n", "arch: ss\n"))
    return folder


def test_tiny_reproduction_reports_every_table_and_resumes(tmp_path, mlflow_tmp, capsys,
                                                          tiny_synthetic_cache):
    overrides = ["data.cache_dir=" + str(tiny_synthetic_cache), "synth.subjects=6",
                 "synth.profile=test", "model.width=0.1", "train.epochs=1",
                 "train.max_train_samples=1500", "train.max_validation_samples=800",
                 "sampling.validation_fraction=0.15", "sampling.test_fraction=0.3",
                 "baseline.n_trees=10"]
    arguments = ["reproduce", "--out", str(tmp_path / "out"), "--experiments",
                 "ss_loc,rf,msws_loc_train50", "--set-list", " ".join(overrides),
                 "--alphas", "0.5,2",
                 "--experiments-dir", str(tiny_experiments(tmp_path / "experiments"))]
    code, out, _ = run_cli(arguments, capsys)
    assert code == 0, out
    assert "SYNTHETIC data" in out
    out_dir = tmp_path / "out" / "demo"
    report_dir = out_dir / "report"
    markdown = (report_dir / "report.md").read_text()
    assert "**Synthetic data**" in markdown
    for section in ("Table 2 shape", "Table 3 shape", "Table 4 shape", "Table 5 shape",
                    "Table 6 shape", "roc.png", "training_size.png", "## Runs"):
        assert section in markdown
    for name in ("roc.png", "dice_vs_threshold.png", "training_size.png"):
        assert (report_dir / name).stat().st_size > 1000

    # Test subjects: the same for every experiment, 2 of the 6 subjects.
    cohort = next((tiny_synthetic_cache / "synth").glob("test-n6-*"))
    segment = out_dir / "ss_loc" / "segment"
    test_ids = sorted(p.name for p in segment.iterdir() if p.is_dir() and
                      not p.name.startswith("."))
    assert len(test_ids) == 2
    for experiment in ("rf", "msws_loc_train50"):
        assert sorted(p.name for p in (out_dir / experiment / "segment").iterdir()
                      if p.is_dir()) == test_ids

    def subject_file(case, name):
        return next(cohort.glob(f"*/{case}/{name}.nii.gz"))

    truths = [_load(subject_file(case, "wmh")) for case in test_ids]
    brains = [_load(segment / case / "brain_mask.nii.gz") > 0 for case in test_ids]

    # Observer 2 vs observer 1, recomputed from the files: Table 3's observer row.
    observer = [_load(subject_file(case, "wmh_observer2")) == 1 for case in test_ids]
    table3 = {row["Method"]: row for row in _read_csv(report_dir / "table3_observers.csv")}
    assert set(table3) == {"Conventional", "observer 2", "observer 1"}
    assert float(table3["observer 2"]["Test Dice (obs1)"]) == pytest.approx(
        _pooled_dice(observer, truths, brains), abs=1e-12)
    assert float(table3["observer 1"]["Test Dice (obs2)"]) == pytest.approx(
        float(table3["observer 2"]["Test Dice (obs1)"]))

    # SS + Loc's test Dice, recomputed from its written masks (Table 2 and the run).
    table2 = {row["Method"]: row for row in _read_csv(report_dir / "table2_methods.csv")}
    assert set(table2) == {"SS + Loc"}  # the 50% run is in Table 6 only
    masks = [_load(segment / case / "wmh_mask.nii.gz") > 0 for case in test_ids]
    dice = _pooled_dice(masks, truths, brains)
    assert float(table2["SS + Loc"]["Test Dice (obs1)"]) == pytest.approx(dice, abs=1e-12)
    stored = json.loads((out_dir / "ss_loc" / "result.json").read_text())
    run = mlflow.get_run(stored["run_id"])
    assert run.data.metrics["test_dice_obs1"] == pytest.approx(dice, abs=1e-12)
    assert run.data.tags["data_label"] == "synthetic"
    client = mlflow.MlflowClient()
    assert "evaluation/method_result.json" in {
        a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    parent_id = run.data.tags["mlflow.parentRunId"]
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent_id, "report")}

    # Table 5: FFCL is the SS + Loc network; Table 6: the 50% subset of 3 training subjects.
    table5 = _read_csv(report_dir / "table5_location_layer.csv")
    assert [(r["Method"], r["Test Dice (obs1)"]) for r in table5] == [
        ("FFCL", table2["SS + Loc"]["Test Dice (obs1)"])]
    table6 = _read_csv(report_dir / "table6_training_size.csv")
    assert [(r["Method"], r["Training images"]) for r in table6] == [("MSWS + Loc (50%)", "2")]
    pvalues = _read_csv(report_dir / "table4_pvalues.csv")
    assert {(r["row_method"], r["column_method"]) for r in pvalues} == {
        ("SS + Loc", "observer 2"), ("observer 2", "SS + Loc")}
    assert all(0.0 <= float(r["p_value"]) <= 1.0 for r in pvalues)

    def child_runs():
        return [r for r in mlflow.search_runs(experiment_names=[reproduce.REPRODUCE_EXPERIMENT],
                                              output_format="list")
                if "mlflow.parentRunId" in r.data.tags]

    # α tuned on validation for the experiments with location features: one run per α,
    # the chosen one the best validation Dice among them (ties: the smaller α), and tested.
    runs = child_runs()
    assert len(runs) == 5  # ss_loc and msws_loc_train50 at α 0.5 and 2, rf once
    for experiment in ("ss_loc", "msws_loc_train50"):
        searched = {float(r.data.params["model.alpha"]): r for r in runs
                    if r.data.tags.get("alpha_search") == experiment}
        assert sorted(searched) == [0.5, 2.0]
        validation = {alpha: r.data.metrics["val_volume_dice"]
                      for alpha, r in searched.items()}
        # the first maximum in increasing α: ties go to the smaller α
        best = max(sorted(validation), key=lambda alpha: validation[alpha])
        result = json.loads((out_dir / experiment / "result.json").read_text())
        assert result["alpha_search"]["chosen"] == best
        assert result["run_id"] == searched[best].info.run_id
        assert [alpha for alpha, r in searched.items()
                if r.data.tags["alpha_chosen"] == "true"] == [best]
        assert f"| {experiment} | 0.5, 2 | " in markdown
        assert f"| {best:g}, best validation Dice of 0.5, 2 (the values tried) |" in markdown
    assert "## α tuned on the validation subjects" in markdown
    assert "test_dice_obs1" in mlflow.get_run(stored["run_id"]).data.metrics

    # Rerun: every experiment is reused, no new run, same numbers, same parent run.
    code, out, _ = run_cli(arguments, capsys)
    assert code == 0 and out.count("reused in") == 3
    assert len(child_runs()) == 5
    table2_again = _read_csv(report_dir / "table2_methods.csv")
    assert table2_again[0]["Test Dice (obs1)"] == table2["SS + Loc"]["Test Dice (obs1)"]

    # Interrupted after training (result missing): the trained model is reused, not retrained.
    (out_dir / "ss_loc" / "result.json").unlink()
    shutil.rmtree(segment)
    code, out, _ = run_cli(arguments, capsys)
    assert code == 0 and out.count("reused in") == 2 and "epoch 1/1" not in out
    assert len(child_runs()) == 5
    again = json.loads((out_dir / "ss_loc" / "result.json").read_text())
    assert again["run_id"] == stored["run_id"]
    assert math.isclose(float(_read_csv(report_dir / "table2_methods.csv")[0][
        "Test Dice (obs1)"]), dice, abs_tol=1e-12)


def test_experiments_tested_on_other_subjects_are_refused():
    first = reproduce.Outcome(reproduce.EXPERIMENTS[0], _result("SS", ("a", "b")), "r1", False, 0)
    other = reproduce.Outcome(reproduce.EXPERIMENTS[1], _result("MSEF", ("a", "c")), "r2", False,
                              0)
    assert reproduce._check_same_test_cases([first, first]) == ["a", "b"]
    with pytest.raises(WMHError, match="msef was tested on other subjects than ss"):
        reproduce._check_same_test_cases([first, other])


def _result(name, case_ids):
    from wmh.evaluation.results import MethodResult

    return MethodResult(name=name, case_ids=case_ids,
                        counts_obs1=np.ones((len(case_ids), 4), np.int64))


def test_choose_alpha_takes_the_best_validation_dice_ties_to_the_smaller():
    assert reproduce.choose_alpha({0.3: 0.41, 1.0: 0.52, 3.0: 0.47}) == 1.0
    assert reproduce.choose_alpha({3.0: 0.5, 0.3: 0.5, 1.0: 0.2}) == 0.3  # tie: smaller α
    assert reproduce.choose_alpha({0.3: float("nan"), 1.0: 0.1}) == 1.0
    assert reproduce.parse_alphas("3, 0.3,1") == (0.3, 1.0, 3.0)
    for bad in ("0,1", "1,x", "-1", "inf"):
        with pytest.raises(WMHError, match=r"--alphas .*is not a positive number"):
            reproduce.parse_alphas(bad)


def test_alpha_search_trains_one_run_per_alpha_and_tests_the_best(tmp_path, mlflow_tmp,
                                                                  monkeypatch):
    """The search's bookkeeping with training and evaluation stood in for (the tiny
    reproduction below trains for real): one nested run per α, the chosen α the best
    validation Dice among them, only it tested, the α list in the result key."""
    from wmh import data, pipeline
    from wmh.contract import TrainResult
    from wmh.evaluation import tracking_io

    dice_of = {0.3: 0.40, 1.0: 0.61, 3.0: 0.55}
    trained, tested = [], []

    def train_model(config, stages, options):
        trained.append(config.model.alpha)
        assert options.nested and options.reuse_finished
        with mlflow.start_run(run_name=options.run_name, nested=True) as run:
            mlflow.log_metric("val_volume_dice", dice_of[config.model.alpha])
        return TrainResult(run.info.run_id, tmp_path, 1, 0.9, 0.5,
                           dice_of[config.model.alpha], 0.9)

    def evaluate(config, stages, result, out_dir, name, training_size=None):
        tested.append(result.run_id)
        return [], _result(name, ("a", "b"))

    monkeypatch.setattr(pipeline, "ensure_data", lambda config: pipeline.DataStages(
        tmp_path, True, tmp_path, tmp_path))
    monkeypatch.setattr(data, "dataset_hash", lambda samples: "data")
    monkeypatch.setattr(pipeline, "train_model", train_model)
    monkeypatch.setattr(pipeline, "evaluate_test_subjects", evaluate)
    monkeypatch.setattr(tracking_io, "log_method_result", lambda result, run_id=None: None)
    experiment = next(e for e in reproduce.EXPERIMENTS if e.name == "ss_loc")
    config = reproduce.resolve(experiment, "demo")
    mlflow.set_experiment("alpha")
    with mlflow.start_run():
        outcome = reproduce.run_experiment(experiment, config, tmp_path, (0.3, 1.0, 3.0))
    assert trained == [0.3, 1.0, 3.0]
    runs = {run.data.tags["mlflow.runName"]: run for run in mlflow.search_runs(
        experiment_names=["alpha"], output_format="list") if "alpha_search" in run.data.tags}
    assert set(runs) == {"ss_loc alpha=0.3", "ss_loc alpha=1", "ss_loc alpha=3"}
    best = max(runs.values(), key=lambda run: run.data.metrics["val_volume_dice"])
    assert outcome.alpha_search["chosen"] == 1.0 and outcome.run_id == best.info.run_id
    assert tested == [best.info.run_id]  # only the chosen α meets the test subjects
    assert {name: run.data.tags["alpha_chosen"] for name, run in runs.items()} == {
        "ss_loc alpha=0.3": "false", "ss_loc alpha=1": "true", "ss_loc alpha=3": "false"}
    stored = json.loads((tmp_path / "ss_loc" / reproduce.RESULT_FILE).read_text())
    assert stored["alpha_search"]["validation_dice"] == {"0.3": 0.40, "1": 0.61, "3": 0.55}

    # the same α list is reused; another one is a new result (the α runs are reused by
    # train_model's reuse_finished)
    again = reproduce.run_experiment(experiment, config, tmp_path, (0.3, 1.0, 3.0))
    assert again.reused and again.alpha_search == outcome.alpha_search
    other = reproduce.run_experiment(experiment, config, tmp_path, (0.3, 3.0))
    assert not other.reused and other.alpha_search["chosen"] == 3.0
    key = reproduce.result_key("run")
    assert len({key, reproduce.result_key("run", (0.3, 3.0)),
                reproduce.result_key("run", (0.3, 1.0, 3.0))}) == 3
    # an experiment without location features searches nothing
    plain = next(e for e in reproduce.EXPERIMENTS if e.name == "ss")
    trained.clear()
    outcome = reproduce.run_experiment(plain, reproduce.resolve(plain, "demo"), tmp_path,
                                       (0.3, 3.0))
    assert outcome.alpha_search is None and trained == [1.0]

    # the report names the chosen α and the search
    markdown = tmp_path / "report.md"
    markdown.write_text("")
    searched = reproduce.Outcome(experiment, None, "r", False, 1.0,
                                 alpha_search=stored["alpha_search"])
    reproduce._append_choices(markdown, [searched], [config])
    reproduce._append_alpha_search(markdown, [searched])
    text = markdown.read_text()
    assert "| 1, best validation Dice of 0.3, 1, 3 (the values tried) |" in text
    assert "## α tuned on the validation subjects" in text
    assert f"| ss_loc | 0.3, 1, 3 | 0.3: 0.400, 1: 0.610, 3: 0.550 | 1 | {best.info.run_id} |" \
        in text
