"""Export: prediction tables (CSV, Parquet) with ids, split, truth, predictions and class probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.errors import GeocnnError
from geocnn.atomic import atomic_path
from geocnn.models.network import NetSpec

TABLE_FORMATS = ("csv", "parquet")


def predictions_frame(ids: np.ndarray, pred: np.ndarray, spec: NetSpec, split: np.ndarray | None = None,
                      truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per sample: id, split, true targets (if known), ``pred_<target>``, and ``prob_<class>``."""
    frame = pd.DataFrame({"id": np.asarray(ids).astype(str)})
    if split is not None:
        frame["split"] = np.asarray(split).astype(str)
    if spec.task == "classification":
        target = spec.targets[0]
        classes = np.asarray(spec.classes)
        if truth is not None:
            frame[target] = classes[truth[target].to_numpy(dtype=int)]
        frame[f"pred_{target}"] = classes[pred.argmax(1)]
        for k, name in enumerate(spec.classes):
            frame[f"prob_{name}"] = pred[:, k].astype(np.float64)
        return frame
    for j, target in enumerate(spec.targets):
        if truth is not None:
            frame[target] = truth[target].to_numpy(dtype=np.float64)
        frame[f"pred_{target}"] = pred[:, j].astype(np.float64)
    return frame


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or Parquet (by suffix) atomically."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in TABLE_FORMATS:
        raise GeocnnError(f"{path}: unknown table format '{suffix}'; use .csv or .parquet")
    with atomic_path(path) as tmp:
        if suffix == "csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def write_tables(frame: pd.DataFrame, folder: str | Path, stem: str = "predictions",
                 formats: tuple[str, ...] = TABLE_FORMATS) -> list[Path]:
    """Write the table in every requested format into ``folder``."""
    return [write_table(frame, Path(folder) / f"{stem}.{fmt}") for fmt in formats]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet table, with a clear error when it is missing or of another format."""
    path = Path(path)
    if not path.exists():
        raise GeocnnError(f"{path}: table not found")
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    raise GeocnnError(f"{path}: unknown table format; use .csv or .parquet")
