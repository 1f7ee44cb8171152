"""Model registry: versions registered by tracking.register; the champion alias moves only to a better model."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from geocnn.config import TrackingConfig, TrainConfig
from geocnn.errors import GeocnnError

SPLIT_TAG = "geocnn.split_signature"
TAG = "geocnn.promotion."

Rescore = Callable[[str], "Comparison | None"]
"""Given the champion's version, score champion and candidate on the same held-out rows (or None if impossible)."""


@dataclass
class Comparison:
    """Champion and candidate scored on the same validation rows."""

    candidate: float
    champion: float
    n_rows: int
    how: str
    p_value: float | None = None
    """Two-sided p-value of a paired test of the two models on those rows (recorded; promotion ignores it)."""
    test: str = ""
    """The paired test: McNemar (classes) or a paired bootstrap of the metric."""


@dataclass
class Decision:
    """What promotion decided for a new version, and why (also written as MLflow tags)."""

    promoted: bool
    reason: str
    metric: str
    direction: str
    version: str | None = None
    candidate: float | None = None
    champion: float | None = None
    champion_version: str | None = None
    compared_on: str | None = None
    p_value: float | None = None
    paired_test: str | None = None


def promotion_metric(tracking: TrackingConfig, default: str) -> str:
    """The validation metric deciding promotion: tracking.promotion_metric, else the domain's/task's default."""
    return tracking.promotion_metric or default


def promotion_direction(tracking: TrackingConfig, metric: str) -> Literal["min", "max"]:
    """min or max for the promotion metric ('auto' infers it from the name, as train.monitor_mode does)."""
    if tracking.promotion_mode != "auto":
        return tracking.promotion_mode
    return TrainConfig(monitor=metric).monitor_direction


def check_metric(tracking: TrackingConfig, default: str, metrics: dict[str, float]) -> str:
    """The promotion metric, refused if it is a test metric or the run did not compute it."""
    metric = promotion_metric(tracking, default)
    if tracking.promotion != "if_better":
        return metric
    if metric.startswith(("test/", "baseline")):
        raise GeocnnError(f"tracking.promotion_metric={metric!r}: promotion must not look at test metrics; use a "
                          "validation/* metric (test scores stay an honest estimate only if nothing is chosen on them)")
    if metric not in metrics or not math.isfinite(metrics[metric]):
        have = sorted(k for k in metrics if k.startswith("validation/"))
        raise GeocnnError(f"tracking.promotion_metric={metric!r} was not computed by this run; choose one of {have} "
                          "(validation needs split.val_fraction > 0)")
    return metric


def split_signature(ids: np.ndarray, labels: np.ndarray) -> str:
    """Hash of the (sample id, split or fold) assignment: equal iff two runs trained and validated on the same rows."""
    order = np.argsort(np.asarray(ids).astype(str), kind="stable")
    h = hashlib.sha256()
    for i in order:
        h.update(f"{ids[i]}\t{labels[i]}\n".encode())
    return h.hexdigest()


def better(candidate: float, champion: float, direction: str) -> bool:
    """Strictly better in the metric's direction (a tie keeps the champion)."""
    return candidate < champion if direction == "min" else candidate > champion


def current_champion(client: MlflowClient, name: str, alias: str) -> object | None:
    """The model version the alias points at, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def decide(client: MlflowClient, tracking: TrackingConfig, default_metric: str, name: str,
           metrics: dict[str, float], signature: str, rescore: Rescore | None = None) -> Decision:
    """Whether a new model should become the champion: it beats the current one on the validation metric over the
    same split definition (or, when the data changed, on the validation rows neither model trained on)."""
    alias = tracking.alias
    metric = promotion_metric(tracking, default_metric)
    direction = promotion_direction(tracking, metric)
    decision = Decision(False, "", metric, direction, candidate=metrics.get(metric))
    champion = current_champion(client, name, alias)
    if tracking.promotion == "never":
        decision.reason = "tracking.promotion=never"
    elif tracking.promotion == "always":
        decision.promoted, decision.reason = True, "tracking.promotion=always"
    elif champion is None:
        decision.promoted, decision.reason = True, f"no {alias} yet"
    else:
        decision.champion_version = str(champion.version)
        champ_run = client.get_run(champion.run_id)
        champ_sig = champion.tags.get(SPLIT_TAG) or champ_run.data.tags.get(SPLIT_TAG)
        champ_value = champ_run.data.metrics.get(metric)
        if champ_sig == signature and champ_value is not None:
            decision.champion, decision.compared_on = champ_value, f"same split definition {signature[:12]}"
        else:
            comparison = rescore(str(champion.version)) if rescore is not None else None
            if comparison is None:
                decision.champion = champ_value
                decision.reason = ("the champion was trained and validated on a different split definition (other "
                                   "data or split settings) and cannot be rescored on this one; it stays. Register "
                                   "and promote by hand with `geocnn alias` if intended")
            else:
                decision.candidate, decision.champion = comparison.candidate, comparison.champion
                decision.compared_on, decision.p_value = comparison.how, comparison.p_value
                decision.paired_test = comparison.test or None
        if decision.compared_on:
            decision.promoted = better(decision.candidate, decision.champion, direction)
            verb = "beats" if decision.promoted else "does not beat"
            decision.reason = (f"{metric} {decision.candidate:.6g} {verb} the {alias}'s {decision.champion:.6g} "
                               f"(version {champion.version}, {direction} is better) on {decision.compared_on}")
            if decision.p_value is not None:
                decision.reason += "; " + significance(decision.p_value, decision.paired_test or "paired test")
    return decision


def significance(p_value: float, test: str, alpha: float = 0.05) -> str:
    """How a paired test reads, e.g. 'not significant, p = 0.82 (McNemar on the same rows)'."""
    verdict = "significant" if p_value < alpha else "not significant"
    return f"{verdict}, p = {p_value:.2g} ({test} on the same rows; recorded, promotion follows the metric)"


def should_register(tracking: TrackingConfig, decision: Decision) -> bool:
    """tracking.register: always, if_promoted (only a version that becomes the champion), never."""
    return tracking.register == "always" or (tracking.register == "if_promoted" and decision.promoted)


def register(client: MlflowClient, model_uri: str, model_id: str, run_id: str, name: str, signature: str,
             description: str) -> str:
    """Register a logged model as a new version of ``name`` with a description; return the version."""
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, model_uri, run_id=run_id, tags={SPLIT_TAG: signature},
                                          description=description, model_id=model_id)
    return str(version.version)


def record(client: MlflowClient, tracking: TrackingConfig, name: str, run_id: str, decision: Decision,
           version: str | None) -> None:
    """Apply a decision: move the alias to ``version`` when promoted; tag the run (and the version) with why."""
    decision.version = version
    if decision.promoted and version is not None:
        client.set_registered_model_alias(name, tracking.alias, version)
    tags = {k: str(v) for k, v in asdict(decision).items() if v is not None}
    for key, val in tags.items():
        client.set_tag(run_id, TAG + key, val)
        if version is not None:
            client.set_model_version_tag(name, version, TAG + key, val)
