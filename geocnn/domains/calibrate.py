"""The uncertainty step of every run: conformal intervals or sets, temperature, coverage, metric intervals.

Calibration rows are held out from training: the validation split of a one-split run (test is only scored), or
every sample's out-of-fold prediction when the run has folds. What the bundle carries is fitted on all of them.
Coverage is measured on rows the calibration never saw: the test split of a one-split run; for folds, each group
(country) or fold in turn is held out of the calibration (leave-one-group-out) and its rows scored, so a country
unlike the others shows up as under-covered instead of being averaged away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.config import AnyExperiment
from geocnn.data.catalog import GROUP, URBAN
from geocnn.data.sources.survey import URBAN_WORDS
from geocnn.errors import GeocnnError
from geocnn.evaluation.bootstrap import Truth, bootstrap_intervals, mcnemar, paired_bootstrap
from geocnn.evaluation.calibration import expected_calibration_error, fit_temperature, temper
from geocnn.evaluation.conformal import (
    Calibration,
    coverage,
    fit_intervals,
    fit_sets,
    intervals,
    min_rows,
    prediction_sets,
)
from geocnn.models.tasks import Targets, TaskSpec


@dataclass
class Uncertain:
    """What the uncertainty step adds to a run: the bundle's calibration, metrics, table columns, coverage rows."""

    calibration: Calibration | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-sample columns for the predictions table (replacing columns of the same name)."""
    coverage: pd.DataFrame | None = None
    """Per held-out unit (group or fold): n, coverage, mean width or set size, nominal level."""
    plots: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Rows:
    """Which samples calibrate, which measure coverage, and the held-out units of a run with folds."""

    calibrate: np.ndarray
    measure: np.ndarray
    units: np.ndarray | None
    unit_name: str
    description: str


def categories(mondrian: str, frame: pd.DataFrame, proba: np.ndarray | None = None,
               classes: list[str] | None = None) -> np.ndarray | None:
    """The Mondrian category of every row: its group, urban/rural flag or predicted class (None: pooled)."""
    if mondrian == "none":
        return None
    if mondrian == "class":
        if proba is None or not classes:
            raise GeocnnError("uncertainty.mondrian=class needs a classification model (classes); use group, urban "
                              "or none")
        return np.asarray(classes, dtype=object)[np.asarray(proba).argmax(1)]
    column = {"group": GROUP, "urban": URBAN}[mondrian]
    if column not in frame.columns:
        hint = "data.group_column" if mondrian == "group" else "earth.urban_column"
        raise GeocnnError(f"uncertainty.mondrian={mondrian} needs a '{column}' column; set {hint} or use "
                          "uncertainty.mondrian: none")
    return category_column(mondrian, frame[column])


def category_column(mondrian: str, values: pd.Series) -> np.ndarray:
    """A group or urban column as Mondrian categories: text; urban/rural codes (1/0, U/R, true/false, 1.0) as the
    words 'urban'/'rural', so a catalog of raw codes meets the quantiles the survey's normalised column fitted."""
    texts = values.astype(str)
    if mondrian == "urban":
        words = texts.str.strip().str.lower().str.replace(r"^(\d+)\.0$", r"\1", regex=True)
        texts = words.map(lambda t: URBAN_WORDS.get(t, t))
    return texts.to_numpy(dtype=object)


def held_out_rows(split: np.ndarray, fold: np.ndarray | None, groups: np.ndarray | None,
                  finite: np.ndarray) -> Rows:
    """Calibration and coverage rows of a run (see the module docstring)."""
    if fold is None:
        cal, test = (split == "val") & finite, (split == "test") & finite
        return Rows(cal, test, None, "", f"the validation split ({int(cal.sum())} samples)")
    units = np.asarray(groups).astype(str) if groups is not None else np.asarray(fold).astype(str)
    return Rows(finite, finite, units, "group" if groups is not None else "fold",
                f"out-of-fold predictions of {int(finite.sum())} samples")


def check_calibration_rows(samples: pd.DataFrame, split: np.ndarray | None, folded: bool,
                           cfg: AnyExperiment) -> None:
    """Refuse, before anything is trained or written, a run whose calibration rows (the validation split; with
    folds every sample) are too few for ``uncertainty.level``, pooled or in a Mondrian group/urban category."""
    u = cfg.uncertainty
    if not u.enabled:
        return
    rows = np.ones(len(samples), bool)
    if not folded:  # samples after the last one with chips have no split (and no prediction)
        part = np.asarray(split)
        rows[:] = False
        rows[:len(part)] = part == "val"
    need = min_rows(u.level)
    where = "out-of-fold samples" if folded else "validation samples"
    fix = ("lower uncertainty.level, hold out more samples (split.val_fraction, split.folds) or set "
           "uncertainty.enabled: false")
    if rows.sum() < need:
        raise GeocnnError(f"uncertainty.level={u.level}: the conformal calibration would have {int(rows.sum())} "
                          f"{where}, too few for {u.level:.0%} intervals/sets (at least {need}); {fix}")
    if u.mondrian in ("group", "urban"):
        names, counts = np.unique(categories(u.mondrian, samples)[rows].astype(str), return_counts=True)
        small = [str(n) for n in names[counts < need]]
        if small:
            raise GeocnnError(f"uncertainty.mondrian={u.mondrian}: categories {small[:5]} have fewer than {need} "
                              f"{where} to calibrate {u.level:.0%} intervals on; use uncertainty.mondrian: none or "
                              f"{fix}")


def coverage_text(metrics: dict[str, float]) -> str | None:
    """One sentence of the run's measured coverage: nominal level, coverage and width (or set size) on rows the
    calibration never saw, and the worst held-out group or fold. None when the run has no uncertainty."""
    level = metrics.get("uncertainty/level")
    if level is None:
        return None
    for tag, unit in (("loco_", "group"), ("cv_", "fold"), ("", "")):
        if f"uncertainty/{tag}coverage" not in metrics:
            continue
        width, size = metrics.get(f"uncertainty/{tag}mean_width"), metrics.get("uncertainty/mean_set_size")
        kind = "intervals" if width is not None else "sets"
        how = f"each {unit} held out of the calibration" if unit else "test samples"
        text = f"{level:.0%} conformal {kind} cover {metrics[f'uncertainty/{tag}coverage']:.1%} ({how}"
        text += f", mean width {width:.4g})" if width is not None else \
            f", mean set size {size:.2f})" if size is not None else ")"
        per = {k.rsplit("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"uncertainty/{tag}coverage/")}
        if unit and per:
            worst = min(per, key=per.get)
            text += f"; worst {unit} {worst} {per[worst]:.1%}"
        return text + "."
    return None


def calibrate(pred: np.ndarray, y: np.ndarray, samples: pd.DataFrame, split: np.ndarray, fold: np.ndarray | None,
              groups: np.ndarray | None, spec: TaskSpec, targets: Targets, cfg: AnyExperiment) -> Uncertain:
    """Fit the run's uncertainty on held-out rows and measure its coverage on rows it never saw."""
    u = cfg.uncertainty
    if not u.enabled:
        return Uncertain()
    rows = held_out_rows(split, fold, groups, np.isfinite(pred).all(axis=1))
    if spec.conformal == "set":
        return _sets(pred, y, samples, rows, targets, cfg)
    return _intervals(pred, y, samples, rows, spec, targets, cfg)


def interval_columns(lower: np.ndarray, upper: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """``lower``/``upper``/``interval_width`` (one output) or ``<name>_lower``/... (several)."""
    out: dict[str, np.ndarray] = {}
    for t, name in enumerate(names):
        prefix = "" if len(names) == 1 else f"{name}_"
        out[f"{prefix}lower"] = lower[:, t]
        out[f"{prefix}upper"] = upper[:, t]
        out[f"{prefix}interval_width"] = upper[:, t] - lower[:, t]
    return out


def set_columns(member: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    """``prediction_set`` (class names joined by '|', most probable first is not implied) and ``set_size``."""
    names = np.asarray(classes, dtype=object)
    return {"prediction_set": np.array(["|".join(names[m]) for m in member], dtype=object),
            "set_size": member.sum(axis=1).astype(np.int64)}


def _intervals(pred: np.ndarray, y: np.ndarray, samples: pd.DataFrame, rows: Rows, spec: TaskSpec,
               targets: Targets, cfg: AnyExperiment) -> Uncertain:
    u = cfg.uncertainty
    truth, mask = spec.truth(y, targets)
    truth = np.where(mask, truth, np.nan)
    names = list(targets.names)
    cats = categories(u.mondrian, samples)
    mondrian = None if cats is None else u.mondrian

    def fit(where: np.ndarray) -> Calibration:
        return fit_intervals(truth[where], pred[where], names, u.level, rows.description,
                             None if cats is None else cats[where], mondrian=mondrian, clip=spec.bounds)

    cal = fit(rows.calibrate)
    lower, upper = intervals(cal, pred, names, cats)
    out = Uncertain(cal, {"uncertainty/level": u.level, "uncertainty/n_calibration": float(cal.n_calibration)},
                    interval_columns(lower, upper, names))
    if rows.units is None:
        held = rows.measure
        out.metrics.update(_interval_scores("", truth[held], lower[held], upper[held], names))
        return out
    # each unit held out of its own calibration: the honest coverage of a new country (or fold)
    lo, hi = np.full_like(pred, np.nan, dtype=float), np.full_like(pred, np.nan, dtype=float)
    records = []
    for unit in sorted(set(rows.units[rows.measure])):
        inside = rows.measure & (rows.units == unit)
        lo[inside], hi[inside] = intervals(fit(rows.calibrate & (rows.units != unit)), pred[inside], names,
                                           None if cats is None else cats[inside])
        scores = _interval_scores("", truth[inside], lo[inside], hi[inside], names)
        records.append({rows.unit_name: unit, "n": int(inside.sum()), "coverage": scores["uncertainty/coverage"],
                        "mean_width": scores["uncertainty/mean_width"], "nominal": u.level})
    tag = "loco" if rows.unit_name == "group" else "cv"
    held = rows.measure
    out.metrics.update(_interval_scores(f"{tag}_", truth[held], lo[held], hi[held], names))
    table = pd.DataFrame(records).sort_values("coverage", kind="stable")
    out.metrics.update({f"uncertainty/{tag}_coverage/{metric_name(r[rows.unit_name])}": r["coverage"]
                        for r in records})
    out.metrics[f"uncertainty/{tag}_worst_coverage"] = float(table["coverage"].iloc[0])
    out.coverage = table.reset_index(drop=True)
    return out


def metric_name(unit: object) -> str:
    """A group or output name as an MLflow metric key part (letters, digits, _ - . and spaces; others become _)."""
    return re.sub(r"[^0-9A-Za-z_\-. ]", "_", str(unit))


def _interval_scores(tag: str, truth: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                     names: list[str]) -> dict[str, float]:
    """``uncertainty/<tag>coverage`` and ``.../<tag>mean_width``, pooled over outputs, and with several outputs
    ``uncertainty/<output>/<tag>coverage`` (apart from the per-group keys ``uncertainty/<tag>coverage/<group>``)."""
    covered = [coverage(truth[:, t], lower[:, t], upper[:, t]) for t in range(len(names))]
    width = [float(np.nanmean(upper[:, t] - lower[:, t])) if len(truth) else float("nan") for t in range(len(names))]
    out = {f"uncertainty/{tag}coverage": float(np.nanmean(covered)),
           f"uncertainty/{tag}mean_width": float(np.nanmean(width))}
    if len(names) > 1:
        for name, c, w in zip(names, covered, width):
            key = f"uncertainty/{metric_name(name)}/{tag}"
            out[f"{key}coverage"], out[f"{key}mean_width"] = c, w
    return out


def _sets(proba: np.ndarray, y: np.ndarray, samples: pd.DataFrame, rows: Rows, targets: Targets,
          cfg: AnyExperiment) -> Uncertain:
    u = cfg.uncertainty
    labels = np.asarray(y, int)

    def fit(where: np.ndarray) -> tuple[Calibration, np.ndarray]:
        temperature = fit_temperature(proba[where], labels[where]) if u.temperature else None
        tempered = temper(proba, temperature)
        cats = categories(u.mondrian, samples, tempered, targets.classes)
        cal = fit_sets(labels[where], tempered[where], u.level, rows.description,
                       None if cats is None else cats[where], None if cats is None else u.mondrian, temperature)
        return cal, tempered

    cal, tempered = fit(rows.calibrate)
    cats = categories(u.mondrian, samples, tempered, targets.classes)
    member = prediction_sets(cal, tempered, cats)
    columns = set_columns(member, targets.classes)
    if cal.temperature is not None:
        columns.update({f"prob_{name}": tempered[:, k] for k, name in enumerate(targets.classes)})
    out = Uncertain(cal, {"uncertainty/level": u.level, "uncertainty/n_calibration": float(cal.n_calibration)},
                    columns)
    if cal.temperature is not None:
        out.metrics["uncertainty/temperature"] = cal.temperature
    if rows.units is None:
        held = rows.measure
        measured_proba, measured_member = tempered[held], member[held]
        held_labels = labels[held]
    else:  # fitted without each unit in turn (temperature and quantile), scored on it
        measured_proba = np.full_like(proba, np.nan, dtype=float)
        measured_member = np.zeros_like(member)
        for unit in sorted(set(rows.units[rows.measure])):
            inside = rows.measure & (rows.units == unit)
            unit_cal, unit_tempered = fit(rows.calibrate & (rows.units != unit))
            unit_cats = categories(u.mondrian, samples, unit_tempered, targets.classes)
            measured_proba[inside] = unit_tempered[inside]
            measured_member[inside] = prediction_sets(unit_cal, unit_tempered, unit_cats)[inside]
        held = rows.measure
        measured_proba, measured_member, held_labels = measured_proba[held], measured_member[held], labels[held]
    if len(held_labels):
        hit = measured_member[np.arange(len(held_labels)), held_labels]
        out.metrics.update({"uncertainty/coverage": float(hit.mean()),
                            "uncertainty/mean_set_size": float(measured_member.sum(1).mean()),
                            "uncertainty/empty_sets": float((measured_member.sum(1) == 0).mean()),
                            "test/ece_uncalibrated": expected_calibration_error(proba[held], held_labels),
                            "test/ece": expected_calibration_error(measured_proba, held_labels)})
    return out


def calibrated_columns(cal: Calibration | None, pred: np.ndarray, targets: Targets,
                       frame: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """A bundle's uncertainty applied to new predictions: the columns the training run's table has for the same
    values (intervals, or tempered probabilities and sets). Mondrian categories come from ``frame``'s group/urban
    column; rows without one (or of a category never calibrated) get the pooled quantile."""
    if cal is None:
        return {}
    frame = frame if frame is not None else pd.DataFrame(index=range(len(pred)))
    column = {"group": GROUP, "urban": URBAN}.get(cal.mondrian or "")
    cats = category_column(cal.mondrian, frame[column]) if column and column in frame.columns else None
    if cal.kind == "set":
        tempered = temper(pred, cal.temperature)
        if cal.mondrian == "class":
            cats = categories("class", frame, tempered, targets.classes)
        columns = set_columns(prediction_sets(cal, tempered, cats), targets.classes)
        if cal.temperature is not None:
            columns.update({f"prob_{name}": tempered[:, k] for k, name in enumerate(targets.classes)})
        return columns
    names = list(cal.quantiles)
    lower, upper = intervals(cal, pred, names, cats)
    return interval_columns(lower, upper, names)


def held_truth(y: np.ndarray, spec: TaskSpec, targets: Targets) -> Truth:
    """What the bootstrap needs of held-out truth: class codes for classes, values and a mask of scored ones else."""
    if spec.conformal == "set":
        return Truth(labels=np.asarray(y).astype(int))
    values, mask = spec.truth(np.asarray(y), targets)
    return Truth(values=np.asarray(values, float), mask=np.asarray(mask, bool))


def paired_test(truth: Truth, ours: np.ndarray, theirs: np.ndarray, groups: np.ndarray | None, cfg: AnyExperiment,
                metric: str | None = None) -> tuple[str, dict[str, float]]:
    """Two models on the same rows: McNemar's exact test for classes, else a paired bootstrap of ``metric`` (r2 for
    one target, rmse for several when it is not one the bootstrap computes). Returns the test's name and result."""
    if truth.labels is not None:
        return "McNemar", mcnemar(ours.argmax(1) == truth.labels, theirs.argmax(1) == truth.labels)
    one = truth.values.shape[1] == 1
    if metric not in (("r2", "rmse", "mae", "pearson_r2") if one else ("rmse",)):
        metric = "r2" if one else "rmse"
    u = cfg.uncertainty
    return f"paired bootstrap of {metric}", paired_bootstrap(truth, ours, theirs, metric, groups, u.bootstrap,
                                                             u.bootstrap_level, cfg.seed)


def metric_intervals(predictions: dict[str, np.ndarray], y: np.ndarray, scored: np.ndarray, spec: TaskSpec,
                     targets: Targets, groups: np.ndarray | None, metrics: dict[str, float],
                     cfg: AnyExperiment) -> dict[str, float]:
    """Bootstrap intervals of the held-out metrics of the model and every baseline (whole groups resampled when the
    split is grouped), and a paired test of the model against each baseline on the same rows: McNemar for
    classes, a paired bootstrap of r2 (one target) or rmse (several) otherwise."""
    u = cfg.uncertainty
    if not u.enabled or u.bootstrap == 0:
        return {}
    held = {name: np.asarray(p, float)[scored] for name, p in predictions.items()}
    ok = np.logical_and.reduce([np.isfinite(p).all(axis=1) for p in held.values()])
    if ok.sum() < 2:
        return {}
    held = {name: p[ok] for name, p in held.items()}
    truth = held_truth(np.asarray(y)[scored][ok], spec, targets)
    units = None if groups is None else np.asarray(groups)[scored][ok]
    ci = bootstrap_intervals(truth, held, units, u.bootstrap, u.bootstrap_level, cfg.seed)
    out = {k: v for k, v in ci.items() if k.rsplit("_ci_", 1)[0] in metrics}
    for name, pred in held.items():
        if name != "test":
            _, test = paired_test(truth, held["test"], pred, units, cfg)
            out.update({f"compare/{name}/{k}": v for k, v in test.items()})
    return out


def champion_test(y: np.ndarray, ours: np.ndarray, theirs: np.ndarray, spec: TaskSpec, targets: Targets,
                  groups: np.ndarray | None, cfg: AnyExperiment, metric: str) -> tuple[str, float] | None:
    """Candidate vs champion on the same validation rows: the paired test's name and p-value (None: fewer than 2 rows
    both models predicted, or a bootstrap test with uncertainty.bootstrap=0)."""
    ok = np.isfinite(np.asarray(ours, float)).all(axis=1) & np.isfinite(np.asarray(theirs, float)).all(axis=1)
    truth = held_truth(np.asarray(y)[ok], spec, targets)
    if ok.sum() < 2 or (truth.labels is None and cfg.uncertainty.bootstrap == 0):
        return None
    name, test = paired_test(truth, np.asarray(ours, float)[ok], np.asarray(theirs, float)[ok],
                             None if groups is None else np.asarray(groups)[ok], cfg, metric)
    return name, test["p_value"]
