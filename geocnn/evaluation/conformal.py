"""Conformal prediction (crepes): intervals and class sets from held-out rows, and the record the bundle carries.

Split conformal prediction turns held-out residuals (out-of-fold for Earth, the validation split for galaxies) into
an interval ``prediction +- q * sigma`` (or a class set ``{k: 1 - p_k <= q}``) that covers the truth of a new,
exchangeable row with probability at least ``level``. ``q`` is the ceil((n + 1) level)-th smallest calibration
score (crepes computes it); Mondrian calibration keeps one ``q`` per category (country, urban/rural, class) so the
guarantee holds within each. The fitted quantiles travel in the bundle (:class:`Calibration`) so prediction, maps
and the watch folder give the intervals the training run measured.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from crepes import ConformalClassifier, ConformalRegressor
from pydantic import BaseModel, ConfigDict, Field

from geocnn.errors import GeocnnError

ALL = "*"
"""Category key of the pooled quantile (used for rows whose category was not seen in calibration)."""


class Calibration(BaseModel):
    """Fitted uncertainty of one model's outputs: conformal quantiles (per output, per category), temperature."""

    model_config = ConfigDict(extra="forbid")

    level: float = Field(description="Nominal coverage of the intervals / sets.")
    kind: Literal["interval", "set"] = Field(description="interval (regression, vote fractions) or set (classes).")
    quantiles: dict[str, dict[str, float]] = Field(description="Output name -> category -> conformal quantile of "
                                                   "the score ('*': pooled).")
    mondrian: str | None = Field(None, description="What the categories are (group, urban, class), None: pooled.")
    normalise: str = Field("none", description="Difficulty estimate dividing the scores (none, tta_spread).")
    clip: tuple[float, float] | None = Field(None, description="Bounds of the outputs (vote fractions: 0, 1).")
    temperature: float | None = Field(None, description="Softmax temperature fitted on validation (classes).")
    calibrated_on: str = Field(description="Which rows the quantiles come from (e.g. out-of-fold clusters).")
    n_calibration: int = Field(description="Rows behind the pooled quantile.")


def min_rows(level: float) -> int:
    """The fewest calibration rows with which a ``level`` interval is finite: n >= level / (1 - level)."""
    return math.ceil(level / (1.0 - level) - 1e-9)


def _check(n: int, level: float, what: str) -> None:
    if not 0.0 < level < 1.0:
        raise GeocnnError(f"uncertainty.level={level}: a coverage level is strictly between 0 and 1")
    need = min_rows(level)
    if n < need:
        raise GeocnnError(f"{what}: {n} calibration rows are too few for {level:.0%} intervals (at least {need} are "
                          f"needed: with fewer, no finite quantile covers {level:.0%}). Lower uncertainty.level or "
                          "hold out more rows (split.val_fraction, or more folds).")


def _categories(categories: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, ALL, dtype=object) if categories is None else np.asarray(categories).astype(str).astype(object)


def _quantiles(scores: np.ndarray, categories: np.ndarray | None, level: float, what: str) -> dict[str, float]:
    """Pooled and per-category conformal quantiles of non-negative scores (crepes' ConformalRegressor)."""
    ok = np.isfinite(scores)
    scores = scores[ok]
    _check(len(scores), level, what)
    pooled = ConformalRegressor().fit(scores)
    out = {ALL: float(pooled.predict_int(np.zeros(1), confidence=level)[0, 1])}
    if categories is not None:
        cats = _categories(categories, len(ok))[ok]
        names = sorted(set(cats))
        small = [c for c in names if (cats == c).sum() < min_rows(level)]
        if small:
            raise GeocnnError(f"{what}: categories {small[:5]} have fewer than {min_rows(level)} calibration rows, "
                              f"too few for {level:.0%} Mondrian intervals; set uncertainty.mondrian: none or lower "
                              "uncertainty.level")
        mondrian = ConformalRegressor().fit(scores, bins=cats)
        q = mondrian.predict_int(np.zeros(len(names)), bins=np.array(names, dtype=object), confidence=level)[:, 1]
        out.update({n: float(v) for n, v in zip(names, q)})
    return out


def fit_intervals(y: np.ndarray, pred: np.ndarray, names: list[str], level: float, calibrated_on: str,
                  categories: np.ndarray | None = None, sigma: np.ndarray | None = None, mondrian: str | None = None,
                  clip: tuple[float, float] | None = None) -> Calibration:
    """Conformal intervals per output from held-out (N, T) truth and predictions; ``sigma`` (N, T) normalises."""
    y, pred = np.atleast_2d(np.asarray(y, float).T).T, np.atleast_2d(np.asarray(pred, float).T).T
    quantiles = {}
    for t, name in enumerate(names):
        scores = np.abs(y[:, t] - pred[:, t])
        if sigma is not None:
            scores = scores / np.maximum(np.asarray(sigma, float).reshape(len(y), -1)[:, t], 1e-12)
        quantiles[name] = _quantiles(scores, categories, level, f"intervals of {name}")
    return Calibration(level=level, kind="interval", quantiles=quantiles, mondrian=mondrian,
                       normalise="none" if sigma is None else "tta_spread", clip=clip, calibrated_on=calibrated_on,
                       n_calibration=int(np.isfinite(y).all(1).sum()))


def quantile_of(cal: Calibration, name: str, categories: np.ndarray | None, n: int) -> np.ndarray:
    """Each row's quantile of output ``name``: its category's, the pooled one for a category never calibrated."""
    table = cal.quantiles[name]
    if categories is None or cal.mondrian is None:
        return np.full(n, table[ALL])
    return np.array([table.get(str(c), table[ALL]) for c in categories], float)


def intervals(cal: Calibration, pred: np.ndarray, names: list[str], categories: np.ndarray | None = None,
              sigma: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper), each (N, T), of predictions under a fitted interval calibration."""
    pred = np.atleast_2d(np.asarray(pred, float).T).T
    lower, upper = np.empty_like(pred), np.empty_like(pred)
    for t, name in enumerate(names):
        half = quantile_of(cal, name, categories, len(pred))
        if cal.normalise != "none":
            if sigma is None:
                raise GeocnnError(f"the model's intervals are scaled by {cal.normalise}, which this prediction did "
                                  "not compute; predict with the bundle's test-time views")
            half = half * np.maximum(np.asarray(sigma, float).reshape(len(pred), -1)[:, t], 1e-12)
        lower[:, t], upper[:, t] = pred[:, t] - half, pred[:, t] + half
    if cal.clip is not None:
        lower, upper = np.clip(lower, *cal.clip), np.clip(upper, *cal.clip)
    return lower, upper


def fit_sets(labels: np.ndarray, proba: np.ndarray, level: float, calibrated_on: str,
             categories: np.ndarray | None = None, mondrian: str | None = None,
             temperature: float | None = None) -> Calibration:
    """Conformal class sets (score 1 - p of the true class; crepes' ConformalClassifier) from held-out rows."""
    labels = np.asarray(labels, int)
    alphas = 1.0 - np.asarray(proba, float)[np.arange(len(labels)), labels]
    _check(len(alphas), level, "prediction sets")
    q = {ALL: _set_quantile(alphas, None, level)}
    if categories is not None:
        cats = _categories(categories, len(labels))
        for c in sorted(set(cats)):
            _check(int((cats == c).sum()), level, f"prediction sets of category {c!r}")
            q[c] = _set_quantile(alphas[cats == c], None, level)
    return Calibration(level=level, kind="set", quantiles={"class": q}, mondrian=mondrian,
                       temperature=temperature, calibrated_on=calibrated_on, n_calibration=len(labels))


def _set_quantile(alphas: np.ndarray, bins: np.ndarray | None, level: float) -> float:
    """The largest non-conformity score a set admits: crepes' p-value > 1 - level, without smoothing."""
    cc = ConformalClassifier().fit(alphas, bins=bins)
    grid = np.unique(np.concatenate([alphas, [0.0, 1.0]]))
    p = cc.predict_p(grid[:, None], smoothing=False)[:, 0]
    admitted = grid[p > 1.0 - level]
    return float(admitted.max()) if admitted.size else 0.0


def prediction_sets(cal: Calibration, proba: np.ndarray, categories: np.ndarray | None = None) -> np.ndarray:
    """(N, K) boolean membership of each class in each row's conformal set."""
    proba = np.asarray(proba, float)
    q = quantile_of(cal, "class", categories, len(proba))
    return (1.0 - proba) <= q[:, None] + 1e-12


def coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of finite rows whose truth lies in [lower, upper]."""
    y, lower, upper = (np.asarray(a, float) for a in (y, lower, upper))
    ok = np.isfinite(y) & np.isfinite(lower) & np.isfinite(upper)
    return float(((y[ok] >= lower[ok]) & (y[ok] <= upper[ok])).mean()) if ok.any() else float("nan")
