"""The pyfunc of every wmh logged model, in MLflow's models-from-code form.

MLflow copies this file into each logged model and runs it when
``mlflow.pyfunc.load_model`` loads one (so no pickle is stored or read). wmh itself never
imports it: it reads the model folder from the artifacts (:func:`wmh.registry.model_folder`).
"""

import mlflow

from wmh.registry import SuiteModel


class WMHModel(mlflow.pyfunc.PythonModel):
    """P(WMH) of patches (CNN) or feature rows (random forest); see
    :class:`wmh.registry.SuiteModel`."""

    def load_context(self, context):
        self.suite = SuiteModel.from_artifacts(context.artifacts)

    def predict(self, context, model_input, params=None):
        return self.suite.predict(model_input)


mlflow.models.set_model(WMHModel())
