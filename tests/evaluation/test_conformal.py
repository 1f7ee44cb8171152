"""Conformal intervals and sets (crepes underneath): coverage on generated data, Mondrian categories, the
leave-one-country-out coverage of published DHS predictions, temperature scaling, clear errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from geocnn.config import UncertaintyConfig
from geocnn.domains.calibrate import calibrate, calibrated_columns
from geocnn.errors import GeocnnError
from geocnn.evaluation.calibration import expected_calibration_error, fit_temperature, reliability, temper
from geocnn.evaluation.conformal import coverage, fit_intervals, fit_sets, intervals, min_rows, prediction_sets
from geocnn.models.tasks import Targets, task_spec


def test_split_conformal_intervals_cover_at_the_nominal_level() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=7000)
    pred = y + rng.standard_t(4, size=7000) * 0.5  # heavy-tailed errors: no Gaussian assumption
    cal = fit_intervals(y[:2000, None], pred[:2000, None], ["y"], 0.9, "generated")
    lower, upper = intervals(cal, pred[2000:, None], ["y"])
    # 5000 test rows: the binomial standard error of 0.9 is 0.0042; 0.02 is almost 5 of them
    assert coverage(y[2000:], lower[:, 0], upper[:, 0]) == pytest.approx(0.9, abs=0.02)
    # the quantile is the ceil((n + 1) 0.9)-th smallest calibration residual
    residuals = np.sort(np.abs(y[:2000] - pred[:2000]))
    assert cal.quantiles["y"]["*"] == pytest.approx(residuals[int(np.ceil(0.9 * 2001)) - 1])


def test_mondrian_intervals_cover_within_each_category() -> None:
    """Pooled intervals over-cover the easy category and under-cover the hard one; Mondrian ones cover both."""
    rng = np.random.default_rng(1)
    n = 8000
    cats = np.where(rng.random(n) < 0.5, "easy", "hard").astype(object)
    y = rng.normal(size=n)
    pred = y + rng.normal(size=n) * np.where(cats == "easy", 0.2, 2.0)
    cal, test = slice(0, 3000), slice(3000, n)
    pooled = fit_intervals(y[cal, None], pred[cal, None], ["y"], 0.9, "generated")
    mondrian = fit_intervals(y[cal, None], pred[cal, None], ["y"], 0.9, "generated", categories=cats[cal],
                             mondrian="group")
    for name, fitted, expect_hard_low in (("pooled", pooled, True), ("mondrian", mondrian, False)):
        lower, upper = intervals(fitted, pred[test, None], ["y"], cats[test])
        hard = cats[test] == "hard"
        c_hard = coverage(y[test][hard], lower[hard, 0], upper[hard, 0])
        c_easy = coverage(y[test][~hard], lower[~hard, 0], upper[~hard, 0])
        if expect_hard_low:
            assert c_hard < 0.85 and c_easy > 0.97, (name, c_hard, c_easy)
        else:
            assert c_hard == pytest.approx(0.9, abs=0.03) and c_easy == pytest.approx(0.9, abs=0.03)
    # a category never calibrated gets the pooled quantile
    lower, upper = intervals(mondrian, np.zeros((1, 1)), ["y"], np.array(["unseen"], dtype=object))
    assert upper[0, 0] == pytest.approx(mondrian.quantiles["y"]["*"])


def test_vote_fraction_intervals_are_clipped_to_zero_one() -> None:
    cal = fit_intervals(np.full((50, 1), 0.5), np.full((50, 1), 0.7), ["f"], 0.9, "x", clip=(0.0, 1.0))
    lower, upper = intervals(cal, np.array([[0.05], [0.95]]), ["f"])
    assert lower.min() == 0.0 and upper.max() == 1.0


def test_conformal_sets_cover_and_temperature_is_recovered() -> None:
    rng = np.random.default_rng(2)
    k, n = 5, 6000
    logits = rng.normal(size=(n, k)) * 2
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (true.cumsum(1) > rng.random((n, 1))).argmax(1)
    overconfident = temper(true, 0.4)
    t = fit_temperature(overconfident[:2000], labels[:2000])
    assert t == pytest.approx(2.5, abs=0.3)
    before = expected_calibration_error(overconfident[2000:], labels[2000:])
    after = expected_calibration_error(temper(overconfident[2000:], t), labels[2000:])
    assert before > 0.1 and after < 0.04, (before, after)
    cal = fit_sets(labels[:2000], temper(overconfident[:2000], t), 0.9, "val", temperature=t)
    member = prediction_sets(cal, temper(overconfident[2000:], t))
    assert member[np.arange(4000), labels[2000:]].mean() == pytest.approx(0.9, abs=0.02)
    assert 1.0 < member.sum(1).mean() < k


def test_ece_and_reliability_by_hand() -> None:
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    conf, acc, count = reliability(proba, labels, bins=10)
    assert list(count[6:]) == [1, 1, 1, 1] and count[:6].sum() == 0 and acc[9] == 1.0 and acc[8] == 0.0
    # |1 - 0.9| + |0 - 0.8| + |1 - 0.7| + |1 - 0.6|, over 4 rows
    assert expected_calibration_error(proba, labels, bins=10) == pytest.approx((0.1 + 0.8 + 0.3 + 0.4) / 4)


def test_too_few_calibration_rows_or_a_bad_level_are_clear_errors() -> None:
    assert min_rows(0.9) == 9 and min_rows(0.95) == 19
    with pytest.raises(GeocnnError, match="too few for 90% intervals.*uncertainty.level"):
        fit_intervals(np.zeros((5, 1)), np.ones((5, 1)), ["y"], 0.9, "x")
    with pytest.raises(GeocnnError, match="fewer than 9 calibration rows"):
        fit_intervals(np.zeros((20, 1)), np.ones((20, 1)), ["y"], 0.9, "x",
                      categories=np.array(["a"] * 17 + ["b"] * 3), mondrian="group")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        UncertaintyConfig(level=1.0)


def test_out_of_country_coverage_of_published_dhs_predictions(shared_data: Path) -> None:
    """Yeh et al. 2020's out-of-country ResNet-18 MS+NL predictions of 19,669 DHS clusters: each country's interval
    calibrated on the other 22 countries' residuals. Pooled coverage lands within 2 points of the nominal 90 %;
    the per-country spread (Cameroon 0.77 ... Guinea 0.97 measured) is reported, not hidden."""
    frame = pd.read_csv(shared_data / "poverty/dhs_ooc_predictions_yeh2020.csv")
    y = frame[["label"]].to_numpy()
    pred = frame[["Resnet-18 MS+NL concat"]].to_numpy()
    countries = frame["country"].to_numpy()
    folds = pd.factorize(countries)[0]
    cfg = SimpleNamespace(uncertainty=UncertaintyConfig(level=0.9))
    samples = pd.DataFrame({"group": countries})
    out = calibrate(pred, y, samples, np.full(len(y), "test"), folds, countries, task_spec("regression"),
                    Targets(["wealth"], []), cfg)
    m = out.metrics
    print({k: round(v, 3) for k, v in m.items() if "/" in k and k.count("/") == 1})
    print(out.coverage.round(3).to_string(index=False))  # per country, worst first
    assert abs(m["uncertainty/loco_coverage"] - 0.9) < 0.02, m
    assert len(out.coverage) == 23 and out.coverage["n"].sum() == 19669
    assert m["uncertainty/loco_worst_coverage"] == out.coverage["coverage"].min() < 0.85  # Cameroon, honestly
    assert 1.3 < m["uncertainty/loco_mean_width"] < 1.8  # asset-index units (the index's sd is about 1)
    # Mondrian by urban/rural: both halves covered near nominal on the calibration set itself
    samples["urban"] = frame["urban"].astype(str).to_numpy()
    cfg = SimpleNamespace(uncertainty=UncertaintyConfig(level=0.9, mondrian="urban"))
    out = calibrate(pred, y, samples, np.full(len(y), "test"), folds, countries, task_spec("regression"),
                    Targets(["wealth"], []), cfg)
    q = out.calibration.quantiles["wealth"]
    assert set(q) == {"*", "urban", "rural"} and q["urban"] != q["rural"]  # True/False codes read as words
    cols = calibrated_columns(out.calibration, pred, Targets(["wealth"], []), samples)
    np.testing.assert_allclose(cols["upper"], out.columns["upper"])
