"""GeoTIFF scene reader on the real rasters of shared/data/satellite: stacks, boundless chips, nodata, CRSs, errors."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import transform as warp
from rasterio.windows import Window

from geocnn.data.sources.raster import (
    chip_window,
    cluster_points,
    label_statistic,
    metres_per_degree,
    nodata_fraction,
    open_scene,
    pixel_of,
    read_chip,
    snap_window,
    tile_windows,
)
from geocnn.errors import GeocnnError

pytestmark = pytest.mark.realdata

LANDSAT = "satellite/landsat/LC08_107035_20150502/LC81070352015122LGN00_{band}.tif"
BAHAMAS = "satellite/landsat/landsat7_bahamas_rgb_300m.tif"
VIIRS = "satellite/nightlights/viirs_sao_tome_2014-01.tif"
BLACK_MARBLE = "satellite/nightlights/blackmarble_2016_3km_gray.tif"
FORMATS = "satellite/formats"
LAGOS = (3.38, 6.52)
SAHARA = (10.0, 23.0)


def lonlat_of(path: Path, col: float, row: float) -> tuple[float, float]:
    """EPSG:4326 lon/lat of a float pixel position of a raster."""
    with rasterio.open(path) as ds:
        t = ds.transform
        x, y = t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f
        lon, lat = warp(ds.crs, "EPSG:4326", [x], [y])
    return lon[0], lat[0]


def direct(path: Path, window: Window, band: int = 1, **kw: object) -> np.ndarray:
    """A band read straight with rasterio, as float."""
    with rasterio.open(path) as ds:
        return ds.read(band, window=window, **kw).astype(np.float64)


# ------------------------------------------------------------------------------------------------ opening


def test_landsat_band_per_file_stack(shared_data: Path) -> None:
    pattern = str(shared_data / LANDSAT)
    with open_scene(pattern, ["B4", "B3", "B2"]) as scene:
        assert scene.band_names == ["B4", "B3", "B2"] and scene.count == 3
        assert scene.paths == [pattern.format(band=b) for b in ("B4", "B3", "B2")]
        assert (scene.width, scene.height) == (1550, 1578) and scene.crs.to_epsg() == 32654
        assert scene.dtypes == ["uint16"] * 3 and scene.nodata == [None] * 3
        assert scene.res == pytest.approx((150.019, 150.019), abs=1e-3)
        native = Window(700, 600, 40, 30)
        chip = scene.read(native)
        assert chip.dtype == np.float32 and chip.shape == (3, 30, 40)
        for k, band in enumerate(("B4", "B3", "B2")):
            np.testing.assert_array_equal(chip[k], direct(Path(pattern.format(band=band)), native))
        # float window, resampled: the same as rasterio reading each file with that window
        fwin = Window(700.3, 600.6, 40.5, 30.2)
        chip = scene.read(fwin, (64, 64))
        for k, band in enumerate(("B4", "B3", "B2")):
            want = direct(Path(pattern.format(band=band)), fwin, out_shape=(64, 64), resampling=Resampling.bilinear)
            np.testing.assert_allclose(chip[k], want, rtol=1e-6)
        # selecting by 1-based index on a multi-file stack of its own
    with open_scene([pattern.format(band="B2"), pattern.format(band="B3")], ["2"]) as scene:
        assert scene.band_names == ["B3"]


def test_multiband_file_band_selection(shared_data: Path) -> None:
    path = shared_data / BAHAMAS
    with open_scene(path) as scene:
        assert scene.band_names == ["band1", "band2", "band3"] and scene.nodata == [0.0] * 3
    with open_scene(path, ["3", "band1"]) as scene:
        assert scene.band_names == ["band3", "band1"]
        chip = scene.read(Window(300, 300, 16, 16))
        with rasterio.open(path) as ds:
            raw = ds.read([3, 1], window=Window(300, 300, 16, 16)).astype(np.float32)
        raw[raw == 0] = np.nan
        np.testing.assert_array_equal(chip, raw)
    with open_scene(shared_data / BLACK_MARBLE, ["night lights (Black Marble 2016, grayscale visualisation)"]) as s:
        assert s.count == 1


def test_unknown_band_lists_available(shared_data: Path) -> None:
    with pytest.raises(GeocnnError, match=r"band 'B5' not found.*band1', 'band2', 'band3'"):
        open_scene(shared_data / BAHAMAS, ["B5"])
    with pytest.raises(GeocnnError, match="band '7' not found"):
        open_scene(shared_data / BAHAMAS, ["7"])


def test_missing_band_file_named(shared_data: Path) -> None:
    pattern = str(shared_data / LANDSAT)
    with pytest.raises(GeocnnError, match=r"LC81070352015122LGN00_B9\.tif \(band 'B9'\): raster file does not exist"):
        open_scene(pattern, ["B4", "B9"])
    with pytest.raises(GeocnnError, match="no bands are configured"):
        open_scene(pattern)


def test_stack_grid_mismatch_names_both_files(shared_data: Path) -> None:
    b2 = str(shared_data / LANDSAT).format(band="B2")
    with pytest.raises(GeocnnError) as err:
        open_scene([b2, str(shared_data / BAHAMAS)])
    msg = str(err.value)
    assert "LC81070352015122LGN00_B2.tif and " in msg and "landsat7_bahamas_rgb_300m.tif" in msg
    assert "CRS EPSG:32654 vs EPSG:32618" in msg and "shape 1550x1578 vs 791x718" in msg


def test_bad_rasters_name_the_file(shared_data: Path, tmp_path: Path) -> None:
    bad = shared_data / FORMATS / "bad"
    with pytest.raises(GeocnnError, match=r"corrupt_header\.tif: not a readable raster"):
        open_scene(bad / "corrupt_header.tif")
    with pytest.raises(GeocnnError, match=r"corrupt_image\.tif: the raster has no geotransform"):
        open_scene(bad / "corrupt_image.tif")
    # without the georeferencing check, its first tile is intact and reads (pixel coordinates only)
    with open_scene(bad / "corrupt_image.tif", allow_no_crs=True) as scene:
        assert scene.read(Window(0, 0, 64, 64)).shape == (3, 64, 64)
    with pytest.raises(GeocnnError, match=r"nothere\.tif: raster file does not exist"):
        open_scene(tmp_path / "nothere.tif")
    truncated = tmp_path / "truncated.tif"  # a COG cut in half: opens (header first), tiles fail at read time
    data = (shared_data / FORMATS / "cogeo.tif").read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    with open_scene(truncated) as scene:
        with pytest.raises(GeocnnError, match=r"truncated\.tif: reading bands \[1, 2, 3\] .*TIFFReadEncodedTile"):
            scene.read(Window(0, 0, 64, 64))


def test_float64_without_crs(shared_data: Path) -> None:
    path = shared_data / FORMATS / "float.tif"
    with pytest.raises(GeocnnError, match=r"float\.tif: the raster has no CRS.*allow_no_crs"):
        open_scene(path)
    with open_scene(path, allow_no_crs=True) as scene:
        assert scene.crs is None and scene.dtypes == ["float64"]
        chip = scene.read(Window(-1, 0, 4, 2))  # one column outside on the left
        assert np.isnan(chip[0, :, 0]).all()
        np.testing.assert_allclose(chip[0, :, 1:], direct(path, Window(0, 0, 3, 2)), rtol=1e-6)
        with pytest.raises(GeocnnError, match="no CRS"):
            chip_window(scene, 0.0, 0.0, size_px=3)


def test_formats_rgba_uint16_shade_cog(shared_data: Path) -> None:
    fmt = shared_data / FORMATS
    with open_scene(fmt / "RGBA.uint16.tif") as scene:
        assert scene.count == 4 and scene.dtypes == ["uint16"] * 4 and scene.crs.to_epsg() == 32612
        with rasterio.open(fmt / "RGBA.uint16.tif") as ds:
            raw = ds.read(window=Window(100, 100, 8, 8))
        np.testing.assert_array_equal(scene.read(Window(100, 100, 8, 8)), raw.astype(np.float32))
        assert raw.max() > 255  # real 16-bit values survive the float conversion
    with open_scene(fmt / "shade.tif") as scene:
        assert scene.nodata == [255.0]
        chip = scene.read(Window(0, 0, 256, 256))
        raw = direct(fmt / "shade.tif", Window(0, 0, 256, 256))
        assert (raw == 255).any() and (raw != 255).any()
        np.testing.assert_array_equal(np.isnan(chip[0]), raw == 255)
        np.testing.assert_array_equal(chip[0][raw != 255], raw[raw != 255])
    with open_scene(fmt / "cogeo.tif") as scene:
        assert scene.crs.to_epsg() == 3857 and scene.count == 3
        small = scene.read(Window(0, 0, 1024, 1024), (64, 64), Resampling.average)
        full_mean = direct(fmt / "cogeo.tif", Window(0, 0, 1024, 1024)).mean()
        assert abs(float(small[0].mean()) - full_mean) < 0.5


def test_nodata_override(shared_data: Path) -> None:
    pattern = str(shared_data / LANDSAT)
    corner = Window(0, 0, 32, 32)  # outside the Landsat footprint: zeros, not tagged as nodata
    with open_scene(pattern, ["B2"]) as scene:
        assert not np.isnan(scene.read(corner)).any()
    with open_scene(pattern, ["B2"], nodata=0) as scene:
        assert scene.nodata == [0.0] and np.isnan(scene.read(corner)).all()


def test_read_outside_and_pickle(shared_data: Path) -> None:
    with open_scene(shared_data / BAHAMAS) as scene:
        assert np.isnan(scene.read(Window(-100, -100, 10, 10))).all()
        again = pickle.loads(pickle.dumps(scene))
        try:
            win = Window(400, 300, 12, 12)
            np.testing.assert_array_equal(again.read(win), scene.read(win))
        finally:
            again.close()


# ------------------------------------------------------------------------------------------------ chips


def test_edge_chip_nan_fraction(shared_data: Path) -> None:
    pattern = str(shared_data / LANDSAT)
    b2 = Path(pattern.format(band="B2"))
    lon, lat = lonlat_of(b2, 1545.0, 330.0)  # 5 px from the right edge, in valid data
    with open_scene(pattern, ["B4", "B3", "B2"]) as scene:
        chip, frac = read_chip(scene, lon, lat, out_px=20, size_px=20)
    assert frac == pytest.approx(0.25)
    assert np.isnan(chip[:, :, 15:]).all() and not np.isnan(chip[:, :, :15]).any()
    want = direct(b2, Window(1535, 320, 15, 20))
    assert (want > 0).mean() > 0.3  # real DNs (the footprint ends just before the edge)
    np.testing.assert_allclose(chip[2, :, :15], want, rtol=1e-4)
    # half the chip beyond the top edge, resampled x2 through the boundless reader
    lon, lat = lonlat_of(b2, 775.0, 0.0)
    with open_scene(pattern, ["B2"]) as scene:
        chip, frac = read_chip(scene, lon, lat, out_px=40, size_px=20)
    assert frac == pytest.approx(0.5)
    assert np.isnan(chip[0, :20]).all() and not np.isnan(chip[0, 20:]).any()


def test_chip_size_in_metres_utm(shared_data: Path) -> None:
    path = shared_data / BAHAMAS
    with rasterio.open(path) as ds:
        res = ds.res
    lon, lat = lonlat_of(path, 400.3, 350.3)
    with open_scene(path) as scene:
        window = chip_window(scene, lon, lat, size_m=3000)
        assert window.width == pytest.approx(3000 / res[0]) and window.height == pytest.approx(3000 / res[1])
        assert (window.col_off + window.width / 2, window.row_off + window.height / 2) == pytest.approx(
            (400.3, 350.3), abs=1e-6)
        snapped = snap_window(window)
        assert (snapped.width, snapped.height) == (10, 10)  # 3 km at 300 m
        assert (snapped.col_off, snapped.row_off) == (395, 345)
        chip, frac = read_chip(scene, lon, lat, out_px=10, size_m=3000)
    assert chip.shape == (3, 10, 10) and frac == nodata_fraction(chip) == 0.0
    with rasterio.open(path) as ds:
        want = ds.read(window=window, out_shape=(3, 10, 10), resampling=Resampling.bilinear)
    np.testing.assert_allclose(chip, want.astype(np.float32))
    with open_scene(path, ["2"]) as scene:
        assert label_statistic(scene, lon, lat, "mean", size_m=3000) == pytest.approx(
            direct(path, Window(395, 345, 10, 10), band=2).mean())


@pytest.mark.parametrize("rel, col, row", [(LANDSAT.format(band="B3"), 812.3, 401.7),
                                           (f"{FORMATS}/cogeo.tif", 100.25, 900.75),
                                           (VIIRS, 64.2, 326.9)])
def test_reprojection_round_trip(shared_data: Path, rel: str, col: float, row: float) -> None:
    path = shared_data / rel
    lon, lat = lonlat_of(path, col, row)
    with open_scene(path) as scene:
        window = chip_window(scene, lon, lat, size_m=1000)
        centre = (window.col_off + window.width / 2, window.row_off + window.height / 2)
        assert centre == pytest.approx((col, row), abs=1e-6)
        t = scene.transform
        x, y = t.a * centre[0] + t.b * centre[1] + t.c, t.d * centre[0] + t.e * centre[1] + t.f
        back_lon, back_lat = (v[0] for v in warp(scene.crs, "EPSG:4326", [x], [y]))
        res_deg = scene.res[1] if scene.crs.is_geographic else scene.res[1] / 111_000
        assert abs(back_lon - lon) < res_deg / 2 and abs(back_lat - lat) < res_deg / 2
        assert pixel_of(scene, lon, lat) == pytest.approx((col, row), abs=1e-6)


def test_viirs_geographic_chip(shared_data: Path) -> None:
    path = shared_data / VIIRS
    lon, lat = 6.73, 0.34  # Sao Tome city
    with open_scene(path) as scene:
        assert scene.crs.is_geographic and scene.nodata[0] == pytest.approx(-3.4e38, rel=1e-6)
        window = chip_window(scene, lon, lat, size_m=5000)
        # metres -> degrees at the latitude, separately for x and y (WGS84: 111.32 / 110.57 km per degree here)
        assert window.width * scene.res[0] == pytest.approx(5000 / 111_319, rel=1e-3)
        assert window.height * scene.res[1] == pytest.approx(5000 / 110_574, rel=1e-3)
        assert window.width < window.height
        snapped = snap_window(chip_window(scene, lon, lat, size_px=20))
        chip = scene.read(snapped)
        raw = direct(path, snapped)
        nodata = raw < -1e38
        assert nodata.any() and (~nodata).any()
        np.testing.assert_array_equal(np.isnan(chip[0]), nodata)
        np.testing.assert_allclose(chip[0][~nodata], raw[~nodata], rtol=1e-6)
        assert np.nanmax(chip) == pytest.approx(14.94, abs=0.01)
        ocean, frac = read_chip(scene, 7.0, 1.0, out_px=32, size_m=5000)
        assert frac == 1.0 and np.isnan(ocean).all()
        assert math.isnan(label_statistic(scene, 7.0, 1.0, "mean", size_m=5000))


def test_black_marble_lagos_bright_sahara_dark(shared_data: Path) -> None:
    with open_scene(shared_data / BLACK_MARBLE) as scene:
        lagos, frac = read_chip(scene, *LAGOS, out_px=32, size_m=20_000)
        sahara, _ = read_chip(scene, *SAHARA, out_px=32, size_m=20_000)
        assert frac == 0.0
        assert lagos.mean() > 100 and sahara.max() == 0
        assert label_statistic(scene, *LAGOS, "max", size_px=3) == 255
        assert label_statistic(scene, *SAHARA, "median", size_px=15) == 0
        # chip across the antimeridian edge: the part beyond lon 180 is outside the raster
        _, frac = read_chip(scene, 180.0, 0.0, out_px=16, size_px=16)
        assert frac == pytest.approx(0.5)


def test_label_statistic_is_numpy_on_native_window(shared_data: Path) -> None:
    path = shared_data / BLACK_MARBLE
    with rasterio.open(path) as ds:
        row, col = ds.index(*LAGOS)
    for size, stat, func in ((7, "mean", np.mean), (15, "median", np.median), (1, "max", np.max)):
        want = func(direct(path, Window(col - size // 2, row - size // 2, size, size)))
        with open_scene(path) as scene:
            assert label_statistic(scene, *LAGOS, stat, size_px=size) == pytest.approx(want)
    # VIIRS: nodata is ignored
    viirs = shared_data / VIIRS
    with open_scene(viirs) as scene:
        window = snap_window(chip_window(scene, 6.73, 0.34, size_m=8000))
        raw = direct(viirs, window)
        assert label_statistic(scene, 6.73, 0.34, "mean", size_m=8000) == pytest.approx(raw[raw > -1e38].mean(),
                                                                                      rel=1e-6)
        with pytest.raises(GeocnnError, match="band 1 .*does not exist"):
            label_statistic(scene, 6.73, 0.34, "mean", size_px=3, band=1)


def test_mosaic_picks_least_nodata(shared_data: Path) -> None:
    pattern = str(shared_data / LANDSAT)
    lon, lat = lonlat_of(Path(pattern.format(band="B2")), 60.0, 1250.0)  # near the zero-filled footprint edge
    bands = ["B4", "B3", "B2"]
    with open_scene(pattern, bands, nodata=0) as masked, open_scene(pattern, bands) as plain, \
            open_scene(shared_data / BAHAMAS) as far:
        chip_m, frac_m = read_chip(masked, lon, lat, 32, size_px=64)
        assert 0 < frac_m < 1
        chip, frac = read_chip([far, masked, plain], lon, lat, 32, size_px=64)
        assert frac == 0.0
        np.testing.assert_array_equal(chip, read_chip(plain, lon, lat, 32, size_px=64)[0])
        chip, frac = read_chip([far, masked], lon, lat, 32, size_px=64)
        assert frac == frac_m
        empty, frac = read_chip([far], *LAGOS, out_px=8, size_m=1000)
        assert frac == 1.0 and empty.shape == (3, 8, 8)
        with open_scene(shared_data / VIIRS) as one_band:
            with pytest.raises(GeocnnError, match="same number of bands"):
                read_chip([plain, one_band], lon, lat, 8, size_px=8)


def test_chip_argument_errors(shared_data: Path) -> None:
    with open_scene(shared_data / BLACK_MARBLE) as scene:
        with pytest.raises(GeocnnError, match="exactly one chip size"):
            chip_window(scene, *LAGOS)
        with pytest.raises(GeocnnError, match="exactly one chip size"):
            chip_window(scene, *LAGOS, size_m=100, size_px=3)
        with pytest.raises(GeocnnError, match="swapped"):
            chip_window(scene, 6.52, 200.0, size_px=3)


# ------------------------------------------------------------------------------------------------ grids


def test_cluster_points_grid() -> None:
    lon, lat = 36.82, -1.29  # Nairobi
    pts = cluster_points(lon, lat, 10_000, 3)
    assert len(pts) == 9 and pts[4] == pytest.approx((lon, lat))
    # spacing 10 km / 3, measured in the local UTM zone (37S)
    xs, ys = warp("EPSG:4326", "EPSG:32737", [p[0] for p in pts], [p[1] for p in pts])
    xy = np.c_[xs, ys].reshape(3, 3, 2)
    np.testing.assert_allclose(np.diff(xy[:, :, 0], axis=1), 10_000 / 3, rtol=2e-3)
    np.testing.assert_allclose(np.diff(xy[:, :, 1], axis=0), -10_000 / 3, rtol=2e-3)  # north to south
    assert cluster_points(lon, lat, 10_000, 1) == [pytest.approx((lon, lat))]
    per_lon, per_lat = metres_per_degree(0.0)
    assert per_lon == pytest.approx(111_319.5, abs=1) and per_lat == pytest.approx(110_574.3, abs=1)


def test_tile_windows_cover_scene(shared_data: Path) -> None:
    with open_scene(str(shared_data / LANDSAT), ["B2"]) as scene:
        windows = list(tile_windows(scene, 224, 224))
        cols = sorted({w.col_off for w in windows})
        rows = sorted({w.row_off for w in windows})
        assert cols == list(range(0, 1345, 224)) and rows == list(range(0, 1569, 224))
        assert len(windows) == 7 * 8 and windows[1].col_off == 224 and windows[1].row_off == 0
        assert cols[-1] + 224 >= scene.width and rows[-1] + 224 >= scene.height
        last = scene.read(windows[-1])
        assert np.isnan(last[:, 1578 - 1568:, :]).all() and np.isnan(last[:, :, 1550 - 1344:]).all()
        assert len(list(tile_windows(scene, 224, 112))) == 13 * 14


def test_worldclim_float64_nodata(shared_data: Path) -> None:
    path = shared_data / "satellite/worldclim/wc2.0_bio_10m_12_annual_precipitation.tif"
    with open_scene(path) as scene:
        assert scene.dtypes == ["float64"] and scene.nodata == [-1.7e308]
        assert math.isnan(label_statistic(scene, 0.0, 0.0, "mean", size_px=1))  # Gulf of Guinea
        with rasterio.open(path) as ds:
            row, col = ds.index(36.82, -1.29)
        rain = label_statistic(scene, 36.82, -1.29, "mean", size_px=1)  # Nairobi
        assert rain == pytest.approx(direct(path, Window(col, row, 1, 1))[0, 0]) and 300 < rain < 2000
        # left edge of the global grid: beyond -180 is outside, ocean is nodata, both NaN; no overflow warnings
        with np.errstate(all="raise"):
            chip = scene.read(Window(-10, 100, 50, 50), (20, 20))
        assert np.isnan(chip[0, :, :2]).all() and np.isfinite(chip).any()
