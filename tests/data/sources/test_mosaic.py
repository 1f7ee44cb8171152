"""Many-scene mosaics: the footprint index finds exactly the covering scenes, chips equal the one-raster chips and
the whole-list reader's, scenes are opened once and never all at once (real rasters cut into tiles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.warp import transform as warp

from geocnn.data.catalog import Catalog
from geocnn.data.chips import ChipSpec
from geocnn.data.sources.mosaic import INDEX_FROM, Mosaic
from geocnn.data.sources.raster import covering, open_scene, read_chip
from geocnn.data.store import build_store
from tests.data.sources.tiles import cut_tiles

pytestmark = pytest.mark.realdata

BAHAMAS = "satellite/landsat/landsat7_bahamas_rgb_300m.tif"  # EPSG:32618, uint8, nodata 0
VIIRS = "satellite/nightlights/viirs_sao_tome_2014-01.tif"  # EPSG:4326, float32
WORLD = "satellite/formats/world.byte.tif"  # EPSG:4326, uint8, global 0.125 deg


def random_points(path: Path, n: int, seed: int, pad_px: float = -20.0) -> tuple[np.ndarray, np.ndarray]:
    """n lon/lat points uniformly over the raster, ``-pad_px`` pixels beyond its edges (some fall outside)."""
    with rasterio.open(path) as ds:
        rng = np.random.default_rng(seed)
        cols = rng.uniform(pad_px, ds.width - pad_px, n)
        rows = rng.uniform(pad_px, ds.height - pad_px, n)
        xs, ys = ds.transform * (cols, rows)
        lon, lat = warp(ds.crs, "EPSG:4326", list(xs), list(ys))
    return np.asarray(lon), np.asarray(lat)


def catalog(lon: np.ndarray, lat: np.ndarray) -> Catalog:
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(len(lon))], "lat": lat, "lon": lon,
                          "y": np.arange(len(lon), dtype=float)})
    return Catalog(frame, ["y"], "points.csv")


@pytest.mark.parametrize("name, n_tiles", [(BAHAMAS, 14), (VIIRS, 11)])
def test_index_finds_exactly_the_covering_scenes(shared_data: Path, tmp_path: Path, name: str, n_tiles: int) -> None:
    tiles = [str(p) for p in cut_tiles(shared_data / name, tmp_path, n_tiles)]
    lon, lat = random_points(shared_data / name, 200, seed=1)
    with Mosaic(tiles) as mosaic:
        assert len(mosaic) > INDEX_FROM  # the STR-tree path, not "try every scene"
        infos = mosaic.infos
        for size_m in (900.0, 5000.0):
            for x, y in zip(lon, lat):
                assert mosaic.covering(x, y, size_m) == covering(infos, x, y, size_m)
        near = mosaic.nearby(lon, lat, 900.0)
        assert np.mean([len(s) for s in near]) < 3  # the index narrows 11-14 scenes to the few around a point


@pytest.mark.parametrize("name, out_px, size_m", [(BAHAMAS, 24, 6000.0), (WORLD, 16, 60000.0)])
def test_tile_store_equals_the_whole_raster_store(shared_data: Path, tmp_path: Path, name: str, out_px: int,
                                                  size_m: float) -> None:
    """Chips inside a tile (bilinear-resampled, away from tile edges) are the whole raster's chips, value for value."""
    whole = shared_data / name
    tiles = cut_tiles(whole, tmp_path / "tiles", 12)
    with rasterio.open(whole) as ds:
        res = abs(ds.res[0]) * (110_574.0 if ds.crs.is_geographic else 1.0)
        margin = size_m / res / 2 + 3  # half a chip plus the bilinear kernel, in pixels
        rng = np.random.default_rng(3)
        pts = []
        for tile in tiles:  # points well inside each tile
            with rasterio.open(tile) as tt:
                for _ in range(6):
                    col = rng.uniform(margin, tt.width - margin)
                    row = rng.uniform(margin, tt.height - margin)
                    pts.append(tt.transform * (col, row))
        lon, lat = warp(ds.crs, "EPSG:4326", [p[0] for p in pts], [p[1] for p in pts])
    order = rng.permutation(len(lon))  # catalog rows not grouped by tile
    cat = catalog(np.asarray(lon)[order], np.asarray(lat)[order])
    one = build_store(cat, ChipSpec(out_px=out_px, files=False, scenes=[str(whole)], chip_m=size_m),
                      tmp_path / "one", progress=False)
    many = build_store(cat, ChipSpec(out_px=out_px, files=False, scenes=[str(t) for t in tiles], chip_m=size_m),
                       tmp_path / "many", progress=False)
    pd.testing.assert_frame_equal(one.index, many.index)
    a, b = np.asarray(one.chips), np.asarray(many.chips)
    assert a.shape == b.shape == (len(lon), 3 if name == BAHAMAS else 1, out_px, out_px)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).mean() > 0.5  # real pixels, not only nodata


def test_store_equals_the_whole_list_reader_at_tile_borders(shared_data: Path, tmp_path: Path) -> None:
    """Every point (inside tiles, on borders, at corners, outside) gets read_chip's chip over all tiles, in the
    catalog's row order: the chip with the least nodata among the scenes it touches, those holding it first."""
    tiles = [str(t) for t in cut_tiles(shared_data / BAHAMAS, tmp_path / "tiles", 12, overlap=3)]
    lon, lat = random_points(shared_data / BAHAMAS, 80, seed=5)
    with rasterio.open(tiles[0]) as t0, rasterio.open(tiles[1]) as t1:  # a point on the border of two tiles
        x, y = (t0.transform * (t0.width - 3, t0.height / 2))[0], (t1.transform * (3, t1.height / 2))[1]
        blon, blat = warp(t0.crs, "EPSG:4326", [x], [y])
    lon, lat = np.append(lon, blon), np.append(lat, blat)
    spec = ChipSpec(out_px=20, files=False, scenes=tiles, chip_m=9000.0, per_sample=2, box_m=12000.0)
    store = build_store(catalog(lon, lat), spec, tmp_path / "store", progress=False)
    assert store.index["id"].tolist()[:4] == ["p0#0", "p0#1", "p0#2", "p0#3"]
    scenes = [open_scene(t) for t in tiles]
    try:
        chips = np.asarray(store.chips)
        for j, (cx, cy) in enumerate(zip(store.index["chip_lon"], store.index["chip_lat"])):
            want, frac = read_chip(scenes, cx, cy, 20, size_m=9000.0)
            np.testing.assert_array_equal(chips[j], want)
            assert store.index["nodata_fraction"].iloc[j] == pytest.approx(frac)
        border = len(covering(scenes, blon[0], blat[0], 9000.0))
        assert border >= 2  # the border point did touch two tiles
    finally:
        for s in scenes:
            s.close()


def test_read_many_opens_each_scene_once_and_few_at_a_time(shared_data: Path, tmp_path: Path) -> None:
    tiles = [str(t) for t in cut_tiles(shared_data / VIIRS, tmp_path, 20)]
    lon, lat = random_points(shared_data / VIIRS, 500, seed=7)
    with Mosaic(tiles, max_open=4) as mosaic:
        assert mosaic.opened == len(tiles)  # the first pass reads every grid and checks the bands
        assert mosaic.open_count() == 4  # ... and keeps only max_open files open
        got, peak = {}, 0
        for p, chip, frac in mosaic.read_many(lon, lat, 8, 2000.0):
            peak = max(peak, mosaic.open_count())
            got[p] = (chip, frac)
        assert sorted(got) == list(range(len(lon)))
        assert mosaic.opened <= 2 * len(tiles)  # each scene opened at most once more, for all its chips
        assert peak <= 5 and mosaic.open_count() <= 4
        for p, (chip, frac) in got.items():
            want, want_frac = mosaic.read(lon[p], lat[p], 8, size_m=2000.0)
            np.testing.assert_array_equal(chip, want)
            assert frac == want_frac
