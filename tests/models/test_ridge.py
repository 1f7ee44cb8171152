"""Two-stage transfer pieces: nested grouped ridge (alpha chosen inside training folds), its JSON form, baselines."""

from __future__ import annotations

import numpy as np
import pytest

from geocnn.evaluation.baselines import gbm_baseline, out_of_fold, train_mean_baseline
from geocnn.models.ridge import Stage2Ridge, fit_ridge, nested_ridge


def synthetic(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20))
    y = x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=n)
    groups = rng.integers(0, 10, n).astype(str)
    folds = np.array([int(g) % 5 for g in groups])
    return x, y, groups, folds


def test_nested_ridge_recovers_a_linear_signal_out_of_fold() -> None:
    x, y, groups, folds = synthetic()
    res = nested_ridge(x, y, groups, folds, [1e-3, 1e-1, 1e1, 1e3, 1e5], inner_folds=3)
    r2 = 1 - np.sum((y - res.predictions) ** 2) / np.sum((y - y.mean()) ** 2)
    base = train_mean_baseline(y, folds)
    r2_base = 1 - np.sum((y - base) ** 2) / np.sum((y - y.mean()) ** 2)
    # signal variance 1.25, noise 0.09: the best possible R2 is about 0.93
    assert r2 > 0.85 and r2_base < 0.01, (r2, r2_base)
    assert set(res.alphas) == set(range(5)) and all(a < 1e5 for a in res.alphas.values())


def test_alpha_is_chosen_without_the_test_fold() -> None:
    # Pure noise features: whatever the test fold holds, the inner CV on the other folds picks the largest alpha.
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 30)), rng.normal(size=300)
    groups = rng.integers(0, 6, 300).astype(str)
    folds = np.array([int(g) % 3 for g in groups])
    res = nested_ridge(x, y, groups, folds, [1e-2, 1e6], inner_folds=2)
    assert all(a == 1e6 for a in res.alphas.values())


def test_gbm_baseline_uses_nonlinear_night_light_signal() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (800, 3))
    y = np.where(x[:, 0] > 0.5, 1.0, 0.0) + 0.1 * rng.normal(size=800)
    folds = rng.integers(0, 4, 800)
    pred = gbm_baseline(x, y, folds)
    assert np.corrcoef(pred, y)[0, 1] ** 2 > 0.9


def test_inner_cv_needs_two_groups() -> None:
    from geocnn.errors import GeocnnError

    x, y, _, _ = synthetic(60)
    with pytest.raises(GeocnnError, match="groups"):
        nested_ridge(x, y, np.array(["a"] * 30 + ["b"] * 30), np.array([0] * 30 + [1] * 30), [1.0])


def test_the_stage2_ridge_as_numbers_predicts_exactly_like_the_fitted_pipeline() -> None:
    x, y, groups, _ = synthetic()
    pipe = fit_ridge(x, y, groups, [1e-2, 1.0, 1e2], inner_folds=3)
    ridge = Stage2Ridge.from_pipeline(pipe)
    again = Stage2Ridge(**ridge.to_dict())
    np.testing.assert_allclose(again.predict(x), pipe.predict(x), rtol=1e-10, atol=1e-10)
    assert again.alpha in (1e-2, 1.0, 1e2)


def test_out_of_fold_never_predicts_a_training_only_fold() -> None:
    folds = np.array([0, 0, 1, 1, -1, -1])
    seen = []
    pred = out_of_fold(lambda tr, te: (seen.append((tr.copy(), te.copy())), np.full(te.sum(), 7.0))[1], folds)
    assert np.isnan(pred[4:]).all() and (pred[:4] == 7.0).all()
    assert len(seen) == 2 and not any(tr[te].any() for tr, te in seen)
    assert all(tr[4:].all() for tr, _ in seen)  # fold -1 (a single split's train) always trains
