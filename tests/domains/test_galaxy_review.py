"""What to look at next on the galaxy side: the least certain galaxies ranked into review.csv and a montage, the
reliability diagram, and the ranking rules on hand-made tables."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from geocnn.config import load_config
from geocnn.data.schema import KAGGLE_TREE, questions_from_columns
from geocnn.domains import run_experiment
from geocnn.domains.galaxy import entropy, review_table, review_titles, vote_entropy
from geocnn.models.tasks import Targets, task_spec
from geocnn.synthetic.galaxies import make_galaxies


def _non_white(path: Path) -> int:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return int((arr.min(axis=2) < 250).sum())


@pytest.mark.slow
def test_a_tiny_run_ranks_its_least_certain_test_galaxies(tmp_path: Path) -> None:
    catalog = make_galaxies(tmp_path / "syn", 150, 32, seed=5)
    cfg = load_config(overrides=[
        "name=review", f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}", "data.format=csv",
        f"data.catalog={catalog}", "data.targets=[morphology]", "data.crop=28", "data.chip_size=16",
        "split.method=stratified", "split.val_fraction=0.2", "split.test_fraction=0.2", "model.backbone=test_resnet",
        "model.task=classification", "train.epochs=2", "train.batch_size=32", "augment.tta_views=none",
        "uncertainty.review=8", "uncertainty.bootstrap=0"])
    summary = run_experiment(cfg, progress=False)
    out = tmp_path / "run"
    table = pd.read_parquet(out / "predictions.parquet").set_index("id")
    review = pd.read_csv(out / "review.csv", dtype={"id": str})
    assert summary["outputs"]["review_csv"] == str(out / "review.csv")
    assert list(review["rank"]) == list(range(1, 9))
    assert (table.loc[review["id"], "split"] == "test").all()  # label_fraction 1: test rows only
    # the entropy is that of the table's (temperature-scaled) probabilities, sorted down, and the top of all test rows
    proba = table.filter(like="prob_")
    expected = -(proba * np.log(proba)).sum(1)
    np.testing.assert_allclose(review["entropy"], expected.loc[review["id"]], rtol=1e-9)
    assert (np.diff(review["entropy"]) <= 0).all()
    test_entropy = expected[table["split"] == "test"]
    assert review["entropy"].iloc[-1] >= np.sort(test_entropy.to_numpy())[-8] - 1e-12
    np.testing.assert_allclose(review["confidence"], proba.loc[review["id"]].max(1))
    assert list(review["predicted"]) == list(table.loc[review["id"], "pred_morphology"])
    assert list(review["observed"]) == list(table.loc[review["id"], "morphology"])
    assert all(Path(p).exists() for p in review["image"])
    assert (review["set_size"] >= 1).all()
    # the montage of those 8 and the reliability diagram are drawn, not blank
    montage = out / "plots" / "review_montage.png"
    assert _non_white(montage) > 5000 and _non_white(out / "plots" / "reliability.png") > 10000
    client = MlflowClient(mlflow.get_tracking_uri())
    logged = {a.path for a in client.list_artifacts(summary["run_id"], "review")}
    assert logged == {"review/review.csv", "review/review_montage.png"}
    assert "plots/reliability.png" in {a.path for a in client.list_artifacts(summary["run_id"], "plots")}


def test_review_ranks_test_and_unlabeled_rows_by_entropy_then_confidence() -> None:
    classes = ["a", "b", "c"]
    proba = np.array([[0.34, 0.33, 0.33],   # train: never ranked however uncertain
                      [0.5, 0.5, 0.0],      # test, H = log 2
                      [0.0, 0.5, 0.5],      # unlabeled, H = log 2 as well: tie, same confidence -> by id
                      [0.8, 0.1, 0.1],      # test
                      [0.4, 0.3, 0.3],      # val: never ranked
                      [1.0, 0.0, 0.0],      # test, H = 0
                      [0.6, 0.2, 0.2]])     # unlabeled, H = 0.95: the least certain
    table = pd.DataFrame({"id": ["t0", "x2", "x1", "t3", "v4", "t5", "u6"],
                          "split": ["train", "test", "unlabeled", "test", "val", "test", "unlabeled"],
                          "label": ["a", "b", "c", "a", "a", "a", "b"]})
    for k, c in enumerate(classes):
        table[f"prob_{c}"] = proba[:, k]
    spec, targets = task_spec("classification"), Targets(["label"], classes)
    review, rows = review_table(table, np.zeros_like(proba), spec, targets, 4)  # the table's columns win over pred
    assert list(review["id"]) == ["u6", "x1", "x2", "t3"] and list(rows) == [6, 2, 1, 3]
    np.testing.assert_allclose(review["entropy"], entropy(proba[rows]))
    assert review["entropy"].iloc[0] == pytest.approx(-(0.6 * np.log(0.6) + 0.4 * np.log(0.2)))
    assert review["entropy"].iloc[1] == pytest.approx(np.log(2))
    assert list(review["predicted"]) == ["a", "b", "a", "a"] and list(review["observed"]) == ["b", "c", "b", "a"]
    assert list(review["split"]) == ["unlabeled", "unlabeled", "test", "test"]
    assert review_titles(review)[1] == "#2 x1\nb (0.50) H=0.69\ntrue: c"
    # the same probabilities in another order tie exactly (not by the last bit of a sum): then the id decides;
    # n larger than the candidates is fine
    tie = table.iloc[[1, 3]].copy()
    tie[["prob_a", "prob_b", "prob_c"]] = [[0.7, 0.2, 0.1], [0.1, 0.7, 0.2]]
    review, _ = review_table(tie, np.zeros((2, 3)), spec, targets, 5)
    assert list(review["id"]) == ["t3", "x2"]
    # plain regression has no score to rank by
    assert review_table(table, np.zeros((7, 1)), task_spec("regression"), Targets(["label"], []), 3) is None


def test_vote_entropy_by_hand() -> None:
    tree = questions_from_columns(["q1_a", "q1_b", "q2_a", "q2_b", "q2_c", "q2_d"])
    even = np.array([[0.5, 0.5, 0.25, 0.25, 0.25, 0.25]])
    sure = np.array([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    mixed = np.array([[0.5, 0.5, 1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(vote_entropy(np.vstack([even, sure, mixed]), tree), [1.0, 0.0, 0.5])
    # the Kaggle tree: a child question counts by the share of volunteers reaching it (its parent answer)
    f = np.zeros((1, 37))
    cols = KAGGLE_TREE.columns
    f[0, cols.index("Class1.1")], f[0, cols.index("Class1.2")] = 0.9, 0.1  # Class1: H = h(0.9)/log 3
    f[0, cols.index("Class2.1")] = f[0, cols.index("Class2.2")] = 0.05     # Class2 (weight 0.1): even, 1
    f[0, cols.index("Class6.1")], f[0, cols.index("Class6.2")] = 0.0, 1.0  # Class6 (root, weight 1): 0
    f[0, cols.index("Class7.1")] = 0.9                                      # Class7 (weight 0.9): certain, 0
    h1 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(3)
    expected = (1.0 * h1 + 0.1 * 1.0 + 1.0 * 0.0 + 0.9 * 0.0) / (1.0 + 0.1 + 1.0 + 0.9)
    assert vote_entropy(f, KAGGLE_TREE)[0] == pytest.approx(expected)
    table = pd.DataFrame({"id": ["g"], "split": ["test"], **{c: f[:, j] for j, c in enumerate(cols)}})
    review, _ = review_table(table, f, task_spec("vote_fractions"), Targets(cols, []), 1)
    assert review.loc[0, "predicted"] == "Class1.1" and review.loc[0, "confidence"] == pytest.approx(0.9)
    assert review.loc[0, "vote_entropy"] == pytest.approx(expected) and review.loc[0, "observed"] == "Class1.1"
