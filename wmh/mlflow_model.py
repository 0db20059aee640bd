"""The pyfunc of every wmh logged model, in MLflow's models-from-code form.

MLflow copies this file into each logged model and runs it when
``mlflow.pyfunc.load_model`` loads one (so no pickle is stored or read). wmh itself never
imports it: it reads the model folder from the artifacts (:func:`wmh.registry.model_folder`).
"""

from pathlib import Path

import mlflow

from wmh.contract import CONTRACT_FILE
from wmh.loader import load_model_dir
from wmh.registry import SuiteModel


class WMHModel(mlflow.pyfunc.PythonModel):
    """P(WMH) of patches (CNN) or feature rows (random forest); see
    :class:`wmh.registry.SuiteModel`."""

    def load_context(self, context):
        # the artifacts (name -> local path) are the model folder's files
        folder = Path(context.artifacts[CONTRACT_FILE]).parent
        self.suite = SuiteModel(*load_model_dir(folder))

    def predict(self, context, model_input, params=None):
        return self.suite.predict(model_input)


mlflow.models.set_model(WMHModel())
