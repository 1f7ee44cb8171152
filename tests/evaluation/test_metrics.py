"""Tests for geocnn.evaluation.metrics: metric values against hand computations, baselines and shape checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geocnn.data.schema import KAGGLE_TREE, DecisionTree, Question
from geocnn.evaluation.metrics import (
    classification_metrics,
    confusion,
    prefix_test,
    regression_metrics,
    vote_fraction_metrics,
)


# --------------------------------------------------------------------------------------------- classification
def _binary_example() -> tuple[np.ndarray, np.ndarray]:
    """y = [0,0,0,1]; P(class 1) = [0.2, 0.95, 0.7, 0.9] -> predictions [0,1,1,1]."""
    y = np.array([0, 0, 0, 1])
    p1 = np.array([0.2, 0.95, 0.7, 0.9])
    return y, np.stack([1 - p1, p1], axis=1)


def test_binary_classification_by_hand() -> None:
    y, proba = _binary_example()
    m = classification_metrics(y, proba, ["smooth", "disk"], train_labels=np.array([0, 0, 1]))
    assert m["accuracy"] == pytest.approx(2 / 4)
    # recall(smooth) = 1/3, recall(disk) = 1/1
    assert m["recall/smooth"] == pytest.approx(1 / 3)
    assert m["recall/disk"] == pytest.approx(1.0)
    assert m["balanced_accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    # the positive (0.9) outranks negatives 0.2 and 0.7 but not 0.95: AUC = 2/3
    assert m["roc_auc"] == pytest.approx(2 / 3)
    expected_ll = -(math.log(0.8) + math.log(0.05) + math.log(0.3) + math.log(0.9)) / 4
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert m["baseline/roc_auc"] == 0.5
    assert all(isinstance(v, float) for v in m.values())


def test_majority_baseline_uses_train_labels_not_test() -> None:
    y, proba = _binary_example()  # test majority is class 0 (3 of 4)
    m = classification_metrics(y, proba, ["smooth", "disk"], train_labels=np.array([1, 1, 1, 0]))
    # always predicting the TRAIN majority (class 1): right once in four; recalls 0 and 1
    assert m["baseline/accuracy"] == pytest.approx(0.25)
    assert m["baseline/balanced_accuracy"] == pytest.approx(0.5)
    m0 = classification_metrics(y, proba, ["smooth", "disk"], train_labels=np.array([0, 0, 1]))
    assert m0["baseline/accuracy"] == pytest.approx(0.75)


def test_multiclass_auc_and_missing_class() -> None:
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.1, 0.3, 0.6]])
    m = classification_metrics(y, proba, ["a", "b", "c"], train_labels=np.array([2, 2, 0]))
    assert m["accuracy"] == 1.0
    assert m["roc_auc"] == pytest.approx(1.0)
    assert m["baseline/accuracy"] == pytest.approx(0.5)  # train majority is "c"

    # class "b" absent from y_true: no AUC (undefined), no recall for b, no crash
    y2 = np.array([0, 0, 2, 2])
    m2 = classification_metrics(y2, proba, ["a", "b", "c"], train_labels=np.array([0, 1, 2]))
    assert "roc_auc" not in m2 and "baseline/roc_auc" not in m2
    assert "recall/b" not in m2
    assert m2["recall/a"] == pytest.approx(0.5) and m2["recall/c"] == pytest.approx(1.0)
    assert m2["accuracy"] == pytest.approx(0.75)
    assert np.isfinite(m2["log_loss"])


def test_classification_renormalises_float32_softmax() -> None:
    y, proba = _binary_example()
    m = classification_metrics(y, (proba * 1.0001).astype(np.float32), ["a", "b"], np.array([0]))
    assert m["roc_auc"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("y", "proba", "classes"),
    [
        (np.array([0, 1, 1]), np.full((4, 2), 0.5), ["a", "b"]),  # N mismatch
        (np.array([0, 1]), np.full((2, 3), 1 / 3), ["a", "b"]),  # K mismatch
        (np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"]),  # label out of range
    ],
)
def test_classification_rejects_bad_input(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> None:
    with pytest.raises(ValueError, match=r"shape|range"):
        classification_metrics(y, proba, classes, np.array([0, 1]))


def test_confusion_counts() -> None:
    cm = confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), n_classes=4)
    expected = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        confusion(np.array([0, 1, 2]), np.array([0, 1]), 3)


# ------------------------------------------------------------------------------------------------ regression
def test_regression_biased_predictor_pearson_vs_r2() -> None:
    y = np.array([[1.0], [2.0], [3.0], [4.0]])
    pred = 2 * y + 1  # errors 2, 3, 4, 5
    m = regression_metrics(y, pred, ["z"], train_mean=np.array([2.0]))
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 9 + 16 + 25) / 4))
    assert m["mae"] == pytest.approx(3.5)
    # SS_tot = 2.25 + 0.25 + 0.25 + 2.25 = 5, SS_res = 54
    assert m["r2"] == pytest.approx(1 - 54 / 5)
    assert m["pearson_r2"] == pytest.approx(1.0)
    assert m["pearson_r"] == pytest.approx(1.0)
    assert m["r2"] < m["pearson_r2"]
    # baseline predicts the TRAIN mean 2.0: errors -1, 0, 1, 2
    assert m["baseline/rmse"] == pytest.approx(math.sqrt(6 / 4))
    assert m["baseline/mae"] == pytest.approx(1.0)
    assert m["baseline/r2"] == pytest.approx(1 - 6 / 5)
    assert "rmse/z" not in m  # per-target keys only when T > 1


def test_regression_per_target_and_constant_columns() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(20, 3))
    pred = y + rng.normal(scale=0.1, size=y.shape)
    pred[:, 1] = 5.0  # constant prediction: Pearson undefined for column b
    y[:, 2] = 1.0  # constant truth: Pearson undefined for column c
    m = regression_metrics(y, pred, ["a", "b", "c"], train_mean=y.mean(axis=0))
    assert {"rmse/a", "rmse/b", "rmse/c", "r2/a", "r2/b", "r2/c", "pearson_r2/a"} <= m.keys()
    assert "pearson_r2/b" not in m and "pearson_r2/c" not in m
    r_a = np.corrcoef(y[:, 0], pred[:, 0])[0, 1]
    assert m["pearson_r2"] == pytest.approx(r_a**2)  # averaged over the defined targets only
    assert m["rmse/b"] == pytest.approx(np.sqrt(np.mean((y[:, 1] - 5.0) ** 2)))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert all(np.isfinite(v) for v in m.values())


def test_regression_baseline_rmse_is_std_and_r2_zero() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(loc=3.0, scale=2.0, size=(50, 1))
    m = regression_metrics(y, y + 0.1, ["z"], train_mean=y.mean(axis=0))
    assert m["baseline/rmse"] == pytest.approx(float(np.std(y)))
    assert m["baseline/r2"] == pytest.approx(0.0, abs=1e-12)
    off = regression_metrics(y, y, ["z"], train_mean=y.mean(axis=0) + 1.0)
    assert off["baseline/r2"] < 0


def test_regression_shape_mismatch_names_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        regression_metrics(np.zeros((4, 2)), np.zeros((4, 3)), ["a", "b"], np.zeros(2))
    with pytest.raises(ValueError, match="train_mean shape"):
        regression_metrics(np.zeros((4, 2)), np.zeros((4, 2)), ["a", "b"], np.zeros(3))
    with pytest.raises(ValueError, match="target names"):
        regression_metrics(np.zeros((4, 2)), np.zeros((4, 2)), ["a"], np.zeros(2))


# -------------------------------------------------------------------------------------------- vote fractions
def test_vote_fraction_per_question_on_kaggle_tree() -> None:
    cols = KAGGLE_TREE.columns
    assert len(cols) == 37
    y = np.zeros((2, 37))
    pred = np.zeros((2, 37))
    pred[:, [cols.index(c) for c in ("Class1.1", "Class1.2", "Class1.3")]] = 0.3
    pred[:, [cols.index(c) for c in ("Class6.1", "Class6.2")]] = 0.1
    train_mean = np.zeros(37)
    train_mean[cols.index("Class7.2")] = 0.6  # Class7 has 3 answers
    m = vote_fraction_metrics(y, pred, cols, train_mean, tree=KAGGLE_TREE)

    assert m["rmse"] == pytest.approx(math.sqrt((2 * 3 * 0.09 + 2 * 2 * 0.01) / (2 * 37)))
    assert m["mae"] == pytest.approx((2 * 3 * 0.3 + 2 * 2 * 0.1) / (2 * 37))
    assert m["rmse/Class1"] == pytest.approx(0.3)
    assert m["rmse/Class6"] == pytest.approx(0.1)
    assert m["rmse/Class2"] == 0.0
    assert {f"rmse/Class{q}" for q in range(1, 12)} <= m.keys()
    assert m["baseline/rmse/Class7"] == pytest.approx(math.sqrt(0.36 / 3))
    assert m["baseline/rmse"] == pytest.approx(math.sqrt(0.36 / 37))
    assert m["baseline/rmse/Class1"] == 0.0

    # columns looked up by name: a permuted column order gives the same numbers
    perm = np.random.default_rng(0).permutation(37)
    mp = vote_fraction_metrics(y[:, perm], pred[:, perm], [cols[i] for i in perm], train_mean[perm], KAGGLE_TREE)
    assert mp == pytest.approx(m)


def test_vote_fraction_without_tree_and_baseline_std() -> None:
    rng = np.random.default_rng(2)
    y = rng.uniform(size=(30, 3))
    m = vote_fraction_metrics(y, y * 0.9, ["a", "b", "c"], train_mean=y.mean(axis=0))
    assert {"rmse/a", "rmse/b", "rmse/c", "baseline/rmse/a", "baseline/rmse/c"} <= m.keys()
    assert m["rmse/b"] == pytest.approx(0.1 * np.sqrt(np.mean(y[:, 1] ** 2)))
    assert m["baseline/rmse/a"] == pytest.approx(float(np.std(y[:, 0])))
    assert m["baseline/rmse"] == pytest.approx(float(np.sqrt(np.mean(np.std(y, axis=0) ** 2))))


def test_vote_fraction_errors() -> None:
    with pytest.raises(ValueError, match=r"\(3, 37\).*\(3, 36\)"):
        vote_fraction_metrics(np.zeros((3, 37)), np.zeros((3, 36)), KAGGLE_TREE.columns, np.zeros(37), KAGGLE_TREE)
    tree = DecisionTree("t", (Question("Q", ("x", "missing")),))
    with pytest.raises(ValueError, match="missing"):
        vote_fraction_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["x", "y"], np.zeros(2), tree)


def test_prefix_test() -> None:
    out = prefix_test({"rmse": 1.0, "rmse/Class1": 2.0, "baseline/rmse": 3.0, "baseline/rmse/Class1": 4.0})
    assert out == {"test/rmse": 1.0, "test/rmse/Class1": 2.0, "baseline/rmse": 3.0, "baseline/rmse/Class1": 4.0}
