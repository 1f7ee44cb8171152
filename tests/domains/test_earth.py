"""The Earth domain on generated scenes: two-stage transfer vs night lights, direct CNN, exports, MLflow, Prefect."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import rasterio
from filelock import FileLock
from mlflow import MlflowClient

from geocnn.config import load_config
from geocnn.data.catalog import Catalog
from geocnn.domains import run_experiment
from geocnn.domains.base import predict_catalog
from geocnn.domains.earth_maps import map_scene
from geocnn.errors import GeocnnError
from geocnn.inference.bundle import load_bundle
from geocnn.inference.predict import Forward
from geocnn.tracking.model_uri import resolve_model
from pipelines.experiment import experiment_flow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def demo_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """The shipped demo config, shrunk to a 512 px scene and a few epochs."""
    return [f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}", "earth.synthetic_size=512",
            "earth.synthetic_clusters=160", "two_stage.stage1_chips=1000", "train.epochs=4", "model.backbone=test_resnet",
            "tracking.registered_model=test_poverty", *extra]


@pytest.fixture(scope="session")
def two_stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One two-stage run through the Prefect flow (no server), shared by the assertions below.

    Built once per test session: the xdist workers share the folder, the first one builds it under a file lock
    and the others read it (pytest-xdist's pattern for a session fixture that must run once).
    """
    tmp = tmp_path_factory.getbasetemp().parent / "earth_two_stage"  # the same folder for every worker
    done = tmp / "summary.json"
    with FileLock(f"{tmp}.lock"):
        if not done.exists():
            old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "GEOCNN_MLFLOW_ARTIFACTS")}
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
            os.environ["GEOCNN_MLFLOW_ARTIFACTS"] = str(tmp / "mlartifacts")
            try:
                summary = experiment_flow(str(CONFIGS / "poverty_demo.yaml"), demo_overrides(tmp), progress=False)
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            summary["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
            done.write_text(json.dumps(summary))
    return tmp, json.loads(done.read_text())


def test_two_stage_beats_night_lights_and_the_mean_out_of_country(two_stage: tuple[Path, dict]) -> None:
    tmp, summary = two_stage
    m = json.loads((tmp / "run" / "metrics.json").read_text())
    assert m == pytest.approx(summary["metrics"])
    # Leave-one-country-out, 160 clusters: the CNN features carry the daytime signal night lights lack.
    assert m["test/r2"] > 0.3, m
    assert m["test/r2"] > m["baseline_nightlights/r2"] + 0.05, m
    assert m["test/r2"] > m["baseline/r2"] + 0.3, m
    # Jean et al.: night lights are 0 over the poorer half; the daytime features still rank those clusters.
    assert m["poorer_half/test/pearson_r2"] > m["poorer_half/baseline_nightlights/pearson_r2"] + 0.05, m
    # Stage 1 learned night-light classes from daytime chips: balanced accuracy far above chance (1/3).
    assert m["stage1/test/balanced_accuracy"] > 0.6, m
    assert m["stage1/test/accuracy"] > m["stage1/baseline/accuracy"], m
    assert {f"stage2/alpha/fold{k}" for k in range(4)} <= m.keys()


def test_cluster_exports_agree_and_hold_every_cluster_once(two_stage: tuple[Path, dict]) -> None:
    tmp, _ = two_stage
    csv = pd.read_csv(tmp / "run" / "predictions.csv", dtype={"id": str})
    pq = pd.read_parquet(tmp / "run" / "predictions.parquet")
    assert len(csv) == 160 and csv["id"].is_unique
    assert np.allclose(csv["pred_wealth"], pq["pred_wealth"]) and np.allclose(csv["wealth"], pq["wealth"])
    assert {"baseline_wealth", "baseline_nightlights_wealth", "group", "country", "urban", "n_chips"} <= set(csv)
    assert set(csv["fold"]) == {0, 1, 2, 3} and set(csv["split"]) == {"test"}
    # each country is one fold: out of country
    assert csv.groupby("group")["fold"].nunique().max() == 1
    gj = json.loads((tmp / "run" / "predictions.geojson").read_text())
    assert len(gj["features"]) == 160
    f0 = gj["features"][0]
    row = csv.set_index("id").loc[str(f0["properties"]["id"])]
    assert f0["geometry"]["coordinates"] == pytest.approx([row["lon"], row["lat"]])
    assert f0["properties"]["pred_wealth"] == pytest.approx(row["pred_wealth"])


def test_map_is_on_the_scene_grid_with_nan_nodata(two_stage: tuple[Path, dict]) -> None:
    tmp, _ = two_stage
    scene = next((tmp / "synthetic_earth").glob("*/scene.tif"))
    with rasterio.open(scene) as src, rasterio.open(tmp / "run" / "maps" / "prediction.tif") as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        assert out.dtypes[0] == "float32" and np.isnan(out.nodata) and out.descriptions[0] == "wealth"
        pred = out.read(1)
        valid = src.read_masks(1) > 0
        assert np.isnan(pred[~valid]).all()
        assert np.isfinite(pred[valid]).mean() > 0.9
    # the map agrees with the out-of-fold cluster predictions where clusters are
    csv = pd.read_csv(tmp / "run" / "predictions.csv", dtype={"id": str})
    with rasterio.open(tmp / "run" / "maps" / "prediction.tif") as out:
        from rasterio.warp import transform

        xs, ys = transform("EPSG:4326", out.crs, csv["lon"].tolist(), csv["lat"].tolist())
        at = np.array([v[0] for v in out.sample(list(zip(xs, ys)))])
    ok = np.isfinite(at)
    assert np.corrcoef(at[ok], csv["wealth"][ok])[0, 1] > 0.5
    assert (tmp / "run" / "maps" / "prediction.png").stat().st_size > 10_000
    # the HTML map beside it: every held-out cluster with its observed value, out-of-fold prediction and fold
    html = (tmp / "run" / "maps" / "prediction.html").read_text()
    held = csv[csv["split"] == "test"]
    assert html.count('"type": "Point"') == len(held) > 0 and f'"id": "{held["id"].iloc[0]}"' in html


def test_mlflow_holds_metrics_plots_maps_and_both_stages(two_stage: tuple[Path, dict],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, summary = two_stage
    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/r2"] == pytest.approx(summary["metrics"]["test/r2"])
    assert "stage1/test/balanced_accuracy" in run.data.metrics
    # stage 1 is its own run, a child of this one, with its epoch curves and held-out night-light metrics
    s1 = client.get_run(run.data.tags["geocnn.stage1_run_id"])
    assert s1.info.status == "FINISHED" and s1.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert len(client.get_metric_history(s1.info.run_id, "val/loss")) == 4  # one point per epoch
    assert "test/balanced_accuracy" in s1.data.metrics
    arts = {a.path for folder in ("plots", "maps", "predictions") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"plots/pred_vs_true.png", "plots/residual_map.png", "maps/prediction.tif", "maps/prediction.html",
            "predictions/predictions.geojson"} <= arts
    versions = client.search_model_versions("name='test_poverty'")
    assert versions and versions[0].run_id == run.info.run_id
    assert client.get_model_version_by_alias("test_poverty", "champion").version == versions[0].version
    # the registered model is the bundle with its stage-2 ridge: raw chips in, wealth out, as the loop predicts
    mlflow.set_tracking_uri(summary["tracking_uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["tracking_uri"])
    bundle = load_bundle(resolve_model("models:/test_poverty@champion"))
    assert bundle.preprocessing.stage2 is not None and bundle.preprocessing.stage2.target == "wealth"
    store_chips = np.load(next((tmp / "stores").glob("*/chips.npy")), mmap_mode="r")[:3]
    pyfunc = mlflow.pyfunc.load_model(summary["model_uri"])
    want = Forward(bundle.net, bundle.tta_views, "cpu", head=bundle.stage2)(np.nan_to_num(np.asarray(store_chips)))
    np.testing.assert_allclose(pyfunc.predict(np.nan_to_num(np.asarray(store_chips))), want, rtol=1e-5, atol=1e-5)
    # promotion: scored on the inner-CV validation R2 (never test)
    tags = client.get_model_version("test_poverty", versions[0].version).tags
    assert tags["geocnn.promotion.metric"] == "validation/r2" and tags["geocnn.promotion.promoted"] == "True"
    assert float(tags["geocnn.promotion.candidate"]) == pytest.approx(run.data.metrics["validation/r2"])


def test_direct_cnn_with_country_folds_beats_the_train_mean(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "poverty_demo.yaml", demo_overrides(
        tmp_path, "two_stage.enabled=false", "model.task=regression", "earth.synthetic_clusters=240",
        "earth.chips_per_cluster=2", "train.epochs=8", "maps.enabled=false", "tracking.enabled=false", "split.folds=2", "split.val_fraction=0.2"))
    m = run_experiment(cfg, progress=False)["metrics"]
    print("direct:", {k: round(v, 3) for k, v in m.items() if k.count("/") == 1})
    assert m["test/n"] == 240
    # 240 clusters, 2 folds of 2 countries: little data for a CNN trained on the survey target alone (which is why
    # Jean et al. train on night lights first); it must still clearly beat the train mean out of country.
    assert m["test/r2"] > m["baseline/r2"] + 0.1 and m["test/pearson_r2"] > 0.1, m


def test_map_command_reproduces_the_pipeline_map_from_the_bundle(two_stage: tuple[Path, dict]) -> None:
    tmp, _ = two_stage
    bundle = load_bundle(tmp / "run" / "bundle")
    paths = map_scene(bundle, bundle.preprocessing.chips.scenes, tmp / "again")
    with rasterio.open(paths["map_tif"]) as a, rasterio.open(tmp / "run" / "maps" / "prediction.tif") as b:
        x, y = a.read(1), b.read(1)
    assert (np.isnan(x) == np.isnan(y)).all()
    assert np.nanmax(np.abs(x - y)) < 1e-5  # the same bundle, views and stage 2 through the same loop


def test_map_with_a_scene_of_other_bands_names_the_mismatch(two_stage: tuple[Path, dict], shared_data: Path) -> None:
    tmp, _ = two_stage
    other = shared_data / "satellite/landsat/landsat7_bahamas_rgb_300m.tif"
    with pytest.raises(GeocnnError, match=r"3 band\(s\).*expects 4"):
        map_scene(load_bundle(tmp / "run" / "bundle"), [str(other)], tmp / "bad")
    assert not (tmp / "bad" / "prediction.tif").exists()


def test_intervals_cover_out_of_country_and_travel_in_the_bundle(two_stage: tuple[Path, dict]) -> None:
    """90 % conformal intervals from the out-of-fold residuals: coverage measured with each country held out of the
    calibration, the same intervals in the table, from predict_catalog with the bundle, and in the map's bands."""
    tmp, _ = two_stage
    m = json.loads((tmp / "run" / "metrics.json").read_text())
    assert m["uncertainty/level"] == 0.9 and m["uncertainty/n_calibration"] == 160
    # 160 clusters in 4 countries: leave-one-country-out coverage near nominal, the worst country reported
    assert 0.75 < m["uncertainty/loco_coverage"] <= 1.0, m
    worst = m["uncertainty/loco_worst_coverage"]
    per_country = {k.rsplit("/", 1)[1]: v for k, v in m.items() if k.startswith("uncertainty/loco_coverage/")}
    assert len(per_country) == 4 and worst == min(per_country.values())
    coverage = pd.read_csv(tmp / "run" / "coverage.csv")
    assert coverage["n"].sum() == 160 and (coverage["nominal"] == 0.9).all()
    assert np.average(coverage["coverage"], weights=coverage["n"]) == pytest.approx(m["uncertainty/loco_coverage"])
    table = pd.read_parquet(tmp / "run" / "predictions.parquet")
    assert (table["lower"] < table["pred_wealth"]).all() and (table["pred_wealth"] < table["upper"]).all()
    np.testing.assert_allclose(table["interval_width"], table["upper"] - table["lower"])
    bundle = load_bundle(tmp / "run" / "bundle")
    cal = bundle.preprocessing.calibration
    assert cal.kind == "interval" and cal.level == 0.9 and cal.n_calibration == 160
    q = cal.quantiles["wealth"]["*"]
    np.testing.assert_allclose(table["interval_width"], 2 * q, rtol=1e-6)  # pooled: one width everywhere
    # the quantile is the ceil(0.9 * 161)-th smallest absolute out-of-fold residual
    residuals = np.sort(np.abs(table["wealth"] - table["pred_wealth"]))
    assert q == pytest.approx(residuals[int(np.ceil(0.9 * 161)) - 1], rel=1e-6)
    # a new prediction with the bundle (the final model, not the out-of-fold ones) carries the bundled quantile
    clusters = pd.read_csv(next((tmp / "synthetic_earth").glob("*/clusters.csv")))
    catalog = Catalog(clusters.rename(columns={"cluster_id": "id"}).astype({"id": str}).head(20), [], "clusters")
    again = predict_catalog(bundle, catalog)
    np.testing.assert_allclose(again["pred_wealth"] - again["lower"], q, rtol=1e-6)
    np.testing.assert_allclose(again["upper"] - again["pred_wealth"], q, rtol=1e-6)
    # the map: prediction, lower, upper, interval_width bands, and a PNG of the width
    with rasterio.open(tmp / "run" / "maps" / "prediction.tif") as out:
        assert out.descriptions == ("wealth", "lower", "upper", "interval_width")
        pred, lower, upper, width = out.read().astype(np.float64)
    ok = np.isfinite(pred)
    np.testing.assert_allclose(width[ok], upper[ok] - lower[ok], atol=1e-5)
    np.testing.assert_allclose(pred[ok] - lower[ok], q, atol=1e-4)
    assert (tmp / "run" / "maps" / "interval_width.png").stat().st_size > 10_000
