"""Prefect flow for watch-folder prediction: files that arrived since the last run -> predictions, maps, ledger."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from geocnn.config import OrchestrationConfig
from geocnn.serving import batch as batches
from geocnn.serving import watch
from geocnn.tracking.model_uri import resolve
from pipelines.fanout import mapper_for
from pipelines.policies import IO_RETRIES

TASKS = batches.Steps(
    resolve=task(resolve, name="resolve-model", cache_policy=NO_CACHE, **IO_RETRIES),
    discover=task(watch.discover, name="discover", cache_policy=NO_CACHE, **IO_RETRIES),
    predict=task(batches.predict_items, name="predict", cache_policy=NO_CACHE),  # per-file errors inside
    tables=task(batches.rebuild_tables, name="write-tables", cache_policy=NO_CACHE, **IO_RETRIES),
)


def report_markdown(summary: dict[str, Any]) -> str:
    """What a prediction run did: counts, the model, failures, and where the outputs are."""
    if summary.get("skipped"):
        return f"# Watch-folder prediction skipped\n\nAnother run was writing to `{summary['output_dir']}`.\n"
    lines = [f"# Watch-folder prediction: `{summary['input_dir']}`", "",
             f"- model: `{summary['model']}`",
             f"- new or changed files: {summary['n_new']}; predicted: {summary['n_done']}; failed (retried next "
             f"run): {summary['n_failed']}; given up after max attempts: {len(summary['given_up'])}",
             f"- batch: `{summary.get('batch') or '-'}`", f"- output folder: `{summary['output_dir']}`"]
    lines += [f"- {k}: `{v}`" for k, v in summary["outputs"].items()]
    if summary["failures"]:
        lines += ["", "## Failures", ""] + [f"- `{p}`: {e}" for p, e in summary["failures"].items()]
    return "\n".join(lines) + "\n"


@flow(name="predict-new-data", log_prints=True)
def predict_flow(input_dir: str, output_dir: str, model: str, patterns: list[str] | None = None,
                 min_age_s: float = 2.0, max_attempts: int = 3, batch_size: int = 64, device: str = "auto",
                 stride_px: int | None = None, orchestration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predict the images or scenes that arrived in ``input_dir`` since the last successful run with ``model``
    (e.g. models:/NAME@champion, resolved at each run); write tables (and maps); record every file in the ledger.

    The run ends Failed when a file failed or was given up (the others are predicted and recorded all the same),
    so the UI, notifications and automations see it: :class:`FilesFailed` carries the summary. ``orchestration``
    (the config's section) shards many new files across its task runner, ``predict_shard_size`` files a task.
    """
    logger = get_run_logger()
    orch = OrchestrationConfig.model_validate(orchestration or {})
    with mapper_for(orch) as mapper:
        summary = batches.predict_new(input_dir, output_dir, model, patterns, min_age_s, max_attempts, batch_size,
                                      device, stride_px, run_id=str(flow_run.get_id() or ""), steps=TASKS,
                                      log=logger.info, warn=logger.warning, mapper=mapper,
                                      shard_size=orch.predict_shard_size)
    create_markdown_artifact(report_markdown(summary), key="watch-folder-report",
                             description=f"prediction of new files in {input_dir}")
    create_table_artifact(summary.get("items") or [{"file": "", "status": "nothing new", "error": ""}],
                          key="watch-folder-items", description="files processed by this run")
    if summary.get("n_failed") or summary.get("given_up"):
        raise batches.FilesFailed(summary)
    return summary
