"""Paired tests of two models on the same rows, as the run skeleton uses them (baselines, champion vs challenger)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import binomtest

from geocnn.config.uncertainty import UncertaintyConfig
from geocnn.domains.calibrate import champion_test
from geocnn.models.tasks import TASKS, Targets

CFG = SimpleNamespace(uncertainty=UncertaintyConfig(), seed=0)


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[labels]


def test_champion_vs_challenger_on_94_galaxies_differing_by_two_is_not_significant() -> None:
    labels = np.arange(94) % 3
    ours, theirs = labels.copy(), labels.copy()
    ours[:26], theirs[:26] = (labels[:26] + 1) % 3, (labels[:26] + 1) % 3  # both wrong on 26
    ours[26:28] = (labels[26:28] + 1) % 3  # only the champion right on 2
    theirs[28:32] = (labels[28:32] + 1) % 3  # only the challenger right on 4
    name, p = champion_test(labels, one_hot(ours, 3), one_hot(theirs, 3), TASKS["classification"],
                            Targets(["morphology"], ["a", "b", "c"]), None, CFG, "accuracy")
    assert name == "McNemar" and p == pytest.approx(binomtest(4, 6, 0.5).pvalue) == pytest.approx(0.6875)


def test_champion_vs_challenger_regression_uses_a_paired_bootstrap_of_the_promotion_metric() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    good, poor = y + rng.normal(size=400) * 0.3, y + rng.normal(size=400) * 1.0
    targets = Targets(["wealth"], [])
    name, p = champion_test(y[:, None], good[:, None], poor[:, None], TASKS["regression"], targets, None, CFG,
                            "rmse")
    assert name == "paired bootstrap of rmse" and p < 0.01
    noise = good + rng.normal(size=400) * 0.01
    name, p = champion_test(y[:, None], noise[:, None], good[:, None], TASKS["regression"], targets, None, CFG,
                            "loss")  # not a bootstrap metric: falls back to r2
    assert name == "paired bootstrap of r2" and p > 0.05
    off = SimpleNamespace(uncertainty=UncertaintyConfig(bootstrap=0), seed=0)
    assert champion_test(y[:, None], good[:, None], poor[:, None], TASKS["regression"], targets, None, off,
                         "rmse") is None
