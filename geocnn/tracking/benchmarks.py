"""Benchmark results as MLflow runs: a table and its plots under experiment geocnn-benchmarks."""

from __future__ import annotations

from pathlib import Path

import mlflow

from geocnn.tracking.runs import tracking_uri

EXPERIMENT = "geocnn-benchmarks"


def log_benchmark(name: str, params: dict[str, str], files: list[Path]) -> str:
    """One finished run named ``name`` with ``params`` and ``files`` as artifacts; returns its run id."""
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params(params)
        for path in files:
            mlflow.log_artifact(str(path))
    return run.info.run_id
