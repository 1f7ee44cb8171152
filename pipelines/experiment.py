"""The experiment flow, one for every domain: the run skeleton's steps as Prefect tasks (no domain logic here)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from geocnn import fanout
from geocnn.config import AnyExperiment, load_config
from geocnn.data.store import ChipStore
from geocnn.domains import base as skeleton
from geocnn.domains import domain_for
from pipelines.fanout import mapper_for
from pipelines.policies import CACHED_INGEST, IO_RETRIES, cached_store
from pipelines.report import publish, run_markdown


def ingest(cfg: AnyExperiment, progress: bool = True) -> ChipStore:
    """Read the experiment's inputs and build (or reuse) its chip store (the domain's readers)."""
    return domain_for(cfg).ingest(cfg, progress=progress)


def split(store: ChipStore, cfg: AnyExperiment, progress: bool = True) -> None:
    """Check the task's settings and assign the splits (cached in the store) before any run exists."""
    domain_for(cfg).split(store, cfg, progress=progress)


def train(store: ChipStore, cfg: AnyExperiment, run_id: str | None = None, progress: bool = True) -> Any:
    """Fit the experiment's model(s) on the store (the domain's strategy: one split, folds, two-stage)."""
    return domain_for(cfg).train(store, cfg, run_id, progress=progress)


# Reading inputs and writing outputs touch disks and network filesystems: retry those. Training and registration
# are not retried (a retry could register twice).
ingest_task = task(ingest, name="ingest", **CACHED_INGEST)
split_task = task(split, name="split", cache_policy=NO_CACHE)
train_task = task(train, name="train", cache_policy=NO_CACHE)
evaluate_task = task(skeleton.evaluate, name="evaluate", cache_policy=NO_CACHE)
export_task = task(skeleton.export, name="export", cache_policy=NO_CACHE, **IO_RETRIES)
track_task = task(skeleton.track, name="track", cache_policy=NO_CACHE)


@flow(name="geocnn-experiment", log_prints=True)
def experiment_flow(config: str | None = None, overrides: list[str] | None = None,
                    base: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run one experiment (galaxy or Earth) from a YAML config plus dotted overrides; publish its report."""
    cfg = load_config(config, overrides, base=base)
    domain = domain_for(cfg)
    steps = skeleton.Steps(ingest=lambda c, progress=True: cached_store(ingest_task, c, progress=progress),
                           split=split_task, train=train_task, evaluate=evaluate_task, export=export_task,
                           track=track_task)
    with mapper_for(cfg.orchestration) as mapper, fanout.using(mapper):
        summary = skeleton.run_experiment(cfg, domain, progress, steps)
    publish(f"{cfg.domain}-experiment", run_markdown(cfg.name, domain.report_keys(cfg), summary), summary["metrics"],
            f"{cfg.name}: held-out metrics beside baselines, MLflow run, registry, outputs")
    return summary
