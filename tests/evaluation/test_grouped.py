"""`geocnn score` reproduces published figures (Yeh et al. 2020) and fails clearly on bad tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.evaluation.grouped import score_table

runner = CliRunner()


def test_reproduces_yeh2020_out_of_country_figures(shared_data: Path) -> None:
    table = shared_data / "poverty" / "dhs_ooc_predictions_yeh2020.csv"
    res = runner.invoke(app, ["score", str(table), "--target", "label", "--prediction", "Resnet-18 MS+NL concat",
                              "--group", "country", "--by", "urban"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["pooled"]["pearson_r2"] == pytest.approx(0.668, abs=5e-4)
    assert out["group_mean"]["pearson_r2"] == pytest.approx(0.709, abs=5e-4)
    assert out["by"]["False"]["pearson_r2"] == pytest.approx(0.315, abs=5e-4)  # rural
    assert out["by"]["True"]["pearson_r2"] == pytest.approx(0.395, abs=5e-4)  # urban
    assert out["by_worst"]["pearson_r2"] == pytest.approx(0.315, abs=5e-4)
    assert len(out["groups"]) == 23 and out["pooled"]["n"] == 19669
    # R2 is reported beside squared Pearson r; R2 <= r^2 always (the prediction is one particular linear fit).
    assert 0.6 < out["pooled"]["r2"] <= out["pooled"]["pearson_r2"]


def test_bias_changes_r2_but_not_pearson_r2() -> None:
    frame = pd.DataFrame({"y": [0.0, 1.0, 2.0, 3.0], "p": [1.0, 2.0, 3.0, 4.0]})
    out = score_table(frame, "y", "p")
    assert out["pooled"]["pearson_r2"] == pytest.approx(1.0)
    assert out["pooled"]["r2"] == pytest.approx(1 - 4 / 5)  # SSE 4, SST 5
    assert out["pooled"]["rmse"] == pytest.approx(1.0)


def test_bad_tables_name_row_and_column(tmp_path: Path) -> None:
    frame = pd.DataFrame({"y": [0.0, 1.0, "x"], "p": [1.0, 2.0, 3.0]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    res = runner.invoke(app, ["score", str(tmp_path / "t.csv"), "--target", "y", "--prediction", "p"])
    assert res.exit_code == 2 and "row 4" in res.output and "'y'" in res.output
    res = runner.invoke(app, ["score", str(tmp_path / "t.csv"), "--target", "y", "--prediction", "pred"])
    assert res.exit_code == 2 and "pred" in res.output and "Available columns" in res.output
    res = runner.invoke(app, ["score", str(tmp_path / "missing.csv"), "--target", "y", "--prediction", "p"])
    assert res.exit_code == 2 and "not found" in res.output
