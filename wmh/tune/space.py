"""The static search space of ``wmh tune`` and the checks of the ``tune.*`` settings.

Every trial suggests every parameter (alpha too, even where the injection layer would
make it moot), so Optuna's samplers and importance analysis see one fixed space;
parameters are named by the config key they set (see :mod:`wmh.tune`). A study records
the space and objective it was created with (:func:`check_study`) and refuses another.
"""

from __future__ import annotations

from wmh.config import TuneConfig
from wmh.errors import WMHError

CNN_ARCHS = ("ss", "msef", "msiw", "msws")  # what wmh.train.train fits (not model.arch=rf)
INJECTIONS = ("none", "lcl", "ffcl", "sfcl")
OBJECTIVES = ("val_auc", "val_dice")
SEARCH_SPACE_ATTR = "wmh_search_space"  # study user attribute: the space it was created with


def _choices(text: str, allowed: tuple[str, ...], key: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise WMHError(f"config key '{key}': empty list (choose from {', '.join(allowed)})")
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise WMHError(f"config key '{key}': '{unknown[0]}' is not one of "
                       f"{', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise WMHError(f"config key '{key}': '{text}' lists a value twice")
    return values


def _range(settings: TuneConfig, name: str, log: bool) -> tuple[float, float]:
    low, high = getattr(settings, f"{name}_low"), getattr(settings, f"{name}_high")
    if not low <= high:
        raise WMHError(f"config keys 'tune.{name}_low'/'tune.{name}_high': low {low} is "
                       f"above high {high}")
    if log and low <= 0:
        raise WMHError(f"config key 'tune.{name}_low': {low} must be positive "
                       "(searched log-uniformly)")
    if not log and (low < 0 or high >= 1):
        raise WMHError(f"config keys 'tune.{name}_low'/'tune.{name}_high': "
                       f"[{low}, {high}] must lie in [0, 1)")
    return low, high


def search_space(settings: TuneConfig) -> dict:
    """The static search space: config key -> Optuna distribution.

    Raises:
        WMHError: an unknown objective, architecture or injection layer, or a bad range,
            naming the ``tune.*`` key.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if settings.objective not in OBJECTIVES:
        raise WMHError(f"config key 'tune.objective': {settings.objective!r} is not one of "
                       f"{', '.join(OBJECTIVES)}")
    for key in ("n_trials", "startup_trials", "pruner_startup_trials",
                "pruner_warmup_epochs", "heartbeat_seconds"):
        if getattr(settings, key) < (1 if key in ("n_trials", "heartbeat_seconds") else 0):
            raise WMHError(f"config key 'tune.{key}': {getattr(settings, key)} is too small")
    if settings.timeout < 0:
        raise WMHError(f"config key 'tune.timeout': {settings.timeout} is negative "
                       "(0 = no limit)")
    alpha = _range(settings, "alpha", log=True)
    learning_rate = _range(settings, "learning_rate", log=True)
    dropout = _range(settings, "dropout", log=False)
    return {
        "model.arch": CategoricalDistribution(_choices(settings.archs, CNN_ARCHS,
                                                       "tune.archs")),
        "model.loc": CategoricalDistribution(_choices(settings.injections, INJECTIONS,
                                                      "tune.injections")),
        "model.alpha": FloatDistribution(*alpha, log=True),
        "train.learning_rate": FloatDistribution(*learning_rate, log=True),
        "model.dropout_rate": FloatDistribution(*dropout),
    }


def suggest(trial, space: dict) -> dict:
    """Asks ``trial`` for every parameter of ``space`` (always all of them, in order)."""
    from optuna.distributions import CategoricalDistribution

    values = {}
    for name, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, distribution.choices)
        else:
            values[name] = trial.suggest_float(name, distribution.low, distribution.high,
                                               log=distribution.log)
    return values


def _space_signature(space: dict, objective: str) -> str:
    from optuna.distributions import distribution_to_json

    return objective + ";" + ";".join(f"{name}={distribution_to_json(distribution)}"
                                      for name, distribution in space.items())


def check_study(study, space: dict, objective: str, where: str) -> None:
    """Records the search space in a new study; refuses to mix spaces or objectives."""
    signature = _space_signature(space, objective)
    existing = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if existing is None:
        study.set_user_attr(SEARCH_SPACE_ATTR, signature)
        study.set_user_attr("objective", objective)
    elif existing != signature:
        raise WMHError(f"--study {study.study_name} in {where}: the study was "
                       "created with another search space or objective "
                       f"(objective {study.user_attrs.get('objective', '?')}); use its "
                       "tune.* settings or a new --study name")
