"""MLflow pyfunc wrapper of a Bundle: chips (N, C, H, W) in, predictions out."""

from __future__ import annotations

import mlflow.pyfunc


class BundleModel(mlflow.pyfunc.PythonModel):
    """Loads ``artifacts['bundle']`` and predicts raw chips with the bundle's normalisation and TTA."""

    def load_context(self, context):  # noqa: ANN001, ANN201 - MLflow's interface
        from geocnn.inference.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - untyped: MLflow infers from hints
        import numpy as np

        from geocnn.inference.predict import predict_array

        return predict_array(self.bundle, np.asarray(model_input))
