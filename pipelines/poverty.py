"""Prefect flow for poverty mapping: ingest -> (stage 1 ->) train and score out of fold -> export maps -> track."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from geocnn.domains import base as experiment, earth as poverty
from geocnn.config import ExperimentConfig, load_config
from pipelines.report import processed_markdown, publish
from pipelines.policies import CACHED_INGEST, IO_RETRIES, cached_store

# Raster reads and exports touch disks: retry those; training is not retried.
ingest_task = task(poverty.ingest_survey, name="ingest-survey", **CACHED_INGEST)
two_stage_task = task(poverty.run_two_stage, name="two-stage", cache_policy=NO_CACHE)
direct_task = task(poverty.run_direct, name="train-direct", cache_policy=NO_CACHE)
export_task = task(poverty.export_earth, name="export", cache_policy=NO_CACHE, **IO_RETRIES)
track_task = task(poverty.track_earth, name="track", cache_policy=NO_CACHE)  # registers: not retried


def poverty_markdown(cfg: ExperimentConfig, summary: dict[str, Any]) -> str:
    """Out-of-fold metrics of the model beside each baseline, with the MLflow run and the outputs."""
    m: dict[str, float] = summary["metrics"]  # type: ignore[assignment]
    names = [n for n in ("test", "baseline", "baseline_nightlights", "baseline_gbm") if f"{n}/r2" in m]
    keys = ["r2", "pearson_r2", "group_mean/pearson_r2", "rmse"]
    rows = ["| predictor | " + " | ".join(keys) + " | poorer half r2 |", "|---" * (len(keys) + 2) + "|"]
    for n in names:
        vals = [f"{m[f'{n}/{k}']:.3f}" if f"{n}/{k}" in m else "" for k in keys]
        poor = m.get(f"poorer_half/{n}/r2")
        rows.append(f"| {n} | " + " | ".join(vals) + f" | {'' if poor is None else f'{poor:.3f}'} |")
    outputs = "\n".join(f"- {k}: `{v}`" for k, v in summary["outputs"].items())  # type: ignore[union-attr]
    return (f"# {cfg.name}: out-of-fold cluster metrics\n\n" + "\n".join(rows) +
            f"\n\nMLflow run: `{summary.get('run_id')}`\n\n## Outputs\n{outputs}\n")


@flow(name="poverty-mapping", log_prints=True)
def poverty_flow(config: str | None = None, overrides: list[str] | None = None,
                 base: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run one Earth experiment from a YAML config (plus dotted overrides) and report its metrics and maps."""
    cfg = poverty.survey_split(poverty.resolve_synthetic(load_config(config, overrides, base=base)))
    store = cached_store(ingest_task, cfg, progress=progress)
    run_id = experiment.open_run(cfg)
    try:
        step = two_stage_task if cfg.two_stage.enabled else direct_task
        result = step(store, cfg, run_id, progress=progress)
        paths = export_task(result, cfg, store)
        tracked = track_task(run_id, cfg, result, paths, store) if run_id else {}
    except BaseException:
        experiment.fail_run(run_id)
        raise
    summary = {"metrics": {**result.metrics, **result.stage1_metrics},
               "outputs": {k: str(v) for k, v in paths.items()}, "run_id": run_id, **tracked}
    publish("poverty-metrics", poverty_markdown(cfg, summary) + processed_markdown(store, summary),
            summary["metrics"], f"{cfg.name}: out-of-fold metrics, MLflow run, maps, registry")
    return summary
