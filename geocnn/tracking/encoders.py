"""MLflow runs of encoder pretraining: params, the per-epoch self-supervised loss, the encoder bundle as artifacts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import mlflow

from geocnn.config import AnyExperiment
from geocnn.tracking import runs

LOSS = "pretrain/loss"
"""The per-epoch mean self-supervised loss (step = epoch)."""


def start_pretrain_run(cfg: AnyExperiment, params: dict[str, Any]) -> str:
    """Open the run ``pretrain-<name>`` in the config's tracking experiment, with ``params``; return its id."""
    run_id = runs.start_run(cfg, run_name=f"pretrain-{cfg.name}", params=params, task="pretrain")
    runs.set_tags(run_id, {"geocnn.kind": "encoder-pretraining"})
    return run_id


class EpochLoss(L.Callback):
    """Logs ``pretrain/loss`` (the epoch's mean) to the run at the end of every training epoch (rank 0 only)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(LOSS)
        if value is None or not trainer.is_global_zero:
            return
        now = int(time.time() * 1000)
        runs.client().log_batch(self.run_id, metrics=[
            mlflow.entities.Metric(LOSS, float(value), now, trainer.current_epoch),
            mlflow.entities.Metric("pretrain/lr", max(g["lr"] for g in trainer.optimizers[0].param_groups), now,
                                   trainer.current_epoch)])


def finish_pretrain_run(run_id: str, folder: Path, metrics: dict[str, float]) -> None:
    """Log final metrics and every file of the encoder folder under artifacts ``encoder/``; mark the run FINISHED."""
    runs.log_metrics(run_id, metrics)
    runs.log_artifacts(run_id, sorted(p for p in Path(folder).iterdir() if p.is_file()), "encoder")
    runs.end_run(run_id, "FINISHED")


def fail_pretrain_run(run_id: str, interrupted: bool = False) -> None:
    """Mark the run FAILED (KILLED when interrupted)."""
    runs.end_run(run_id, "KILLED" if interrupted else "FAILED")
