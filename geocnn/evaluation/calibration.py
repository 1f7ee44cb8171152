"""Calibrated class probabilities: temperature scaling fitted on validation, expected calibration error."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

EPS = 1e-12


def temper(proba: np.ndarray, temperature: float | None) -> np.ndarray:
    """Probabilities softened/sharpened by a temperature: softmax(log p / T) (= softmax(logits / T))."""
    proba = np.asarray(proba, float)
    if temperature is None or temperature == 1.0:
        return proba
    z = np.log(np.clip(proba, EPS, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of held-out (validation) labels (Guo et al. 2017)."""
    labels = np.asarray(labels, int)

    def nll(log_t: float) -> float:
        p = temper(proba, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], EPS, 1.0)).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))


def reliability(proba: np.ndarray, labels: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin (equal width on [0, 1]): mean confidence, accuracy and count of the top-class prediction."""
    proba, labels = np.asarray(proba, float), np.asarray(labels, int)
    conf, hit = proba.max(1), (proba.argmax(1) == labels).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        acc = np.bincount(which, hit, bins) / count
    return mean_conf, acc, count


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over confidence bins of the top-class prediction."""
    conf, acc, count = reliability(proba, labels, bins)
    ok = count > 0
    return float((np.abs(acc[ok] - conf[ok]) * count[ok]).sum() / count.sum())
