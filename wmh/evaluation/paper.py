"""The paper's published numbers and method names (Ghafoorian et al. 2017).

Job: :data:`PAPER_RESULTS` (Tables 2-6 as published: reference values shown beside ours,
never expected values of this code), the paper's name of a method as users or configs
spell it, and the paper's value of a field for a method.
Must not: compute anything from data, read files, draw, or talk to MLflow.
"""

from __future__ import annotations

import re
from typing import Optional

OBSERVER_NAME = "observer 2"

# The paper's published results (Ghafoorian et al. 2017, Scientific Reports 7:5110).
# Dice: test set (50 cases), observer 1 or observer 2 as reference; Az: validation set.
PAPER_RESULTS = {
    "table2": {  # CNN architectures without and with the 8 location features
        "SS": {"validation_az": 0.9939, "dice_obs1": 0.731, "dice_obs2": 0.729},
        "MSEF": {"validation_az": 0.9947, "dice_obs1": 0.762, "dice_obs2": 0.752},
        "MSIW": {"validation_az": 0.9966, "dice_obs1": 0.778, "dice_obs2": 0.768},
        "MSWS": {"validation_az": 0.9965, "dice_obs1": 0.773, "dice_obs2": 0.760},
        "SS + Loc": {"validation_az": 0.9972, "dice_obs1": 0.781, "dice_obs2": 0.778},
        "MSEF + Loc": {"validation_az": 0.9966, "dice_obs1": 0.777, "dice_obs2": 0.769},
        "MSIW + Loc": {"validation_az": 0.9972, "dice_obs1": 0.795, "dice_obs2": 0.787},
        "MSWS + Loc": {"validation_az": 0.9973, "dice_obs1": 0.792, "dice_obs2": 0.783},
    },
    "table3": {  # conventional method, best CNN and the two human observers
        "Conventional": {"dice_obs1": 0.716, "dice_obs2": 0.699},
        "MSWS + Loc": {"dice_obs1": 0.792, "dice_obs2": 0.783},
        "observer 1": {"dice_obs1": None, "dice_obs2": 0.805},
        "observer 2": {"dice_obs1": 0.805, "dice_obs2": None},
    },
    "table4": {  # p_ij for the null hypothesis "method i is better than method j"
        "SS": {"MSWS": "<0.01", "SS + Loc": "<0.01", "MSWS + Loc": "<0.01",
               "observer 2": "<0.01"},
        "MSWS": {"SS + Loc": "<0.01", "MSWS + Loc": "<0.01", "observer 2": "<0.01"},
        "SS + Loc": {"MSWS + Loc": "0.03", "observer 2": "0.03"},
        "MSWS + Loc": {"observer 2": "0.06"},
    },
    "table5": {  # single-scale network, location features added at another layer
        "LCL": {"validation_az": 0.9964, "dice_obs1": 0.763},
        "FFCL": {"validation_az": 0.9971, "dice_obs1": 0.781},
        "SFCL": {"validation_az": 0.9967, "dice_obs1": 0.778},
    },
    "table6": {  # MSWS + Loc test Dice by number of training images
        23: 0.753, 47: 0.756, 94: 0.770, 189: 0.788, 378: 0.792,
    },
}

_ALIASES = {  # normalised spelling -> the paper's method name
    "conventional": "Conventional", "randomforest": "Conventional", "rf": "Conventional",
    "baseline": "Conventional", "observer2": OBSERVER_NAME, "indobs": OBSERVER_NAME,
    "independentobserver": OBSERVER_NAME, "observer1": "observer 1",
    "lcl": "LCL", "sslcl": "LCL", "ssloclcl": "LCL",
    "ffcl": "FFCL", "ssffcl": "FFCL", "sslocffcl": "FFCL",
    "sfcl": "SFCL", "sssfcl": "SFCL", "sslocsfcl": "SFCL",
}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_method_name(name: str) -> Optional[str]:
    """The paper's name for a method name as users write it ('msws_loc' -> 'MSWS + Loc').

    Returns:
        A key of the paper's tables, or None for a method the paper does not have.
    """
    key = _normalise(name)
    if key in _ALIASES:
        return _ALIASES[key]
    for paper_name in PAPER_RESULTS["table2"]:
        if _normalise(paper_name) == key:
            return paper_name
    return None


def method_display_name(model) -> str:
    """The paper's name of a :class:`wmh.config.ModelConfig` ("MSWS + Loc", "LCL", ...)."""
    return method_name(model.arch, model.loc)


def method_name(arch: str, location: Optional[str]) -> str:
    """The paper's name of a model from its ``model.arch`` and ``model.loc`` values."""
    if arch == "rf":  # the forest always uses the location features; model.loc is unused
        return "Conventional"
    name = arch.upper()
    if location in (None, "", "none"):
        return name
    if location == "ffcl":  # the paper's default place for the location features
        return f"{name} + Loc"
    if arch == "ss":  # the paper's Table 5 compares the layers on the single-scale net
        return location.upper()
    return f"{name} + Loc ({location.upper()})"


def paper_value(method, field: str, tables=("table2", "table3", "table5")):
    """The paper's published ``field`` for a method (first of ``tables`` that has it), or None.

    ``method`` is a :class:`wmh.evaluation.results.MethodResult` (its ``name`` and
    ``is_observer`` are read).
    """
    if method.is_observer:
        return PAPER_RESULTS["table3"]["observer 2"].get(field)
    paper_name = paper_method_name(method.name)
    for table in tables:
        row = PAPER_RESULTS[table].get(paper_name)
        if row is not None and field in row:
            return row[field]
    return None
