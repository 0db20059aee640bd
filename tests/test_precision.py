"""Precision: ISA detection, auto resolution, policy scope, bf16 inference and training."""

import json

import keras
import numpy as np
import pytest

from test_dense import small_case, spread_weights
from test_train import tiny_config, tiny_samples  # noqa: F401 (a fixture)
from wmh.config import ModelConfig, load_config
from wmh.errors import WMHError
from wmh.lifecycle import RunOptions
from wmh.models import InferenceOptions, build_dense_model, build_model, predict_slices
from wmh.models import precision as precision_module
from wmh.models.precision import (
    check_precision,
    precision_scope,
    resolve_precision,
    tower_precision,
    tower_precision_of,
)
from wmh.contract import ModelContract
from wmh.loader import load_model_dir

# Read at import, before the autouse fixture makes "auto" resolve to fp32 in every test.
DETECT_ISA = precision_module.cpu_bf16_isa
HOST_ISA = DETECT_ISA()
FP32, BF16 = InferenceOptions(precision="fp32"), InferenceOptions(precision="bf16")
needs_bf16 = pytest.mark.skipif(HOST_ISA == "none",
                                reason="this CPU has no bfloat16 units (amx_bf16/avx512_bf16)")


def write_cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    block = f"processor\t: 0\nmodel name\t: test cpu\nflags\t\t: {' '.join(flags)}\n\n"
    path.write_text(block * 2)
    return path


@pytest.mark.parametrize("flags,isa", [
    (["fpu", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "amx_bf16"),
    (["fpu", "avx512f", "avx512_vnni", "avx512_bf16"], "avx512_bf16"),
    (["fpu", "avx2", "avx512f"], "none"),
    (["fpu", "avx512_bf16x"], "none"),  # whole flags only
])
def test_cpu_bf16_isa_reads_cpuinfo_flags(tmp_path, flags, isa):
    assert DETECT_ISA(write_cpuinfo(tmp_path, flags)) == isa
    assert DETECT_ISA(tmp_path / "missing") == "none"


@pytest.mark.parametrize("isa,train,inference", [
    ("amx_bf16", "fp32", "bf16"),  # measured: bf16 training did not hold test Dice
    ("avx512_bf16", "fp32", "bf16"),
    ("none", "fp32", "fp32"),
])
def test_auto_resolves_per_isa_and_job(isa, train, inference):
    assert resolve_precision("auto", "train", isa) == train
    assert resolve_precision("auto", "inference", isa) == inference
    for explicit in ("fp32", "bf16"):  # explicit settings are kept on every CPU
        assert resolve_precision(explicit, "train", isa) == explicit


def test_auto_uses_the_detected_isa(monkeypatch, tmp_path):
    for flags, inference in ((["avx512f", "avx512_bf16"], "bf16"), (["avx512f"], "fp32")):
        path = write_cpuinfo(tmp_path, flags)
        monkeypatch.setattr(precision_module, "cpu_bf16_isa",
                            lambda cpuinfo=None, path=path: DETECT_ISA(path))
        assert resolve_precision("auto", "inference") == inference
        assert resolve_precision("auto", "train") == "fp32"


def test_bad_precision_is_a_one_line_error_naming_the_option(tmp_path):
    with pytest.raises(WMHError, match=r"^--precision: 'fp16' is not one of auto, fp32, bf16$"):
        check_precision("fp16", "--precision")
    with pytest.raises(WMHError, match="precision: 'half'"):
        resolve_precision("half", "train")
    config = tmp_path / "x.yaml"
    config.write_text("train:\n  precision: fp16\n")
    with pytest.raises(WMHError) as error:
        load_config(config)
    message = str(error.value)
    assert "train.precision" in message and "'fp16'" in message and "\n" not in message
    assert load_config(None).train.precision == "auto"
    assert load_config(None, ["train.precision=bf16"]).train.precision == "bf16"


def test_precision_scope_restores_the_global_policy():
    assert keras.config.dtype_policy().name == "float32"
    with precision_scope("bf16") as name:
        assert name == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with precision_scope("bf16"):
            raise RuntimeError("training failed")
    assert keras.config.dtype_policy().name == "float32"


def test_bf16_patch_model_keeps_weights_head_and_probabilities_float32(tf_seeded):
    config = ModelConfig(arch="msws", loc="ffcl", width=0.1)
    with precision_scope("bf16"):
        model = build_model(config, 2)
    assert all(weight.dtype == "float32" for weight in model.weights)
    assert model.get_layer("tower").get_layer("conv2").compute_dtype == "bfloat16"
    assert model.get_layer("tower").get_layer("conv1").compute_dtype == "float32"  # raw input
    assert model.get_layer("fc1_s1").compute_dtype == "bfloat16"
    for name in ("loc_scaled", "fc1_loc", "fc2", "output"):
        assert model.get_layer(name).compute_dtype == "float32", name
    rng = np.random.default_rng(0)
    inputs = {name: rng.random((4, 32, 32, 2), dtype=np.float32) for name in ("s1", "s2", "s3")}
    inputs["loc"] = rng.random((4, 8), dtype=np.float32)
    assert keras.ops.convert_to_numpy(model(inputs)).dtype == np.float32


@pytest.mark.parametrize("arch,loc", [("msws", "ffcl"), ("msiw", "lcl"), ("ss", "sfcl"),
                                      ("msef", "ffcl")])
@needs_bf16
def test_bf16_inference_within_0_02_of_fp32(tf_seeded, arch, loc):
    config = ModelConfig(arch=arch, loc=loc, width=0.1, alpha=2.0)
    model = spread_weights(build_model(config, 2), seed=2)
    images, loc_maps, mask = small_case()
    fp32 = predict_slices(model, config, images, loc_maps, mask, FP32)
    bf16 = predict_slices(model, config, images, loc_maps, mask, BF16)
    assert bf16.dtype == np.float32
    difference = np.abs(bf16 - fp32)[mask]
    assert difference.max() <= 0.02
    assert difference.max() > 0  # bf16 really ran: some rounding shows
    assert fp32[mask].std() > 0.05  # probabilities vary, so the bound means something
    assert np.all(bf16[~mask] == 0)


@needs_bf16
def test_dense_precision_is_switched_per_call_and_restored(tf_seeded):
    config = ModelConfig(arch="msws", loc="lcl", width=0.1)
    model = spread_weights(build_model(config, 2), seed=1)
    images, loc_maps, mask = small_case()
    dense = build_dense_model(model, config, 2)  # fp32 by default
    assert tower_precision_of(dense) == "fp32"
    built_bf16 = build_dense_model(model, config, 2, precision="bf16")
    assert tower_precision_of(built_bf16) == "bf16"
    assert built_bf16.get_layer("trunk").get_layer("fc1_conv_s1").compute_dtype == "float32"
    switched = predict_slices(dense, config, images, loc_maps, mask, BF16)
    assert tower_precision_of(dense) == "fp32"  # the caller's model is left as it was
    np.testing.assert_array_equal(
        switched, predict_slices(built_bf16, config, images, loc_maps, mask, BF16))
    with tower_precision(built_bf16, "fp32"):
        assert tower_precision_of(built_bf16) == "fp32"
    tower = model.get_layer("tower")  # a tower model on its own
    with tower_precision(tower, "bf16"):
        assert tower.get_layer("conv3").compute_dtype == "bfloat16"
    assert tower.get_layer("conv3").compute_dtype == "float32"
    np.testing.assert_allclose(
        predict_slices(built_bf16, config, images, loc_maps, mask, FP32),
        predict_slices(dense, config, images, loc_maps, mask, FP32), atol=1e-6)


def test_auto_is_fp32_in_the_test_suite(tf_seeded):
    """The autouse fixture: "auto" (the default) gives the fp32 reference numbers."""
    config = ModelConfig(arch="ss", loc="ffcl", width=0.1)
    model = spread_weights(build_model(config, 2), seed=3)
    images, loc_maps, mask = small_case()
    np.testing.assert_array_equal(
        predict_slices(model, config, images, loc_maps, mask),
        predict_slices(model, config, images, loc_maps, mask, FP32))


def test_contract_records_precision_and_reads_old_contracts(tmp_path):
    from wmh.contract import ModelContract

    contract = ModelContract(model=ModelConfig(), channels=("FLAIR",), inplane_spacing_mm=1.0,
                             threshold=0.4, precision="bf16")
    values = json.loads(contract.to_json())
    assert values["precision"] == "bf16"
    assert ModelContract.from_json(contract.to_json(), "x").precision == "bf16"
    del values["precision"]  # a contract written before precision was recorded
    assert ModelContract.from_json(json.dumps(values), "old").precision == "fp32"


@pytest.mark.parametrize("option", [["train"], ["tune"],
                                    ["segment", "--model", "m", "f.nii.gz", "--out", "o"]])
def test_cli_precision_bad_value_exits_2(option, capsys):
    from wmh.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*option, "--precision", "fp16"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--precision" in error and "'fp16' is not one of" in error


def test_cli_precision_sets_the_train_precision(monkeypatch):
    from wmh import cli, pipeline

    seen = {}

    def fake_training(config):
        seen["precision"] = config.train.precision
        raise WMHError("stop here")

    monkeypatch.setattr(pipeline, "run_training", fake_training)
    with pytest.raises(SystemExit):
        cli.main(["train", "--set", "train.precision=fp32", "--precision", "bf16"])
    assert seen["precision"] == "bf16"
    with pytest.raises(SystemExit):
        cli.main(["train", "--set", "train.precision=fp32"])
    assert seen["precision"] == "fp32"


def volume_probabilities(model, contract, prepared, precision):
    from wmh.train import predict_volume

    return predict_volume(model, contract.model, prepared.images, prepared.location,
                          prepared.brain_mask, precision=precision)


@needs_bf16
def test_bf16_training_records_precision_restores_policy_and_segments_both_ways(
        tmp_path, mlflow_tmp, tf_seeded, tiny_samples):
    import mlflow

    from cohorts import tiny_prepared_subject
    from wmh import train

    prepared_dir, samples = tiny_samples
    config = tiny_config(tmp_path, epochs=2, **{"train.precision": "bf16"})
    result = train.train(config, samples, prepared_dir,
                         options=RunOptions(data_label="synthetic"))
    assert keras.config.dtype_policy().name == "float32"  # nothing leaks out of training
    assert result.validation_auc > 0.85  # it learned, in bf16
    params = mlflow.get_run(result.run_id).data.params
    assert params["train_precision"] == "bf16" and params["train.precision"] == "bf16"
    assert params["inference_precision"] == "bf16"

    model, contract = load_model_dir(result.model_dir)
    assert contract.precision == "bf16"
    # stored as a float32 network: it segments in fp32, and in bf16 within 0.02
    assert all(layer.compute_dtype == "float32" for layer in model.layers)
    assert all(weight.dtype == "float32" for weight in model.weights)
    subject = tiny_prepared_subject("x", shape=(40, 40, 4), seed=5)
    fp32 = volume_probabilities(model, contract, subject, "fp32")
    bf16 = volume_probabilities(model, contract, subject, "bf16")
    assert np.abs(fp32 - bf16).max() <= 0.02
    assert fp32[subject.brain_mask].std() > 0.05


@needs_bf16
def test_fp32_model_segments_in_bf16(tmp_path, tf_seeded):
    from cohorts import tiny_prepared_subject
    from wmh import train

    config = ModelConfig(arch="msiw", loc="ffcl", width=0.1)
    model = spread_weights(build_model(config, 2), seed=4)
    contract = ModelContract(model=config, channels=("FLAIR", "T1"),
                                   inplane_spacing_mm=1.0, threshold=0.5)
    folder = train.save_model_dir(model, contract, tmp_path / "model")
    assert json.loads((folder / "wmh_model.json").read_text())["precision"] == "fp32"
    loaded, contract = load_model_dir(folder)
    subject = tiny_prepared_subject("y", shape=(40, 40, 4), seed=6)
    fp32 = volume_probabilities(loaded, contract, subject, "fp32")
    bf16 = volume_probabilities(loaded, contract, subject, "bf16")
    assert 0 < np.abs(fp32 - bf16).max() <= 0.02
    assert fp32[subject.brain_mask].std() > 0.05
