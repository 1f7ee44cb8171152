"""Pictures of a study: Optuna's optimisation history, parameter importances, parallel coordinates and
intermediate values, and learning curves of every trial labelled by its values."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import optuna.visualization.matplotlib as ovm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from geocnn.atomic import atomic_path  # noqa: E402

LOG = logging.getLogger("geocnn")
Curves = dict[str, dict[str, list[tuple[int, float]]]]
"""Trial label -> metric name -> (epoch, value) points."""


def _save(draw: Callable[[], Any], path: Path) -> Path | None:
    """Save what an Optuna matplotlib plot draws; None (and a log line) when the study cannot give it yet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
            LOG.info("study plot %s skipped: %s", path.name, exc)
            plt.close("all")
            return None
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.set_size_inches(9, 5.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def study_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history, importances (two or more finished trials), parallel coordinates, intermediate values."""
    folder.mkdir(parents=True, exist_ok=True)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = [_save(lambda: ovm.plot_optimization_history(study), folder / "optimization_history.png"),
             _save(lambda: ovm.plot_parallel_coordinate(study), folder / "parallel_coordinate.png")]
    if any(t.intermediate_values for t in study.trials):  # per-epoch reports (pruning on)
        plots.append(_save(lambda: ovm.plot_intermediate_values(study), folder / "intermediate_values.png"))
    if len(finished) >= 2 and len({str(t.params) for t in finished}) >= 2:
        plots.append(_save(lambda: ovm.plot_param_importances(study), folder / "param_importances.png"))
    return [p for p in plots if p is not None]


def learning_curves(curves: Curves, objective: str, path: Path, title: str) -> Path | None:
    """Training loss and the validation metric per epoch of every trial, one line per trial, labelled by its
    values (e.g. the optimisers of a comparison)."""
    if not curves:
        return None
    names = ["train/loss", "val/" + objective.split("/", 1)[1], "val/loss"]
    shown = [n for n in names if any(n in c for c in curves.values())][:2]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.8), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for k, (label, metrics) in enumerate(curves.items()):
        for ax, name in zip(axes[0], shown):
            points = metrics.get(name)
            if points:
                steps, values = zip(*points)
                ax.plot([s + 1 for s in steps], values, marker="o", ms=3, lw=1.4, color=cmap(k % cmap.N),
                        label=label)
    for ax, name in zip(axes[0], shown):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        values = [v for m in curves.values() for _, v in m.get(name, [])]
        if name.endswith("loss") and values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")  # converging and diverging trials on one axis
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
