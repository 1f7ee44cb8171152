"""Two-stage transfer pieces: cluster means, nested grouped ridge (alpha chosen inside training folds), baselines."""

from __future__ import annotations

import numpy as np
import pytest

from geocnn.models.ridge import cluster_means, gbm_baseline, nested_ridge, train_mean_baseline


def test_cluster_means_average_the_chips_of_each_cluster() -> None:
    values = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 10.0]])
    ids, means = cluster_means(values, np.array(["b", "b", "a"]))
    assert list(ids) == ["a", "b"]
    assert means.tolist() == [[10.0, 10.0], [2.0, 3.0]]


def synthetic(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20))
    y = x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=n)
    groups = rng.integers(0, 10, n).astype(str)
    folds = np.array([int(g) % 5 for g in groups])
    return x, y, groups, folds


def test_nested_ridge_recovers_a_linear_signal_out_of_fold() -> None:
    x, y, groups, folds = synthetic()
    res = nested_ridge(x, y, groups, folds, [1e-3, 1e-1, 1e1, 1e3, 1e5], inner_folds=3)
    r2 = 1 - np.sum((y - res.predictions) ** 2) / np.sum((y - y.mean()) ** 2)
    base = train_mean_baseline(y, folds)
    r2_base = 1 - np.sum((y - base) ** 2) / np.sum((y - y.mean()) ** 2)
    # signal variance 1.25, noise 0.09: the best possible R2 is about 0.93
    assert r2 > 0.85 and r2_base < 0.01, (r2, r2_base)
    assert set(res.alphas) == set(range(5)) and all(a < 1e5 for a in res.alphas.values())


def test_alpha_is_chosen_without_the_test_fold() -> None:
    # Pure noise features: whatever the test fold holds, the inner CV on the other folds picks the largest alpha.
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 30)), rng.normal(size=300)
    groups = rng.integers(0, 6, 300).astype(str)
    folds = np.array([int(g) % 3 for g in groups])
    res = nested_ridge(x, y, groups, folds, [1e-2, 1e6], inner_folds=2)
    assert all(a == 1e6 for a in res.alphas.values())


def test_gbm_baseline_uses_nonlinear_night_light_signal() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (800, 3))
    y = np.where(x[:, 0] > 0.5, 1.0, 0.0) + 0.1 * rng.normal(size=800)
    folds = rng.integers(0, 4, 800)
    pred = gbm_baseline(x, y, folds)
    assert np.corrcoef(pred, y)[0, 1] ** 2 > 0.9


def test_inner_cv_needs_two_groups() -> None:
    from geocnn.errors import GeocnnError

    x, y, _, _ = synthetic(60)
    with pytest.raises(GeocnnError, match="groups"):
        nested_ridge(x, y, np.array(["a"] * 30 + ["b"] * 30), np.array([0] * 30 + [1] * 30), [1.0])
