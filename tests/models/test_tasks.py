"""TaskSpec per task: targets prepared, heads, output transforms, losses, baselines, metrics and table columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from geocnn.data.catalog import Catalog
from geocnn.data.schema import KAGGLE_TREE
from geocnn.errors import GeocnnError
from geocnn.models.heads import DecisionTreeHead, DirichletHead, LinearHead
from geocnn.models.losses import dirichlet_multinomial_nll
from geocnn.models.tasks import TASKS, ScoreInput, Targets, task_spec

COUNTS = ["q_a", "q_b", "r_x", "r_y", "r_z"]


def catalog(values: dict[str, list], targets: list[str], classes: list[str] | None = None) -> Catalog:
    return Catalog(pd.DataFrame({"id": [str(i) for i in range(len(next(iter(values.values()))))], **values}),
                   targets, "cat.csv", classes or [])


def test_every_config_task_has_a_spec_and_unknown_names_are_refused() -> None:
    assert set(TASKS) == {"classification", "regression", "vote_fractions", "vote_counts"}
    with pytest.raises(GeocnnError, match="model.task 'segmentation' is not one of"):
        task_spec("segmentation")


def test_classification_encodes_labels_and_scores_against_the_majority_class() -> None:
    spec = task_spec("classification")
    cat = spec.prepare(catalog({"kind": ["spiral", "ring", "spiral", "spiral"]}, ["kind"]))
    assert cat.classes == ["ring", "spiral"] and cat.frame["kind"].tolist() == [1, 0, 1, 1]
    t = Targets(["kind"], cat.classes)
    y = spec.target_array(cat.frame, t)
    assert y.dtype == np.int64 and spec.n_outputs(t) == 2
    assert isinstance(spec.head(8, t), LinearHead)
    base = spec.baseline(y, 3, t)
    assert base.tolist() == [[0.0, 1.0]] * 3  # the majority class of the training truth
    proba = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    m = spec.score(ScoreInput(y, {"test": proba, "baseline": spec.baseline(y, 4, t)}), t)
    assert m["test/accuracy"] == 1.0 and m["baseline/accuracy"] == 0.75
    assert m["baseline/roc_auc"] == 0.5 and "baseline/log_loss" not in m  # baselines keep the comparable keys
    cols = spec.columns(proba, t)
    assert cols["pred_kind"].tolist() == ["spiral", "ring", "spiral", "spiral"] and "prob_ring" in cols
    assert spec.truth_columns(y, t)["kind"].tolist() == ["spiral", "ring", "spiral", "spiral"]
    out = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    yt = torch.tensor([0, 1])
    w = torch.tensor([1.0, 3.0])
    assert torch.allclose(spec.loss("cross_entropy", out, yt, t, torch.zeros(1), torch.ones(1), w),
                          F.cross_entropy(out, yt, weight=w))
    assert spec.class_weights("balanced", y, t).tolist() == pytest.approx([2.0, 4 / 6])
    with pytest.raises(GeocnnError, match="2 classes"):
        spec.class_weights([1.0], y, t)
    with pytest.raises(GeocnnError, match="exactly one target"):
        spec.prepare(catalog({"a": [1, 2], "b": [1, 2]}, ["a", "b"]))


def test_regression_learns_standardised_targets_and_reports_r2_and_pearson() -> None:
    spec = task_spec("regression")
    t = Targets(["y"], [])
    assert spec.standardises(t) and not spec.standardises(Targets(["y"], [], sigmoid=True))
    mean, std = torch.tensor([[10.0]]), torch.tensor([[2.0]])
    out = torch.tensor([[1.0], [-0.5]])
    assert spec.to_prediction(out, t, mean, std).flatten().tolist() == [12.0, 9.0]
    loss = spec.loss("mse", out, torch.tensor([[12.0], [9.0]]), t, mean, std)
    assert float(loss) == pytest.approx(0.0)  # predictions in the target's units == the targets
    y = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    pred = y + np.array([[0.5], [0.0], [0.5], [0.3], [9.0], [-9.0]])
    by = np.array(["urban", "rural", "urban", "rural", "unknown", "unknown"])
    m = spec.score(ScoreInput(y, {"test": pred, "baseline": spec.baseline(y, 6, t)},
                              groups=np.array(["a", "a", "b", "b", "c", "c"]), by=by), t)
    assert m["test/r2"] < m["test/pearson_r2"] < 1.0 and m["baseline/r2"] == pytest.approx(0.0)
    assert "test/group_mean/r2" in m
    # worst of urban/rural: the 'unknown' points (predicted 9 off) take no part in the breakdown
    def r2(rows: np.ndarray) -> float:
        return 1 - ((y[rows] - pred[rows]) ** 2).sum() / ((y[rows] - y[rows].mean()) ** 2).sum()
    assert m["test/worst_urban/r2"] == pytest.approx(min(r2(by == "urban"), r2(by == "rural")))
    assert spec.baseline_columns({"test": y, "baseline_gbm": y}, t) == {"baseline_gbm_y": pytest.approx(y[:, 0])}
    with pytest.raises(GeocnnError, match="constant"):
        spec.prepare(catalog({"y": [1.0, 1.0, 1.0]}, ["y"]))
    with pytest.raises(GeocnnError, match="class label"):
        spec.prepare(catalog({"label": [0, 1]}, ["label"], classes=["a", "b"]))


def test_vote_fractions_use_the_kaggle_tree_head_and_score_per_question() -> None:
    spec = task_spec("vote_fractions")
    t = Targets(list(KAGGLE_TREE.columns), [])
    assert isinstance(spec.head(8, t), DecisionTreeHead) and not spec.standardises(t)
    with pytest.raises(GeocnnError, match="37 Kaggle columns"):
        spec.check_targets(Targets(["a", "b"], []))
    y = np.random.default_rng(0).dirichlet(np.ones(37), 6)
    m = spec.score(ScoreInput(y, {"test": y, "baseline": spec.baseline(y, 6, t)}), t)
    assert m["test/rmse"] == 0.0 and {"test/rmse/Class1", "baseline/rmse/Class11"} <= set(m)
    with pytest.raises(GeocnnError, match="outside"):
        spec.prepare(catalog({"f": [0.5, 1.5]}, ["f"]))


def test_vote_counts_fill_unasked_questions_and_score_fractions_of_answered_ones() -> None:
    spec = task_spec("vote_counts")
    cat = spec.prepare(catalog({"q_a": [3, ""], "q_b": [1, None], "r_x": [0, 2], "r_y": [0, 1], "r_z": [0, 1]},
                               COUNTS))
    assert cat.frame["q_a"].tolist() == [3.0, 0.0]
    t = Targets(COUNTS, [])
    assert isinstance(spec.head(8, t), DirichletHead)
    y = spec.target_array(cat.frame, t)
    frac, mask = spec.truth(y, t)
    assert frac[0, :2].tolist() == [0.75, 0.25] and mask[0, :2].all() and not mask[0, 2:].any()
    alpha = torch.ones((2, 5)) * 2.0
    assert torch.allclose(spec.loss("dirichlet_multinomial", alpha, torch.tensor(y), t, torch.zeros(1),
                                    torch.ones(1)), dirichlet_multinomial_nll(torch.tensor(y), alpha, spec.tree(t)))
    assert spec.to_prediction(alpha, t, torch.zeros(1), torch.ones(1))[0, :2].tolist() == [0.5, 0.5]
    with pytest.raises(GeocnnError, match="dirichlet_multinomial"):
        spec.resolve_loss("mse")
    assert spec.resolve_loss("auto") == "dirichlet_multinomial"
    assert task_spec("regression").resolve_loss("auto") == "mse"
