"""The uncertainty step of the run skeleton: calibrated on validation (never test) or out of fold, measured on rows the
calibration never saw, the same intervals from the bundle, in the map's bands, and bad settings refused up front."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import rasterio

from geocnn.config import UncertaintyConfig, load_config
from geocnn.data.catalog import Catalog
from geocnn.domains import run_experiment
from geocnn.domains.base import predict_catalog
from geocnn.domains.calibrate import calibrate, calibrated_columns, coverage_text
from geocnn.errors import GeocnnError
from geocnn.evaluation.calibration import temper
from geocnn.inference.bundle import load_bundle
from geocnn.models.tasks import Targets, task_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny_earth(root: Path, *extra: str):  # noqa: ANN201 - an EarthExperiment
    """A direct CNN on a 256 px generated scene: 120 clusters in 4 countries, one grouped split (val = one country
    of 30 clusters, 6 of them rural), 16 px chips, one epoch of timm's test_resnet."""
    return load_config(CONFIGS / "poverty_demo.yaml", [
        f"output_dir={root / 'run'}", f"data.store_root={root / 'stores'}", "earth.synthetic_size=256",
        "earth.synthetic_clusters=120", "earth.chip_px=16", "data.chip_size=16", "earth.chips_per_cluster=1",
        "two_stage.enabled=false", "model.task=regression", "model.backbone=test_resnet", "train.epochs=1",
        "augment.tta_views=1", "tracking.enabled=false", "split.folds=null", "uncertainty.bootstrap=0", *extra])


@pytest.fixture(scope="module")
def one_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """80 % intervals, Mondrian by urban/rural, calibrated on the validation country (6 rural, 24 urban clusters)."""
    root = tmp_path_factory.mktemp("earth_one_split") / "a"
    return root, run_experiment(tiny_earth(root, "uncertainty.level=0.8", "uncertainty.mondrian=urban"),
                                progress=False)


@pytest.mark.slow
def test_one_split_calibrates_on_validation_and_predict_gives_the_same_intervals(one_split: tuple[Path, dict]) -> None:
    root, summary = one_split
    m = summary["metrics"]
    table = pd.read_parquet(root / "run" / "predictions.parquet")
    val, test = table[table["split"] == "val"], table[table["split"] == "test"]
    assert len(val) == 30 and len(test) == 30
    assert m["uncertainty/level"] == 0.8 and m["uncertainty/n_calibration"] == 30
    # coverage and width measured on the test rows only, from the table's own columns
    inside = (test["wealth"] >= test["lower"]) & (test["wealth"] <= test["upper"])
    assert 0.0 <= m["uncertainty/coverage"] <= 1.0 and m["uncertainty/coverage"] == pytest.approx(inside.mean())
    assert 0 < m["uncertainty/mean_width"] == pytest.approx(test["interval_width"].mean())
    np.testing.assert_allclose(table["interval_width"], table["upper"] - table["lower"], rtol=1e-9)
    assert summary["uncertainty"].startswith("80% conformal intervals cover")
    # the bundle's quantiles are validation residuals (never test): the ceil(0.8 (n + 1))-th smallest per category,
    # or the next one where 0.8 (n + 1) is a whole number (crepes rounds 1 - 0.8 down there: conservative)
    cal = load_bundle(root / "run" / "bundle").preprocessing.calibration
    assert cal.kind == "interval" and cal.mondrian == "urban" and cal.calibrated_on.startswith("the validation split")
    assert set(cal.quantiles["wealth"]) == {"*", "urban", "rural"}
    for key, rows in (("*", val), ("urban", val[val["urban"] == "urban"]), ("rural", val[val["urban"] == "rural"])):
        residuals = np.sort(np.abs(rows["wealth"] - rows["pred_wealth"]).to_numpy())
        k = int(np.ceil(0.8 * (len(rows) + 1) - 1e-9))
        q = cal.quantiles["wealth"][key]
        assert residuals[k - 1] - 1e-6 <= q <= residuals[min(k, len(rows) - 1)] + 1e-6, (key, q, residuals)
        assert np.isclose(residuals, q, atol=1e-6).any()
    test_residuals = np.abs(test["wealth"] - test["pred_wealth"]).to_numpy()
    assert not np.isclose(test_residuals, cal.quantiles["wealth"]["*"], atol=1e-9).any()  # not a test residual
    half = (table["upper"] - table["pred_wealth"]).to_numpy()
    want = table["urban"].map(cal.quantiles["wealth"]).to_numpy()
    np.testing.assert_allclose(half, want, rtol=1e-6)
    # predict_catalog with the bundle on the raw survey rows (urban coded 1/0) gives the run's test intervals
    clusters = pd.read_csv(next((root / "synthetic_earth").rglob("clusters.csv")))
    frame = clusters.rename(columns={"cluster_id": "id"}).astype({"id": str})
    frame = frame[frame["id"].isin(test["id"].astype(str))].reset_index(drop=True)
    again = predict_catalog(load_bundle(root / "run" / "bundle"), Catalog(frame, [], "clusters"), device="cpu")
    mine = test.set_index(test["id"].astype(str)).loc[again["id"]]
    for column in ("pred_wealth", "lower", "upper", "interval_width"):
        np.testing.assert_allclose(again[column], mine[column], rtol=1e-5, atol=1e-5, err_msg=column)


@pytest.mark.slow
def test_the_map_carries_interval_bands_and_a_width_quicklook(one_split: tuple[Path, dict]) -> None:
    root, summary = one_split
    cal = load_bundle(root / "run" / "bundle").preprocessing.calibration
    assert Path(summary["outputs"]["map_width_png"]).stat().st_size > 5_000
    with rasterio.open(summary["outputs"]["map_tif"]) as out:
        assert out.descriptions == ("wealth", "lower", "upper", "interval_width")
        pred, lower, upper, width = out.read().astype(np.float64)
    ok = np.isfinite(pred)
    assert ok.mean() > 0.5
    # a pixel has no urban/rural flag: the pooled quantile on either side
    np.testing.assert_allclose(width[ok], 2 * cal.quantiles["wealth"]["*"], rtol=1e-4)
    np.testing.assert_allclose(pred[ok] - lower[ok], upper[ok] - pred[ok], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "match"), [
    (("uncertainty.level=0.99",), r"uncertainty.level=0.99: .* 30 validation samples, too few .*at least 99"),
    (("uncertainty.mondrian=urban",), r"uncertainty.mondrian=urban: categories \['rural'\] have fewer than 9"),
])
def test_too_few_calibration_rows_fail_before_training_or_outputs(tmp_path: Path, extra: tuple[str, ...],
                                                                   match: str) -> None:
    with pytest.raises(GeocnnError, match=match):
        run_experiment(tiny_earth(tmp_path, *extra), progress=False)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.*"))


def test_tta_spread_is_refused_by_the_config() -> None:
    with pytest.raises(GeocnnError, match="uncertainty.normalise=tta_spread is not supported.*normalise: none"):
        load_config(CONFIGS / "poverty_demo.yaml", ["uncertainty.normalise=tta_spread"])
    assert UncertaintyConfig(normalise="none").normalise == "none"


def test_leave_one_group_out_keys_of_several_outputs_and_the_worst_group() -> None:
    """Two outputs, 3 groups: per-output pooled keys apart from the per-group keys; the description names the worst
    group (the one whose errors are twice the others')."""
    rng = np.random.default_rng(3)
    n = 600
    groups = np.repeat(np.array(["A", "B", "C'x"], dtype=object), n // 3)
    y = rng.normal(size=(n, 2))
    pred = y + rng.normal(size=(n, 2)) * np.where(groups == "C'x", 2.0, 1.0)[:, None]
    cfg = SimpleNamespace(uncertainty=UncertaintyConfig(level=0.9))
    out = calibrate(pred, y, pd.DataFrame({"group": groups}), np.full(n, "test"), pd.factorize(groups)[0], groups,
                    task_spec("regression"), Targets(["a", "b"], []), cfg)
    m = out.metrics
    assert {"uncertainty/a/loco_coverage", "uncertainty/b/loco_mean_width"} <= m.keys()
    per_group = {k.rsplit("/", 1)[1]: v for k, v in m.items() if k.startswith("uncertainty/loco_coverage/")}
    assert set(per_group) == {"A", "B", "C_x"}  # MLflow-safe names
    assert per_group["C_x"] == m["uncertainty/loco_worst_coverage"] < 0.75 < min(per_group["A"], per_group["B"])
    assert list(out.coverage.columns) == ["group", "n", "coverage", "mean_width", "nominal"]
    assert out.coverage["group"].iloc[0] == "C'x" and (out.coverage["n"] == 200).all()
    assert {"a_lower", "a_upper", "a_interval_width", "b_lower"} <= out.columns.keys()
    text = coverage_text(m)
    assert text.startswith("90% conformal intervals cover") and "worst group C_x" in text


def test_one_split_class_sets_with_a_temperature_from_validation() -> None:
    """Overconfident probabilities: the temperature fitted on validation lowers the test ECE, sets cover near 90 %,
    and the bundle's calibration applied to the test rows gives the run's columns."""
    rng = np.random.default_rng(4)
    k, n = 4, 3000
    logits = rng.normal(size=(n, k)) * 2
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (true.cumsum(1) > rng.random((n, 1))).argmax(1)
    proba = temper(true, 0.4)  # the network's overconfident output
    split = np.where(np.arange(n) < 1000, "val", "test").astype(object)
    classes = ["a", "b", "c", "d"]
    cfg = SimpleNamespace(uncertainty=UncertaintyConfig(level=0.9))
    out = calibrate(proba, labels, pd.DataFrame(index=range(n)), split, None, None, task_spec("classification"),
                    Targets(["class"], classes), cfg)
    m = out.metrics
    assert out.calibration.kind == "set" and m["uncertainty/temperature"] == pytest.approx(2.5, abs=0.4)
    assert m["test/ece_uncalibrated"] > 0.1 and m["test/ece"] < 0.05, m
    assert m["uncertainty/coverage"] == pytest.approx(0.9, abs=0.03) and 1 < m["uncertainty/mean_set_size"] < k
    test = split == "test"
    hit = [classes[t] in s.split("|") for t, s in zip(labels[test], out.columns["prediction_set"][test])]
    assert np.mean(hit) == pytest.approx(m["uncertainty/coverage"])
    np.testing.assert_allclose(out.columns["prob_a"], temper(proba, out.calibration.temperature)[:, 0])
    again = calibrated_columns(out.calibration, proba[test], Targets(["class"], classes))
    assert list(again["prediction_set"]) == list(out.columns["prediction_set"][test])
    assert (again["set_size"] == out.columns["set_size"][test]).all()
