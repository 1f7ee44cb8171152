"""TaskSpec: everything that differs between tasks (targets, head, loss, predictions, metrics, baseline, columns).

One spec per task: classification, regression, vote fractions under the Galaxy Zoo tree (Dieleman et al. 2015),
vote counts with a Dirichlet-multinomial (Zoobot). Code outside this module asks the spec; it never compares task
names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from geocnn.data.catalog import Catalog, _blank, encode_classes, validate_targets
from geocnn.data.schema import KAGGLE_TREE, DecisionTree, questions_from_columns
from geocnn.errors import GeocnnError
from geocnn.evaluation.grouped import score_columns
from geocnn.evaluation.metrics import (
    BASELINE,
    classification_metrics,
    confusion,
    regression_metrics,
    vote_fraction_metrics,
)
from geocnn.evaluation.plots import plot_confusion, plot_pred_vs_true
from geocnn.models.heads import DecisionTreeHead, DirichletHead, LinearHead
from geocnn.models.losses import dirichlet_multinomial_nll, expected_fractions

_FRACTION_HINT = (
    " Galaxy Zoo leaves a vote fraction empty where the question was not asked of that galaxy: pick questions "
    "asked of every galaxy, or train on the vote counts with model.task=vote_counts (empty counts = 0 votes).")


@dataclass(frozen=True)
class Targets:
    """What a task needs to know about its targets: column names, class names, and the sigmoid/tree options."""

    names: list[str]
    classes: list[str]
    sigmoid: bool = False


@dataclass
class ScoreInput:
    """Samples to score: truth (task encoding), predictions by predictor name, optional groups and a breakdown."""

    truth: np.ndarray
    predictions: dict[str, np.ndarray]
    """'test' is the model; other names are baselines ('baseline' the train-derived one, domain ones beside)."""
    groups: np.ndarray | None = None
    by: np.ndarray | None = None
    by_name: str = "urban"


class TaskSpec:
    """The behaviour of one task. Subclasses fill in the class attributes and the abstract methods."""

    name: ClassVar[str]
    losses: ClassVar[tuple[str, ...]]
    """Allowed losses; the first is what model.loss=auto picks."""
    promotion_metric: ClassVar[str]
    """Default validation metric deciding the registry's champion."""
    stratify: ClassVar[bool] = False
    """Whether a random split should be stratified on the target by default."""
    baseline_keys: ClassVar[tuple[str, ...] | None] = None
    """Metric names kept for baselines (None: all)."""
    conformal: ClassVar[str] = "interval"
    """What conformal prediction attaches to a prediction: an interval per output, or a set of classes."""
    bounds: ClassVar[tuple[float, float] | None] = None
    """Range of the user-facing outputs (intervals are clipped to it), None: unbounded."""

    # -- targets ------------------------------------------------------------------------------------------------
    def prepare(self, catalog: Catalog) -> Catalog:
        """Validate and encode a catalog's targets (naming the file, row and column of the first bad value)."""
        raise NotImplementedError

    def target_array(self, frame: pd.DataFrame, targets: Targets) -> np.ndarray:
        """Targets of every row as the loss expects them: float32 (N, T) (classification: int64 codes (N,))."""
        return frame[targets.names].to_numpy(dtype=np.float32)

    def n_outputs(self, targets: Targets) -> int:
        """Width of the head."""
        return len(targets.names)

    def tree(self, targets: Targets) -> DecisionTree | None:
        """The question tree of vote tasks (None for others)."""
        return None

    def check_targets(self, targets: Targets) -> None:
        """Refuse targets the task cannot model (e.g. vote fractions that are not the Kaggle tree)."""

    # -- network ------------------------------------------------------------------------------------------------
    def head(self, width: int, targets: Targets) -> nn.Module:
        """The output layer on top of ``width`` encoder features."""
        return LinearHead(width, self.n_outputs(targets))

    def standardises(self, targets: Targets) -> bool:
        """Whether the head learns train-standardised targets (continuous, unbounded outputs)."""
        return False

    def to_prediction(self, out: torch.Tensor, targets: Targets, y_mean: torch.Tensor,
                      y_std: torch.Tensor) -> torch.Tensor:
        """Head outputs to user-facing values (probabilities, fractions, values in the target's units)."""
        return out.float()

    def resolve_loss(self, loss: str) -> str:
        """The loss for this task: ``auto`` picks the default; an unsuitable one is an error naming model.loss."""
        chosen = self.losses[0] if loss == "auto" else loss
        if chosen not in self.losses:
            raise GeocnnError(f"model.loss={loss!r} does not fit model.task={self.name!r}; use one of "
                              f"{sorted(self.losses)} or auto")
        return chosen

    def loss(self, name: str, out: torch.Tensor, y: torch.Tensor, targets: Targets, y_mean: torch.Tensor,
             y_std: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The loss ``name`` of head outputs against targets."""
        y = (y.float() - y_mean) / y_std if self.standardises(targets) else y
        if name == "huber":
            return F.huber_loss(out.float(), y)
        return F.mse_loss(out.float(), y)

    def val_metrics(self, pred: torch.Tensor, y: torch.Tensor, targets: Targets) -> dict[str, torch.Tensor]:
        """Epoch metrics logged during training (``val/...``): RMSE of predictions against targets."""
        return {"val/rmse": torch.sqrt(F.mse_loss(pred.float(), y.float()))}

    def class_weights(self, setting: Any, train_y: np.ndarray, targets: Targets) -> torch.Tensor | None:
        """Per-class loss weights (classification only)."""
        if setting is not None:
            raise GeocnnError(f"model.class_weights is set but model.task={self.name!r} has no classes; remove it")
        return None

    # -- evaluation ---------------------------------------------------------------------------------------------
    def truth(self, y: np.ndarray, targets: Targets) -> tuple[np.ndarray, np.ndarray]:
        """Targets as scored and a mask of what is scored (vote counts become fractions of answered questions)."""
        return y.astype(np.float64), np.ones_like(y, dtype=bool)

    def baseline(self, train_truth: np.ndarray, n: int, targets: Targets) -> np.ndarray:
        """The naive baseline's prediction for n samples, learnt from training truth: the train mean."""
        return np.repeat(train_truth.mean(0, keepdims=True), n, axis=0)

    def score(self, data: ScoreInput, targets: Targets) -> dict[str, float]:
        """Flat metrics of every predictor: ``test/...`` for the model, ``<baseline name>/...`` for baselines."""
        raise NotImplementedError

    def _prefixed(self, name: str, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics under ``name/``; a baseline (a name starting with 'baseline') keeps only ``baseline_keys``."""
        keep = metrics if not name.startswith("baseline") or self.baseline_keys is None else {
            k: v for k, v in metrics.items() if k.split("/")[0] in self.baseline_keys}
        return {f"{name}/{k}": v for k, v in keep.items() if not k.startswith(BASELINE)}

    def columns(self, pred: np.ndarray, targets: Targets, prefix: str = "pred") -> dict[str, np.ndarray]:
        """Prediction table columns: ``pred_<target>`` per target."""
        return {f"{prefix}_{t}": pred[:, j].astype(np.float64) for j, t in enumerate(targets.names)}

    def truth_columns(self, y: np.ndarray, targets: Targets) -> dict[str, np.ndarray]:
        """Observed target columns for the predictions table, in their units (class names for classes)."""
        return {t: y[:, j].astype(np.float64) for j, t in enumerate(targets.names)}

    def baseline_columns(self, preds: dict[str, np.ndarray], targets: Targets) -> dict[str, np.ndarray]:
        """Baseline prediction columns for the table (continuous tasks with one target only)."""
        return {}

    def plot(self, truth: np.ndarray, pred: np.ndarray, targets: Targets, folder: Path,
             groups: np.ndarray | None = None) -> Path:
        """The task's evaluation plot: predicted against observed."""
        truth, mask = self.truth(truth, targets)
        return plot_pred_vs_true(truth, np.where(mask, pred, 0.0), targets.names, folder / "pred_vs_true.png",
                                 groups=groups)

    def labels(self, truth: np.ndarray, pred: np.ndarray, targets: Targets) -> list[str]:
        """Short per-sample captions (observed/predicted) for montages of chips."""
        truth, mask = self.truth(truth, targets)
        shown = np.where(mask, pred, 0.0)
        names = targets.names[:2]
        return ["\n".join(f"{n[:14]} {truth[i, j]:.2f}/{shown[i, j]:.2f}" for j, n in enumerate(names))
                for i in range(len(truth))]


class Classification(TaskSpec):
    """One class label per sample; softmax head, cross-entropy, accuracy beside the majority class."""

    name = "classification"
    losses = ("cross_entropy",)
    promotion_metric = "validation/accuracy"
    stratify = True
    baseline_keys = ("accuracy", "balanced_accuracy", "roc_auc")
    conformal = "set"

    def prepare(self, catalog: Catalog) -> Catalog:
        frame, source = catalog.frame.copy(), catalog.source
        if not catalog.targets:
            raise GeocnnError(f"{source}: no target columns; set data.targets to the column(s) to learn.")
        if len(catalog.targets) != 1:
            raise GeocnnError(
                f"{source}: classification needs exactly one target column (the class label), but data.targets "
                f"names {len(catalog.targets)}: {catalog.targets}. Set data.targets to one column, or use "
                "model.task=regression / vote_fractions / vote_counts for several.")
        col = catalog.targets[0]
        if catalog.classes and pd.api.types.is_integer_dtype(frame[col]):
            codes = frame[col].to_numpy()
            if len(codes) and (codes.min() < 0 or codes.max() >= len(catalog.classes)):
                raise GeocnnError(f"{source}: class codes in column '{col}' lie outside 0..{len(catalog.classes) - 1}.")
            frame[col] = frame[col].astype("int64")
            classes = list(catalog.classes)
        else:
            frame[col], classes = encode_classes(frame[col], source, col)
        return Catalog(frame=frame, targets=list(catalog.targets), source=source, classes=classes)

    def target_array(self, frame: pd.DataFrame, targets: Targets) -> np.ndarray:
        return frame[targets.names[0]].to_numpy(dtype=np.int64)

    def n_outputs(self, targets: Targets) -> int:
        return len(targets.classes)

    def to_prediction(self, out: torch.Tensor, targets: Targets, y_mean: torch.Tensor,
                      y_std: torch.Tensor) -> torch.Tensor:
        return torch.softmax(out.float(), dim=1)

    def loss(self, name: str, out: torch.Tensor, y: torch.Tensor, targets: Targets, y_mean: torch.Tensor,
             y_std: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(out.float(), y, weight=class_weights)

    def val_metrics(self, pred: torch.Tensor, y: torch.Tensor, targets: Targets) -> dict[str, torch.Tensor]:
        return {"val/accuracy": (pred.argmax(1) == y).float().mean()}

    def class_weights(self, setting: Any, train_y: np.ndarray, targets: Targets) -> torch.Tensor | None:
        if setting is None:
            return None
        k = len(targets.classes)
        if setting == "balanced":
            counts = np.bincount(train_y, minlength=k)
            return torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32)
        if len(setting) != k:
            raise GeocnnError(f"model.class_weights has {len(setting)} values but there are {k} classes "
                              f"{targets.classes}; give one weight per class or 'balanced'")
        return torch.tensor(setting, dtype=torch.float32)

    def truth(self, y: np.ndarray, targets: Targets) -> tuple[np.ndarray, np.ndarray]:
        return y, np.ones(len(y), dtype=bool)

    def baseline(self, train_truth: np.ndarray, n: int, targets: Targets) -> np.ndarray:
        """The majority class of the training truth (ties: the lowest class), as one-hot probabilities."""
        k = len(targets.classes)
        out = np.zeros((n, k))
        out[:, int(np.bincount(train_truth, minlength=k).argmax())] = 1.0
        return out

    def score(self, data: ScoreInput, targets: Targets) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pred in data.predictions.items():
            out.update(self._prefixed(name, classification_metrics(data.truth, pred, targets.classes)))
        return out

    def columns(self, pred: np.ndarray, targets: Targets, prefix: str = "pred") -> dict[str, np.ndarray]:
        classes = np.asarray(targets.classes)
        out: dict[str, np.ndarray] = {f"{prefix}_{targets.names[0]}": classes[pred.argmax(1)]}
        for k, name in enumerate(targets.classes):
            out[f"prob_{name}"] = pred[:, k].astype(np.float64)
        return out

    def truth_columns(self, y: np.ndarray, targets: Targets) -> dict[str, np.ndarray]:
        return {targets.names[0]: np.asarray(targets.classes)[y.astype(int)]}

    def plot(self, truth: np.ndarray, pred: np.ndarray, targets: Targets, folder: Path,
             groups: np.ndarray | None = None) -> Path:
        cm = confusion(truth, pred.argmax(1), len(targets.classes))
        return plot_confusion(cm, targets.classes, folder / "confusion_matrix.png")

    def labels(self, truth: np.ndarray, pred: np.ndarray, targets: Targets) -> list[str]:
        c = targets.classes
        return [f"true: {c[a]}\npred: {c[b]} ({p:.2f})" for a, b, p in zip(truth, pred.argmax(1), pred.max(1))]


class Regression(TaskSpec):
    """Continuous targets; linear head on train-standardised targets (or a sigmoid for fractions), MSE/Huber."""

    name = "regression"
    losses = ("mse", "huber")
    promotion_metric = "validation/rmse"

    def prepare(self, catalog: Catalog) -> Catalog:
        frame = _numeric_targets(catalog)
        for col in catalog.targets:
            if len(frame) > 1 and frame[col].nunique() == 1:
                raise GeocnnError(f"{catalog.source}: column '{col}' is constant ({frame[col].iloc[0]:g} in all "
                                  f"{len(frame)} rows); there is nothing to learn. Check the column, or choose "
                                  "another target in data.targets.")
        return Catalog(frame=frame, targets=list(catalog.targets), source=catalog.source, classes=[])

    def head(self, width: int, targets: Targets) -> nn.Module:
        return LinearHead(width, self.n_outputs(targets), sigmoid=targets.sigmoid)

    def standardises(self, targets: Targets) -> bool:
        return not targets.sigmoid

    def to_prediction(self, out: torch.Tensor, targets: Targets, y_mean: torch.Tensor,
                      y_std: torch.Tensor) -> torch.Tensor:
        return out.float() * y_std + y_mean if self.standardises(targets) else out.float()

    def score(self, data: ScoreInput, targets: Targets) -> dict[str, float]:
        out: dict[str, float] = {}
        if len(targets.names) == 1:  # pooled, per group, worst of a breakdown (as Yeh et al. report)
            t = targets.names[0]
            frame = pd.DataFrame({t: data.truth[:, 0], **{n: p[:, 0] for n, p in data.predictions.items()}})
            group = by = None
            if data.groups is not None:
                group = "group" if "group" not in frame.columns else "__group"
                frame[group] = data.groups
            if data.by is not None:
                values = np.asarray(data.by, dtype=object)
                known = ~pd.isna(values) & (values != "unknown")
                if len(set(values[known].tolist())) > 1:
                    by = data.by_name if data.by_name not in frame.columns else "__by"
                    frame[by] = np.where(known, values, None)
            metrics = score_columns(frame, t, {n: n for n in data.predictions}, group, by)
            return {k.replace(f"/worst_{by}/", f"/worst_{data.by_name}/"): v for k, v in metrics.items()}
        for name, pred in data.predictions.items():
            out.update(self._prefixed(name, regression_metrics(data.truth, pred, targets.names)))
        return out

    def baseline_columns(self, preds: dict[str, np.ndarray], targets: Targets) -> dict[str, np.ndarray]:
        if len(targets.names) != 1:
            return {}
        t = targets.names[0]
        return {f"{name}_{t}": p[:, 0].astype(np.float64) for name, p in preds.items() if name != "test"}


class VoteFractions(Regression):
    """The 37 Kaggle Galaxy Zoo fractions through the decision-tree head (Dieleman et al. 2015); flat RMSE."""

    name = "vote_fractions"
    losses = ("mse", "huber")
    promotion_metric = "validation/rmse"
    bounds = (0.0, 1.0)

    def prepare(self, catalog: Catalog) -> Catalog:
        try:
            frame = _numeric_targets(catalog, fractions=True)
        except GeocnnError as exc:
            if "missing, NaN" in str(exc):
                raise GeocnnError(str(exc) + _FRACTION_HINT) from None
            raise
        return Catalog(frame=frame, targets=list(catalog.targets), source=catalog.source, classes=[])

    def check_targets(self, targets: Targets) -> None:
        if targets.names != KAGGLE_TREE.columns:
            raise GeocnnError("task vote_fractions needs the 37 Kaggle columns Class1.1..Class11.6 as targets, in "
                              "order; for other fractions use task regression with model.sigmoid=true")

    def tree(self, targets: Targets) -> DecisionTree | None:
        return KAGGLE_TREE

    def head(self, width: int, targets: Targets) -> nn.Module:
        return DecisionTreeHead(width, KAGGLE_TREE)

    def standardises(self, targets: Targets) -> bool:
        return False

    def score(self, data: ScoreInput, targets: Targets) -> dict[str, float]:
        truth, mask = self.truth(data.truth, targets)
        out: dict[str, float] = {}
        for name, pred in data.predictions.items():
            m = vote_fraction_metrics(truth, np.where(mask, pred, 0.0), targets.names, tree=self.tree(targets))
            out.update(self._prefixed(name, m))
        return out

    def baseline_columns(self, preds: dict[str, np.ndarray], targets: Targets) -> dict[str, np.ndarray]:
        return {}


class VoteCounts(VoteFractions):
    """Volunteer vote counts per answer (GZ DECaLS): Dirichlet concentrations, Dirichlet-multinomial loss (Zoobot)."""

    name = "vote_counts"
    losses = ("dirichlet_multinomial",)

    def prepare(self, catalog: Catalog) -> Catalog:
        frame = catalog.frame.copy()
        for col in catalog.targets:  # Galaxy Zoo leaves counts empty where the question was not asked: 0 votes
            if not pd.api.types.is_numeric_dtype(frame[col]):
                frame[col] = frame[col].where(~_blank(frame[col]), np.nan)
            frame[col] = frame[col].where(frame[col].notna(), 0)
        return Catalog(frame=_numeric_targets(Catalog(frame, catalog.targets, catalog.source), counts=True),
                       targets=list(catalog.targets), source=catalog.source, classes=[])

    def check_targets(self, targets: Targets) -> None:
        return None

    def tree(self, targets: Targets) -> DecisionTree | None:
        return questions_from_columns(targets.names)

    def head(self, width: int, targets: Targets) -> nn.Module:
        return DirichletHead(width, self.n_outputs(targets))

    def to_prediction(self, out: torch.Tensor, targets: Targets, y_mean: torch.Tensor,
                      y_std: torch.Tensor) -> torch.Tensor:
        return expected_fractions(out.float(), self.tree(targets))

    def loss(self, name: str, out: torch.Tensor, y: torch.Tensor, targets: Targets, y_mean: torch.Tensor,
             y_std: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        return dirichlet_multinomial_nll(y, out.float(), self.tree(targets))

    def val_metrics(self, pred: torch.Tensor, y: torch.Tensor, targets: Targets) -> dict[str, torch.Tensor]:
        y = expected_fractions(y.float() + 1e-9, self.tree(targets))
        return {"val/rmse": torch.sqrt(F.mse_loss(pred.float(), y))}

    def truth(self, y: np.ndarray, targets: Targets) -> tuple[np.ndarray, np.ndarray]:
        frac = np.zeros_like(y, dtype=np.float64)
        mask = np.zeros_like(y, dtype=bool)
        for s, e, _ in self.tree(targets).slices():
            total = y[:, s:e].sum(1, keepdims=True)
            frac[:, s:e] = y[:, s:e] / np.maximum(total, 1)
            mask[:, s:e] = total > 0
        return frac, mask

    def baseline(self, train_truth: np.ndarray, n: int, targets: Targets) -> np.ndarray:
        frac, _ = self.truth(train_truth, targets)
        return np.repeat(frac.mean(0, keepdims=True), n, axis=0)


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (Classification(), Regression(), VoteFractions(),
                                                            VoteCounts())}


def task_spec(name: str) -> TaskSpec:
    """The spec of a task by its config name (model.task)."""
    try:
        return TASKS[name]
    except KeyError:
        raise GeocnnError(f"model.task {name!r} is not one of {list(TASKS)}.") from None


def _numeric_targets(catalog: Catalog, *, fractions: bool = False, counts: bool = False) -> pd.DataFrame:
    """The catalog frame with its targets checked finite (fractions in [0, 1], counts >= 0) and as float64."""
    if not catalog.targets:
        raise GeocnnError(f"{catalog.source}: no target columns; set data.targets to the column(s) to learn.")
    if catalog.classes:
        raise GeocnnError(f"{catalog.source}: the target {catalog.targets} is a class label (e.g. data.format "
                          "'folders': one subfolder per class); set model.task=classification, or use a csv catalog "
                          "with numeric targets.")
    frame = catalog.frame.copy()
    validate_targets(frame, catalog.targets, catalog.source, fractions=fractions, counts=counts)
    for col in catalog.targets:
        frame[col] = pd.to_numeric(frame[col]).astype("float64")
    return frame
