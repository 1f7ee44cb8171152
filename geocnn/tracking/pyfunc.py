"""The bundle as an MLflow model: a pyfunc that predicts raw chips (N, C, H, W), logged and registered."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np

from geocnn.inference.bundle import check_chips, load_bundle
from geocnn.inference.predict import Forward


class BundleModel(mlflow.pyfunc.PythonModel):
    """Loads ``artifacts['bundle']`` and predicts raw chips with the bundle's normalisation, views and stage 2."""

    def load_context(self, context):  # noqa: ANN001, ANN201 - MLflow's interface
        self.bundle = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - untyped: MLflow infers from hints
        chips = np.asarray(model_input)
        check_chips(self.bundle.preprocessing, chips.shape)
        return Forward(self.bundle.net, self.bundle.tta_views, head=self.bundle.stage2)(chips)


def log_bundle_model(run_id: str, bundle_dir: Path, example: np.ndarray, registered_model: str | None) -> Any:
    """Log the bundle as an MLflow pyfunc model with an input example; register it when a name is given."""
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # cloudpickle notice: the class is imported by name
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints.*")
        return mlflow.pyfunc.log_model(
            name="model", python_model=BundleModel(), artifacts={"bundle": str(bundle_dir)},
            input_example=example, registered_model_name=registered_model,
            pip_requirements=["geocnn", "torch", "timm", "safetensors"])
