"""wmh: location-sensitive CNNs for white matter hyperintensity segmentation.

Reproduces Ghafoorian et al. 2017 (Scientific Reports 7, 5110) with Keras 3,
tracked in MLflow and tuned with Optuna. Importing the package has no side effects.
"""

__version__ = "0.1.0"

from wmh.errors import WMHError  # noqa: E402

__all__ = ["WMHError", "__version__"]
