"""Run reports as Prefect artifacts: a markdown summary and a metrics table per flow run."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def processed_markdown(store: Any, summary: dict[str, Any]) -> str:
    """What the run read, and where its model went in the registry."""
    lines = ["## Processed", "", f"- {len(store.index)} samples from chip store `{store.root}` "
             f"(inputs {store.meta.get('key', '')[:12]})"]
    if summary.get("registered_version"):
        lines.append(f"- registered version {summary['registered_version']}; promotion: "
                     f"{'promoted' if summary.get('promoted') == 'true' else 'not promoted'} "
                     f"({summary.get('promotion', '')})")
    return "\n".join(lines) + "\n"


def publish(key: str, markdown: str, metrics: dict[str, float], description: str) -> None:
    """The run's markdown report and a table of every metric (test, validation, baselines)."""
    create_markdown_artifact(markdown, key=key, description=description)
    rows = [{"metric": k, "value": round(float(v), 6)} for k, v in sorted(metrics.items())]
    create_table_artifact(rows or [{"metric": "", "value": None}], key=f"{key}-table", description=description)
