"""One trial: the config with the sampled values, trained by its domain on the train split and scored on validation
only (never test), as an MLflow child run with per-epoch curves; unpromising trials pruned epoch by epoch."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import optuna

from geocnn import fanout
from geocnn.config import AnyExperiment, derive, metric_direction
from geocnn.domains import domain_for
from geocnn.errors import GeocnnError
from geocnn.tracking import runs as tracking
from geocnn.training import hooks
from geocnn.training.resume import content_key


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study needs, by value (it travels to worker processes of the task runner)."""

    cfg: AnyExperiment
    objective: str
    """The validation metric the study optimises (``validation/...``)."""
    direction: str
    """minimize or maximize."""
    parent_run: str | None
    tracking_uri: str | None
    trials_dir: Path
    prunable: bool = True
    progress: bool = True


class Pruning(L.Callback):
    """Reports each epoch's validation metric to the trial and stops it when the pruner says so.

    The reported metric is ``val/<the objective's leaf>`` when the task logs it every epoch, else the monitored
    metric (``train.monitor``, val/loss by default), negated when it improves the other way than the objective, so
    that the pruner compares trials in the study's direction. Folds (and stages) report one after another: fit
    ``index`` reports epoch e at step ``index * epochs + e``.
    """

    def __init__(self, trial: optuna.Trial, objective: str, direction: str, monitor: str, offset: int) -> None:
        self.trial = trial
        self.wanted = "val/" + objective.split("/", 1)[1]
        self.monitor = monitor
        self.up = direction == "maximize"
        self.offset = offset

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        name = self.wanted if self.wanted in metrics else self.monitor
        if name not in metrics:
            return
        value = float(metrics[name])
        if (metric_direction(name) == "max") != self.up:
            value = -value
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{name} is {value} at epoch {trainer.current_epoch + 1} (diverged)")
        step = self.offset + trainer.current_epoch
        if step == 0:
            self.trial.set_user_attr("geocnn.pruning_metric", name if value == float(metrics[name]) else f"-{name}")
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {trainer.current_epoch + 1}: {name} {float(metrics[name]):.4f} "
                                     "is worse than the median of earlier trials at that epoch")


def suggest(trial: optuna.Trial, cfg: AnyExperiment) -> dict[str, Any]:
    """Draw every dimension of tune.space; the dotted config changes of the draw."""
    changes: dict[str, Any] = {}
    for d in cfg.tune.dimensions:
        if d.kind in ("loguniform", "uniform"):
            value: Any = trial.suggest_float(d.key, d.low, d.high, log=d.kind == "loguniform")  # type: ignore[arg-type]
        elif d.kind in ("int", "logint"):
            value = trial.suggest_int(d.key, int(d.low), int(d.high), step=d.step or 1,  # type: ignore[arg-type]
                                      log=d.kind == "logint")
        else:
            value = trial.suggest_categorical(d.key, d.labels)
        changes.update(d.changes(value))
    return changes


def trial_config(ctx: TrialContext, changes: dict[str, Any]) -> AnyExperiment:
    """The config of a trial: the study's config with the sampled values, writing to a folder keyed by the values
    (a retried trial continues the checkpoints of the killed one)."""
    out = ctx.trials_dir / f"trial-{content_key(changes)[:12]}"
    return derive(ctx.cfg, {**changes, "output_dir": str(out)})


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> float:
    """Train the trial's config (folds, stages: whatever its domain does) and return its validation score."""
    changes = suggest(trial, ctx.cfg)
    try:
        cfg = trial_config(ctx, changes)
    except GeocnnError as exc:
        raise GeocnnError(f"trial {trial.number}: the sampled values {changes} make an invalid config: {exc}") from None
    domain = domain_for(cfg)
    cfg = domain.prepare(cfg)
    store = domain.ingest(cfg, progress=False)
    domain.split(store, cfg, progress=False)
    trial.set_user_attr("geocnn.output_dir", str(cfg.out))
    run = None
    if ctx.parent_run:
        run = tracking.start_run(cfg, run_name=f"{ctx.cfg.name}-trial-{trial.number:03d}", parent=ctx.parent_run,
                                 task=domain.task_tag(cfg))
        tracking.set_tags(run, {"geocnn.kind": "tune-trial", "geocnn.tune.trial": str(trial.number),
                                "geocnn.tune.values": json.dumps(trial.params, default=str)})
        trial.set_user_attr("geocnn.mlflow_run_id", run)
    epochs = cfg.train.epochs
    fit_hooks = hooks.FitHooks(
        callbacks=lambda i: [Pruning(trial, ctx.objective, ctx.direction, cfg.train.monitor_metric, i * epochs)]
        if ctx.prunable else [], validation_only=True)
    status = "FAILED"
    try:
        with hooks.using(fit_hooks), fanout.using(fanout.SEQUENTIAL):
            trained = domain.train(store, cfg, run, progress=False)
        if trained.stage1_run_id:
            tracking.end_run(trained.stage1_run_id)
        value = trained.validation.get(ctx.objective)
        if value is None or not math.isfinite(value):
            raise GeocnnError(f"tune.metric {ctx.objective!r}: this run's validation scores are "
                              f"{sorted(trained.validation)}; set tune.metric to one of them")
        if run:
            tracking.log_metrics(run, {**trained.validation, "tune/value": value})
        trial.set_user_attr("geocnn.validation", {k: float(v) for k, v in trained.validation.items()})
        status = "FINISHED"
        _clean(cfg.out)
        return float(value)
    except optuna.TrialPruned:
        status = "KILLED"
        if run:
            tracking.set_tags(run, {"geocnn.tune.state": "pruned"})
        _clean(cfg.out)
        raise
    except GeocnnError:
        _clean(cfg.out)
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if run:
            tracking.end_run(run, status)


def _clean(out: Path) -> None:
    """A finished, pruned or refused trial's checkpoints (only a killed trial's are kept: its retry resumes them)."""
    for ckpt in out.rglob("checkpoints"):
        shutil.rmtree(ckpt, ignore_errors=True)
