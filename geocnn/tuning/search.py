"""`geocnn tune`: an Optuna study over a config's tune.space, trials scored on validation only, in parallel on the
task runner with a shared storage, resumable; the best configuration scored on test once and written as YAML."""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from geocnn import fanout
from geocnn.atomic import atomic_path
from geocnn.config import AnyExperiment, derive, metric_direction
from geocnn.data.splits import n_folds
from geocnn.domains import domain_for
from geocnn.domains.base import Domain, Steps, run_experiment
from geocnn.errors import GeocnnError
from geocnn.models.start import check_model
from geocnn.tracking import runs as tracking
from geocnn.tuning import plots
from geocnn.tuning.config_file import write_tuned_config
from geocnn.tuning.study import (
    DONE,
    counts,
    is_local,
    open_study,
    retry_killed,
    storage_url,
    study_folder,
    study_lock,
)
from geocnn.tuning.trial import TrialContext, run_trial


@dataclass(frozen=True)
class WorkerJob:
    """One worker of a study (a unit of the task runner): runs trials until the study has n_trials or time is up."""

    ctx: TrialContext
    url: str
    seed: int
    max_steps: int
    deadline: float | None
    """Epoch seconds after which no trial starts (None: no time budget)."""


def _line(ctx: TrialContext, n_trials: int) -> Any:
    """A study callback printing one line per finished trial."""

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        if not ctx.progress:
            return
        done = sum(t.state in DONE for t in study.get_trials(deepcopy=False))
        values = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        if trial.state == TrialState.COMPLETE:
            what = f"{ctx.objective} {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            last = max(trial.intermediate_values) + 1 if trial.intermediate_values else 0
            what = f"pruned after {last} epoch(s)"
        else:
            what = f"failed: {trial.user_attrs.get('geocnn.error', trial.state.name.lower())}"
        try:
            best = f" (best {study.best_value:.4f}, trial {study.best_trial.number})"
        except ValueError:
            best = ""
        print(f"tune trial {trial.number} [{done}/{n_trials}] {values}: {what}{best}", flush=True)

    return report


def _stop_after_failures(limit: int) -> Any:
    """Stop a study whose trials keep failing (an error every configuration hits) instead of looping on it."""

    def check(study: optuna.Study, trial: FrozenTrial) -> None:
        if sum(t.state == TrialState.FAIL for t in study.get_trials(deepcopy=False)) >= limit:
            study.stop()

    return check


def tune_worker(job: WorkerJob) -> int:
    """Run trials of the study until it holds tune.n_trials finished ones (completed or pruned), the time budget
    is spent, or the grid is exhausted; return the trials this worker ran."""
    ctx = job.ctx
    if ctx.tracking_uri:
        tracking.use_uri(ctx.tracking_uri)
    cfg = ctx.cfg
    study = open_study(cfg, job.url, ctx.direction, job.seed, job.max_steps, ctx.prunable)
    n = cfg.tune.n_trials
    if sum(t.state in DONE for t in study.get_trials(deepcopy=False)) >= n:
        return 0
    timeout = None if job.deadline is None else max(job.deadline - time.time(), 0.0)
    if timeout == 0.0:
        return 0
    before = len(study.trials)

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(ctx, trial)
        except GeocnnError as exc:
            trial.set_user_attr("geocnn.error", str(exc)[:2000])
            raise

    study.optimize(objective, timeout=timeout, catch=(GeocnnError,), gc_after_trial=True,
                   callbacks=[MaxTrialsCallback(n, states=DONE), _line(ctx, n), _stop_after_failures(max(3, n))])
    return len(study.trials) - before


def check_space(cfg: AnyExperiment) -> None:
    """Every dimension's ends (or choices) make a valid config, checked before anything runs."""
    for d in cfg.tune.dimensions:
        points = d.labels if d.kind == "categorical" else [d.low, d.high]
        for p in points:
            value = int(p) if d.kind in ("int", "logint") else p
            try:
                derive(cfg, d.changes(value))
            except GeocnnError as exc:
                detail = str(exc).split("invalid config:", 1)[-1].strip()
                raise GeocnnError(f"tune.space.{d.key}: the value {value!r} makes an invalid config: "
                                  f"{detail}") from None


def objective_of(cfg: AnyExperiment, domain: Domain) -> tuple[str, str]:
    """The validation metric the study optimises and its direction (minimize/maximize)."""
    metric = cfg.tune.objective or domain.promotion_metric(cfg)
    direction = cfg.tune.direction
    if direction == "auto":
        direction = "maximize" if metric_direction(metric) == "max" else "minimize"
    return metric, direction


def config_trial(cfg: AnyExperiment) -> dict[str, Any]:
    """Trial 0's values: the config's own, when every one of them lies inside the space (else {})."""
    tree = cfg.model_dump()
    fixed: dict[str, Any] = {}
    for d in cfg.tune.dimensions:
        node: Any = tree
        for part in d.key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or not d.contains(node):
            return {}
        fixed[d.key] = d.label_of(node)
    return fixed


def tune(cfg: AnyExperiment, progress: bool = True, steps: Steps | None = None, source: Path | None = None,
         overrides: list[str] | None = None, write_config: Path | None = None) -> dict[str, Any]:
    """Search tune.space on validation; retrain the best configuration and score it on test once (tune.refit).

    Trials run ``tune.parallel`` at a time on the current fan-out Mapper (the flow's task runner); each worker
    loads the study from the shared storage. Rerunning the command continues the study: finished trials are kept,
    trials a killed run left running are retried (their fits resume from their checkpoints).

    Args:
        cfg: the experiment with a ``tune:`` section.
        progress: print a line per trial.
        steps: the run skeleton's steps for the final run (the Prefect flow passes its tasks).
        source: the config file (the chosen config is written from it, comments kept); None: from ``cfg``.
        overrides: the --set overrides given with ``source``.
        write_config: also write the chosen config here (e.g. configs/x.yaml to commit it).

    Returns:
        The study's summary: best values and score, trial counts, plots, the chosen config's path, the parent run
        and the final run's summary (test metrics) when tune.refit.
    """
    t = cfg.tune
    if not t.space:
        raise GeocnnError("tune.space is empty: name the config keys to search and their ranges, e.g.\n  tune:\n"
                          "    space:\n      train.optimizer.lr: loguniform(1e-4, 1e-1)\n"
                          "      train.optimizer.name: [sgd, adamw, rmsprop]")
    ddp = cfg.train.strategy != "auto" or cfg.train.num_nodes > 1 or cfg.train.devices not in (1, "auto")
    if ddp:
        raise GeocnnError("tune: each trial trains on one device; remove train.devices/strategy/num_nodes and run "
                          "trials side by side with tune.parallel instead")
    cfg = check_model(cfg)
    domain = domain_for(cfg)
    check_space(cfg)
    mapper = fanout.current()
    if t.parallel > 1 and not mapper.parallel:
        raise GeocnnError(f"tune.parallel={t.parallel} runs trials side by side on orchestration.task_runner, which "
                          "is sequential here: set orchestration.task_runner: dask (local processes), ray or threads, "
                          "or set tune.parallel: 1")
    metric, direction = objective_of(cfg, domain)
    prepared = domain.prepare(cfg)
    store = domain.ingest(prepared, progress=progress)  # bad input fails before a study or a run exists
    domain.split(store, prepared, progress=progress)
    k = n_folds(store.samples(), prepared.split) or 1
    prunable = domain.prunable(prepared)
    folder = study_folder(cfg)
    url = storage_url(cfg)
    local = is_local(url)
    with study_lock(folder) if local else nullcontext():
        study = open_study(cfg, url, direction, cfg.seed, cfg.train.epochs * k, prunable)
        retried = retry_killed(study) if local else []
        if retried and progress:
            print(f"tune: trials {retried} were left running by a stopped `geocnn tune`: retrying them", flush=True)
        if not study.trials and t.start_from_config and t.sampler != "grid":
            fixed = config_trial(cfg)
            if fixed:
                study.enqueue_trial(fixed, user_attrs={"geocnn.config_trial": True})
            elif progress:
                print("tune: the config's own values are not all inside tune.space, so no trial scores them as "
                      "they are", flush=True)
        parent = _parent_run(cfg, study, metric, direction, url)
        ctx = TrialContext(cfg=cfg, objective=metric, direction=direction, parent_run=parent,
                           tracking_uri=tracking.current_uri() if parent else None, trials_dir=folder / "trials",
                           prunable=prunable, progress=progress)
        deadline = time.time() + t.timeout_min * 60 if t.timeout_min else None
        seed = cfg.seed + 1000 * len(study.trials)  # a resumed or parallel worker draws new points
        jobs = [WorkerJob(ctx, url, seed + w, cfg.train.epochs * k, deadline) for w in range(t.parallel)]
        started = time.perf_counter()
        try:
            if len(jobs) > 1:
                mapper.map("tune-worker", tune_worker, jobs)
            else:
                tune_worker(jobs[0])
        except BaseException:
            if parent:
                tracking.end_run(parent, "KILLED")
            raise
        elapsed = time.perf_counter() - started
        study = open_study(cfg, url, direction, cfg.seed, cfg.train.epochs * k, prunable)
        return _conclude(cfg, domain, study, ctx, folder, elapsed, steps, source, overrides, write_config)


def _parent_run(cfg: AnyExperiment, study: optuna.Study, metric: str, direction: str, url: str) -> str | None:
    """The study's MLflow parent run: reopened when the study continues, else created (None: tracking off)."""
    if not cfg.tracking.enabled:
        return None
    tracking.setup(cfg)
    known = study.user_attrs.get("geocnn.parent_run")
    if known and tracking.run_status(known) is not None:
        tracking.reopen_run(known)
        return known
    params = {"tune.metric": metric, "tune.direction": direction, "tune.sampler": cfg.tune.sampler,
              "tune.pruner": cfg.tune.pruner, "tune.n_trials": cfg.tune.n_trials, "tune.parallel": cfg.tune.parallel,
              "tune.storage": url, "tune.study": study.study_name,
              **{f"space.{d.key}": d.text() for d in cfg.tune.dimensions}}
    run = tracking.start_run(cfg, run_name=f"{cfg.name}-tune", params=params, task=cfg.model.task)
    tracking.set_tags(run, {"geocnn.kind": "tune", "geocnn.tune.study": study.study_name})
    study.set_user_attr("geocnn.parent_run", run)
    return run


def _label(params: dict[str, Any]) -> str:
    """A trial's values for a legend: ``lr=0.01, {name: adam}`` (a mapping choice shows as itself)."""
    return ", ".join(_short(v) if str(v).startswith("{") else f"{k.rsplit('.', 1)[-1]}={_short(v)}"
                     for k, v in params.items())


def _short(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _curves(study: optuna.Study, objective: str) -> plots.Curves:
    """Per-epoch training loss and validation metric of every finished or pruned trial, from its MLflow run."""
    out: plots.Curves = {}
    for tr in study.trials:
        run = tr.user_attrs.get("geocnn.mlflow_run_id")
        if tr.state not in DONE or not run:
            continue
        names = ["train/loss", "val/" + objective.split("/", 1)[1], "val/loss"]
        curves = {n: tracking.metric_history(run, n) for n in names}
        label = f"#{tr.number} " + _label(tr.params) + (" (pruned)" if tr.state == TrialState.PRUNED else "")
        out[label] = {n: c for n, c in curves.items() if c}
    return out


def _conclude(cfg: AnyExperiment, domain: Domain, study: optuna.Study, ctx: TrialContext, folder: Path,
              elapsed: float, steps: Steps | None, source: Path | None, overrides: list[str] | None,
              write_config: Path | None) -> dict[str, Any]:
    """The study's outputs: trials table, plots, the chosen config (YAML), the parent run's summary, the final
    run of the best configuration (test scored once)."""
    state = counts(study)
    parent = ctx.parent_run
    frame = study.trials_dataframe()
    trials_csv = folder / "trials.csv"
    with atomic_path(trials_csv) as tmp:
        frame.to_csv(tmp, index=False)
    complete = [tr for tr in study.trials if tr.state == TrialState.COMPLETE]
    if not complete:
        if parent:
            tracking.end_run(parent, "FAILED")
        errors = {tr.user_attrs.get("geocnn.error") for tr in study.trials if tr.user_attrs.get("geocnn.error")}
        hint = f" Trial errors: {'; '.join(sorted(errors))[:1500]}" if errors else ""
        raise GeocnnError(f"tune: no trial completed ({state['pruned']} pruned, {state['fail']} failed); raise "
                          f"tune.n_trials or tune.timeout_min, or check the space.{hint}")
    best = study.best_trial
    changes: dict[str, Any] = {}
    by_key = {d.key: d for d in cfg.tune.dimensions}
    for key, value in best.params.items():
        changes.update(by_key[key].changes(value))
    first = next((tr for tr in study.trials if tr.user_attrs.get("geocnn.config_trial")), None)
    plot_dir = folder / "plots"
    pictures = plots.study_plots(study, plot_dir)
    if parent:
        leaf = ctx.objective.split("/", 1)[1]
        curve = plots.learning_curves(_curves(study, ctx.objective), ctx.objective, plot_dir / "learning_curves.png",
                                      f"{cfg.name}: training loss and validation {leaf} per epoch of every trial")
        pictures += [curve] if curve else []
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"Chosen on validation by `geocnn tune` ({stamp}): study {study.study_name!r}, "
              f"{state['complete']} trials completed, {state['pruned']} pruned, {state['fail']} failed.",
              f"Best: trial {best.number}, {ctx.objective} = {best.value:.4f} ({ctx.direction}); values: "
              + ", ".join(f"{k}={_short(v, 4)}" for k, v in best.params.items()) + "."]
    if first is not None and first.state == TrialState.COMPLETE:
        header.append(f"The config's own values (trial {first.number}) scored {first.value:.4f}.")
    final: dict[str, Any] | None = None
    best_cfg = derive(cfg, changes)
    chosen = folder / "best_config.yaml"
    if cfg.tune.refit:
        final = run_experiment(best_cfg, domain, ctx.progress, steps, parent_run=parent)
        tests = {k: v for k, v in final["metrics"].items()
                 if k.startswith("test/") and "/" not in k[5:] and "_ci_" not in k and k != "test/n"}
        header.append("Scored once on test after the search: "
                      + ", ".join(f"{k}={v:.4f}" for k, v in sorted(tests.items()) if math.isfinite(v)) + ".")
    written = write_tuned_config(chosen, cfg, changes, header, source, overrides)
    extra = [write_tuned_config(write_config, cfg, changes, header, source, overrides)] if write_config else []
    summary: dict[str, Any] = {
        "study": study.study_name, "storage": study_storage_text(study), "metric": ctx.objective,
        "direction": ctx.direction, "best_value": float(best.value), "best_trial": best.number,
        "best_params": dict(best.params), "changes": changes, "trials": state, "seconds": round(elapsed, 1),
        "config_value": float(first.value) if first is not None and first.value is not None else None,
        "best_config": str(written), "trials_csv": str(trials_csv), "plots": [str(p) for p in pictures],
        "parent_run": parent, "final": final, "written": [str(p) for p in extra]}
    if parent:
        metrics = {"tune/best_value": float(best.value), "tune/best_trial": float(best.number),
                   **{f"tune/trials_{k}": float(v) for k, v in state.items() if k in ("complete", "pruned", "fail")}}
        if summary["config_value"] is not None:
            metrics["tune/config_value"] = summary["config_value"]
        if final:
            metrics.update({f"final/{k}": v for k, v in final["metrics"].items() if k.startswith("test/")})
        tracking.log_metrics(parent, metrics)
        tracking.log_params(parent, {f"best.{k}": v for k, v in best.params.items()})
        tracking.log_artifacts(parent, pictures, "plots")
        tracking.log_artifacts(parent, [trials_csv, written], "tune")
        tracking.describe(parent, "\n\n".join(header))
        if final and final.get("run_id"):
            tracking.set_tags(parent, {"geocnn.tune.final_run": final["run_id"]})
            tracking.set_tags(final["run_id"], {"geocnn.kind": "tune-final", "geocnn.tune.best_trial":
                                                str(best.number)})
        tracking.end_run(parent)
    summary["header"] = header
    return summary


def study_storage_text(study: optuna.Study) -> str:
    """Where the study lives, for messages."""
    backend = getattr(study._storage, "_backend", study._storage)
    return str(getattr(backend, "url", "")) or type(backend).__name__


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What `geocnn tune` prints at the end."""
    lines = [f"study {summary['study']} ({summary['storage']}): {json.dumps(summary['trials'])}"]
    lines.append(f"best trial {summary['best_trial']}: {summary['metric']} = {summary['best_value']:.4f} "
                 f"({summary['direction']})")
    for k, v in summary["best_params"].items():
        lines.append(f"  {k}: {v}")
    if summary.get("config_value") is not None:
        lines.append(f"the config's own values scored {summary['config_value']:.4f}")
    lines.append(f"chosen config: {summary['best_config']}")
    for w in summary.get("written", []):
        lines.append(f"  also written to {w}")
    return lines


