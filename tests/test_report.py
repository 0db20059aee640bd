"""The comparison report: tables against direct computations, figures, MLflow, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from wmh.evaluation import metrics, report
from wmh.evaluation.bootstrap import paired_bootstrap_pvalue
from wmh.evaluation.cases import evaluate_cases
from wmh.evaluation.figures import validation_figures
from wmh.evaluation.paper import paper_method_name
from wmh.evaluation.results import (ReportOptions, method_result_from_arrays,
                                    method_result_from_predictions, observer_result,
                                    observer_result_from_arrays)
from wmh.evaluation.tracking_io import log_method_result, method_result_from_mlflow
from wmh.errors import WMHError

SHAPE = (24, 24, 5)


def synthetic_cases(count: int = 8, seed: int = 0):
    """Truth blobs, a brain mask, observer 2 (truth with a few flips), and two methods'
    probability maps: 'SS' noisier than 'SS + Loc'."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    brain = (((x - 11.5) / 11) ** 2 + ((y - 11.5) / 11) ** 2 < 1)[..., None].repeat(SHAPE[2], 2)
    cases = []
    for _ in range(count):
        truth = (ndimage.gaussian_filter(rng.random(SHAPE), 1.5) > 0.56) & brain
        truth = truth.astype(np.uint8)
        truth[(rng.random(SHAPE) < 0.01) & brain & (truth == 0)] = 2
        observer2 = truth.copy()
        edge = ndimage.binary_dilation(truth == 1) & ~ndimage.binary_erosion(truth == 1)
        observer2[(rng.random(SHAPE) < 0.25) & edge & (truth != 2)] ^= 1  # disagree on edges
        signal = ndimage.gaussian_filter((truth == 1).astype(float), 0.7)
        weak = np.clip(0.8 * signal + 0.35 * rng.random(SHAPE), 0, 1)
        strong = np.clip(1.1 * signal + 0.15 * rng.random(SHAPE), 0, 1)
        cases.append({"truth": truth, "observer2": observer2, "brain": brain,
                      "SS": weak, "SS + Loc": strong})
    return cases


def build_results(cases):
    ids = [f"case{index}" for index in range(len(cases))]
    truths = [case["truth"] for case in cases]
    brains = [case["brain"] for case in cases]
    observers = [case["observer2"] for case in cases]
    results = [method_result_from_arrays(
        name, [case[name] for case in cases], truths, masks_per_case=brains,
        observer2_per_case=observers, case_ids=ids, threshold=0.5, validation_az=0.99)
        for name in ("SS", "SS + Loc")]
    results.append(observer_result_from_arrays(observers, truths,
                                                       masks_per_case=brains, case_ids=ids))
    return results


@pytest.fixture(scope="module")
def cases():
    return synthetic_cases()


def test_method_result_counts_match_metrics(cases):
    results = build_results(cases)
    ss = results[0]
    for index, case in enumerate(cases):
        expected = metrics.confusion_counts(case["SS"], case["truth"], case["brain"], 0.5)
        np.testing.assert_array_equal(ss.counts_obs1[index], expected)
        expected2 = metrics.confusion_counts(case["SS"], case["observer2"], case["brain"])
        np.testing.assert_array_equal(ss.counts_obs2[index], expected2)
    tp, fp, fn = ss.counts_obs1[:, :3].sum(axis=0)
    assert ss.dice(1) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    observer = results[2]
    first = cases[0]
    expected = metrics.confusion_counts(first["observer2"] == 1, first["truth"], first["brain"])
    np.testing.assert_array_equal(observer.counts_obs1[0], expected)
    assert results[1].dice(1) > ss.dice(1)  # the synthetic cases are built that way


def test_report_on_two_small_runs_renders(cases, tmp_path):
    results = build_results(cases)
    options = ReportOptions(ci_resamples=200, seed=3)
    files = report.write_report(results, tmp_path / "out", "synthetic", options,
                                log_to_mlflow=False)
    text = files.markdown.read_text()
    assert "Synthetic data" in text and "**synthetic**" in text
    assert "Table 2 shape" in text and "Table 3 shape" in text and "Table 4 shape" in text
    assert "Table 6 shape" not in text  # no training sizes given
    # the paper's numbers sit beside ours
    assert "0.9972" in text and "0.781" in text and "0.805" in text
    with open(files.tables["table2"]) as handle:
        rows = {row["Method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"SS", "SS + Loc"}
    assert rows["SS"]["data"] == "synthetic"
    assert float(rows["SS + Loc"]["Test Dice (obs1)"]) == pytest.approx(results[1].dice(1))
    assert float(rows["SS + Loc"]["Paper Dice (obs1)"]) == 0.781
    assert float(rows["SS"]["Paper validation Az"]) == 0.9939
    assert float(rows["SS"]["Test Az"]) == pytest.approx(results[0].curve.auc())
    with open(files.tables["table4"]) as handle:
        pvalues = {(r["row_method"], r["column_method"]): r for r in csv.DictReader(handle)}
    # row SS vs column SS + Loc: the share of resamples where SS wins
    expected = paired_bootstrap_pvalue(results[1].counts_obs1, results[0].counts_obs1,
                                               100, 3)
    assert float(pvalues[("SS", "SS + Loc")]["p_value"]) == expected
    assert pvalues[("SS", "SS + Loc")]["paper_p_value"] == "<0.01"
    assert set(files.figures) == {"roc", "dice_vs_threshold"}
    from PIL import Image

    for path in files.figures.values():
        with Image.open(path) as image:
            assert image.size[0] >= 600 and image.size[1] >= 400
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 10  # something was drawn


def test_report_is_identical_for_a_seed(cases, tmp_path):
    results = build_results(cases)
    options = ReportOptions(ci_resamples=100, seed=5)
    first = report.write_report(results, tmp_path / "a", "synthetic", options, False)
    second = report.write_report(results, tmp_path / "b", "synthetic", options, False)
    assert first.markdown.read_text() == second.markdown.read_text()
    other = report.write_report(results, tmp_path / "c", "synthetic",
                                ReportOptions(ci_resamples=100, seed=6), False)
    assert other.markdown.read_text() != first.markdown.read_text()


def test_training_size_and_location_layer_tables(cases, tmp_path):
    results = build_results(cases)[:1]
    truths = [case["truth"] for case in cases]
    for size, name in ((47, "MSWS + Loc 1/8"), (378, "MSWS + Loc")):
        results.append(method_result_from_arrays(
            name, [case["SS + Loc"] for case in cases], truths, training_size=size))
    results.append(method_result_from_arrays(
        "FFCL", [case["SS + Loc"] for case in cases], truths, validation_az=0.9))
    files = report.write_report(results, tmp_path, "synthetic",
                                ReportOptions(ci_resamples=50), False)
    with open(files.tables["table6"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["Training images"]) for row in rows] == [47, 378]
    assert [float(row["Paper Dice (same share of training set)"]) for row in rows] == \
        [0.756, 0.792]
    with open(files.tables["table5"]) as handle:
        row = next(csv.DictReader(handle))
    assert row["Method"] == "FFCL" and float(row["Paper validation Az"]) == 0.9971
    assert "training_size" in files.figures and files.figures["training_size"].exists()


def test_report_options_choose_table_methods(cases, tmp_path):
    results = build_results(cases)
    truths = [case["truth"] for case in cases]
    results.append(method_result_from_arrays(
        "MSWS + Loc (50%)", [case["SS + Loc"] for case in cases], truths,
        case_ids=results[0].case_ids, training_size=4))
    options = ReportOptions(ci_resamples=20, pvalue_methods=("SS + Loc", "observer 2"),
                                   table3_methods=("SS",), figure_methods=("SS + Loc",))
    files = report.write_report(results, tmp_path, "synthetic", options, False)
    with open(files.tables["table2"]) as handle:  # the training-size run: Table 6 only
        assert [row["Method"] for row in csv.DictReader(handle)] == ["SS", "SS + Loc"]
    with open(files.tables["table3"]) as handle:
        assert [row["Method"] for row in csv.DictReader(handle)] == [
            "SS", "observer 2", "observer 1"]
    with open(files.tables["table4"]) as handle:
        pairs = [(row["row_method"], row["column_method"]) for row in csv.DictReader(handle)]
    assert pairs == [("SS + Loc", "observer 2"), ("observer 2", "SS + Loc")]
    with pytest.raises(WMHError, match="Table 4 method.s. MSIW not among"):
        report.write_report(results, tmp_path / "bad", "synthetic",
                            ReportOptions(pvalue_methods=("MSIW",)), False)


def test_validation_figures_for_training_code(cases, tmp_path):
    truths = [case["truth"] for case in cases[:3]]
    curve = metrics.dice_threshold_curve([case["SS"] for case in cases[:3]], truths,
                                         np.linspace(0, 1, 201))
    threshold, _ = metrics.best_threshold(curve)
    figures = validation_figures(curve, threshold, title="ss+none (validation)")
    assert set(figures) == {"roc", "dice_vs_threshold"}
    for name, figure in figures.items():
        figure.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
    assert figures["roc"].axes[0].get_title().startswith("ss+none (validation): ROC")


def test_paper_method_names():
    assert paper_method_name("msws_loc") == "MSWS + Loc"
    assert paper_method_name("SS+Loc") == "SS + Loc"
    assert paper_method_name("MSIW") == "MSIW"
    assert paper_method_name("random forest") == "Conventional"
    assert paper_method_name("my new net") is None


def test_report_rejects_duplicates_and_empty_label(cases, tmp_path):
    results = build_results(cases)
    with pytest.raises(WMHError, match="duplicate"):
        report.write_report([results[0], results[0]], tmp_path, "synthetic")
    with pytest.raises(WMHError, match="data-label"):
        report.write_report(results, tmp_path, " ")


def test_method_result_round_trips_through_mlflow(cases, tmp_path, mlflow_tmp):
    import mlflow

    results = build_results(cases[:3])
    mlflow.set_tracking_uri(mlflow_tmp)
    with mlflow.start_run() as run:
        log_method_result(results[1])
        files = report.write_report(results, tmp_path / "report", "synthetic",
                                    ReportOptions(ci_resamples=20))
    loaded = method_result_from_mlflow(run.info.run_id)
    assert loaded.name == "SS + Loc" and loaded.case_ids == results[1].case_ids
    np.testing.assert_array_equal(loaded.counts_obs1, results[1].counts_obs1)
    np.testing.assert_array_equal(loaded.curve.counts, results[1].curve.counts)
    assert loaded.dice(2) == pytest.approx(results[1].dice(2))
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(
        run.info.run_id, "report")}
    assert "report/report.md" in artifacts and "report/roc.png" in artifacts
    assert files.markdown.exists()
    with mlflow.start_run() as bare:  # what a training run logs, without evaluation
        mlflow.log_params({"model.arch": "msws", "model.loc": "ffcl"})
        mlflow.log_metrics({"best_val_auc": 0.95, "val_volume_auc": 0.97, "threshold": 0.4,
                            "test_dice": 0.61})
    summary_only = method_result_from_mlflow(bare.info.run_id)
    assert summary_only.name == "MSWS + Loc"
    assert summary_only.validation_az == pytest.approx(0.97)
    assert summary_only.threshold == pytest.approx(0.4)
    assert summary_only.dice(1) == pytest.approx(0.61) and summary_only.counts_obs1 is None
    with pytest.raises(WMHError, match="no such MLflow run"):
        method_result_from_mlflow("0" * 32)


# ------------------------------------------------------------------ folders and the CLI

def _save(path, array, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), np.diag([0.9, 0.9, 3.0, 1])),
             str(path))


def write_cohort(root, cases):
    for index, case in enumerate(cases):
        case_id = f"c{index}"
        _save(root / "truth" / case_id / "wmh.nii.gz", case["truth"])
        _save(root / "observer2" / f"{case_id}.nii.gz", case["observer2"])
        _save(root / "brain" / f"{case_id}.nii.gz", case["brain"])
        _save(root / "ss" / f"{case_id}.nii.gz", case["SS"], np.float32)
        _save(root / "ssloc" / f"{case_id}.nii.gz", case["SS + Loc"], np.float32)
    return root


def test_results_from_folders_match_the_array_api(cases, tmp_path):
    write_cohort(tmp_path, cases[:4])
    from_folder = method_result_from_predictions(
        "SS", tmp_path / "ss", tmp_path / "truth", brain_mask=tmp_path / "brain",
        observer2=tmp_path / "observer2")
    from_arrays = build_results(cases[:4])[0]
    np.testing.assert_array_equal(from_folder.counts_obs1, from_arrays.counts_obs1)
    np.testing.assert_array_equal(from_folder.counts_obs2, from_arrays.counts_obs2)
    observer = observer_result(tmp_path / "observer2", tmp_path / "truth",
                                      brain_mask=tmp_path / "brain")
    np.testing.assert_array_equal(observer.counts_obs1, build_results(cases[:4])[2].counts_obs1)


def _cli():
    from wmh.cli import cli

    return cli


def test_cli_evaluate_json(cases, tmp_path):
    write_cohort(tmp_path, cases[:3])
    result = CliRunner().invoke(_cli(), ["evaluate", "--pred", str(tmp_path / "ssloc"),
                                         "--truth", str(tmp_path / "truth"), "--brain-mask",
                                         str(tmp_path / "brain"), "--json"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert [case["id"] for case in parsed["cases"]] == ["c0", "c1", "c2"]
    for index, case in enumerate(parsed["cases"]):
        expected = metrics.challenge_metrics(cases[index]["SS + Loc"], cases[index]["truth"],
                                             np.diag([0.9, 0.9, 3.0, 1]))
        for name in metrics.CHALLENGE_METRICS:
            assert case[name] == pytest.approx(expected[name], rel=1e-6), name
        assert 0.5 < case["auc"] <= 1.0
    assert parsed["summary"]["num_cases"] == 3


def test_cli_evaluate_text_and_bad_input_exit_2(cases, tmp_path):
    import subprocess
    import sys

    write_cohort(tmp_path, cases[:2])
    result = CliRunner().invoke(_cli(), ["evaluate", "--pred", str(tmp_path / "ss"),
                                         "--truth", str(tmp_path / "truth")])
    assert result.exit_code == 0 and "overall Dice" in result.output
    (tmp_path / "ss" / "c1.nii.gz").unlink()
    completed = subprocess.run(
        [sys.executable, "-m", "wmh.cli", "evaluate", "--pred", str(tmp_path / "ss"),
         "--truth", str(tmp_path / "truth")], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0  # one line, no traceback
    assert "no prediction for 1 truth case(s): c1" in completed.stderr
    assert completed.stdout == ""


def test_cli_report_from_folders(cases, tmp_path):
    write_cohort(tmp_path, cases[:4])
    out = tmp_path / "report"
    result = CliRunner().invoke(_cli(), [
        "report", "--method", f"SS={tmp_path / 'ss'}", "--method",
        f"SS + Loc={tmp_path / 'ssloc'}", "--truth", str(tmp_path / "truth"),
        "--observer2", str(tmp_path / "observer2"), "--brain-mask", str(tmp_path / "brain"),
        "--out", str(out), "--data-label", "synthetic", "--resamples", "50"])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").exists() and (out / "dice_vs_threshold.png").exists()
    text = (out / "report.md").read_text()
    assert "observer 2" in text and "Synthetic data" in text
    bad = CliRunner().invoke(_cli(), ["report", "--method", "SS", "--truth", str(tmp_path),
                                      "--out", str(out), "--data-label", "synthetic"])
    assert bad.exit_code == 2


# --- one threshold per segmentation ---------------------------------------------------

def write_segmentation(root, cases, threshold, name="SS"):
    """A `wmh segment`-like folder: <id>/wmh_probability, wmh_mask at ``threshold`` and
    report.json recording it."""
    for index, case in enumerate(cases):
        folder = root / "seg" / f"c{index}"
        probability = case[name].astype(np.float32)
        _save(folder / "wmh_probability.nii.gz", probability, np.float32)
        _save(folder / "wmh_mask.nii.gz", (probability >= threshold).astype(np.uint8))
        (folder / "report.json").write_text(json.dumps({"subject_id": f"c{index}",
                                                        "threshold": threshold}))
        _save(root / "truth" / f"c{index}" / "wmh.nii.gz", case["truth"])
    return root / "seg"


def test_evaluate_scores_a_segmentation_at_its_recorded_threshold(cases, tmp_path):
    seg = write_segmentation(tmp_path, cases[:3], threshold=0.9)
    result = CliRunner().invoke(_cli(), ["evaluate", "--pred", str(seg), "--truth",
                                         str(tmp_path / "truth"), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # nothing to say: the segmentation's own threshold
    parsed = json.loads(result.stdout)
    for index, case in enumerate(parsed["cases"]):
        mask = (cases[index]["SS"].astype(np.float32) >= 0.9).astype(np.uint8)
        assert case["dice"] == pytest.approx(metrics.dice(mask, cases[index]["truth"]))
        assert case["threshold"] == 0.9
        assert case["prediction_file"].endswith("wmh_mask.nii.gz")
    at_half = [metrics.dice(cases[i]["SS"].astype(np.float32), cases[i]["truth"], 0.5)
               for i in range(3)]
    assert [c["dice"] for c in parsed["cases"]] != pytest.approx(at_half)  # not 0.5
    # The probability map alone is scored at the same recorded threshold.
    single = CliRunner().invoke(_cli(), [
        "evaluate", "--pred", str(seg / "c0" / "wmh_probability.nii.gz"), "--truth",
        str(tmp_path / "truth" / "c0" / "wmh.nii.gz"), "--json"])
    assert json.loads(single.stdout)["cases"][0]["dice"] == pytest.approx(
        parsed["cases"][0]["dice"])


def test_evaluate_another_threshold_is_explicit_and_printed(cases, tmp_path):
    seg = write_segmentation(tmp_path, cases[:2], threshold=0.9)
    result = CliRunner().invoke(_cli(), ["evaluate", "--pred", str(seg), "--truth",
                                         str(tmp_path / "truth"), "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "thresholding" in line]
    assert notes == [
        f"{seg / f'c{i}' / 'wmh_probability.nii.gz'}: thresholding wmh_probability at 0.5, "
        "not the segmentation's 0.9" for i in range(2)]
    assert "threshold 0.5 (as given with --threshold)" in result.stdout
    evaluation = evaluate_cases(seg, tmp_path / "truth", threshold=0.5)
    for index, case in enumerate(evaluation["cases"]):
        assert case["dice"] == pytest.approx(
            metrics.dice(cases[index]["SS"].astype(np.float32), cases[index]["truth"], 0.5))
    with pytest.raises(WMHError, match=r"^--threshold 1\.5: must lie in \[0, 1\]$"):
        evaluate_cases(seg, tmp_path / "truth", threshold=1.5)


def test_report_uses_the_recorded_threshold_and_the_readme_command(cases, tmp_path):
    seg = write_segmentation(tmp_path, cases[:3], threshold=0.9)
    out = tmp_path / "report"
    # The README's command, without --data-label.
    result = CliRunner().invoke(_cli(), ["report", "--method", f"MSWS + Loc={seg}",
                                         "--truth", str(tmp_path / "truth"), "--out",
                                         str(out), "--resamples", "20"])
    assert result.exit_code == 0, result.output
    assert "data: unspecified (say what they are with --data-label)" in result.stderr
    assert "Data: **unspecified**" in (out / "report.md").read_text()
    sources = report.ReportSources(methods=[("MSWS + Loc", seg)], truth=tmp_path / "truth")
    result_obj = report.collect_results(sources)[0]
    assert result_obj.threshold == 0.9
    masks = [(c["SS"].astype(np.float32) >= 0.9) for c in cases[:3]]
    expected = [metrics.confusion_counts(m.astype(np.float64), c["truth"], None, 0.9)
                for m, c in zip(masks, cases[:3])]
    np.testing.assert_array_equal(result_obj.counts_obs1, np.stack(expected))
    notes = []
    explicit = report.collect_results(dataclasses.replace(sources, threshold=0.6), notes)[0]
    assert explicit.threshold == 0.6
    assert notes == ["MSWS + Loc: thresholding wmh_probability at 0.6, not the "
                     "segmentation's 0.9"]
    (seg / "c1" / "report.json").write_text(json.dumps({"threshold": 0.8}))
    with pytest.raises(WMHError, match=r"segmented at different thresholds \(0\.8, 0\.9\); "
                                        r"give one with --threshold"):
        report.collect_results(sources)


def test_report_data_label_is_synthetic_for_a_synth_cohort(tmp_path):
    (tmp_path / "cohort" / "site" / "s1").mkdir(parents=True)
    (tmp_path / "cohort" / "cohort.json").write_text("{}")
    assert report.infer_data_label(tmp_path / "cohort") == "synthetic"
    assert report.infer_data_label(tmp_path / "cohort" / "site" / "s1") == "synthetic"
    assert report.infer_data_label(tmp_path) == "unspecified"
    assert report.infer_data_label(None) == "unspecified"
