"""Networks: the paper's patch classifiers and their fully convolutional twin.

* :mod:`wmh.models.patch`: pure Keras builders of SS, MSEF, MSIW, MSWS with location.
* :mod:`wmh.models.dense`: the same network run over whole slices (exact, fast).
* :mod:`wmh.models.inference`: patch-wise (reference) and whole-slice prediction.
* :mod:`wmh.models.precision`: fp32/bf16/auto: the CPU's bfloat16 ISA, the policy scope.
"""

import importlib

# Imported on first use (PEP 562), so ``wmh.models.precision`` - pure Python - can be
# used to check options before TensorFlow is imported.
_EXPORTS = {
    "build_dense_model": "wmh.models.dense",
    "InferenceOptions": "wmh.models.inference",
    "predict_patchwise": "wmh.models.inference",
    "predict_slices": "wmh.models.inference",
    "ARCHITECTURES": "wmh.models.patch",
    "LOCATION_INJECTIONS": "wmh.models.patch",
    "build_model": "wmh.models.patch",
    "model_input_names": "wmh.models.patch",
    "used_input_names": "wmh.models.patch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wmh.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
