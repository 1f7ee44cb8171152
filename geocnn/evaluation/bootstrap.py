"""Bootstrap intervals of test metrics (rows, or whole groups for clustered data) and paired tests of two models.

The resamples are weight vectors (how often each row, or each group's rows, is drawn), so every metric of every
predictor is a few matrix products over the same draws: 1000 resamples of 20,000 rows take well under a second,
and the paired comparison of two models uses the same resamples for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

HEADLINE = ("accuracy", "balanced_accuracy", "r2", "rmse", "mae", "pearson_r2")
"""Metrics that get bootstrap intervals (where the task reports them): accuracy and balanced accuracy for classes,
r2, rmse, mae and pearson_r2 for one continuous target, rmse for several (vote fractions). The rest (roc_auc,
log_loss, per-class recall, per-question rmse) are reported as point estimates: they do not reduce to weighted sums
of per-row terms, so resampling them would cost a full metric call per draw."""


def resample_weights(n_rows: int, n: int = 1000, groups: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """(n, n_rows) draw counts: rows drawn with replacement, or whole groups (a cluster bootstrap)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=n).astype(np.float32)
    codes, _ = _codes(groups)
    k = int(codes.max()) + 1
    drawn = rng.multinomial(k, np.full(k, 1.0 / k), size=n).astype(np.float32)
    return drawn[:, codes]


def _codes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return codes, names


@dataclass(frozen=True)
class Truth:
    """What the metrics of a task need per row: class codes, or (rows, outputs) values with a mask of scored ones."""

    labels: np.ndarray | None = None
    values: np.ndarray | None = None
    mask: np.ndarray | None = None


def metric_draws(truth: Truth, pred: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each headline metric on each resample (and, with one weight row of ones, the point estimate)."""
    total = weights.sum(1)
    if truth.labels is not None:
        labels = np.asarray(truth.labels)
        correct = (np.asarray(pred).argmax(1) == labels).astype(np.float32)
        onehot = np.eye(max(int(labels.max()) + 1, np.asarray(pred).shape[1]), dtype=np.float32)[labels]
        drawn, hits = weights @ onehot, weights @ (onehot * correct[:, None])  # (draws, classes)
        present = drawn > 0
        recall = np.where(present, hits / np.where(present, drawn, 1.0), 0.0)
        balanced = recall.sum(1) / np.maximum(present.sum(1), 1)  # over the classes present, as sklearn's
        return {"accuracy": weights @ correct / total, "balanced_accuracy": balanced}
    y, mask = truth.values, truth.mask
    p = np.where(mask, pred, 0.0)
    yy = np.where(mask, y, 0.0)
    err = (p - yy) ** 2
    count = mask.sum(1).astype(np.float32)
    out = {"rmse": np.sqrt((weights @ err.sum(1)) / np.maximum(weights @ count, 1e-12))}
    if y.shape[1] == 1:  # one continuous target: the regression metrics
        y1, p1 = yy[:, 0], p[:, 0]
        mean_y, mean_p = weights @ y1 / total, weights @ p1 / total
        syy = weights @ (y1 * y1) / total - mean_y ** 2
        spp = weights @ (p1 * p1) / total - mean_p ** 2
        syp = weights @ (y1 * p1) / total - mean_y * mean_p
        mse = weights @ err[:, 0] / total
        out.update({"r2": 1.0 - mse / np.maximum(syy, 1e-12), "mae": weights @ np.abs(p1 - y1) / total,
                    "pearson_r2": syp ** 2 / np.maximum(syy * spp, 1e-24)})
    return out


def bootstrap_intervals(truth: Truth, predictions: dict[str, np.ndarray], groups: np.ndarray | None = None,
                        n: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Percentile intervals of the headline metrics of every predictor, ``<name>/<metric>_ci_low/_ci_high``, on the
    same resamples; groups resampled whole when given."""
    if n <= 0 or not predictions:
        return {}
    rows = len(next(iter(predictions.values())))
    weights = resample_weights(rows, n, groups, seed)
    tail = (1.0 - level) / 2.0
    out: dict[str, float] = {}
    for name, pred in predictions.items():
        for metric, draws in metric_draws(truth, pred, weights).items():
            low, high = np.nanquantile(draws, [tail, 1.0 - tail])
            out[f"{name}/{metric}_ci_low"], out[f"{name}/{metric}_ci_high"] = float(low), float(high)
    return out


def paired_bootstrap(truth: Truth, pred_a: np.ndarray, pred_b: np.ndarray, metric: str,
                     groups: np.ndarray | None = None, n: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Difference ``metric(a) - metric(b)`` on the same rows, its percentile interval over paired resamples, and a
    two-sided p-value (twice the share of resamples on the far side of 0)."""
    rows = len(pred_a)
    ones = np.ones((1, rows), np.float32)
    point = float(metric_draws(truth, pred_a, ones)[metric][0] - metric_draws(truth, pred_b, ones)[metric][0])
    weights = resample_weights(rows, n, groups, seed)
    diff = metric_draws(truth, pred_a, weights)[metric] - metric_draws(truth, pred_b, weights)[metric]
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(diff, [tail, 1.0 - tail])
    p = min(1.0, 2.0 * min(float(np.mean(diff <= 0)), float(np.mean(diff >= 0))))
    return {"difference": point, "ci_low": float(low), "ci_high": float(high), "p_value": p, "n": float(rows)}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test of two classifiers on the same rows: the discordant pairs against a fair coin."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"difference": float(a.mean() - b.mean()), "only_a": float(only_a), "only_b": float(only_b),
            "p_value": float(p), "n": float(len(a))}
