"""Typed experiment configuration: frozen dataclasses, YAML files, ``--set`` overrides.

An experiment YAML (``experiments/*.yaml``) overrides only what changes from the
defaults below; ``--set section.field=value`` overrides on top of it. Unknown keys
and values of the wrong type are errors naming the key, so a typo never silently
runs the default.

Each pipeline stage owns one section; the whole run is :class:`ExperimentConfig`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from wmh.errors import WMHError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    root: str = "data_cache/synth/default"  # cohort: challenge/BIDS-like folder or CSV manifest
    cache_dir: str = "data_cache"  # where every stage caches its outputs
    use_t1: bool = True  # FLAIR + T1 channels; False = FLAIR only


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    subjects: int = 40  # number of synthetic subjects in the default cohort
    seed: int = 0  # cohort seed: same seed and version -> identical arrays
    profile: str = "default"  # acquisition profile (see wmh.synth.PROFILES)
    flair_only: bool = False  # write no T1
    skull_stripped: bool = False  # write brain-only images


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    inplane_spacing_mm: float = 1.0  # working-grid in-plane spacing; slices are kept
    bias_correction: bool = True  # N4 bias-field correction
    normalise_percentiles: tuple[float, float] = (1.0, 99.0)  # robust [0, 1] range in brain
    # Normalised intensities are clipped to [0, normalise_ceiling]. 1.0 clips at the high
    # percentile: lesions brighter than it all read 1.0 (saturated), whatever their contrast.
    # Above 1, hyperintensities keep their contrast over the percentile (see BENCHMARKS.md,
    # issue 17: a model trained on saturated lesions misses unsaturated real ones).
    normalise_ceiling: float = 1.0
    atlas_deformable: bool = True  # deformable stage after the affine MNI registration
    workers: int = 1  # subjects prepared in parallel processes
    threads: int = 2  # SimpleITK threads per subject (results depend on it only in rounding)
    seed: int = 0  # seeds the registrations' random metric sampling: same seed, same result
    atlas_spacing_mm: float = 2.0  # MNI template and registration grid resolution
    registration_sampling: float = 0.05  # share of voxels the mutual information samples
    registration_iterations: int = 100  # optimiser iterations per level (rigid, affine)
    deformable_iterations: int = 30  # demons iterations of the deformable atlas stage
    deformable_smoothing_mm: float = 2.0  # Gaussian smoothing of the demons displacement field
    n4_iterations: int = 30  # N4 iterations per fitting level (3 levels)
    n4_shrink_mm: float = 6.0  # N4 fits the bias field on an image shrunk to about this size
    min_similarity: float = 0.025  # NMI below this after registration: fallback + warning
    brain_volume_ml: tuple[float, float] = (700.0, 2500.0)  # plausible brain volume range
    prior_path: str = ""  # WMH prior NIfTI in MNI space; set, it wins over `prior`
    # Location feature 8's prior when prior_path is "": "training" = built by the pipeline
    # from the training split's labels only (leak-free; wmh.prior), "shipped" =
    # the synthetic prior in wmh/data (for cohorts too small to build one)
    prior: Literal["training", "shipped"] = "training"
    # Gaussian sigma (mm) of the training split's prior (prior: training). Broader than the
    # lesions' spread, it keeps the feature above zero where a cohort's lesions are rare.
    prior_smoothing_mm: float = 4.0


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    seed: int = 0  # seeds subject splits and voxel sampling
    positive_fraction: float = 0.5  # share of WMH voxels sampled per subject (paper: 50%)
    negative_ratio: float = 1.0  # negatives per positive (paper: 1, balanced)
    hard_negative_fraction: float = 0.0  # share of negatives drawn from bright non-WMH voxels
    validation_fraction: float = 0.1  # share of subjects for validation
    test_fraction: float = 0.2  # share of subjects held out for testing
    split_by_site: bool = False  # keep each site inside one split
    train_size_fraction: float = 1.0  # use only this share of training subjects (Table 6)
    hard_negative_percentile: float = 95.0  # 'bright' = FLAIR above this brain percentile
    hard_negative_margin_voxels: int = 2  # in-plane ring around other pathology (label 2)
    # At most this many WMH samples per subject (0 = no cap, the paper's): a heavy load
    # then adds no more samples, positive or negative, than a moderate one
    max_positives_per_subject: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: Literal["ss", "msef", "msiw", "msws", "rf"] = "msws"  # paper Fig. 3; rf: wmh.baseline
    loc: Literal["none", "lcl", "ffcl", "sfcl"] = "ffcl"  # layer that receives location
    alpha: float = 1.0  # scale of the 8 location features before concatenation
    dropout_rate: float = 0.3  # dropout on every fully connected layer (paper: 0.3)
    width: float = 1.0  # multiplies every layer width; 1.0 = the paper's network


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training samples
    batch_size: int = 128  # mini-batch size (paper: 128)
    learning_rate: float = 1e-4  # RMSprop learning rate
    seed: int = 0  # weight initialisation and batch order
    max_train_samples: int = 0  # cap on training samples per epoch; 0 = all
    max_validation_samples: int = 0  # cap on validation samples; 0 = all
    experiment: str = "wmh"  # MLflow experiment name
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16: mixed_bfloat16; auto: per CPU
    # P(WMH) corrected for the balanced sampling (wmh.calibration), fitted on the validation
    # subjects before the threshold is chosen: platt, prior (shift), or none (the paper's)
    calibration: Literal["platt", "prior", "none"] = "platt"
    # Each scan's calibrated P(WMH) shifted to its own WMH prevalence, estimated by EM
    # (wmh.calibration.adapt_prevalence); the threshold is chosen on adapted validation maps
    adapt_prevalence: bool = False
    # What the validation threshold maximises: the Dice of all validation voxels pooled
    # (heavy loads dominate it), or the mean of the subjects' Dice (wmh.threshold)
    threshold_objective: Literal["pooled", "mean"] = "pooled"
    init_model: str = ""  # fine-tune from pretrained[:NAME], a model folder or URI; "" = none


@dataclasses.dataclass(frozen=True)
class BaselineConfig:  # the random forest of model.arch=rf (wmh.baseline); model.loc is unused
    n_trees: int = 50  # trees in the forest (paper: 50)
    max_depth: int = 0  # deepest split level; 0 = grow until min_samples_leaf stops a branch
    min_samples_leaf: int = 5  # fewest training samples per leaf (smoother probabilities)
    n_jobs: int = -1  # parallel threads for fitting and prediction; -1 = all cores


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    threshold: Optional[float] = None  # None = the model's validation-optimal threshold
    mc_samples: int = 0  # Monte Carlo dropout passes for the uncertainty map; 0 = off
    periventricular_mm: float = 10.0  # lesion voxels within this distance are periventricular
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # inference; auto: bf16 where measured to pay


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    # A test subject that fails preparation or segmentation in an experiment (pipeline,
    # reproduce): "stop" ends the experiment with its error; "zero" scores it as an empty
    # prediction (Dice 0), as the challenge counted a missing result. Either way it is listed.
    on_failure: Literal["stop", "zero"] = "stop"


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    study: str = "wmh-tune"  # Optuna study name; workers on one storage and name share it
    storage: str = ""  # "" = journal file <cache>/optuna/journal.log; or postgresql://, sqlite:///
    n_trials: int = 20  # total trials the study should hold (every state), not per call
    timeout: float = 0.0  # seconds after which this worker starts no new trial; 0 = no limit
    objective: Literal["val_auc", "val_dice"] = "val_auc"  # maximised: sample AUC or volume Dice
    archs: str = "ss,msef,msiw,msws"  # comma-separated architectures to search
    injections: str = "lcl,ffcl,sfcl"  # comma-separated location injection layers to search
    alpha_low: float = 0.1  # smallest location scale alpha (searched log-uniformly)
    alpha_high: float = 10.0  # largest location scale alpha
    learning_rate_low: float = 1e-5  # smallest RMSprop learning rate (log-uniform)
    learning_rate_high: float = 1e-3  # largest RMSprop learning rate
    dropout_low: float = 0.0  # smallest dropout rate (uniform)
    dropout_high: float = 0.5  # largest dropout rate
    seed: int = 0  # TPE sampler seed (combined with the trial number: reproducible, no twins)
    startup_trials: int = 5  # random trials before TPE models the results
    pruner: Literal["median", "none"] = "median"  # prune on per-epoch validation AUC or never
    pruner_startup_trials: int = 3  # trials that finish before any pruning
    pruner_warmup_epochs: int = 1  # epochs every trial trains before it can be pruned
    heartbeat_seconds: int = 60  # RDB storages: a trial silent for 2x this is marked failed


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"  # experiment name, used for run names and output folders
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    synth: SynthConfig = dataclasses.field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    baseline: BaselineConfig = dataclasses.field(default_factory=BaselineConfig)
    segment: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)
    tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)



# Bounds of the numeric fields, checked when a config is built (so an impossible value
# fails at load time, naming the key): (lowest, highest, lowest excluded, highest excluded);
# None = unbounded on that side. baseline.* and tune.* are checked where they are used
# (baseline.make_forest, tune.space.search_space).
_BOUNDS: dict[str, tuple[Optional[float], Optional[float], bool, bool]] = {
    "synth.subjects": (1, None, False, False),
    "synth.seed": (0, None, False, False),
    "preprocess.inplane_spacing_mm": (0, None, True, False),
    "preprocess.normalise_percentiles[0]": (0, 100, False, False),
    "preprocess.normalise_percentiles[1]": (0, 100, False, False),
    "preprocess.normalise_ceiling": (1, None, False, False),
    "preprocess.workers": (1, None, False, False),
    "preprocess.threads": (1, None, False, False),
    "preprocess.atlas_spacing_mm": (0, None, True, False),
    "preprocess.registration_sampling": (0, 1, True, False),
    "preprocess.registration_iterations": (0, None, False, False),
    "preprocess.deformable_iterations": (0, None, False, False),
    "preprocess.deformable_smoothing_mm": (0, None, False, False),
    "preprocess.prior_smoothing_mm": (0, None, True, False),
    "preprocess.n4_iterations": (0, None, False, False),
    "preprocess.n4_shrink_mm": (0, None, True, False),
    "preprocess.min_similarity": (0, 1, False, False),
    "preprocess.brain_volume_ml[0]": (0, None, False, False),
    "preprocess.brain_volume_ml[1]": (0, None, True, False),
    "sampling.positive_fraction": (0, 1, True, False),
    "sampling.negative_ratio": (0, None, False, False),
    "sampling.hard_negative_fraction": (0, 1, False, False),
    "sampling.validation_fraction": (0, 1, False, True),
    "sampling.test_fraction": (0, 1, False, True),
    "sampling.train_size_fraction": (0, 1, True, False),
    "sampling.hard_negative_percentile": (0, 100, False, False),
    "sampling.hard_negative_margin_voxels": (0, None, False, False),
    "sampling.max_positives_per_subject": (0, None, False, False),
    "model.alpha": (0, None, False, False),
    "model.dropout_rate": (0, 1, False, True),
    "model.width": (0, None, True, False),
    "train.epochs": (1, None, False, False),
    "train.batch_size": (1, None, False, False),
    "train.learning_rate": (0, None, True, False),
    "train.max_train_samples": (0, None, False, False),
    "train.max_validation_samples": (0, None, False, False),
    "segment.threshold": (0, 1, False, False),
    "segment.mc_samples": (0, None, False, False),
    "segment.periventricular_mm": (0, None, False, False),
}
# Pairs that must be ordered: (low key, high key).
_ORDERED = (("preprocess.normalise_percentiles[0]", "preprocess.normalise_percentiles[1]"),
            ("preprocess.brain_volume_ml[0]", "preprocess.brain_volume_ml[1]"))


def _range_text(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def _flat_values(config: Any, prefix: str = "") -> dict[str, Any]:
    """{'model.alpha': 1.0, 'preprocess.normalise_percentiles[0]': 1.0, ...}."""
    values = {}
    for field in dataclasses.fields(config):
        value, key = getattr(config, field.name), prefix + field.name
        if dataclasses.is_dataclass(value):
            values.update(_flat_values(value, key + "."))
        elif isinstance(value, tuple):
            values.update({f"{key}[{i}]": item for i, item in enumerate(value)})
        else:
            values[key] = value
    return values


def validate(config: "ExperimentConfig") -> "ExperimentConfig":
    """Checks every numeric field against its bounds (and ordered pairs); returns the config.

    Raises:
        WMHError: one line naming the first key out of range.
    """
    values = _flat_values(config)
    for key, (low, high, low_open, high_open) in _BOUNDS.items():
        value = values[key]
        if value is None:
            continue
        if ((low is not None and (value < low or (low_open and value == low)))
                or (high is not None and (value > high or (high_open and value == high)))):
            raise WMHError(f"config key '{key}': {value!r} is out of range (expected "
                           f"{_range_text(low, high, low_open, high_open)})")
    for low_key, high_key in _ORDERED:
        if values[low_key] > values[high_key]:
            raise WMHError(f"config key '{low_key}': {values[low_key]!r} is above "
                           f"'{high_key}' ({values[high_key]!r})")
    return config


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Checks ``value`` against a type annotation and returns it, converted where lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise WMHError(f"config key '{key}': expected a mapping, got {value!r}")
        return _build(annotation, value, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except WMHError as error:
                errors.append(str(error))
        raise errors[0] if len(errors) == 1 else WMHError(
            f"config key '{key}': {value!r} does not match {annotation}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise WMHError(f"config key '{key}': {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise WMHError(f"config key '{key}': expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise WMHError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WMHError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WMHError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise WMHError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} for '{key}'")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise WMHError(f"unknown config key '{prefix}{unknown[0]}' "
                       f"(known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    """Returns the config as plain nested dicts (tuples become lists), YAML-ready."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(config))


def from_dict(values: dict, cls: type = ExperimentConfig) -> Any:
    """Builds a config from nested dicts, filling defaults; unknown keys and values out of
    range (see :func:`validate`) are errors."""
    config = _build(cls, values or {})
    return validate(config) if cls is ExperimentConfig else config


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict:
    """Turns ``'model.alpha=0.5'`` into ``{'model': {'alpha': 0.5}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise WMHError(f"option --set '{text}': expected key=value, e.g. model.alpha=0.5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise WMHError(f"option --set '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                ) -> ExperimentConfig:
    """Resolves defaults <- YAML file <- ``key=value`` overrides into a frozen config.

    Args:
        path: an experiment YAML; None uses the defaults alone.
        overrides: ``section.field=value`` strings, applied in order.

    Raises:
        WMHError: unreadable YAML, unknown key or wrong type, naming the file or key.
    """
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise WMHError(f"{path}: cannot read config ({error.strerror})") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise WMHError(f"{path}: invalid YAML{where}") from None
        if not isinstance(values, dict):
            raise WMHError(f"{path}: expected a mapping of config sections at the top level")
        try:  # the file alone first: an error there names the file, one in --set does not
            from_dict(values)
        except WMHError as error:
            raise WMHError(f"{path}: {error}") from None
    return _apply(values, overrides)


def _apply(values: dict, overrides: typing.Sequence[str]) -> ExperimentConfig:
    for override in overrides:
        values = _merge(values, parse_override(override))
    return from_dict(values)


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` with dotted keys: ``replace(cfg, **{'model.alpha': 2.0})``."""
    values = to_dict(config)
    for key, value in changes.items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise WMHError(f"unknown config key '{key}'")
            node = node[part]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return from_dict(values, type(config))


def dump_yaml(config: Any) -> str:
    """The resolved config as YAML text (what every run records)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
