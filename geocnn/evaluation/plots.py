"""Evaluation figures (predicted vs observed, confusion matrix, image montage) written atomically as PNG."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: flows run without a display; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import r2_score, root_mean_squared_error  # noqa: E402

from geocnn.atomic import atomic_path  # noqa: E402
from geocnn.evaluation.calibration import expected_calibration_error, reliability  # noqa: E402

DPI = 110
"""Resolution of every saved figure."""
MAX_TARGETS = 12
"""``plot_pred_vs_true`` draws at most this many target columns."""
MAX_PANELS = 64
"""``plot_montage`` draws at most this many images."""
LEGEND_ENTRY_IN, LEGEND_CHAR_IN, LEGEND_ROW_IN = 0.45, 0.055, 0.19
"""Legend sizing at font size 8: inches per entry (marker, gaps) plus per label character, and per row."""
MARKERS = ("o", "s", "^", "D")
"""Markers of groups beyond the colour map's colours (21st-40th group: squares, ...)."""

__all__ = ["DPI", "MAX_PANELS", "MAX_TARGETS", "plot_confusion", "plot_montage", "plot_pred_vs_true",
           "plot_reliability"]


@contextmanager
def _figure(path: str | Path, figsize: tuple[float, float], layout: str | None = "constrained",
            tight: bool = False) -> Iterator[Figure]:
    """Yield a new figure; on success save it atomically to ``path`` as PNG (``tight``: cropped or grown to
    everything drawn, so a legend outside the axes is never cut off); always close it."""
    fig = plt.figure(figsize=figsize, layout=layout)
    try:
        yield fig
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight" if tight else None, pad_inches=0.1)
    finally:
        plt.close(fig)


def _fmt(value: float, spec: str) -> str:
    """Format a metric, or ``n/a`` when it is undefined."""
    return format(value, spec) if np.isfinite(value) else "n/a"


# ------------------------------------------------------------------------------------------- pred vs true
def plot_pred_vs_true(y_true: np.ndarray, y_pred: np.ndarray, targets: list[str], path: str | Path,
                      groups: np.ndarray | None = None) -> Path:
    """Scatter predicted against observed values, one panel per target, with the 1:1 line.

    Args:
        y_true: observed values, shape (N, T) (1-D is taken as T=1).
        y_pred: predictions, same shape.
        targets: the T column names; only the first ``MAX_TARGETS`` (12) are drawn, in a grid of up to 4
            columns (figure width 3.4 in per column + 0.2, height 3.3 in per row, + 0.4 with a one-row legend).
        path: PNG file to write (atomically); parent folders are created.
        groups: optional (N,) labels (e.g. survey or region); points are coloured by group with a legend: one
            row under the panels when up to 6 short labels fit, else columns to the right (the figure is widened
            and saved with a tight bounding box, so the legend is never cut off).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: on mismatched shapes.
    """
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    yt = yt[:, None] if yt.ndim == 1 else yt
    yp = yp[:, None] if yp.ndim == 1 else yp
    if yt.ndim != 2 or yt.shape != yp.shape or yt.shape[1] != len(targets):
        raise ValueError(f"y_true shape {np.shape(y_true)}, y_pred shape {np.shape(y_pred)} and "
                         f"{len(targets)} targets do not match")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (yt.shape[0],):
            raise ValueError(f"groups shape {groups.shape} does not match y_true shape {yt.shape}")
    n, n_targets = yt.shape
    shown = min(n_targets, MAX_TARGETS)
    ncols = shown if shown <= 4 else min(4, math.ceil(math.sqrt(shown)))  # 5-9 targets: 3 columns
    nrows = max(1, math.ceil(shown / ncols))
    size = 7.0 if n <= 200 else 2.0 if n <= 5000 else 0.6
    alpha = 0.8 if n <= 500 else 0.4
    group_values = [] if groups is None else sorted(set(groups.tolist()), key=str)  # stable colours per group
    colours = plt.get_cmap("tab10" if len(group_values) <= 10 else "tab20")
    width, height = 3.4 * ncols + 0.2, 3.3 * nrows
    entry_in = LEGEND_ENTRY_IN + LEGEND_CHAR_IN * max((len(str(g)) for g in group_values), default=0)
    one_row = len(group_values) <= 6 and len(group_values) * entry_in <= width - 0.2
    legend_cols = 0  # many groups (23 countries): columns right of the panels, grown into by a tight save
    if groups is not None and not one_row:
        legend_cols = math.ceil(len(group_values) / max(6, int((height - 0.3) / LEGEND_ROW_IN)))
        width += legend_cols * entry_in

    with _figure(path, (width, height + (0.4 if one_row and groups is not None else 0.0)),
                 tight=legend_cols > 0) as fig:
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for j, ax in enumerate(axes):
            if j >= shown:
                ax.set_visible(False)
                continue
            t, p = yt[:, j], yp[:, j]
            if groups is None:
                ax.scatter(t, p, s=size, alpha=alpha, color="tab:blue", edgecolors="none", rasterized=n > 5000)
            else:
                for k, g in enumerate(group_values):
                    mask = groups == g
                    ax.scatter(t[mask], p[mask], s=size, alpha=alpha, color=colours(k % colours.N),
                               marker=MARKERS[k // colours.N % len(MARKERS)], edgecolors="none", label=str(g),
                               rasterized=n > 5000)
            finite = np.concatenate([t, p])
            finite = finite[np.isfinite(finite)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                pad = 0.03 * (hi - lo) if hi > lo else 0.5
                lim = (lo - pad, hi + pad)
                ax.plot(lim, lim, color="0.3", lw=1, ls="--", zorder=0)
                ax.set_xlim(lim)
                ax.set_ylim(lim)
            ax.set_aspect("equal", adjustable="box")
            ok = np.isfinite(t) & np.isfinite(p)
            rmse = float(root_mean_squared_error(t[ok], p[ok])) if ok.any() else float("nan")
            r2 = float(r2_score(t[ok], p[ok])) if ok.sum() >= 2 else float("nan")
            ax.set_title(f"{targets[j]}\nRMSE={_fmt(rmse, '.3g')}  R²={_fmt(r2, '.3f')}", fontsize=9)
            ax.set_xlabel("observed", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, lw=0.3, alpha=0.5)
        if groups is not None and group_values:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside lower center" if one_row else "outside right upper",
                       ncols=len(labels) if one_row else legend_cols, fontsize=8,
                       markerscale=max(1.0, 36.0 / size) ** 0.5, frameon=False)
        if n_targets > shown:
            fig.suptitle(f"first {shown} of {n_targets} targets", fontsize=9)
    return Path(path)


# ---------------------------------------------------------------------------------------------- confusion
def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """Draw a confusion matrix: cells coloured by row-normalised fraction (recall), annotated with counts.

    Args:
        cm: (K, K) counts, rows are true classes (as from ``geocnn.evaluation.metrics.confusion``).
        classes: the K class names.
        path: PNG file to write (atomically); parent folders are created.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: when ``cm`` is not (K, K) with K = len(classes).
    """
    cm = np.asarray(cm)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"cm shape {cm.shape} does not match {k} classes")
    row = cm.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(cm, row, out=np.zeros(cm.shape, dtype=np.float64), where=row > 0)
    side = min(max(3.5, 0.6 * k + 2.2), 16.0)
    font = 9 if k <= 10 else 7 if k <= 20 else 5
    with _figure(path, (side + 1.0, side)) as fig:
        ax = fig.add_subplot()
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        for i in range(k):
            for j in range(k):
                text = f"{int(cm[i, j])}" if k > 10 else f"{int(cm[i, j])}\n{norm[i, j]:.0%}"
                ax.text(j, i, text, ha="center", va="center", fontsize=font,
                        color="white" if norm[i, j] > 0.55 else "black")
        ax.set_xticks(range(k), classes, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center",
                      fontsize=font)
        ax.set_yticks(range(k), classes, fontsize=font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion matrix (n={int(cm.sum())})", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return Path(path)


# ------------------------------------------------------------------------------------------------ montage
def _to_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Turn one (C, H, W) image into an imshow-ready array in [0, 1] and its colour map."""
    c = img.shape[0]
    if c >= 3:
        img = img[:3]
    else:  # 1 channel, or 2 channels: show the first one
        img = img[:1]
    if img.dtype == np.uint8:
        arr = img.astype(np.float32) / 255.0
    else:
        arr = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if arr.shape[0] == 1:
        return arr[0], "gray"
    return np.transpose(arr, (1, 2, 0)), None


def plot_montage(images: np.ndarray, titles: list[str], path: str | Path, ncols: int = 8) -> Path:
    """Tile images in a grid with a small caption under each.

    Args:
        images: (N, C, H, W) uint8 (0-255) or float/other numeric (min-max scaled per image). C=3 is shown as
            RGB, C=1 as greyscale; for other C the first 3 channels (C > 3) or the first one (C = 2).
        titles: one caption per image (may hold newlines, e.g. ``"true: ring\\npred: ring (0.93)"``).
        path: PNG file to write (atomically); parent folders are created.
        ncols: panels per row.

    Returns:
        ``path`` as a Path. Only the first ``MAX_PANELS`` (64) images are drawn.

    Raises:
        ValueError: when images is not 4-D or ``titles`` does not have one entry per image.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    if len(titles) != images.shape[0]:
        raise ValueError(f"{len(titles)} titles for images of shape {images.shape}")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    n = min(images.shape[0], MAX_PANELS)
    cols = max(1, min(ncols, n))
    rows = max(1, math.ceil(n / cols))
    lines = max((str(t).count("\n") + 1 for t in titles[:n]), default=1)
    panel_w = 1.7  # inches per panel; the caption band below each image is sized by its line count
    caption = 0.12 * lines + 0.08
    fig_h = rows * (panel_w + caption)
    top, bottom = 1.0 - 0.03 / fig_h, caption / fig_h
    ax_h = (fig_h * (top - bottom) - (rows - 1) * caption) / rows
    with _figure(path, (cols * panel_w, fig_h), layout=None) as fig:
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        fig.subplots_adjust(left=0.01, right=0.99, top=top, bottom=bottom, wspace=0.05, hspace=caption / ax_h)
        for i, ax in enumerate(axes):
            ax.set_axis_off()
            if i >= n:
                continue
            arr, cmap = _to_display(images[i])
            ax.imshow(arr, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.text(0.5, -0.02, str(titles[i]), transform=ax.transAxes, ha="center", va="top", fontsize=6.5,
                    linespacing=1.1)
        if n == 0:
            axes[0].text(0.5, 0.5, "no images", ha="center", va="center", transform=axes[0].transAxes)
    return Path(path)


# ------------------------------------------------------------------------------------------- residual map
def plot_residual_map(lon: np.ndarray, lat: np.ndarray, residual: np.ndarray, path: str | Path,
                      title: str = "residual (predicted - observed)") -> Path:
    """Clusters at their coordinates coloured by residual on a diverging scale centred on 0."""
    lim = float(np.nanpercentile(np.abs(residual), 98)) or 1.0
    with _figure(path, (6.4, 5.2)) as fig:
        ax = fig.add_subplot()
        sc = ax.scatter(lon, lat, c=residual, cmap="RdBu_r", vmin=-lim, vmax=lim, s=8, edgecolors="none")
        fig.colorbar(sc, ax=ax, label="predicted - observed")
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(title)
    return Path(path)


# ------------------------------------------------------------------------------------------- reliability
def plot_reliability(proba_before: np.ndarray, proba_after: np.ndarray | None, labels: np.ndarray,
                     path: str | Path, bins: int = 10, temperature: float | None = None) -> Path:
    """A reliability diagram: accuracy against mean confidence of the top class per confidence bin, the diagonal
    of perfect calibration, and below it the count of rows per bin; before and after temperature scaling, each
    with its expected calibration error in the legend.

    Args:
        proba_before: (N, K) class probabilities as the network gave them.
        proba_after: the same rows' calibrated (tempered) probabilities, or None to draw only ``proba_before``.
        labels: (N,) true class codes 0..K-1.
        path: PNG file to write (atomically); parent folders are created.
        bins: equal-width confidence bins on [0, 1] (as :func:`geocnn.evaluation.calibration.reliability`).
        temperature: the fitted temperature, named in the legend when given.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: on mismatched shapes or ``bins`` < 1.
    """
    before = np.asarray(proba_before, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if before.ndim != 2 or labels.shape != (before.shape[0],):
        raise ValueError(f"proba_before shape {np.shape(proba_before)} and labels shape {np.shape(labels)} do not "
                         "match: (N, K) probabilities and N class codes")
    curves = [("uncalibrated", before, "tab:red", "o")]
    if proba_after is not None:
        after = np.asarray(proba_after, dtype=np.float64)
        if after.shape != before.shape:
            raise ValueError(f"proba_after shape {after.shape} does not match proba_before shape {before.shape}")
        name = "temperature scaled" + (f" (T={temperature:.2f})" if temperature is not None else "")
        curves.append((name, after, "tab:blue", "s"))
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = 1.0 / bins
    with _figure(path, (5.2, 5.8)) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        top.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--", label="perfect calibration")
        bar_w = width / (len(curves) + 1)
        for j, (name, proba, colour, marker) in enumerate(curves):
            conf, acc, count = reliability(proba, labels, bins) if len(labels) else (
                np.full(bins, np.nan), np.full(bins, np.nan), np.zeros(bins))
            ece = expected_calibration_error(proba, labels, bins) if len(labels) else float("nan")
            ok = count > 0
            top.plot(conf[ok], acc[ok], color=colour, marker=marker, ms=5, lw=1.5,
                     label=f"{name}: ECE {_fmt(ece, '.3f')}")
            bottom.bar(edges[:-1] + bar_w * (j + 0.5), count, width=bar_w, align="edge", color=colour, alpha=0.7,
                       label=name)
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"reliability (n={len(labels)}, {bins} bins)", fontsize=10)
        top.legend(loc="upper left", fontsize=8, frameon=False)
        top.grid(True, lw=0.3, alpha=0.5)
        bottom.set_xticks(edges[:: max(1, bins // 5)])
        bottom.set_xlabel("confidence (top-class probability)")
        bottom.set_ylabel("rows")
        bottom.grid(True, axis="y", lw=0.3, alpha=0.5)
    return Path(path)
