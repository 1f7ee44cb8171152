"""geocnn compare: two predictions tables of the same rows, a paired test of the models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.errors import GeocnnError
from geocnn.evaluation.compare import compare_tables

CLASSES = ["elliptical", "spiral", "merger"]


def class_table(right: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """A run's predictions table: the true class, and probabilities that pick it exactly where ``right``."""
    picked = np.where(right, labels, (labels + 1) % 3)
    proba = np.full((len(labels), 3), 0.1)
    proba[np.arange(len(labels)), picked] = 0.8
    frame = pd.DataFrame({"id": [f"g{i}" for i in range(len(labels))], "split": "test",
                          "morphology": np.array(CLASSES)[labels]})
    return frame.assign(**{f"prob_{c}": proba[:, k] for k, c in enumerate(CLASSES)})


def test_two_galaxies_out_of_94_read_as_not_significant(tmp_path: Path) -> None:
    labels = np.arange(94) % 3
    a, b = np.ones(94, bool), np.ones(94, bool)
    a[:26], b[:26] = False, False
    a[26:28] = False  # only B right on 2
    b[28:32] = False  # only A right on 4
    first, second = class_table(a, labels), class_table(b, labels)
    extra = pd.DataFrame({"id": ["train0"], "split": ["train"], "morphology": ["spiral"], "prob_elliptical": [1.0],
                          "prob_spiral": [0.0], "prob_merger": [0.0]})  # trained on: not compared
    first = pd.concat([first, extra], ignore_index=True)
    first.to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "run_b").mkdir()
    second.sample(frac=1, random_state=0).to_parquet(tmp_path / "run_b" / "predictions.parquet")  # order is free
    out = CliRunner().invoke(app, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "run_b"),
                                   "--target", "morphology"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["rows"] == 94 and result["test"] == "McNemar"
    assert result["only_a_right"] == 4 and result["only_b_right"] == 2
    assert result["p_value"] == pytest.approx(0.6875) and not result["significant"]
    assert result["a"]["accuracy"] == pytest.approx(66 / 94) and result["b"]["accuracy"] == pytest.approx(64 / 94)
    assert result["difference_b_minus_a"] == pytest.approx(-2 / 94)
    assert result["a"]["accuracy_ci_low"] < 66 / 94 < result["a"]["accuracy_ci_high"]


def test_regression_tables_get_a_paired_bootstrap_and_bad_pairs_are_refused() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    base = pd.DataFrame({"id": np.arange(300).astype(str), "wealth": y, "country": np.arange(300) % 10})
    poor = base.assign(pred_wealth=y + rng.normal(size=300))
    good = base.assign(pred_wealth=y + rng.normal(size=300) * 0.3)
    result = compare_tables(poor, good, "wealth", group="country", n=500)
    assert result["test"] == "paired bootstrap of r2" and result["significant"] and result["p_value"] < 0.01
    assert result["ci_low"] > 0.3 and result["b"]["r2"] - result["a"]["r2"] == pytest.approx(
        result["difference_b_minus_a"])
    with pytest.raises(GeocnnError, match="differs"):
        compare_tables(poor, good.assign(wealth=y + 1), "wealth")
    with pytest.raises(GeocnnError, match="share an id"):
        compare_tables(poor, good.assign(id="x" + good["id"]), "wealth")
