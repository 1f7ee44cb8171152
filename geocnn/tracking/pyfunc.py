"""The bundle as an MLflow model: a pyfunc that predicts raw chips (N, C, H, W), logged and registered."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from geocnn.evaluation.calibration import temper
from geocnn.inference.bundle import check_chips, load_bundle
from geocnn.inference.predict import Forward


class BundleModel(mlflow.pyfunc.PythonModel):
    """Loads ``artifacts['bundle']`` and predicts raw chips with the bundle's normalisation, views and stage 2.

    ``predict`` is typed with ``np.ndarray``: MLflow then neither warns about missing type hints nor infers a
    schema from them; the logged signature describes the chips.
    """

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(context.artifacts["bundle"])

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        chips = np.asarray(model_input)
        check_chips(self.bundle.preprocessing, chips.shape)
        out = Forward(self.bundle.net, self.bundle.tta_views, head=self.bundle.stage2)(chips)
        cal = self.bundle.preprocessing.calibration
        if cal is not None and cal.temperature is not None:  # calibrated probabilities, as the run's table
            out = temper(out, cal.temperature).astype(np.float32)
        return out


def bundle_signature(example: np.ndarray, n_outputs: int) -> ModelSignature:
    """Raw chips (any batch, C, H, W, the store's dtype) in; one row of ``n_outputs`` predictions per chip out."""
    return ModelSignature(inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
                          outputs=Schema([TensorSpec(np.dtype("float32"), (-1, n_outputs))]))


def logged_model_name(experiment: str, run_name: str) -> str:
    """A logged-model name MLflow accepts (no / : . % or quotes): ``experiment-run``."""
    text = experiment if experiment == run_name else f"{experiment}-{run_name}"
    return "".join(c if c.isalnum() or c in "-_ " else "-" for c in text).strip() or "model"


def log_bundle_model(run_id: str, bundle_dir: Path, example: np.ndarray, name: str, n_outputs: int) -> Any:
    """Log the bundle as an MLflow pyfunc model named ``name``, with a signature and an input example."""
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # cloudpickle notice: the class is imported by name
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name=name, python_model=BundleModel(), artifacts={"bundle": str(bundle_dir)},
            signature=bundle_signature(example, n_outputs), input_example=example,
            pip_requirements=["geocnn", "torch", "timm", "safetensors"])
