"""The Earth side on the real sample rasters and the 19,669 DHS clusters (../shared/data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from geocnn.config import load_config
from geocnn.data.catalog import Catalog
from geocnn.data.chips import ChipSpec
from geocnn.data.store import LabelSpec, build_store
from geocnn.domains import ingest, run_experiment
from geocnn.domains.earth_maps import map_scene
from geocnn.errors import GeocnnError
from geocnn.inference.bundle import load_bundle
from tests.helpers import write_bundle

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def dhs_config(tmp_path: Path, *extra: str):  # noqa: ANN201
    return load_config(CONFIGS / "poverty_dhs_blackmarble.yaml",
                       [f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}", *extra])


@pytest.mark.slow
def test_dhs_chips_around_every_cluster_from_black_marble_and_worldclim(shared_data: Path, tmp_path: Path) -> None:
    wc = shared_data / "satellite/worldclim"
    layers = (f"earth.layers=[{wc / 'wc2.0_bio_10m_05_max_temp_warmest_month.tif'}, "
              f"{wc / 'wc2.0_bio_10m_12_annual_precipitation.tif'}]")
    store = ingest(dhs_config(tmp_path, layers), progress=False)
    assert store.meta["shape"] == [19669, 3, 16, 16]
    assert store.report["chips_dropped_nodata"] == 0
    idx = store.index
    assert idx["group"].nunique() == 23 and set(idx["urban"]) == {"urban", "rural"}
    chips = store.chips
    # Black Marble grayscale (0-255): clusters in Lagos are lit, the night-light mean tracks wealth.
    lagos = np.flatnonzero((np.abs(idx["lat"] - 6.5) < 0.15) & (np.abs(idx["lon"] - 3.4) < 0.2))
    assert len(lagos) > 10 and np.nanmean(chips[lagos, 0, 6:10, 6:10]) > 100
    nl = np.nanmean(chips[:, 0], axis=(1, 2))
    assert np.corrcoef(nl, idx["wealthpooled"])[0, 1] > 0.5
    # WorldClim max temperature of the warmest month (deg C) resampled onto the same chips: plausible for Africa.
    temp = np.nanmean(chips[:, 1], axis=(1, 2))
    assert 15 < np.nanpercentile(temp, 5) and np.nanpercentile(temp, 95) < 45
    # A rebuild with the same inputs reuses the store.
    assert ingest(dhs_config(tmp_path, layers), progress=False).root == store.root


def test_survey_split_is_never_random(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(GeocnnError, match="split.method=grouped"):  # refused when the config is loaded
        dhs_config(tmp_path, "split.method=random", "tracking.enabled=false")


@pytest.mark.full
def test_dhs_out_of_country_cnn_ties_or_beats_night_light_gradient_boosting(shared_data: Path, tmp_path: Path) -> None:
    summary = run_experiment(dhs_config(tmp_path, "tracking.enabled=false", "maps.enabled=true"), progress=False)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    print("dhs:", json.dumps({k: round(v, 4) for k, v in m.items() if k.count("/") <= 2}))
    assert m["test/n"] == 19669
    # The published night-light baseline (README of the data): gradient boosting, pooled R2 about 0.58.
    assert 0.5 < m["baseline_gbm/r2"] < 0.65, m
    assert m["baseline/r2"] < 0.0, m  # the train mean, out of country
    # Measured with this config: CNN R2 0.585 vs 0.581 for the gradient-boosting baseline (per-country squared
    # Pearson r 0.651 vs 0.645). The margin is within run-to-run noise, so the test demands a tie or better
    # (within 0.02), not a win, and a clear win over the train mean.
    assert m["test/r2"] > m["baseline_gbm/r2"] - 0.02, m
    assert m["test/r2"] > m["baseline/r2"] + 0.5, m
    assert m["test/group_mean/pearson_r2"] > 0.6, m
    # 90 % conformal intervals, each country calibrated on the other 22 countries' out-of-fold residuals: pooled
    # coverage within 2 points of nominal; the worst country is reported (coverage.csv, metrics), not hidden.
    assert abs(m["uncertainty/loco_coverage"] - 0.9) < 0.02, m
    coverage = pd.read_csv(tmp_path / "run" / "coverage.csv")
    assert len(coverage) == 23 and m["uncertainty/loco_worst_coverage"] == coverage["coverage"].min()
    assert m["test/r2_ci_low"] < m["test/r2"] < m["test/r2_ci_high"]  # countries resampled whole
    # Every cluster is predicted out of fold by a model that never saw its country.
    frame = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert frame.groupby("group")["fold"].nunique().max() == 1 and set(frame["fold"]) == set(range(5))
    # The map of Nigeria is written on the published map's grid, with its NaN-nodata convention.
    ref_path = shared_data / "satellite/reference_maps/nigeria_2012_2014_msnl_wealth_pred.tif"
    with rasterio.open(summary["outputs"]["map_tif"]) as out, rasterio.open(ref_path) as ref:
        assert (out.crs, out.transform, out.shape) == (ref.crs, ref.transform, ref.shape)
        assert np.isnan(out.nodata) and out.dtypes[0] == "float32"
        ours, theirs = out.read(1), ref.read(1)
    both = np.isfinite(ours) & np.isfinite(theirs)
    assert both.sum() > 1000
    assert np.corrcoef(ours[both], theirs[both])[0, 1] > 0.4  # agrees with Yeh et al.'s published map (0.51 measured)


@pytest.mark.slow
def test_dhs_config_in_short_ties_gradient_boosting_out_of_country_and_maps_nigeria(shared_data: Path,
                                                                                  tmp_path: Path) -> None:
    """The shipped DHS config, shortened for CI (3 folds of countries, 4 epochs; the full config is the `full`
    tier): every cluster predicted out of country, the CNN ties night-light gradient boosting on the same folds
    (measured: R2 0.553 vs 0.555), and the Nigeria map on the published map's grid agrees with it (measured 0.60)."""
    summary = run_experiment(dhs_config(tmp_path, "tracking.enabled=false", "train.epochs=4", "split.folds=3"),
                             progress=False)
    m = summary["metrics"]
    assert m["test/n"] == 19669 and 0.45 < m["baseline_gbm/r2"] < 0.65, m
    assert m["test/r2"] > m["baseline_gbm/r2"] - 0.03, m
    assert m["test/r2"] > m["baseline/r2"] + 0.45 and m["test/group_mean/pearson_r2"] > 0.5, m
    frame = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert frame.groupby("country")["fold"].nunique().max() == 1 and set(frame["fold"]) == {0, 1, 2}
    ref_path = shared_data / "satellite/reference_maps/nigeria_2012_2014_msnl_wealth_pred.tif"
    with rasterio.open(summary["outputs"]["map_tif"]) as out, rasterio.open(ref_path) as ref:
        assert (out.crs, out.transform, out.shape) == (ref.crs, ref.transform, ref.shape)
        ours, theirs = out.read(1), ref.read(1)
    both = np.isfinite(ours) & np.isfinite(theirs)
    assert both.sum() > 1000 and np.corrcoef(ours[both], theirs[both])[0, 1] > 0.4


@pytest.mark.parametrize(("scene", "bands"), [
    ("satellite/landsat/landsat7_bahamas_rgb_300m.tif", None),
    ("satellite/landsat/LC08_107035_20150502/LC81070352015122LGN00_{band}.tif", ["B4", "B3", "B2"]),
    ("satellite/formats/cogeo.tif", None),
    ("satellite/formats/RGBA.uint16.tif", ["1", "2", "3"]),
])
def test_map_export_keeps_the_source_grid_and_nodata(shared_data: Path, tmp_path: Path, scene: str,
                                                     bands: list[str] | None) -> None:
    path = str(shared_data / scene)
    chips = ChipSpec(out_px=16, files=False, scenes=[path], bands=bands, chip_px=32, max_nodata_fraction=0.5)
    model = write_bundle(tmp_path / "bundle", chips, ["a", "b", "c"], domain="earth", task="regression",
                         targets=("wealth",), dtype="float32")
    paths = map_scene(load_bundle(model), [path], tmp_path, stride_px=32)
    first = path.format(band=bands[0]) if bands and "{band}" in path else path
    with rasterio.open(first) as src, rasterio.open(paths["map_tif"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert np.isnan(out.nodata) and out.descriptions[0] == "wealth"
        pred = out.read(1)
        if src.nodata is not None:
            invalid = (src.read(1) == src.nodata)
            assert np.isnan(pred[invalid]).all()
        assert np.isfinite(pred).mean() > 0.3
    assert paths["map_png"].stat().st_size > 5000


def test_viirs_and_dmsp_clips_as_label_rasters(shared_data: Path, tmp_path: Path) -> None:
    nl = shared_data / "satellite/nightlights"
    # Sao Tome: the capital (NE coast) is lit, the forested south-west is dark.
    points = pd.DataFrame({"id": ["city", "south", "centre"], "lat": [0.336, 0.10, 0.25], "lon": [6.727, 6.55, 6.60]})
    spec = ChipSpec(out_px=8, files=False, scenes=[str(nl / "dmsp_ols_sao_tome_1992.tif")], chip_m=3000,
                    label_raster=str(nl / "viirs_sao_tome_2014-01.tif"), max_nodata_fraction=1.0)
    store = build_store(Catalog(points, [], "sao tome points"), spec, tmp_path, LabelSpec(as_target=True),
                        progress=False)
    assert store.targets == ["nightlights"]
    v = store.index.set_index("id")["nightlights_value"]
    assert np.isfinite(v).all() and (v > -0.1).all()  # VIIRS monthly radiance has small negative noise
    assert v["city"] > 5 * v["south"] and v["city"] > 1.0  # VIIRS radiance, nW/cm2/sr
    dmsp = np.nanmean(store.chips[:, 0], axis=(1, 2))  # the sea around the island is nodata (NaN)
    assert dmsp[0] > dmsp[1] and 0 <= dmsp.min() and dmsp.max() <= 63  # DMSP stable lights digital numbers


@pytest.mark.slow
@pytest.mark.parametrize("name", ["corrupt_header.tif", "corrupt_image.tif"])
def test_corrupt_rasters_stop_the_cli_with_the_file_named(shared_data: Path, tmp_path: Path, name: str) -> None:
    bad = shared_data / "satellite/formats/bad" / name
    proc = subprocess.run([sys.executable, "-m", "geocnn.cli", "run", str(CONFIGS / "poverty_dhs_blackmarble.yaml"),
                           "--no-prefect", "--set", f"earth.scenes=[{bad}]", "--set",
                           f"data.store_root={tmp_path}", "--set", f"output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert name in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
