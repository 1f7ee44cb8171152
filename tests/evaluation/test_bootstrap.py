"""Bootstrap intervals of test metrics (rows or whole groups) and paired tests between two models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import balanced_accuracy_score, r2_score

from geocnn.evaluation.bootstrap import (
    Truth,
    bootstrap_intervals,
    mcnemar,
    metric_draws,
    paired_bootstrap,
    resample_weights,
)


def regression(n: int, groups: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth and predictions whose errors share a per-group offset (clustered, as survey clusters in a country)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(groups, size=n)
    y = rng.normal(size=n)
    pred = y + rng.normal(size=groups)[g] * 0.6 + rng.normal(size=n) * 0.3
    return y, pred, g


def test_point_estimates_match_sklearn_and_intervals_contain_them() -> None:
    y, pred, _ = regression(3000, 30, 0)
    truth = Truth(values=y[:, None], mask=np.ones((len(y), 1), bool))
    point = metric_draws(truth, pred[:, None], np.ones((1, len(y)), np.float32))
    assert point["r2"][0] == pytest.approx(r2_score(y, pred), abs=1e-5)
    assert point["rmse"][0] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)), abs=1e-5)
    assert point["pearson_r2"][0] == pytest.approx(np.corrcoef(y, pred)[0, 1] ** 2, abs=1e-5)
    ci = bootstrap_intervals(truth, {"test": pred[:, None]}, n=500, seed=1)
    assert ci["test/r2_ci_low"] < point["r2"][0] < ci["test/r2_ci_high"]
    assert ci == bootstrap_intervals(truth, {"test": pred[:, None]}, n=500, seed=1)  # deterministic for a seed


def test_cluster_bootstrap_is_wider_when_errors_are_correlated_within_groups() -> None:
    y, pred, g = regression(4000, 20, 2)
    truth = Truth(values=y[:, None], mask=np.ones((len(y), 1), bool))
    rows = bootstrap_intervals(truth, {"test": pred[:, None]}, n=800, seed=0)
    clusters = bootstrap_intervals(truth, {"test": pred[:, None]}, groups=g, n=800, seed=0)
    width = lambda ci: ci["test/rmse_ci_high"] - ci["test/rmse_ci_low"]  # noqa: E731
    assert width(clusters) > 2 * width(rows), (width(clusters), width(rows))


def test_a_two_galaxy_difference_on_94_is_not_significant() -> None:
    """The issue's example: 94 test galaxies, the models differ on 6 (4 vs 2): McNemar's exact p = 0.6875."""
    a = np.ones(94, bool)
    b = np.ones(94, bool)
    a[:26], b[:26] = False, False  # both wrong on 26
    a[26:28] = False  # only b right on 2
    b[28:32] = False  # only a right on 4
    out = mcnemar(a, b)
    assert out["only_a"] == 4 and out["only_b"] == 2
    assert out["p_value"] == pytest.approx(binomtest(4, 6, 0.5).pvalue) == pytest.approx(0.6875)
    assert out["difference"] == pytest.approx(2 / 94)
    clear = np.zeros(94, bool)
    clear[:30] = True
    assert mcnemar(a, clear)["p_value"] < 0.01


def test_paired_bootstrap_separates_a_real_improvement_from_noise() -> None:
    y, pred, _ = regression(2000, 2000, 3)
    truth = Truth(values=y[:, None], mask=np.ones((len(y), 1), bool))
    rng = np.random.default_rng(4)
    better = y + (pred - y) * 0.7
    same = pred + rng.normal(size=len(y)) * 0.01
    real = paired_bootstrap(truth, better[:, None], pred[:, None], "r2", n=500)
    noise = paired_bootstrap(truth, same[:, None], pred[:, None], "r2", n=500)
    assert real["difference"] > 0.1 and real["ci_low"] > 0 and real["p_value"] < 0.01
    assert noise["ci_low"] < 0 < noise["ci_high"] and noise["p_value"] > 0.05


def test_classification_accuracy_interval_and_twenty_thousand_rows() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(3, size=20_000)
    proba = rng.random((20_000, 3))
    proba[np.arange(20_000), labels] += 0.6 * (rng.random(20_000) < 0.8)
    ci = bootstrap_intervals(Truth(labels=labels), {"test": proba}, n=1000)
    acc = (proba.argmax(1) == labels).mean()
    assert ci["test/accuracy_ci_low"] < acc < ci["test/accuracy_ci_high"]
    assert ci["test/accuracy_ci_high"] - ci["test/accuracy_ci_low"] < 0.02  # 1.96 * 2 * sqrt(.16/20000) = 0.011


def test_balanced_accuracy_point_matches_sklearn_and_its_interval_holds_it() -> None:
    rng = np.random.default_rng(6)
    labels = rng.choice(3, size=600, p=[0.7, 0.2, 0.1])  # imbalanced: balanced accuracy differs from accuracy
    proba = rng.random((600, 3))
    proba[np.arange(600), labels] += 0.8 * (rng.random(600) < 0.6)
    truth = Truth(labels=labels)
    point = metric_draws(truth, proba, np.ones((1, 600), np.float32))["balanced_accuracy"][0]
    assert point == pytest.approx(balanced_accuracy_score(labels, proba.argmax(1)), abs=1e-6)
    ci = bootstrap_intervals(truth, {"test": proba}, n=500, seed=2)
    assert ci["test/balanced_accuracy_ci_low"] < point < ci["test/balanced_accuracy_ci_high"]
    assert ci["test/balanced_accuracy_ci_high"] - ci["test/balanced_accuracy_ci_low"] < 0.15


def test_cluster_resampling_draws_whole_groups() -> None:
    groups = np.repeat(["a", "b", "c", "d"], [5, 1, 3, 7])
    weights = resample_weights(len(groups), 200, groups, seed=3)
    assert weights.shape == (200, 16)
    for g in "abcd":  # every row of a group is drawn as often as the others of that group
        block = weights[:, groups == g]
        assert (block == block[:, :1]).all()
    assert (weights[:, [0, 5, 6, 9]].sum(1) == 4).all()  # one row per group: 4 groups drawn per resample
