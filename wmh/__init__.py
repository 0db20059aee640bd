"""wmh: location-sensitive CNNs for white matter hyperintensity segmentation.

Reproduces Ghafoorian et al. 2017 (Scientific Reports 7, 5110) with Keras 3,
tracked in MLflow and tuned with Optuna.

Importing the package sets one default and nothing else: ``TF_ENABLE_ONEDNN_OPTS=1``
(unless already set), before anything in it imports TensorFlow. TensorFlow turns its
oneDNN kernels on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX; on an AVX2 host
they were off, and there dense inference ran 3.3x slower and the first fully connected
layer's per-frequency products 7x slower (BENCHMARKS.md, "oneDNN on every x86 CPU").
Set ``TF_ENABLE_ONEDNN_OPTS=0`` to keep TensorFlow's own choice. (Too late where
TensorFlow was imported before wmh.)
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

from wmh.errors import WMHError  # noqa: E402

__all__ = ["WMHError", "__version__"]
