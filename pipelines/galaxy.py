"""Prefect flow for galaxy morphology: ingest -> split -> train -> evaluate -> export -> track."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from geocnn.domains import base as experiment
from geocnn.config import ExperimentConfig, load_config
from pipelines.report import processed_markdown, publish
from pipelines.policies import CACHED_INGEST, IO_RETRIES, cached_store

# Reading images and writing chips touches disks and network filesystems: retry those; training is not retried.
ingest_task = task(experiment.ingest, name="ingest", **CACHED_INGEST)
split_task = task(experiment.split, name="split", cache_policy=NO_CACHE)
train_task = task(experiment.train, name="train", cache_policy=NO_CACHE)
evaluate_task = task(experiment.evaluate, name="evaluate", cache_policy=NO_CACHE)
export_task = task(experiment.export, name="export", cache_policy=NO_CACHE, **IO_RETRIES)
track_task = task(experiment.track, name="track", cache_policy=NO_CACHE)  # registers: not retried


def metrics_markdown(cfg: ExperimentConfig, summary: dict[str, Any]) -> str:
    """A markdown report: test metrics beside baselines, MLflow run and model, output paths."""
    metrics: dict[str, float] = summary["metrics"]  # type: ignore[assignment]
    rows = ["| metric | model (test) | baseline |", "|---|---|---|"]
    for name, value in sorted(metrics.items()):
        if name.startswith("test/"):
            base = metrics.get("baseline/" + name.removeprefix("test/"))
            rows.append(f"| {name.removeprefix('test/')} | {value:.4f} | {'' if base is None else f'{base:.4f}'} |")
    outputs = "\n".join(f"- {k}: `{v}`" for k, v in summary["outputs"].items())  # type: ignore[union-attr]
    return (f"# {cfg.name}: test metrics\n\n" + "\n".join(rows) +
            f"\n\nMLflow run: `{summary.get('run_id')}`; model: `{summary.get('model_uri', '-')}` "
            f"(version {summary.get('registered_version', '-')})\n\n## Outputs\n{outputs}\n")


@flow(name="galaxy-morphology", log_prints=True)
def galaxy_flow(config: str | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run one galaxy experiment from a YAML config (plus dotted overrides) and report its test metrics."""
    cfg = load_config(config, overrides, base=base)
    store = cached_store(ingest_task, cfg, progress=progress)
    view = split_task(store, cfg)
    run_id = experiment.open_run(cfg)
    try:
        result = train_task(view, cfg, run_id, progress=progress)
        evaluation = evaluate_task(result.net, view, cfg)
        paths = export_task(evaluation, result.net, cfg, store)
        tracked = track_task(run_id, cfg, evaluation, paths, view) if run_id else {}
    except BaseException:
        experiment.fail_run(run_id)
        raise
    summary = experiment.summary(cfg, evaluation, paths, run_id, tracked, result)
    publish("galaxy-test-metrics", metrics_markdown(cfg, summary) + processed_markdown(store, summary),
            summary["metrics"], f"{cfg.name}: test metrics, MLflow run, registry")
    return summary
