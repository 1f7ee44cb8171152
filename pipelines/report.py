"""Run reports as Prefect artifacts: a markdown summary and a metrics table per flow run."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

HEADLINE = ("accuracy", "balanced_accuracy", "roc_auc", "r2", "pearson_r2", "group_mean/pearson_r2", "rmse", "mae")
"""Metrics shown in the report's table when the run has them."""


def run_markdown(name: str, predictors: list[str], summary: dict[str, Any]) -> str:
    """Held-out metrics of the model beside each baseline, the MLflow run, the registry decision and outputs."""
    m: dict[str, float] = summary["metrics"]
    shown = [p for p in predictors if any(f"{p}/{k}" in m for k in HEADLINE)]
    keys = [k for k in HEADLINE if f"test/{k}" in m]
    rows = ["| metric | " + " | ".join("model" if p == "test" else p for p in shown) + " |",
            "|---" * (len(shown) + 1) + "|"]
    for k in keys:
        rows.append(f"| {k} | " + " | ".join(f"{m[f'{p}/{k}']:.4f}" if f"{p}/{k}" in m else "" for p in shown) + " |")
    poorer = [p for p in shown if f"poorer_half/{p}/pearson_r2" in m]
    if poorer:
        rows.append("| poorer half pearson_r2 | " + " | ".join(
            f"{m[f'poorer_half/{p}/pearson_r2']:.4f}" if p in poorer else "" for p in shown) + " |")
    lines = [f"# {name}: held-out metrics ({int(m.get('test/n', 0))} samples)", "", *rows, "",
             f"MLflow run: `{summary.get('run_id')}`; model: `{summary.get('model_uri', '-')}` "
             f"(version {summary.get('registered_version', '-')})", "", "## Processed", "",
             f"- {summary.get('samples', '?')} samples from chip store `{summary.get('store', '')}` "
             f"(inputs {str(summary.get('store_key', ''))[:12]})"]
    if summary.get("registered_version"):
        lines.append(f"- registered version {summary['registered_version']}; promotion: "
                     f"{'promoted' if summary.get('promoted') == 'true' else 'not promoted'} "
                     f"({summary.get('promotion', '')})")
    lines += ["", "## Outputs", *[f"- {k}: `{v}`" for k, v in summary["outputs"].items()]]
    return "\n".join(lines) + "\n"


def publish(key: str, markdown: str, metrics: dict[str, float], description: str) -> None:
    """The run's markdown report and a table of every metric (test, validation, baselines)."""
    create_markdown_artifact(markdown, key=key, description=description)
    rows = [{"metric": k, "value": round(float(v), 6)} for k, v in sorted(metrics.items())]
    create_table_artifact(rows or [{"metric": "", "value": None}], key=f"{key}-table", description=description)
