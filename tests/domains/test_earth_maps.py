"""Maps and tables agree: a map pixel over a cluster's chip is that cluster's table prediction (same windows,
same views, same stage 2), because both run through the one forward loop."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp

from geocnn import __version__
from geocnn.config import MapsConfig
from geocnn.data.catalog import Catalog
from geocnn.data.chips import ChipSpec
from geocnn.domains.base import predict_catalog
from geocnn.domains.earth_maps import map_scene
from geocnn.inference.bundle import Stage2, load_bundle
from geocnn.models.network import GeoNet, NetSpec
from geocnn.synthetic.earth import make_scene
from tests.helpers import write_bundle

CHIP = 16


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene(tmp_path_factory.mktemp("scene"), size_px=256, n_clusters=12, seed=3)["scene"]


def window_points(path: Path, n: int = 12) -> tuple[pd.DataFrame, list[tuple[int, int]]]:
    """Survey points at the centres of n map windows (stride = chip) whose pixels are all valid."""
    with rasterio.open(path) as src:
        data = src.read(masked=True)
        valid = ~np.ma.getmaskarray(data).any(axis=0)
        origins = [(r, c) for r in range(0, src.height - CHIP + 1, CHIP) for c in range(0, src.width - CHIP + 1, CHIP)
                   if valid[r:r + CHIP, c:c + CHIP].all()]
        picked = [origins[i] for i in np.linspace(0, len(origins) - 1, n).astype(int)]
        xs, ys = zip(*[src.transform * (c + CHIP / 2, r + CHIP / 2) for r, c in picked])
        lon, lat = warp(src.crs, "EPSG:4326", list(xs), list(ys))
    return pd.DataFrame({"id": [f"c{i}" for i in range(n)], "lat": lat, "lon": lon}), picked


@pytest.mark.parametrize("two_stage", [False, True], ids=["direct", "two_stage"])
def test_a_map_pixel_over_a_cluster_equals_the_clusters_table_prediction(scene: Path, tmp_path: Path,
                                                                        two_stage: bool) -> None:
    with rasterio.open(scene) as src:
        stack = src.read(masked=True).astype(float)
        bands = list(src.descriptions)
    mean = [float(b.mean()) for b in stack]
    std = [float(b.std()) for b in stack]
    stage2 = None
    if two_stage:
        width = GeoNet(NetSpec("test_resnet", len(bands), "regression", ["y"])).encoder.num_features
        rng = np.random.default_rng(0)
        stage2 = Stage2(target="wealth", mean=rng.normal(size=width).tolist(), scale=(rng.random(width) + 0.5).tolist(),
                        coef=(rng.normal(size=width) / width).tolist(), intercept=0.3, alpha=1.0)
    chips = ChipSpec(out_px=CHIP, files=False, scenes=[str(scene)], chip_px=CHIP, max_nodata_fraction=0.5)
    bundle = load_bundle(write_bundle(tmp_path / "bundle", chips, bands, domain="earth", task="regression",
                                      targets=("wealth",), tta_views=4, mean=mean, std=std, dtype="float32",
                                      stage2=stage2))
    points, origins = window_points(scene)
    table = predict_catalog(bundle, Catalog(points, [], "points.csv"), device="cpu")
    tif = map_scene(bundle, [str(scene)], tmp_path / "map", stride_px=CHIP, device="cpu")["map_tif"]
    with rasterio.open(tif) as out:
        pixels = out.read(1)
    on_map = np.array([pixels[r + CHIP // 2, c + CHIP // 2] for r, c in origins])
    np.testing.assert_allclose(on_map, table["pred_wealth"].to_numpy(), rtol=1e-5, atol=1e-5)
    assert np.ptp(on_map) > 1e-3  # not a constant map: the check compares real predictions


NIGERIA_MAP = "satellite/reference_maps/nigeria_2012_2014_msnl_wealth_pred.tif"


@pytest.mark.realdata
def test_map_on_the_nigeria_grid_is_masked_tagged_and_compared(shared_data: Path, tmp_path: Path) -> None:
    """On the published Nigeria map's grid: predictions only where the reference has values (not over the sea or
    neighbouring countries), provenance tags, and a difference map ours - reference."""
    reference = shared_data / NIGERIA_MAP
    with rasterio.open(reference) as ref:
        ref_values = ref.read(1)
        b = ref.bounds
    margin, pixel = 300_000.0, 8000.0  # a coarse 3-band EPSG:3857 scene covering Nigeria with 300 km to spare
    width, height = int((b.right - b.left + 2 * margin) / pixel), int((b.top - b.bottom + 2 * margin) / pixel)
    rng = np.random.default_rng(8)
    data = rng.normal(100.0, 20.0, (3, height, width)).astype(np.float32)
    scene = tmp_path / "nigeria_scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=width, height=height, count=3, dtype="float32",
                       crs="EPSG:3857", transform=from_origin(b.left - margin, b.top + margin, pixel, pixel),
                       nodata=np.nan) as dst:
        dst.write(data)
        dst.descriptions = ("b1", "b2", "b3")
    chips = ChipSpec(out_px=CHIP, files=False, scenes=[str(scene)], chip_px=CHIP, max_nodata_fraction=0.5)
    root = write_bundle(tmp_path / "bundle", chips, ["b1", "b2", "b3"], domain="earth", task="regression",
                        targets=("wealth",), mean=100.0, std=20.0, dtype="float32")
    meta = json.loads((root / "bundle.json").read_text())
    (root / "bundle.json").write_text(json.dumps({**meta, "experiment": "nigeria", "run_id": "abc123",
                                                  "store_key": "k1"}))
    style = MapsConfig(units="asset index (sd)", definition="first principal component of household assets")
    paths = map_scene(load_bundle(root), [str(scene)], tmp_path / "map", stride_px=CHIP, target_grid=str(reference),
                      device="cpu", style=style, model="models:/nigeria@champion (v3)")
    with rasterio.open(paths["map_tif"]) as src:
        ours, tags = src.read(1), src.tags()
        assert src.descriptions[0] == "wealth"
    valid = np.isfinite(ref_values)
    assert valid.mean() == pytest.approx(0.6546, abs=1e-4)  # 35 % of the grid is sea or other countries
    np.testing.assert_array_equal(np.isfinite(ours), valid)  # the same valid share, pixel for pixel
    assert {k: tags[k] for k in ("TARGET", "UNITS", "MLFLOW_RUN_ID", "TRAINING_DATA", "DATA")} == {
        "TARGET": "wealth", "UNITS": "asset index (sd)", "MLFLOW_RUN_ID": "abc123", "TRAINING_DATA": "k1",
        "DATA": str(scene)}
    assert tags["MODEL"] == "experiment nigeria, backbone test_resnet, models:/nigeria@champion (v3)"
    assert tags["DEFINITION"] == style.definition and tags["GEOCNN_VERSION"] == __version__
    assert datetime.fromisoformat(tags["CREATED"]).date() == datetime.now(timezone.utc).date()
    with rasterio.open(paths["map_diff_tif"]) as src:
        diff = src.read(1)
    np.testing.assert_allclose(diff[valid], ours[valid] - ref_values[valid], rtol=1e-5, atol=1e-6)
    assert np.isnan(diff[~valid]).all() and paths["map_diff_png"].exists()

    unmasked = map_scene(load_bundle(root), [str(scene)], tmp_path / "all", stride_px=CHIP,
                         target_grid=str(reference), device="cpu", style=MapsConfig(mask_to_grid=False))
    with rasterio.open(unmasked["map_tif"]) as src:
        assert np.isfinite(src.read(1)).all()  # unmasked: the whole grid, sea included, is "predicted"
