"""Test-set metrics (classification, regression, Galaxy Zoo vote fractions) with naive baselines, as flat dicts."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    mean_absolute_error,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from geocnn.data.schema import DecisionTree

BASELINE = "baseline/"
"""Prefix of baseline keys; ``prefix_test`` leaves these unchanged."""

__all__ = [
    "BASELINE",
    "classification_metrics",
    "confusion",
    "prefix_test",
    "regression_metrics",
    "vote_fraction_metrics",
]


# --------------------------------------------------------------------------------------------------- helpers
def _as_2d(name: str, arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as a float (N, T) array; a 1-D array becomes a single column."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (N, T), got shape {arr.shape}")
    return arr


def _check_targets(y_true: np.ndarray, y_pred: np.ndarray, targets: Sequence[str],
                   train_mean: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate (N, T) truth/prediction, T target names and a (T,) train mean; return them as float arrays."""
    yt, yp = _as_2d("y_true", y_true), _as_2d("y_pred", y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true shape {np.shape(y_true)} does not match y_pred shape {np.shape(y_pred)}")
    if yt.shape[0] == 0:
        raise ValueError(f"no samples: y_true shape {np.shape(y_true)}")
    n_targets = yt.shape[1]
    if len(targets) != n_targets:
        raise ValueError(f"{len(targets)} target names for y_true shape {np.shape(y_true)} ({n_targets} columns)")
    if train_mean is None:
        return yt, yp, None
    mean = np.asarray(train_mean, dtype=np.float64).reshape(-1)
    if mean.shape != (n_targets,):
        raise ValueError(f"train_mean shape {np.shape(train_mean)} does not match the {n_targets} target "
                         f"columns of y_true shape {np.shape(y_true)}")
    return yt, yp, mean


def _finite_only(metrics: dict[str, float]) -> dict[str, float]:
    """Drop undefined (NaN / infinite) entries and cast the rest to python floats."""
    return {k: float(v) for k, v in metrics.items() if np.isfinite(v)}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two 1-D arrays; NaN when it is undefined (fewer than 2 points, or a constant input)."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.pearsonr(a, b).statistic)


def _rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error over every element (flattened)."""
    return float(root_mean_squared_error(y_true.reshape(-1), y_pred.reshape(-1)))


# --------------------------------------------------------------------------------------------- classification
def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                           train_labels: np.ndarray | None = None) -> dict[str, float]:
    """Classification test metrics and the majority-class baseline.

    Args:
        y_true: integer labels in ``[0, K)``, shape (N,).
        proba: class probabilities, shape (N, K); rows are renormalised to sum to 1 (float32 softmax drift).
        classes: the K class names, in column order of ``proba``.
        train_labels: integer labels of the TRAINING split (None: no baseline keys); the baseline always predicts
            its majority class
            (ties go to the lowest class index).

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``log_loss``, ``roc_auc`` (binary: AUC of ``proba[:, 1]``;
        multiclass: one-vs-rest macro average), ``recall/<class>`` per class, and ``baseline/accuracy``,
        ``baseline/balanced_accuracy`` and ``baseline/roc_auc`` (0.5). ``roc_auc`` and ``baseline/roc_auc``
        are omitted when some class is absent from ``y_true`` (AUC undefined); ``recall/<class>`` is omitted
        for a class absent from ``y_true``. ``balanced_accuracy`` averages recall over the classes present
        in ``y_true``.

    Raises:
        ValueError: on mismatched shapes, labels outside ``[0, K)``, or invalid probabilities.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    train = np.asarray(train_labels if train_labels is not None else y)
    n_classes = len(classes)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true shape {y.shape} and proba shape {p.shape} must be (N,) and (N, K)")
    if p.shape[1] != n_classes:
        raise ValueError(f"proba shape {p.shape} has {p.shape[1]} columns but {n_classes} classes were given")
    if y.size == 0:
        raise ValueError(f"no samples: y_true shape {y.shape}")
    if train.ndim != 1 or train.size == 0:
        raise ValueError(f"train_labels must be a non-empty 1-D array, got shape {train.shape}")
    for name, labels in (("y_true", y), ("train_labels", train)):
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"{name} must hold integer labels in [0, {n_classes}), got dtype {labels.dtype}, "
                             f"range [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(p)) or (p < 0).any():
        raise ValueError(f"proba of shape {p.shape} holds negative or non-finite values")
    row_sum = p.sum(axis=1, keepdims=True)
    if (row_sum <= 0).any():
        raise ValueError(f"proba of shape {p.shape} has rows summing to 0")
    p = p / row_sum
    labels = np.arange(n_classes)
    y_pred = p.argmax(axis=1)

    out: dict[str, float] = {}
    with warnings.catch_warnings():
        # balanced accuracy / recall warn when a class is absent from y_true; that case is documented above.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out["accuracy"] = accuracy_score(y, y_pred)
        out["balanced_accuracy"] = balanced_accuracy_score(y, y_pred)
        present = np.unique(y)
        if present.size == n_classes and n_classes >= 2:
            if n_classes == 2:
                out["roc_auc"] = roc_auc_score(y, p[:, 1])
            else:
                out["roc_auc"] = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels)
        out["log_loss"] = log_loss(y, p, labels=labels)
        recalls = recall_score(y, y_pred, labels=labels, average=None, zero_division=np.nan)
        for name, r in zip(classes, recalls, strict=True):
            out[f"recall/{name}"] = r

        if train_labels is not None:
            majority = int(np.bincount(train, minlength=n_classes).argmax())
            base_pred = np.full_like(y, majority)
            out[f"{BASELINE}accuracy"] = accuracy_score(y, base_pred)
            out[f"{BASELINE}balanced_accuracy"] = balanced_accuracy_score(y, base_pred)
    if "roc_auc" in out and train_labels is not None:
        out[f"{BASELINE}roc_auc"] = 0.5
    return _finite_only(out)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix of counts.

    Args:
        y_true: integer labels, shape (N,).
        y_pred: predicted integer labels, shape (N,).
        n_classes: K; every class gets a row and column even when absent.

    Returns:
        int64 array (K, K); rows are true classes, columns predicted classes.

    Raises:
        ValueError: when the shapes differ or are not 1-D.
    """
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.ndim != 1 or yt.shape != yp.shape:
        raise ValueError(f"y_true shape {yt.shape} and y_pred shape {yp.shape} must be equal 1-D shapes")
    if yt.size == 0:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return confusion_matrix(yt, yp, labels=np.arange(n_classes)).astype(np.int64)


# ------------------------------------------------------------------------------------------------ regression
def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, targets: list[str],
                       train_mean: np.ndarray | None = None) -> dict[str, float]:
    """Regression test metrics and the predict-the-training-mean baseline.

    Args:
        y_true: observed values, shape (N, T) (a 1-D array is taken as T=1).
        y_pred: predictions, same shape as ``y_true``.
        targets: the T target column names.
        train_mean: per-target mean of the TRAINING split, shape (T,); the baseline predicts it for every row
            (None: no baseline keys).

    Returns:
        ``rmse`` and ``mae`` (flat over all N*T values), ``r2`` (sklearn ``r2_score``, uniform average over
        targets; it penalises bias, unlike Pearson), ``pearson_r`` and ``pearson_r2`` (Pearson r and its
        square, averaged over the targets where they are defined); when T > 1 also ``rmse/<col>``,
        ``r2/<col>`` and ``pearson_r2/<col>``; and ``baseline/rmse``, ``baseline/mae``, ``baseline/r2``
        (computed; r2 of a constant prediction is <= 0).
        Pearson r is undefined (NaN) when a target's y_true or y_pred is constant or N < 2: that key is
        omitted, and the averages skip such targets (omitted when none is defined). Any other undefined
        value (e.g. r2 with N < 2) is omitted too. For a constant y_true column, sklearn's r2 is 1.0 for a
        perfect prediction and 0.0 otherwise.

    Raises:
        ValueError: on mismatched shapes of y_true, y_pred, targets or train_mean.
    """
    yt, yp, mean = _check_targets(y_true, y_pred, targets, train_mean)
    n, n_targets = yt.shape
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # r2 with a single sample
        out["rmse"] = _rmse(yt, yp)
        out["mae"] = float(mean_absolute_error(yt.reshape(-1), yp.reshape(-1)))
        out["r2"] = float(r2_score(yt, yp, multioutput="uniform_average")) if n >= 2 else float("nan")
        rs = np.array([_pearson(yt[:, j], yp[:, j]) for j in range(n_targets)])
        if np.isfinite(rs).any():
            out["pearson_r"] = float(np.nanmean(rs))
            out["pearson_r2"] = float(np.nanmean(rs**2))
        if n_targets > 1:
            r2_cols = r2_score(yt, yp, multioutput="raw_values") if n >= 2 else np.full(n_targets, np.nan)
            for j, col in enumerate(targets):
                out[f"rmse/{col}"] = _rmse(yt[:, j], yp[:, j])
                out[f"r2/{col}"] = float(r2_cols[j])
                out[f"pearson_r2/{col}"] = float(rs[j] ** 2)
        if mean is not None:
            base = np.broadcast_to(mean, yt.shape)
            out[f"{BASELINE}rmse"] = _rmse(yt, base)
            out[f"{BASELINE}mae"] = float(mean_absolute_error(yt.reshape(-1), base.reshape(-1)))
            out[f"{BASELINE}r2"] = (float(r2_score(yt, base, multioutput="uniform_average")) if n >= 2
                                    else float("nan"))
    return _finite_only(out)


# ------------------------------------------------------------------------------------------- vote fractions
def vote_fraction_metrics(y_true: np.ndarray, y_pred: np.ndarray, targets: list[str],
                          train_mean: np.ndarray | None = None,
                          tree: DecisionTree | None = None) -> dict[str, float]:
    """Galaxy Zoo vote-fraction metrics: the Kaggle flat RMSE, per question, and the training-mean baseline.

    Args:
        y_true: observed vote fractions, shape (N, T).
        y_pred: predicted vote fractions, same shape.
        targets: the T column names.
        train_mean: per-column mean of the TRAINING split, shape (T,) (None: no baseline keys).
        tree: when given, per-question RMSE over each question's answer columns (looked up by name in
            ``targets``, so the column order need not match; every answer column must be present).

    Returns:
        ``rmse`` (Kaggle: sqrt of the mean over all N x T squared errors), ``mae``; ``rmse/<question>`` per
        question with a tree, else ``rmse/<col>`` per column; ``baseline/rmse``, ``baseline/mae`` and the
        matching ``baseline/rmse/<question or col>``.

    Raises:
        ValueError: on mismatched shapes, or tree answer columns missing from ``targets``.
    """
    yt, yp, mean = _check_targets(y_true, y_pred, targets, train_mean)
    if tree is None:
        groups = {col: [j] for j, col in enumerate(targets)}
    else:
        index = {col: j for j, col in enumerate(targets)}
        missing = [a for a in tree.columns if a not in index]
        if missing:
            raise ValueError(f"tree {tree.name!r} answer columns missing from the {len(targets)} targets "
                             f"(y_true shape {yt.shape}): {missing[:5]}{'...' if len(missing) > 5 else ''}")
        groups = {q.name: [index[a] for a in q.answers] for q in tree.questions}

    out: dict[str, float] = {"rmse": _rmse(yt, yp), "mae": float(mean_absolute_error(yt.reshape(-1), yp.reshape(-1)))}
    for name, cols in groups.items():
        out[f"rmse/{name}"] = _rmse(yt[:, cols], yp[:, cols])
    if mean is not None:
        base = np.broadcast_to(mean, yt.shape)
        out[f"{BASELINE}rmse"] = _rmse(yt, base)
        out[f"{BASELINE}mae"] = float(mean_absolute_error(yt.reshape(-1), base.reshape(-1)))
        for name, cols in groups.items():
            out[f"{BASELINE}rmse/{name}"] = _rmse(yt[:, cols], base[:, cols])
    return _finite_only(out)


# ---------------------------------------------------------------------------------------------------- naming
def prefix_test(metrics: dict[str, float]) -> dict[str, float]:
    """Prefix metric keys with ``test/``; ``baseline/...`` keys are left unchanged.

    Args:
        metrics: a flat dict from one of the metric functions above.

    Returns:
        A new dict, e.g. ``{'rmse': 1.0, 'baseline/rmse': 2.0}`` -> ``{'test/rmse': 1.0, 'baseline/rmse': 2.0}``.
    """
    return {(k if k.startswith(BASELINE) else f"test/{k}"): v for k, v in metrics.items()}
