"""Runner deployments of the retrain and predict flows for `geocnn serve` (module entry points, one run at a time)."""

from __future__ import annotations

from typing import Any

from prefect.deployments.runner import EntrypointType

from geocnn.serving.schedules import Plan, schedule_of
from pipelines.predict import predict_flow
from pipelines.retrain import retrain_flow


def deployments(p: Plan, name: str) -> list[Any]:
    """The retrain and/or predict deployment of a serve plan, on its schedules."""
    out = []
    common = {"concurrency_limit": 1, "entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["geocnn", name]}
    if p.retrain is not None:
        out.append(retrain_flow.to_deployment(name=f"{name}-retrain", parameters=p.retrain,
                                              schedules=[schedule_of(p.retrain_schedule, p.timezone)], **common))
    if p.predict is not None:
        out.append(predict_flow.to_deployment(name=f"{name}-predict", parameters=p.predict,
                                              schedules=[schedule_of(p.predict_schedule, p.timezone)], **common))
    return out
