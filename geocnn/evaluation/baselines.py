"""Baselines scored beside every model on the same folds: the training mean and gradient boosting."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor


def out_of_fold(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], folds: np.ndarray) -> np.ndarray:
    """Predictions for every sample whose fold is >= 0, each made by ``fit_predict(train_mask, test_mask)`` from
    the samples of the other folds (a fold of -1 is only ever trained on: a single split's train and val)."""
    pred = None
    for f in np.unique(folds[folds >= 0]):
        test = folds == f
        values = np.asarray(fit_predict(~test, test), float)
        if pred is None:
            pred = np.full((len(folds), *values.shape[1:]), np.nan)
        pred[test] = values
    return pred if pred is not None else np.full(len(folds), np.nan)


def train_mean_baseline(y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions of the training folds' mean."""
    return out_of_fold(lambda train, test: np.repeat(y[train].mean(0, keepdims=True), test.sum(), 0), folds)


def gbm_baseline(x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of gradient boosting (e.g. on night-light means at a few radii)."""

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        # no early stopping: its validation subsample depends on row order, so the baseline would too
        model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, early_stopping=False,
                                              random_state=seed)
        return model.fit(x[train], y[train]).predict(x[test])

    return out_of_fold(fit_predict, folds)
