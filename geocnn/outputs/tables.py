"""Prediction tables (CSV, Parquet): ids, context (split, fold, group, coordinates), truth, predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.atomic import atomic_path
from geocnn.errors import GeocnnError
from geocnn.models.tasks import Targets, TaskSpec

TABLE_FORMATS = ("csv", "parquet")


def predictions_frame(ids: np.ndarray, pred: np.ndarray, task: TaskSpec, targets: Targets,
                      context: pd.DataFrame | None = None, truth: np.ndarray | None = None,
                      baselines: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per sample: id, context columns (split, fold, group, lat/lon, ...), observed targets when known,
    the task's prediction columns (``pred_<target>``, ``prob_<class>``) and baseline predictions."""
    frame = pd.DataFrame({"id": np.asarray(ids).astype(str)})
    if context is not None:
        for col in context.columns:
            if col != "id":
                frame[col] = context[col].to_numpy()
    if truth is not None:
        for col, values in task.truth_columns(truth, targets).items():
            frame[col] = values
    for col, values in task.columns(pred, targets).items():
        frame[col] = values
    for col, values in task.baseline_columns(baselines or {}, targets).items():
        frame[col] = values
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
