"""Prefect flow for scheduled retraining: run the experiment again; the registry promotes it only if it is better."""

from __future__ import annotations

from typing import Any

from prefect import flow

from geocnn.config import load_config
from pipelines.experiment import experiment_flow


@flow(name="retrain", log_prints=True)
def retrain_flow(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Retrain the experiment of ``config`` (as a subflow: ingest is cached by input content, so unchanged data is
    not re-read); every run registers a version, promoted to the champion alias only if it wins on validation."""
    cfg = load_config(config, overrides)
    summary = experiment_flow(config, overrides, progress=False)
    if "registered_version" in summary:
        state = "promoted to" if summary.get("promoted") == "true" else "not promoted to"
        print(f"{cfg.name}: version {summary['registered_version']} {state} {cfg.tracking.alias}: "
              f"{summary.get('promotion', '')}")
    return summary
