"""Score any predictions table: pooled, per group, mean over groups, per value of a column, and the worst of those."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from geocnn.data.catalog import require_columns
from geocnn.errors import GeocnnError
from geocnn.evaluation.metrics import classification_metrics, regression_metrics

KEYS = ("r2", "pearson_r", "pearson_r2", "rmse", "mae")
CLASS_KEYS = ("accuracy", "balanced_accuracy", "roc_auc", "log_loss")
PROB = "prob_"
"""Prefix of a classification table's class-probability columns (``prob_<class>``)."""


def is_classification_table(frame: pd.DataFrame, target: str) -> bool:
    """A table of class probabilities (``prob_<class>`` columns): scored against the true class in ``target``."""
    return any(str(c).startswith(PROB) for c in frame.columns)


def score_classification_table(frame: pd.DataFrame, target: str, group: str | None = None, by: str | None = None,
                               source: str = "table") -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC AUC and log loss from the ``prob_<class>`` columns against the true class
    in ``target``: pooled, per group with the mean over groups, and per value of ``by``."""
    require_columns(frame, [target] + [c for c in (group, by) if c], source, "--target/--group/--by")
    prob_cols = [c for c in frame.columns if str(c).startswith(PROB)]
    classes = [str(c)[len(PROB):] for c in prob_cols]
    truth = frame[target].astype(str).to_numpy()
    known = {name: k for k, name in enumerate(classes)}
    missing = ~np.isin(truth, classes)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise GeocnnError(f"{source}: row {i + 2}, column '{target}': class {truth[i]!r} has no probability column "
                          f"(found {prob_cols}); the table must hold prob_<class> for every true class")
    proba = frame[prob_cols].to_numpy(dtype=np.float64)
    if not np.isfinite(proba).all():
        i = int(np.flatnonzero(~np.isfinite(proba).all(axis=1))[0])
        raise GeocnnError(f"{source}: row {i + 2}: a prob_* value is missing or not finite; drop such rows first")
    y = np.array([known[t] for t in truth])

    def metrics(rows: np.ndarray) -> dict[str, float]:
        m = classification_metrics(y[rows], proba[rows], classes)
        out = {k: float(m[k]) for k in CLASS_KEYS if k in m and np.isfinite(m[k])}
        out["n"] = float(len(rows))
        return out

    result: dict[str, Any] = {"target": target, "classes": classes, "pooled": metrics(np.arange(len(frame)))}
    for column, key in ((group, "groups"), (by, "by")):
        if column:
            codes = frame[column].astype(str).to_numpy()
            result[key] = {g: metrics(np.flatnonzero(codes == g)) for g in sorted(set(codes))}
    if group:
        per = result["groups"].values()
        result["group_mean"] = {k: float(np.mean([g[k] for g in per if k in g])) for k in CLASS_KEYS
                                if any(k in g for g in per)}
    return result


def _metrics(frame: pd.DataFrame, target: str, prediction: str) -> dict[str, float]:
    y = frame[target].to_numpy(dtype=np.float64)
    p = frame[prediction].to_numpy(dtype=np.float64)
    m = regression_metrics(y, p, [target], np.array([y.mean()]))
    out = {k: m[k] for k in KEYS if k in m}
    out["n"] = float(len(frame))
    return out


def score_table(frame: pd.DataFrame, target: str, prediction: str, group: str | None = None,
                by: str | None = None, source: str = "table") -> dict[str, Any]:
    """Metrics of ``prediction`` against ``target``: R2 and squared Pearson r (both, named so), r, RMSE, MAE.

    Returns ``pooled``; with ``group``: ``groups`` (per group) and ``group_mean`` (unweighted mean over groups,
    as Yeh et al. 2020 report per-country r2); with ``by``: ``by`` (per value, e.g. urban/rural) and ``by_worst``
    (the lowest of each metric over those values, higher-is-better metrics only, as WILDS PovertyMap reports).
    """
    cols = [target, prediction] + [c for c in (group, by) if c]
    require_columns(frame, cols, source, "--target/--prediction/--group/--by")
    for col in (target, prediction):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GeocnnError(f"{source}: row {i + 2}, column '{col}': {frame[col].iloc[i]!r} is not a finite number; "
                              "drop or fill such rows before scoring")
    if len(frame) < 2:
        raise GeocnnError(f"{source}: at least 2 rows are needed to score, found {len(frame)}")
    result: dict[str, Any] = {"target": target, "prediction": prediction, "pooled": _metrics(frame, target, prediction)}
    if group:
        groups = {str(k): _metrics(g, target, prediction) for k, g in frame.groupby(group, sort=True) if len(g) >= 2}
        result["groups"] = groups
        result["group_mean"] = {k: float(np.mean([g[k] for g in groups.values() if k in g])) for k in KEYS
                                if any(k in g for g in groups.values())}
    if by:
        per = {str(k): _metrics(g, target, prediction) for k, g in frame.groupby(by, sort=True) if len(g) >= 2}
        result["by"] = per
        result["by_worst"] = {k: float(min(v[k] for v in per.values() if k in v))
                              for k in ("r2", "pearson_r", "pearson_r2") if any(k in v for v in per.values())}
    return result


def score_columns(frame: pd.DataFrame, target: str, columns: dict[str, str], group: str | None,
                  by: str | None) -> dict[str, float]:
    """Flat metrics of several prediction columns: ``<name>/r2``, ``<name>/pearson_r2``, ..., per-group means
    (``<name>/group_mean/...``) and the worst value of ``by`` (``<name>/worst_<by>/...``)."""
    out: dict[str, float] = {}
    for name, col in columns.items():
        s = score_table(frame, target, col, group, by)
        for k, v in s["pooled"].items():
            out[f"{name}/{k}"] = float(v)
        for k, v in s.get("group_mean", {}).items():
            out[f"{name}/group_mean/{k}"] = float(v)
        for k, v in s.get("by_worst", {}).items():
            out[f"{name}/worst_{by}/{k}"] = float(v)
    return out
