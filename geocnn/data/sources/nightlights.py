"""Night-light classes (Jean et al. 2016): label values cut into ordered classes by quantiles or a Gaussian mixture."""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.mixture import GaussianMixture

from geocnn.errors import GeocnnError

METHODS = ("quantiles", "gmm")


def nightlight_classes(values: np.ndarray, method: Literal["quantiles", "gmm"], n_classes: int = 3,
                       seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Cut values (e.g. mean night lights per chip) into ``n_classes`` ordered classes.

    A value equal to a threshold goes to the lower class: class k holds ``thresholds[k-1] < v <= thresholds[k]``.

    Args:
        values: the values, any shape.
        method: ``quantiles`` (equal-count classes) or ``gmm`` (Jean et al.: a 1-D Gaussian mixture with
            ``n_classes`` components; thresholds where adjacent components' weighted densities cross).
        n_classes: number of classes (>= 2).
        seed: random state of the mixture fit.

    Returns:
        int64 classes of the same shape (0 = darkest) and the ``n_classes - 1`` increasing thresholds.

    Raises:
        GeocnnError: on NaN/infinite values (naming how many), too few distinct values, or an empty class.
    """
    arr = np.asarray(values, dtype=float)
    if method not in METHODS:
        raise GeocnnError(f"label class method {method!r} is not one of {list(METHODS)}.")
    if n_classes < 2:
        raise GeocnnError(f"n_classes must be >= 2, not {n_classes}.")
    _check_values(arr, n_classes)
    flat = arr.ravel()
    thresholds = _quantile_thresholds(flat, n_classes) if method == "quantiles" else _gmm_thresholds(
        flat, n_classes, seed)
    classes = np.searchsorted(np.asarray(thresholds), flat, side="left").astype(np.int64)
    _check_classes(classes, n_classes, method, thresholds)
    return classes.reshape(arr.shape), [float(t) for t in thresholds]


def _check_values(arr: np.ndarray, n_classes: int) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise GeocnnError(f"night-light classes: {int(bad.sum())} of {arr.size} values are NaN or infinite (chips "
                          "with no valid label pixel). Drop those chips (lower the nodata threshold) or check the "
                          "label raster's nodata.")
    distinct = np.unique(arr).size
    if distinct < n_classes:
        raise GeocnnError(f"night-light classes: {n_classes} classes need at least {n_classes} distinct values, "
                          f"but the {arr.size} values have {distinct}. Use fewer classes or more points.")


def _quantile_thresholds(flat: np.ndarray, n_classes: int) -> list[float]:
    return [float(q) for q in np.quantile(flat, np.arange(1, n_classes) / n_classes)]


def _gmm_thresholds(flat: np.ndarray, n_classes: int, seed: int) -> list[float]:
    """Crossings of adjacent components' weighted densities, components ordered by mean."""
    gmm = GaussianMixture(n_components=n_classes, random_state=seed, n_init=3).fit(flat.reshape(-1, 1))
    order = np.argsort(gmm.means_.ravel())
    means = gmm.means_.ravel()[order]
    sds = np.sqrt(gmm.covariances_.reshape(n_classes, -1)[:, 0])[order]
    weights = gmm.weights_[order]
    out = []
    for k in range(n_classes - 1):
        grid = np.linspace(means[k], means[k + 1], 4001)
        diff = _log_density(grid, means[k], sds[k], weights[k]) - _log_density(grid, means[k + 1], sds[k + 1],
                                                                              weights[k + 1])
        below = np.flatnonzero(diff < 0)
        out.append(float(grid[below[0]]) if below.size else float(means[k + 1]))
    return out


def _log_density(x: np.ndarray, mean: float, sd: float, weight: float) -> np.ndarray:
    return np.log(weight) - np.log(sd) - 0.5 * ((x - mean) / sd) ** 2


def _check_classes(classes: np.ndarray, n_classes: int, method: str, thresholds: list[float]) -> None:
    counts = np.bincount(classes, minlength=n_classes)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        hint = (" Many values are tied (e.g. zero night lights): use method 'gmm' or fewer classes."
                if method == "quantiles" else " Use fewer classes.")
        raise GeocnnError(f"night-light classes ({method}): class(es) {empty} of {n_classes} are empty "
                          f"(thresholds {[round(t, 6) for t in thresholds]}).{hint}")
