"""Two-stage transfer (Jean et al. 2016): chip features -> cluster means -> ridge with nested grouped CV."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from geocnn.errors import GeocnnError
from geocnn.models.network import GeoNet


@torch.no_grad()
def chip_features(net: GeoNet, chips: np.ndarray, batch_size: int = 256, tta_views: int = 1,
                  device: str = "cpu") -> np.ndarray:
    """Encoder features of every chip (N, F), averaged over dihedral test-time views when tta_views > 1."""
    from geocnn.data.augment import tta_views as views_of

    net = net.to(device).eval()
    out = []
    for start in range(0, len(chips), batch_size):
        x = torch.as_tensor(np.asarray(chips[start:start + batch_size]), device=device)
        feats = [net.features(v) for v in views_of(x, tta_views)]
        out.append(torch.stack(feats).mean(0).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.encoder.num_features), np.float32)


def cluster_means(values: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average rows sharing a cluster id; returns (sorted unique cluster ids, means)."""
    ids, inverse = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    sums = np.zeros((len(ids), values.shape[1]))
    np.add.at(sums, inverse, values)
    return ids, sums / np.bincount(inverse, minlength=len(ids))[:, None]


def ridge_search(alphas: list[float], inner_folds: int, n_groups: int) -> GridSearchCV:
    """Standardise + ridge, alpha chosen by grouped inner CV (R2)."""
    k = min(inner_folds, n_groups)
    if k < 2:
        raise GeocnnError(f"stage 2: the training folds hold {n_groups} group(s); inner grouped CV needs at least 2 "
                          "(use more groups, or split.folds with fewer folds)")
    pipe = make_pipeline(StandardScaler(), Ridge())
    return GridSearchCV(pipe, {"ridge__alpha": list(alphas)}, cv=GroupKFold(n_splits=k), scoring="r2")


@dataclass
class NestedResult:
    """Out-of-fold predictions of every cluster and the alpha each outer fold chose on its training folds only."""

    predictions: np.ndarray
    alphas: dict[int, float]
    inner_r2: dict[int, float] = field(default_factory=dict)
    """Grouped inner-CV R2 of the chosen alpha per outer fold: a validation score that never sees the outer fold."""


def nested_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: np.ndarray, alphas: list[float],
                 inner_folds: int = 4) -> NestedResult:
    """Ridge regression scored out of fold: for each outer fold, alpha is chosen by grouped CV inside the others."""
    pred = np.full(len(y), np.nan)
    chosen: dict[int, float] = {}
    inner: dict[int, float] = {}
    for f in np.unique(folds):
        test = folds == f
        train = ~test
        search = ridge_search(alphas, inner_folds, len(np.unique(groups[train])))
        search.fit(x[train], y[train], groups=groups[train])
        pred[test] = search.predict(x[test])
        chosen[int(f)] = float(search.best_params_["ridge__alpha"])
        inner[int(f)] = float(search.best_score_)
    return NestedResult(pred, chosen, inner)


def fit_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: list[float], inner_folds: int = 4) -> Pipeline:
    """The deployable stage-2 model: alpha chosen by grouped CV on all clusters, refit on all of them."""
    search = ridge_search(alphas, inner_folds, len(np.unique(groups)))
    search.fit(x, y, groups=groups)
    return search.best_estimator_


def train_mean_baseline(y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions of the training folds' mean."""
    pred = np.empty(len(y))
    for f in np.unique(folds):
        pred[folds == f] = y[folds != f].mean()
    return pred


def gbm_baseline(x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of gradient boosting (e.g. on night-light means at a few radii)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    pred = np.empty(len(y))
    for f in np.unique(folds):
        model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=seed)
        model.fit(x[folds != f], y[folds != f])
        pred[folds == f] = model.predict(x[folds == f])
    return pred


def scored(frame: pd.DataFrame, target: str, columns: dict[str, str], group: str | None,
           urban: str | None) -> dict[str, float]:
    """Flat metrics for several prediction columns: '<name>/r2', '<name>/pearson_r2', per-group means, worst of urban."""
    from geocnn.evaluation.grouped import score_table

    out: dict[str, float] = {}
    for name, col in columns.items():
        s = score_table(frame, target, col, group, urban)
        for k, v in s["pooled"].items():
            out[f"{name}/{k}"] = float(v)
        for k, v in s.get("group_mean", {}).items():
            out[f"{name}/group_mean/{k}"] = float(v)
        for k, v in s.get("by_worst", {}).items():
            out[f"{name}/worst_{urban}/{k}"] = float(v)
    return out
