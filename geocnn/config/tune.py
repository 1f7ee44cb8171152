"""The tune section: a search space over any config key, the trial budget, the validation metric, sampler, pruner."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from geocnn.config.common import Strict

KINDS = ("loguniform", "uniform", "int", "logint")
_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.S)
REFUSED = {
    "split": "the validation rows must be the same for every trial, or their scores are not comparable",
    "tune": "the search cannot search its own settings",
    "tracking": "it does not change what a trial scores",
    "orchestration": "it does not change what a trial scores",
    "schedule": "it does not change what a trial scores",
    "uncertainty": "calibration happens after training, on the final model; it does not change a trial's score",
    "output_dir": "trials write under output_dir/tune/",
    "name": "the study is named after the experiment",
    "pretrain": "it is `geocnn pretrain`'s section; point model.weights at encoders it made instead",
}
"""Config keys a search space may not contain, and why."""


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a range (log-uniform, uniform, int, log-int) or a list of choices."""

    key: str
    kind: Literal["loguniform", "uniform", "int", "logint", "categorical"]
    low: float | None = None
    high: float | None = None
    step: int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> list[Any]:
        """The choices as Optuna stores them (scalars as they are; a mapping as its YAML flow text)."""
        return [choice_label(c) for c in self.choices]

    def value_of(self, sampled: Any) -> Any:
        """The config value of what the sampler drew (a mapping choice back from its label)."""
        if self.kind != "categorical":
            return sampled
        return self.choices[self.labels.index(sampled)]

    def changes(self, sampled: Any) -> dict[str, Any]:
        """Dotted config changes for a sampled value: a mapping choice sets each of its keys under ``key``."""
        value = self.value_of(sampled)
        if isinstance(value, dict):
            return {f"{self.key}.{k}": v for k, v in flatten_mapping(value).items()}
        return {self.key: value}

    def contains(self, value: Any) -> bool:
        """Whether a config value is a point of this dimension (the config's own value can be trial 0)."""
        if self.kind == "categorical":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind in ("int", "logint") and int(value) != value:
            return False
        return self.low <= value <= self.high  # type: ignore[operator]

    def label_of(self, value: Any) -> Any:
        """The sampler's value for a config value inside the dimension (a mapping choice: its label)."""
        if self.kind == "categorical":
            return next(choice_label(c) for c in self.choices if _same(value, c))
        return int(value) if self.kind in ("int", "logint") else float(value)

    def text(self) -> str:
        """How the dimension reads in the config."""
        if self.kind == "categorical":
            return "[" + ", ".join(str(c) for c in self.labels) + "]"
        step = f", {self.step}" if self.step not in (None, 1) else ""
        return f"{self.kind}({_num(self.low)}, {_num(self.high)}{step})"


def _num(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() and abs(x) >= 1 else f"{x:g}")


def _same(value: Any, choice: Any) -> bool:
    """A config value equals a choice (a mapping choice: the value's section has every key the choice sets)."""
    if isinstance(choice, dict):
        if not isinstance(value, dict):
            return False
        flat = flatten_mapping(value)
        return all(k in flat and flat[k] == v for k, v in flatten_mapping(choice).items())
    return value == choice and type(value) is type(choice) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and isinstance(choice, (int, float)) and not isinstance(choice, bool) and value == choice)


def flatten_mapping(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{a: {b: 1}}`` -> ``{'a.b': 1}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten_mapping(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def choice_label(choice: Any) -> Any:
    """A choice as the sampler stores it: None/bool/int/float/str as they are, anything else as YAML flow text."""
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return yaml.safe_dump(choice, default_flow_style=True, sort_keys=False, width=10_000).strip()


def parse_dimension(key: str, spec: Any) -> Dimension:
    """A search-space entry: a list of choices, or 'loguniform(a, b)', 'uniform(a, b)', 'int(a, b[, step])',
    'logint(a, b)'."""
    where = f"tune.space.{key}"
    top = key.split(".")[0]
    if top in REFUSED:
        raise ValueError(f"{where}: '{top}' keys cannot be searched: {REFUSED[top]}")
    if isinstance(spec, (list, tuple)):
        if len(spec) < 1:
            raise ValueError(f"{where}: give at least one choice")
        labels = [choice_label(c) for c in spec]
        if len(set(map(repr, labels))) != len(labels):
            raise ValueError(f"{where}: the choices {list(spec)} repeat a value")
        return Dimension(key, "categorical", choices=tuple(spec))
    m = _CALL.match(str(spec)) if isinstance(spec, str) else None
    if m is None and isinstance(spec, str) and re.match(rf"^\s*({'|'.join(KINDS)})\s*\([^)]*$", spec):
        raise ValueError(f"{where}={spec!r}: the range was cut at its comma (a YAML flow mapping {{...}} splits on "
                         f"commas): quote it, '{spec}, ...)', or write --set {where}='{spec}, ...)'")
    if m is None or m.group(1) not in KINDS:
        raise ValueError(f"{where}={spec!r}: write a list of choices (e.g. [sgd, adamw]) or one of "
                         "loguniform(low, high), uniform(low, high), int(low, high[, step]), logint(low, high)")
    kind = m.group(1)
    try:
        args = [float(a) for a in m.group(2).split(",")]
    except ValueError:
        raise ValueError(f"{where}={spec!r}: the bounds must be numbers") from None
    if len(args) not in (2, 3) or (len(args) == 3 and kind != "int"):
        raise ValueError(f"{where}={spec!r}: {kind} takes (low, high)" + (", or (low, high, step)" if kind == "int"
                                                                           else ""))
    low, high = args[0], args[1]
    if not low < high:
        raise ValueError(f"{where}={spec!r}: low must be below high")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ValueError(f"{where}={spec!r}: a log scale needs low > 0")
    step = None
    if kind in ("int", "logint"):
        if not (low.is_integer() and high.is_integer()):
            raise ValueError(f"{where}={spec!r}: int bounds must be whole numbers")
        step = int(args[2]) if len(args) == 3 else 1
        if step < 1 or not math.isclose((high - low) % step, 0):
            raise ValueError(f"{where}={spec!r}: the step must be a positive whole number dividing high - low")
    return Dimension(key, kind, low=low, high=high, step=step)  # type: ignore[arg-type]


class TuneConfig(Strict):
    """Hyperparameter search (`geocnn tune`): trials scored on validation only; the best is scored on test once."""

    space: dict[str, Any] = Field(default_factory=dict, description="Searched config keys (dotted) and their "
                                  "ranges: a list of choices (mappings allowed: each sets several keys, e.g. "
                                  "train.optimizer: [{name: sgd, momentum: 0.0}, {name: adam}]), loguniform(low, "
                                  "high), uniform(low, high), int(low, high[, step]) or logint(low, high).")
    n_trials: int = Field(20, gt=0, description="Trials in the study (completed plus pruned; a resumed study "
                          "counts the trials it already has).")
    timeout_min: float | None = Field(None, gt=0, description="Time budget in minutes: no trial starts after it "
                                      "(trials running then finish).")
    metric: str | None = Field(None, description="The validation metric to optimise (validation/accuracy, "
                               "validation/r2, validation/rmse, ...; 'val/...' means the same); default the "
                               "domain's promotion metric. Test metrics are refused.")
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="auto: maximise accuracy, AUC, r2 and pearson metrics, minimise the others.")
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="tpe (Optuna's tree-structured Parzen estimator, seeded with the experiment seed; the "
        "first n_startup trials are random), random, or grid (every combination of list-valued dimensions).")
    n_startup: int = Field(5, ge=0, description="tpe: random trials before the estimator takes over.")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stop unpromising trials on their per-epoch validation metric: median (below the "
        "median of earlier trials at the same epoch), hyperband, or none.")
    prune_after_trials: int = Field(3, ge=0, description="median: trials that finish before any is pruned.")
    prune_after_epochs: int = Field(1, ge=0, description="median: epochs of a trial before it may be pruned.")
    storage: str | None = Field(None, description="Optuna storage URL shared by every worker: default SQLite at "
                                "output_dir/tune/study.db; a database URL (postgresql://..., mysql://...) lets "
                                "machines join one study.")
    study_name: str | None = Field(None, description="Study name in the storage (default the experiment name).")
    parallel: int = Field(1, gt=0, description="Trials at once, on orchestration.task_runner (threads, dask, "
                          "ray); more than 1 needs a parallel task runner.")
    start_from_config: bool = Field(True, description="Trial 0 is the config's own values (where they lie inside "
                                    "the space), so the study reports what the search gained over them.")
    refit: bool = Field(True, description="Retrain the best configuration and score it on test, once, as a normal "
                        "run (bundle, registry, exports); off: validation only, test untouched.")

    @field_validator("space", mode="before")
    @classmethod
    def _nested_keys(cls, value: Any) -> Any:
        """``{train: {optimizer: {lr: ...}}}`` (e.g. from --set tune.space.train.optimizer.lr=...) means the dotted
        key ``train.optimizer.lr``; lists are choices, so only mappings nest."""
        return flatten_mapping(value) if isinstance(value, dict) else value

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, spec in value.items():
            parse_dimension(key, spec)
        return value

    @field_validator("metric")
    @classmethod
    def _validation_only(cls, value: str | None) -> str | None:
        if value is None:
            return None
        head = value.split("/", 1)[0]
        if head.startswith("test") or head.startswith("baseline"):
            leaf = value.split("/", 1)[-1]
            raise ValueError(f"tune.metric={value!r}: hyperparameters are chosen on validation, never on test (the "
                             f"best configuration is scored on test once, after the search); use "
                             f"validation/{leaf}")
        if head not in ("val", "validation") or "/" not in value:
            raise ValueError(f"tune.metric={value!r}: name a validation metric, e.g. validation/accuracy or "
                             "validation/r2")
        return value

    @model_validator(mode="after")
    def _grid(self) -> "TuneConfig":
        dims = self.dimensions
        for d in dims:
            set_by_choices = {k for c in d.choices if isinstance(c, dict) for k in d.changes(choice_label(c))}
            both = sorted(set_by_choices & {e.key for e in dims})
            if both:
                raise ValueError(f"tune.space.{d.key}: its choices set {both}, which the space also searches on its "
                                 "own; remove one of them")
        if self.sampler == "grid":
            ranged = [d.key for d in self.dimensions if d.kind != "categorical"]
            if ranged:
                raise ValueError(f"tune.sampler=grid needs choices (lists) for every dimension; {ranged} are "
                                 "ranges: list their values, or use tune.sampler=tpe")
        return self

    @property
    def dimensions(self) -> list[Dimension]:
        """The parsed search space, in config order."""
        return [parse_dimension(k, v) for k, v in self.space.items()]

    @property
    def objective(self) -> str | None:
        """The metric key of the trials' validation scores ('val/x' written as 'validation/x')."""
        if self.metric is None:
            return None
        return "validation/" + self.metric.split("/", 1)[1]

    def grid_size(self) -> int:
        """Combinations of a grid search."""
        return math.prod(len(d.choices) for d in self.dimensions) if self.dimensions else 0
