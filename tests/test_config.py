"""Config: defaults <- YAML <- --set; unknown keys and wrong types name the key."""

import pytest

from wmh import config
from wmh.cli import main
from wmh.errors import WMHError


def test_yaml_and_overrides_resolve_in_order(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: msiw\nmodel:\n  arch: msiw\n  alpha: 2\ntrain:\n  epochs: 3\n")
    resolved = config.load_config(path, ["model.alpha=0.25", "preprocess.normalise_percentiles=[2, 98]"])
    assert resolved.name == "msiw"
    assert resolved.model.arch == "msiw"
    assert resolved.model.alpha == 0.25 and isinstance(resolved.model.alpha, float)
    assert resolved.train.epochs == 3
    assert resolved.preprocess.normalise_percentiles == (2.0, 98.0)
    assert resolved.model.loc == config.ModelConfig().loc  # untouched default


def test_round_trip_through_yaml(tmp_path):
    original = config.load_config(None, ["model.arch=ss", "segment.threshold=0.4"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config.dump_yaml(original))
    assert config.load_config(path) == original


@pytest.mark.parametrize("override, message", [
    ("model.alpa=1", r"unknown config key 'model\.alpa'"),
    ("modle.alpha=1", r"unknown config key 'modle'"),
    ("model.arch=resnet", r"config key 'model\.arch': 'resnet' is not one of 'ss', 'msef'"),
    ("train.epochs=2.5", r"config key 'train\.epochs': expected an integer, got 2\.5"),
    ("train.epochs=true", r"config key 'train\.epochs': expected an integer, got True"),
    ("data.use_t1=yes please", r"config key 'data\.use_t1': expected true or false"),
    ("model=3", r"config key 'model': expected a mapping"),
    ("preprocess.normalise_percentiles=[1]", r"'preprocess\.normalise_percentiles': expected 2 values"),
    ("alpha", r"option --set 'alpha': expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(WMHError, match=message):
        config.load_config(None, [override])


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  alhpa: 1\n")
    with pytest.raises(WMHError, match=r"bad\.yaml: unknown config key 'model\.alhpa'"):
        config.load_config(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(WMHError, match=r"bad\.yaml: invalid YAML at line"):
        config.load_config(path)
    with pytest.raises(WMHError, match=r"nope\.yaml: cannot read config"):
        config.load_config(tmp_path / "nope.yaml")


def test_a_bad_override_of_a_good_file_does_not_blame_the_file(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text("model:\n  alpha: 1\n")
    with pytest.raises(WMHError) as error:
        config.load_config(path, ["train.threshold_objective=median"])
    assert str(error.value) == ("config key 'train.threshold_objective': 'median' is not "
                                "one of 'pooled', 'mean'")
    assert config.load_config(path, ["model.alpha=2"]).model.alpha == 2.0


def test_replace_with_dotted_keys():
    base = config.ExperimentConfig()
    changed = config.replace(base, **{"model.alpha": 3.0, "train.epochs": 1})
    assert changed.model.alpha == 3.0 and changed.train.epochs == 1
    assert base.model.alpha == config.ModelConfig().alpha
    with pytest.raises(WMHError, match="unknown config key 'model.nope'"):
        config.replace(base, **{"model.nope": 1})


def test_configs_are_frozen():
    with pytest.raises(Exception):
        config.ExperimentConfig().model.alpha = 2.0  # type: ignore[misc]


def test_experiment_yamls_in_repo_are_valid():
    from pathlib import Path
    for path in sorted(Path(__file__).parents[1].glob("experiments/*.yaml")):
        config.load_config(path)


def test_cli_config_prints_resolved_yaml_and_rejects_bad_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "--set", "model.alpha=0.5"])
    assert exit_info.value.code == 0
    assert "alpha: 0.5" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "--set", "model.alpah=0.5"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("wmh: error: unknown config key 'model.alpah'")


@pytest.mark.parametrize("override, message", [
    ("model.alpha=-1", "config key 'model.alpha': -1.0 is out of range (expected >= 0)"),
    ("train.epochs=-2", "config key 'train.epochs': -2 is out of range (expected >= 1)"),
    ("train.learning_rate=0", "config key 'train.learning_rate': 0.0 is out of range "
                              "(expected > 0)"),
    ("sampling.test_fraction=1.5", "config key 'sampling.test_fraction': 1.5 is out of "
                                   "range (expected in [0, 1))"),
    ("model.dropout_rate=1", "config key 'model.dropout_rate': 1.0 is out of range "
                             "(expected in [0, 1))"),
    ("segment.threshold=2", "config key 'segment.threshold': 2.0 is out of range "
                            "(expected in [0, 1])"),
    ("preprocess.normalise_percentiles=[99, 1]", "config key "
     "'preprocess.normalise_percentiles[0]': 99.0 is above "
     "'preprocess.normalise_percentiles[1]' (1.0)"),
    ("preprocess.workers=0", "config key 'preprocess.workers': 0 is out of range "
                             "(expected >= 1)"),
    ("preprocess.normalise_ceiling=0.5", "config key 'preprocess.normalise_ceiling': 0.5 is "
                                         "out of range (expected >= 1)"),
])
def test_impossible_values_name_the_key(override, message):
    with pytest.raises(WMHError) as error:
        config.load_config(None, [override])
    assert str(error.value) == message


def test_replace_validates_too():
    with pytest.raises(WMHError, match=r"^config key 'model\.alpha': -2\.0 is out of range"):
        config.replace(config.ExperimentConfig(), **{"model.alpha": -2.0})

def test_impossible_value_in_a_yaml_names_file_and_key(tmp_path, capsys):
    path = tmp_path / "neg.yaml"
    path.write_text("model:\n  alpha: -0.5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "--config", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"wmh: error: {path}: config key 'model.alpha': -0.5 "
                                       "is out of range (expected >= 0)\n")
