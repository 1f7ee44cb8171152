"""Tests for geocnn.evaluation.calibration: temperature scaling recovers a known temperature, ECE by hand."""

from __future__ import annotations

import numpy as np
import pytest

from geocnn.evaluation.calibration import expected_calibration_error, fit_temperature, reliability, temper


def _calibrated(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return proba, (proba.cumsum(1) > rng.random((n, 1))).argmax(1)


def test_fit_temperature_recovers_a_known_temperature() -> None:
    proba, labels = _calibrated(1500, 4, seed=11)
    overconfident = temper(proba, 0.4)  # logits x 2.5: the temperature that undoes it is 2.5
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(2.5, abs=0.3)
    np.testing.assert_allclose(temper(overconfident, 2.5), proba, atol=1e-5)  # invertible (up to the 1e-12 clip)
    assert expected_calibration_error(temper(overconfident, t), labels) < 0.5 * expected_calibration_error(
        overconfident, labels)
    underconfident = temper(proba, 3.0)
    assert fit_temperature(underconfident, labels) == pytest.approx(1 / 3, abs=0.06)
    assert temper(proba, None) is not None and np.array_equal(temper(proba, 1.0), proba)


def test_expected_calibration_error_by_hand() -> None:
    # 3 classes, 5 bins of width 0.2; top-class confidences 0.5, 0.5, 0.7, 0.95 -> bins 2, 2, 3, 4
    proba = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.95, 0.03, 0.02]])
    labels = np.array([0, 2, 2, 1])  # right, wrong, right, wrong
    conf, acc, count = reliability(proba, labels, bins=5)
    assert list(count) == [0, 0, 2, 1, 1]
    np.testing.assert_allclose(conf[2:], [0.5, 0.7, 0.95])
    np.testing.assert_allclose(acc[2:], [0.5, 1.0, 0.0])
    assert np.isnan(conf[:2]).all()
    # bin 2: |0.5 - 0.5| x 2 rows, bin 3: |1 - 0.7|, bin 4: |0 - 0.95|; over 4 rows
    assert expected_calibration_error(proba, labels, bins=5) == pytest.approx((0.0 + 0.3 + 0.95) / 4)
    # one bin: |mean accuracy - mean confidence| = |0.5 - 0.6625|
    assert expected_calibration_error(proba, labels, bins=1) == pytest.approx(abs(0.5 - 2.65 / 4))
    # confidence exactly 1.0 falls in the last bin, not past it
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0
