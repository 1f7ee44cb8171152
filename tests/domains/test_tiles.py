"""Pre-cut tiles per cluster (GeoTIFF with or without a geotransform, .npy, .npz) take the same path as scene
windows: the same chips, folds, layers, baselines, two-stage transfer and exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import transform as window_transform

from geocnn.config import load_config
from geocnn.data.sources.raster import chip_window, open_scene, read_chip
from geocnn.domains import ingest, run_experiment
from geocnn.errors import GeocnnError
from geocnn.synthetic.earth import make_scene

CHIP = 32
RES_M = 30.0  # the synthetic scene's pixel


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A generated scene, its night lights and 80 survey clusters; each cluster's 32 px window cut as a tile in
    every supported format (the pixels a scene-window chip has)."""
    root = tmp_path_factory.mktemp("tiles")
    paths = make_scene(root / "scene", size_px=384, n_clusters=80, seed=5)
    clusters = pd.read_csv(paths["clusters"], dtype={"cluster_id": str})
    formats = {"georef": "tif", "plain": "tif", "npy": "npy", "npz": "npz"}
    for name in formats:
        (root / name).mkdir()
    with open_scene(paths["scene"]) as scene:
        for row in clusters.itertuples():
            pixels, _ = read_chip(scene, row.lon, row.lat, CHIP, size_px=CHIP)
            profile = {"driver": "GTiff", "width": CHIP, "height": CHIP, "count": scene.count, "dtype": "float32",
                       "nodata": np.nan}
            window = chip_window(scene, row.lon, row.lat, size_px=CHIP)
            georef = {"crs": scene.crs, "transform": window_transform(window, scene.transform)}
            for name, extra in (("georef", georef), ("plain", {})):
                with rasterio.open(root / name / f"{row.cluster_id}.tif", "w", **profile, **extra) as dst:
                    dst.write(pixels)
                    dst.descriptions = tuple(scene.band_names)
            np.save(root / "npy" / f"{row.cluster_id}.npy", pixels)
            np.savez(root / "npz" / f"{row.cluster_id}.npz", x=pixels)
    clusters["tile"] = [f"georef/{c}.tif" for c in clusters["cluster_id"]]
    clusters.to_csv(root / "clusters.csv", index=False)
    return {"root": root, **paths, "catalog": root / "clusters.csv"}


def config(world: dict[str, Path], tmp: Path, tiles: str | None, *extra: str):  # noqa: ANN201
    pixels = ([f"data.tiles={tiles}", f"earth.chip_m={CHIP * RES_M}"] if tiles
              else [f"earth.scenes=[{world['scene']}]", f"earth.chip_px={CHIP}", "maps.enabled=false"])
    return load_config(None, [
        "name=tiles", f"output_dir={tmp / 'run'}", "data.format=survey", f"data.catalog={world['catalog']}",
        "data.id_column=cluster_id", "data.targets=[wealth]", "data.group_column=country", f"data.chip_size={CHIP}",
        f"data.store_root={tmp / 'stores'}", "earth.urban_column=urban", f"earth.layers=[{world['nightlights']}]",
        f"earth.label_raster={world['nightlights']}", f"earth.baseline_raster={world['nightlights']}",
        "earth.baseline_radii_px=[1, 3]", "split.method=grouped", "split.folds=2", "split.val_fraction=0.2",
        "model.backbone=test_resnet", "train.epochs=2", "train.batch_size=32", "augment.rotate=false",
        "augment.rot90=true", "augment.tta_views=2", "tracking.enabled=false", *pixels, *extra])


@pytest.mark.parametrize("tiles", ["tile", "georef", "plain", "npy", "npz"])
def test_tiles_in_any_format_give_the_chips_of_the_scene_windows(world: dict[str, Path], tmp_path: Path,
                                                                 tiles: str) -> None:
    """A catalog column or a folder; GeoTIFF with or without a geotransform, .npy, .npz: the same chips as the
    scene's windows around each point, and the night-light layer appended around each point as a fifth band."""
    where = "tile" if tiles == "tile" else str(world["root"] / tiles)
    store = ingest(config(world, tmp_path, where), progress=False)
    scene_store = ingest(config(world, tmp_path, None), progress=False)
    assert store.root != scene_store.root  # other inputs, other content key
    np.testing.assert_array_equal(np.asarray(store.chips), np.asarray(scene_store.chips))
    assert store.chips.shape == (80, 5, CHIP, CHIP) and store.report["chips_kept"] == 80
    names = store.bands[:4]
    assert names == (["blue", "green", "red", "nir"] if tiles in ("tile", "georef", "plain")
                     else ["band1", "band2", "band3", "band4"])
    assert store.bands[4] == "nightlights:nightlights" or store.bands[4].startswith("nightlights:")
    np.testing.assert_allclose(store.index["nightlights_value"], scene_store.index["nightlights_value"])


def test_an_experiment_on_tiles_equals_the_same_experiment_on_scene_windows(world: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """Grouped folds, the CNN, night-light baselines, metrics and exports: tile for tile the scene run's numbers."""
    on_tiles = run_experiment(config(world, tmp_path / "a", "tile"), progress=False)
    on_scene = run_experiment(config(world, tmp_path / "b", None), progress=False)
    m = on_tiles["metrics"]
    assert m == pytest.approx(on_scene["metrics"], rel=1e-5, abs=1e-6)
    assert m["test/n"] == 80 and {"baseline_nightlights/r2", "baseline_gbm/r2", "test/group_mean/r2"} <= m.keys()
    table = pd.read_parquet(tmp_path / "a" / "run" / "predictions.parquet")
    assert set(table["fold"]) == {0, 1} and table.groupby("country")["fold"].nunique().max() == 1
    assert {"group", "country", "lat", "lon", "urban", "pred_wealth", "baseline_gbm_wealth"} <= set(table.columns)
    features = json.loads((tmp_path / "a" / "run" / "predictions.geojson").read_text())["features"]
    assert len(features) == 80 and "map_tif" not in on_tiles["outputs"]  # tiles only: no scene to map


def test_two_stage_transfer_on_tiles_learns_night_lights_from_the_tiles(world: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    summary = run_experiment(config(world, tmp_path, "tile", "two_stage.enabled=true",
                                    "earth.label_classes=quantiles", "earth.layers=[]"), progress=False)
    m = summary["metrics"]
    assert m["stage1/test/n"] > 0 and "stage1/test/balanced_accuracy" in m
    assert {"stage2/alpha/fold0", "stage2/alpha/fold1", "validation/r2", "test/r2"} <= m.keys()
    assert m["test/n"] == 80


def test_tiles_without_a_geotransform_need_the_chip_size_for_layers(world: dict[str, Path], tmp_path: Path) -> None:
    cfg = config(world, tmp_path, str(world["root"] / "plain"), "earth.chip_m=null")
    with pytest.raises(GeocnnError, match=r"no geotransform.*earth.chip_m"):
        ingest(cfg, progress=False)
    bad = pd.read_csv(world["catalog"], dtype={"cluster_id": str})
    bad.loc[3, ["tile", "cluster_id"]] = ["georef/missing.tif", "missing"]  # no file of that name anywhere
    bad.to_csv(world["root"] / "bad.csv", index=False)  # beside the tiles it names
    with pytest.raises(GeocnnError, match=r"bad.csv: row 5 \(id 'missing'\): image file not found.*data.tiles"):
        ingest(config(world, tmp_path, "tile", f"data.catalog={world['root'] / 'bad.csv'}"), progress=False)
