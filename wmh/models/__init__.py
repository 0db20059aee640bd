"""Networks: the paper's patch classifiers and their fully convolutional twin.

* :mod:`wmh.models.patch`: pure Keras builders of SS, MSEF, MSIW, MSWS with location.
* :mod:`wmh.models.dense`: the same network run over whole slices (exact, fast).
* :mod:`wmh.models.inference`: patch-wise (reference) and whole-slice prediction.
* :mod:`wmh.models.precision`: fp32/bf16/auto: the CPU's bfloat16 ISA, the policy scope.
"""

from wmh.models.dense import build_dense_model
from wmh.models.inference import predict_patchwise, predict_slices
from wmh.models.patch import (
    ARCHITECTURES,
    LOCATION_INJECTIONS,
    build_model,
    model_input_names,
    used_input_names,
)

__all__ = [
    "ARCHITECTURES", "LOCATION_INJECTIONS", "build_dense_model", "build_model",
    "model_input_names", "predict_patchwise", "predict_slices", "used_input_names",
]
