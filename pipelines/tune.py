"""The tuning flow: `geocnn tune` as a Prefect flow; trials fan out on the config's task runner, the best
configuration's final run takes the experiment flow's tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from geocnn import fanout
from geocnn.config import load_config
from geocnn.domains import base as skeleton
from geocnn.tuning.search import summary_lines, tune
from pipelines.experiment import evaluate_task, export_task, ingest_task, split_task, track_task, train_task
from pipelines.fanout import mapper_for
from pipelines.policies import cached_store
from pipelines.report import publish


@flow(name="geocnn-tune", log_prints=True)
def tune_flow(config: str | None = None, overrides: list[str] | None = None, write_config: str | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Search the config's tune.space on validation; score the best configuration on test once; publish the study."""
    cfg = load_config(config, overrides)
    steps = skeleton.Steps(ingest=lambda c, progress=True: cached_store(ingest_task, c, progress=progress),
                           split=split_task, train=train_task, evaluate=evaluate_task, export=export_task,
                           track=track_task)
    with mapper_for(cfg.orchestration) as mapper, fanout.using(mapper):
        summary = tune(cfg, progress, steps, source=Path(config) if config else None, overrides=overrides,
                       write_config=Path(write_config) if write_config else None)
    metrics = {"tune/best_value": summary["best_value"], **(summary["final"] or {}).get("metrics", {})}
    publish(f"{cfg.domain}-tune", "# " + cfg.name + ": hyperparameter search\n\n"
            + "\n".join(f"- {line}" for line in summary_lines(summary)) + "\n", metrics,
            f"{cfg.name}: study, best values on validation, the final run on test")
    return summary
