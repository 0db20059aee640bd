"""Shipped models (wmh.pretrained): export, record, card, verification, `wmh models`,
`wmh segment` without --model, and the package data that installs them.

Every test exports a tiny model into a temporary package root (``package_root``
monkeypatched); the real ``wmh/pretrained/`` is never written."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from segment_helpers import prepare_from_files, save_tiny_model, write_subject
from wmh import pretrained
from wmh.cli import main
from wmh.errors import WMHError
from wmh.pretrained import export as exporter
from wmh.contract import ModelContract

REPO = Path(__file__).resolve().parents[1]
BENCH_OUTPUT = """   subject_id      status
{"benchmark": "real", "data": "real", "mean_dice": 0.512, "cases": 3, "failed": 0,
 "seconds_per_case": 41.5, "mean_floor_dice": 0.401, "rows": [
 {"subject_id": "a", "status": "ok", "dice": 0.6, "hd95": 5.0, "avd": 20.0,
  "lesion_recall": 0.5, "lesion_f1": 0.4, "floor_dice": 0.45, "truth_volume_ml": 10.0,
  "predicted_volume_ml": 8.0},
 {"subject_id": "b", "status": "ok", "dice": 0.424, "hd95": 7.0, "avd": 40.0,
  "lesion_recall": 0.3, "lesion_f1": 0.2, "floor_dice": 0.35, "truth_volume_ml": 50.0,
  "predicted_volume_ml": 30.0}]}"""


def model_folder(tmp_path: Path) -> Path:
    """A tiny FLAIR+T1 model folder with its preprocessing plan (one training subject)."""
    from wmh.config import PreprocessConfig
    from wmh.preprocess.plan import write_plan

    folder = save_tiny_model(tmp_path / "trained" / "model", threshold=0.4)
    write_subject(tmp_path / "training", tmp_path / "training-prepared", "t1")
    write_plan(folder, PreprocessConfig(), True, [tmp_path / "training-prepared" / "t1.h5"])
    return folder


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty package root for shipped models."""
    folder = tmp_path / "package"
    folder.mkdir()
    monkeypatch.setattr(pretrained, "package_root", lambda: folder)
    monkeypatch.setattr(exporter, "package_root", lambda: folder)
    return folder


def bench_json(tmp_path: Path) -> Path:
    """bench_real.py's whole output: a table, then its JSON as one last line."""
    head, _, rest = BENCH_OUTPUT.partition("\n")
    path = tmp_path / "bench.txt"
    path.write_text(head + "\n" + " ".join(rest.split()) + "\n")
    return path


def test_export_writes_files_hashes_record_and_card(tmp_path, root, mlflow_tmp):
    folder = model_folder(tmp_path)
    final = exporter.export(folder, "flair", [str(bench_json(tmp_path))], version="1.2")
    assert final == root / "flair"
    assert [p.name for p in root.iterdir()] == ["flair"]  # no staging folder left
    assert final.stat().st_mode & 0o755 == 0o755  # readable by every user of an install
    names = {p.name for p in final.iterdir()}
    assert names == {"model.keras", "wmh_model.json", "plan.json", "prior.nii.gz",
                     "MODEL_CARD.md", "pretrained.json"}
    record = json.loads((final / "pretrained.json").read_text())
    assert record["name"] == "flair" and record["version"] == "1.2"
    assert record["uri"] == "pretrained:flair" and record["weights_dtype"] == "float32"
    assert set(record["files"]) == names - {"pretrained.json"}
    for name, entry in record["files"].items():
        assert entry["sha256"] == pretrained.sha256_file(final / name)
        assert entry["bytes"] == (final / name).stat().st_size
    assert (final / "model.keras").read_bytes() == (folder / "model.keras").read_bytes()
    real = record["figures"]["real"]
    assert real["mean_dice"] == 0.512 and real["cases"] == 3 and real["failed"] == 0
    assert real["mean_hd95_mm"] == pytest.approx(6.0)  # mean of the ok rows
    assert "synthetic" not in record["figures"]
    # no MLflow run: provenance says so, never guessed
    assert record["training"]["run_id"] is None and "git_commit" not in record["training"]

    card = (final / "MODEL_CARD.md").read_text()
    for section in ("## Intended use", "## Input contract", "## Training data",
                    "## Recipe and commit", "## Figures", "## Calibration", "## Limitations"):
        assert section in card
    synthetic = card.split("### Synthetic held-out")[1].split("###")[0]
    assert "Not measured." in synthetic
    real_text = card.split("### Real development cases")[1].split("##")[0]
    assert "| mean Dice | 0.512 |" in real_text and "| seconds per case | 41.500 |" in real_text
    assert "| a | 0.600 | 0.450 | 10.000 | 8.000 |" in real_text
    assert "FLAIR, T1" in card and "0.400" in card  # contract: channels, threshold
    assert "**Generator version:** not recorded" in card
    assert "**Training commit:** not recorded" in card
    assert "1-1 mm" in card  # the plan's training slice thickness range

    shipped = pretrained.find("pretrained")
    assert shipped.name == "flair" and shipped.version == "1.2"
    assert shipped.weights_sha256 == pretrained.sha256_file(folder / "model.keras")
    assert pretrained.find("pretrained:flair").folder == final
    assert shipped.total_bytes <= pretrained.MAX_MODEL_BYTES


def test_export_reads_provenance_from_the_training_run(tmp_path, root, mlflow_tmp):
    import mlflow

    folder = model_folder(tmp_path)
    mlflow.set_tracking_uri(mlflow_tmp)  # an earlier test may have set another store
    mlflow.set_experiment("tiny")
    with mlflow.start_run() as run:
        mlflow.log_params({"name": "pretrained_flair", "synth.seed": 17})
        mlflow.set_tags({"git_commit": "abc123", "data_label": "synthetic",
                         "synth_version": "4", "synth_seed": "17", "synth_subjects": "160",
                         "synth_profile": "randomised"})
    (folder.parent / "state.json").write_text(json.dumps({"run_id": run.info.run_id}))
    evaluation = tmp_path / "test.json"
    evaluation.write_text(json.dumps({"cases": [{"id": "s1", "dice": 0.7}],
                                      "summary": {"num_cases": 1, "mean": {"dice": 0.7}}}))
    final = exporter.export(folder, "flair", [f"synthetic={evaluation}"])
    record = json.loads((final / "pretrained.json").read_text())
    training = record["training"]
    assert training["run_id"] == run.info.run_id and training["git_commit"] == "abc123"
    assert training["synth"] == {"synth_version": 4, "seed": 17, "subjects": 160,
                                 "profile": "randomised"}
    assert record["recipe"]["path"] == "experiments/pretrained_flair.yaml"
    assert record["figures"]["synthetic"]["mean_dice"] == 0.7
    card = (final / "MODEL_CARD.md").read_text()
    assert "**Data:** SYNTHETIC" in card and "**Generator version:** 4" in card
    assert "**Seed:** 17" in card and "**Training commit:** abc123" in card
    assert "experiments/pretrained_flair.yaml" in card
    real = card.split("### Real development cases")[1].split("##")[0]
    assert "Not measured." in real
    assert "| mean Dice | 0.700 |" in card.split("### Synthetic held-out")[1]


def test_export_bad_input_is_one_line_and_leaves_nothing(tmp_path, root, capsys):
    folder = model_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(folder), "--name", "Bad Name"], r"--name 'Bad Name': 1-40 lower-case"),
        ([str(tmp_path / "empty"), "--name", "x"], r"^.*error: MODEL .*empty: missing "
                                                   r"model\.keras"),
        ([str(folder), "--name", "x", "--figures", str(tmp_path / "no.json")],
         r"--figures .*no\.json: file not found"),
        ([str(folder), "--name", "x", "--figures", str(folder / "plan.json")],
         r"--figures .*plan\.json: say what the figures were measured on"),
        ([str(folder), "--name", "x", "--recipe", str(tmp_path / "none.yaml")],
         r"--recipe .*none\.yaml: file not found"),
        ([str(folder), "--name", "x", "--figures", str(bench_json(tmp_path)), "--figures",
          f"real={bench_json(tmp_path)}"], r"a second file of real figures"),
    ]
    for argv, message in cases:
        assert exporter.main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, err
    (folder / "plan.json").unlink()
    assert exporter.main([str(folder), "--name", "x"]) == 2
    assert "no plan.json" in capsys.readouterr().err
    assert list(root.iterdir()) == []


def test_size_limit_stores_float16_weights_that_predict_alike(tmp_path, root, monkeypatch):
    from wmh.loader import load_model_dir

    folder = model_folder(tmp_path)
    original, _ = load_model_dir(folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    # a limit the float32 folder exceeds and its float16 twin fits
    monkeypatch.setattr(exporter, "MAX_MODEL_BYTES", size + exporter.RECORD_ALLOWANCE - 1)
    final = exporter.export(folder, "flair")
    record = json.loads((final / "pretrained.json").read_text())
    assert record["weights_dtype"] == "float16"
    assert (final / "model.keras").stat().st_size < (folder / "model.keras").stat().st_size
    model, contract = load_model_dir(final)  # float32 policy, float32 weights again
    assert {str(w.dtype) for w in model.weights} == {"float32"}
    assert contract.channels == ("FLAIR", "T1")
    generator = np.random.default_rng(1)
    inputs = {k: generator.random((16, 32, 32, 2), np.float32) for k in ("s1", "s2", "s3")}
    inputs["loc"] = generator.random((16, 8), np.float32)
    before = np.asarray(original(inputs, training=False))[:, 1]
    after = np.asarray(model(inputs, training=False))[:, 1]
    assert np.max(np.abs(before - after)) < 0.01
    assert not np.array_equal(before, after)  # the weights really were rounded

    monkeypatch.setattr(exporter, "MAX_MODEL_BYTES", 1000)  # too small even in float16
    with pytest.raises(WMHError, match=r"even with float16 weights, above the 0 MB limit"):
        exporter.export(folder, "other")
    assert [p.name for p in root.iterdir()] == ["flair"]


def test_corrupted_or_missing_shipped_file_is_named(tmp_path, root):
    final = exporter.export(model_folder(tmp_path), "flair")
    with open(final / "plan.json", "a") as stream:
        stream.write(" ")
    with pytest.raises(WMHError, match=r"plan\.json: corrupted \(its SHA-256 differs"):
        from wmh.registry import model_folder as resolve
        resolve("pretrained")
    (final / "plan.json").unlink()
    with pytest.raises(WMHError, match=r"plan\.json: missing from the shipped model 'flair'"):
        pretrained.find("pretrained:flair")
    with pytest.raises(WMHError, match=r"^--model pretrained:t1: no shipped model named 't1' "
                                       r"\(shipped: flair"):
        pretrained.find("pretrained:t1")


def test_no_shipped_model_segment_and_models_say_so(tmp_path, root, capsys):
    write_subject(tmp_path / "cohort", tmp_path / "prepared", "c1")
    flair = tmp_path / "cohort" / "site" / "c1" / "pre" / "FLAIR.nii.gz"
    t1 = flair.with_name("T1.nii.gz")
    for extra in ([], ["--model", "pretrained"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["segment", str(flair), str(t1), "--out", str(tmp_path / "o"), *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no model is shipped with this installation" in err
        assert "give --model FOLDER" in err
        assert ("--model not given" if not extra else "--model pretrained:") in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["models"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("no shipped models: no model is shipped")


def test_folder_without_contract_is_one_line(tmp_path, capsys):
    write_subject(tmp_path / "cohort", tmp_path / "prepared", "c1")
    folder = save_tiny_model(tmp_path / "m")
    (folder / "wmh_model.json").unlink()
    flair = tmp_path / "cohort" / "site" / "c1" / "pre" / "FLAIR.nii.gz"
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--model", str(folder), str(flair), str(flair.with_name("T1.nii.gz")),
              "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"--model .*m: missing wmh_model\.json", err)
    assert not (tmp_path / "o").exists()


def test_segment_without_model_uses_the_shipped_one_and_reports_it(tmp_path, root,
                                                                   monkeypatch, capsys):
    final = exporter.export(model_folder(tmp_path), "flair", version="7")
    write_subject(tmp_path / "cohort", tmp_path / "prepared2", "s1", seed=5)
    prepare_from_files(monkeypatch, tmp_path / "prepared2")
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(tmp_path / "cohort"), "--out", str(tmp_path / "o"), "--quiet"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    capsys.readouterr()
    report = json.loads((tmp_path / "o" / "s1" / "report.json").read_text())
    assert report["model"] == "pretrained:flair" and report["model_version"] == "7"
    assert report["model_sha256"] == pretrained.sha256_file(final / "model.keras")
    assert report["model_path"] == str(final)
    import csv
    with open(tmp_path / "o" / "volumes.csv") as stream:
        row = next(csv.DictReader(stream))
    assert row["model"] == "pretrained:flair" and row["model_version"] == "7"

    with pytest.raises(SystemExit):
        main(["models"])
    out = capsys.readouterr().out
    assert re.search(r"^pretrained:flair \(default\)  version 7  channels FLAIR\+T1  "
                     r"threshold 0\.400  \d+\.\d MB  sha256 [0-9a-f]{12}  card .*MODEL_CARD"
                     r"\.md$", out.strip()), out


def test_segment_one_flair_file_with_a_shipped_flair_model(tmp_path, root, monkeypatch,
                                                          capsys):
    """The README's first command: `wmh segment FLAIR --out OUT`, a FLAIR-only model."""
    from wmh import train
    from wmh.config import ModelConfig, PreprocessConfig
    from wmh.models import build_model
    from wmh.preprocess.plan import write_plan

    config = ModelConfig(arch="msws", loc="ffcl", width=0.1)
    contract = ModelContract(model=config, channels=("FLAIR",),
                                   inplane_spacing_mm=1.0, threshold=0.5)
    folder = train.save_model_dir(build_model(config, 1), contract, tmp_path / "flair")
    write_subject(tmp_path / "training", tmp_path / "training-prepared", "t1")
    write_plan(folder, PreprocessConfig(), False, [tmp_path / "training-prepared" / "t1.h5"])
    exporter.export(folder, "flair", version="1")
    write_subject(tmp_path / "cohort", tmp_path / "prepared", "p7")
    prepare_from_files(monkeypatch, tmp_path / "prepared")
    flair = tmp_path / "cohort" / "site" / "p7" / "pre" / "FLAIR.nii.gz"
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(flair), "--out", str(tmp_path / "o"), "--quiet"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "p7" / "report.json").read_text())
    assert report["status"] == "ok" and report["model"] == "pretrained:flair"
    assert report["model_version"] == "1" and report["t1"] is None


def test_package_data_installs_the_shipped_model_files(tmp_path):
    """A wheel built from the package holds every file of a shipped model folder."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "wmh", source / "wmh",
                    ignore=shutil.ignore_patterns("__pycache__", "flair", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    files = ("model.keras", "wmh_model.json", "plan.json", "prior.nii.gz", "MODEL_CARD.md",
             "pretrained.json")
    (source / "wmh" / "pretrained" / "demo").mkdir()
    for name in files:
        (source / "wmh" / "pretrained" / "demo" / name).write_text("x")
    result = subprocess.run([sys.executable, "-c",
                             "import setuptools.build_meta as b; print(b.build_wheel('dist'))"],
                            cwd=source, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = source / "dist" / result.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"wmh/pretrained/demo/{name}" for name in files} <= names
    assert "wmh/pretrained/__init__.py" in names and "wmh/pretrained/export.py" in names


def test_every_model_shipped_in_this_checkout_is_complete_and_small():
    """Whatever the repository ships (maybe nothing yet) verifies and fits 25 MB."""
    for model in pretrained.shipped_models():
        pretrained.verify(model)
        assert model.total_bytes <= pretrained.MAX_MODEL_BYTES
        assert (model.folder / pretrained.CARD_FILE).is_file()
        assert sum(p.stat().st_size for p in model.folder.iterdir()) <= \
            pretrained.MAX_MODEL_BYTES


def test_synthetic_cohort_of_a_run_from_its_cache(tmp_path):
    """Runs from before the synth_* tags: the prepared folder their datasets name leads
    to the cohort's generator version, seed, subjects and profile."""
    from types import SimpleNamespace

    from wmh.tracking import synthetic_cohort

    cohort = tmp_path / "synth" / "randomised-n160"
    cohort.mkdir(parents=True)
    (cohort / "cohort.json").write_text(json.dumps({
        "synth_version": 4, "arguments": {"subjects": 160, "seed": 17,
                                          "profile": "randomised", "synth_version": 4}}))
    prepared = tmp_path / "cache" / "prepared" / "randomised-n160-ab12"
    prepared.mkdir(parents=True)
    assert synthetic_cohort(prepared) == {}  # no origin.json: real data, or unknown
    (prepared / "origin.json").write_text(json.dumps({"cohort": str(cohort),
                                                      "synthetic": True}))
    assert synthetic_cohort(prepared)["seed"] == 17
    folder = tmp_path / "cache" / "runs" / "key" / "model"
    folder.mkdir(parents=True)
    run = SimpleNamespace(inputs=SimpleNamespace(dataset_inputs=[
        SimpleNamespace(dataset=SimpleNamespace(name="randomised-n160-ab12-train"))]))
    assert exporter._cohort_from_cache(run, folder) == {
        "synth_version": 4, "seed": 17, "subjects": 160, "profile": "randomised"}
    assert exporter._cohort_from_cache(run, tmp_path / "elsewhere" / "model") == {}
