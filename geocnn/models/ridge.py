"""Stage 2 of two-stage transfer (Jean et al. 2016): ridge on cluster-mean features, alpha by grouped nested CV."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from geocnn.errors import GeocnnError


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
    for f in np.unique(folds[folds >= 0]):
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


class Stage2Ridge:
    """The deployable stage-2 model as plain numbers (standardise, then linear): stored as JSON, never pickled."""

    def __init__(self, mean: list[float], scale: list[float], coef: list[float], intercept: float,
                 alpha: float) -> None:
        self.mean = np.asarray(mean, float)
        self.scale = np.asarray(scale, float)
        self.coef = np.asarray(coef, float)
        self.intercept = float(intercept)
        self.alpha = float(alpha)

    @classmethod
    def from_pipeline(cls, pipe: Pipeline) -> "Stage2Ridge":
        """From a fitted StandardScaler + Ridge pipeline (as :func:`fit_ridge` returns)."""
        scaler, ridge = pipe.named_steps["standardscaler"], pipe.named_steps["ridge"]
        return cls(scaler.mean_.tolist(), scaler.scale_.tolist(), np.ravel(ridge.coef_).tolist(),
                   float(np.ravel(ridge.intercept_)[0]), float(ridge.alpha))

    def to_dict(self) -> dict[str, float | list[float]]:
        """Plain-JSON form."""
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept, "alpha": self.alpha}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions (N,) from encoder features (N, F)."""
        return ((np.asarray(x, float) - self.mean) / self.scale) @ self.coef + self.intercept
