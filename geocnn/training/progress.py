"""Training progress where no progress bar shows: one line per epoch (losses, the monitored metric, time)."""

from __future__ import annotations

import sys
import time

import lightning as L


def bars_show() -> bool:
    """Whether progress bars render: stderr is a terminal (not a log file, a pipe or a Prefect worker's log)."""
    return sys.stderr.isatty()


class EpochLines(L.Callback):
    """Prints ``epoch k/n  train/loss ...  val/loss ...  <monitor> ...  12.3 s`` to stderr after each epoch."""

    def __init__(self, monitor: str, label: str = "") -> None:
        self.monitor = monitor
        self.label = label
        self.started = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        shown = [f"{k} {float(metrics[k]):.4f}" for k in dict.fromkeys(("train/loss", "val/loss", self.monitor))
                 if k in metrics]
        print(f"{self.label}epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  " + "  ".join(shown)
              + f"  {time.monotonic() - self.started:.1f} s", file=sys.stderr, flush=True)
