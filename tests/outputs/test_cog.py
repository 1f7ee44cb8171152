"""Wall-to-wall maps on small generated GeoTIFFs: window averaging, nodata, grids, COG layout, exports."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from PIL import Image
from rasterio.transform import from_origin, rowcol
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geocnn.data.sources.raster import Grid
from geocnn.errors import GeocnnError
from geocnn.inference.sliding import BLOCK_PX, raster_reader
from geocnn.outputs.cog import (
    DIVERGING_CMAP,
    colour_scale,
    is_prediction_map,
    predict_map,
    write_difference,
    write_quicklook,
)
from geocnn.outputs.geojson import write_geojson_points

W, H, CORNER = 300, 260, 40
"""Scene width, height (pixels) and the side of its all-bands-nodata top-left corner."""
NIGERIA_MAP = "satellite/reference_maps/nigeria_2012_2014_msnl_wealth_pred.tif"


def band_mean(batch: np.ndarray) -> np.ndarray:
    """The test model: mean of every valid pixel of a window, all bands."""
    return np.nanmean(batch, axis=(1, 2, 3))


def write_scene(path: Path, crs: str = "EPSG:32633", origin: tuple[float, float] = (500_000.0, 4_000_000.0),
                pixel: float = 10.0, seed: int = 0) -> np.ndarray:
    """Write a 3-band float32 scene (NaN nodata: a top-left corner, and band 2 alone in a bottom-right patch)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 20.0, (3, H, W)).astype(np.float32) + np.linspace(0, 50, W, dtype=np.float32)
    data[:, :CORNER, :CORNER] = np.nan
    data[1, 230:245, 270:290] = np.nan
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=3, dtype="float32", crs=crs,
                       transform=from_origin(*origin, pixel, pixel), nodata=np.nan) as dst:
        dst.write(data)
    return data


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "scene.tif"
    return path, write_scene(path)


def window_mean(data: np.ndarray, row: int, col: int, chip: int) -> float:
    """nanmean of a (boundless) window of the scene, as the model sees it."""
    return float(np.nanmean(data[:, row:row + chip, col:col + chip]))


def run_map(scene_path: Path, out: Path, **kwargs) -> np.ndarray:
    """predict_map with the band-mean model over a GeoTIFF; returns the written bands."""
    kwargs.setdefault("predict", band_mean)
    with raster_reader(scene_path) as (read, grid):
        predict_map(read, grid, out_path=out, **kwargs)
    with rasterio.open(out) as src:
        return src.read()


# ------------------------------------------------------------------------------------------ (a) averaging
def test_stride_equal_chip_gives_block_means(scene, tmp_path):
    path, data = scene
    chip = 40  # 300 x 260 is not a multiple of 40: the last column / row of windows hangs past the edge
    out = run_map(path, tmp_path / "map.tif", chip_px=chip, stride_px=chip, max_nodata_fraction=0.8)[0]

    padded = np.full((3, 7 * chip, 8 * chip), np.nan, np.float32)
    padded[:, :H, :W] = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-nodata corner block
        blocks = np.nanmean(padded.reshape(3, 7, chip, 8, chip), axis=(0, 2, 4))
    expected = np.repeat(np.repeat(blocks, chip, axis=0), chip, axis=1)[:H, :W]
    expected[np.isnan(data).any(axis=0)] = np.nan
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert np.isfinite(out[H - 1, W - 1])  # the partial bottom-right block (75 % outside) was predicted


def test_half_stride_averages_overlapping_windows(scene, tmp_path):
    path, data = scene
    chip, stride = 40, 20
    out = run_map(path, tmp_path / "map.tif", chip_px=chip, stride_px=stride)[0]

    def cell(i: int, j: int) -> float:
        return float(out[i * stride + 7, j * stride + 11])  # any pixel inside the stride cell

    # interior cell (5, 7): the four windows starting at rows 80/100 and columns 120/140
    hand = np.mean([window_mean(data, r, c, chip) for r in (80, 100) for c in (120, 140)])
    assert cell(5, 7) == pytest.approx(hand, rel=1e-5)
    # top row cell (0, 3): windows at row 0, columns 40 and 60
    hand = np.mean([window_mean(data, 0, c, chip) for c in (40, 60)])
    assert cell(0, 3) == pytest.approx(hand, rel=1e-5)
    # the last cell (12, 14) lies only in the last window (row 220, column 260, half past the right edge)
    assert float(out[H - 1, W - 1]) == pytest.approx(window_mean(data, 220, 260, chip), rel=1e-5)
    # cell (1, 2) beside the nodata corner: windows (0, 20) and (20, 20) are 50 % and 25 % nodata
    windows = [(0, 20), (0, 40), (20, 20), (20, 40)]
    hand = np.mean([window_mean(data, r, c, chip) for r, c in windows])
    assert cell(1, 2) == pytest.approx(hand, rel=1e-5)
    # with max_nodata_fraction 0.2 those two windows are skipped and only the other two are averaged
    strict = run_map(path, tmp_path / "strict.tif", chip_px=chip, stride_px=stride, max_nodata_fraction=0.2)[0]
    hand = np.mean([window_mean(data, r, c, chip) for r, c in windows[1::2]])
    assert float(strict[1 * stride + 7, 2 * stride + 11]) == pytest.approx(hand, rel=1e-5)


def test_resampled_input_and_batches(scene, tmp_path):
    path, data = scene
    shapes: list[tuple[int, ...]] = []

    def model(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return band_mean(batch)

    out = run_map(path, tmp_path / "map.tif", predict=model, chip_px=40, stride_px=40, in_px=20, batch_size=5)[0]
    assert {s[1:] for s in shapes} == {(3, 20, 20)} and max(s[0] for s in shapes) == 5
    # average-resampling a fully valid block to half size keeps its mean
    assert out[100, 100] == pytest.approx(float(np.nanmean(data[:, 80:120, 80:120])), rel=1e-5)


# ------------------------------------------------------------------------------------ (b) grid and layout
def test_scene_grid_output_layout(scene, tmp_path):
    path, _ = scene

    def two_outputs(batch: np.ndarray) -> np.ndarray:
        return np.stack([band_mean(batch), np.nanstd(batch, axis=(1, 2, 3))], axis=1)

    out = tmp_path / "maps" / "wealth.tif"
    run_map(path, out, predict=two_outputs, chip_px=40, stride_px=20, band_names=["wealth", "wealth_sd"])
    with rasterio.open(path) as src_in, rasterio.open(out) as src:
        assert (src.crs, src.transform, src.width, src.height) == (src_in.crs, src_in.transform, W, H)
        assert src.count == 2 and src.dtypes == ("float32", "float32")
        assert np.isnan(src.nodata)
        assert src.descriptions == ("wealth", "wealth_sd")
        assert src.profile["tiled"] and src.block_shapes == [(BLOCK_PX, BLOCK_PX)] * 2
        assert src.compression == rasterio.enums.Compression.deflate
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert structure["PREDICTOR"] == "3" and structure.get("LAYOUT") == "COG"
        assert (src.read(2)[np.isfinite(src.read(2))] >= 0).all()


def test_grid_from_raster_and_bad_arguments(scene, tmp_path):
    path, _ = scene
    grid = Grid.from_raster(path)
    assert (grid.width, grid.height, grid.crs.to_epsg(), grid.transform.a) == (W, H, 32633, 10.0)
    with pytest.raises(GeocnnError, match="not found"):
        Grid.from_raster(tmp_path / "missing.tif")
    with raster_reader(path) as (read, grid):
        with pytest.raises(GeocnnError, match="stride_px"):
            predict_map(read, grid, band_mean, tmp_path / "x.tif", chip_px=20, stride_px=40)
        with pytest.raises(GeocnnError, match="band_names"):
            predict_map(read, grid, band_mean, tmp_path / "x.tif", chip_px=100, stride_px=100,
                        band_names=["a", "b"])
    assert not (tmp_path / "x.tif").exists()


# ------------------------------------------------------------------------------------------- (c) nodata
def test_nodata_input_pixels_are_nan(scene, tmp_path):
    path, data = scene
    out = run_map(path, tmp_path / "map.tif", chip_px=40, stride_px=20)[0]
    nodata = np.isnan(data).any(axis=0)  # a pixel NaN in any band is nodata
    assert np.isnan(out[nodata]).all()
    assert np.isnan(out[230:245, 270:290]).all()  # only band 2 is NaN there
    assert np.isfinite(out[~nodata]).all()  # everything else is covered by a kept window


# ---------------------------------------------------------------------------------------- (d) target grid
@pytest.mark.realdata
def test_target_grid_matches_published_map(shared_data, tmp_path):
    published = shared_data / NIGERIA_MAP
    scene_path = tmp_path / "nigeria_scene.tif"
    write_scene(scene_path, crs="EPSG:32632", origin=(390_000.0, 1_000_000.0), pixel=100.0)  # ~8 E, 9 N
    target = Grid.from_raster(published)
    out = run_map(scene_path, tmp_path / "on_published.tif", chip_px=40, stride_px=20, target_grid=target)[0]

    with rasterio.open(published) as ref, rasterio.open(tmp_path / "on_published.tif") as src:
        assert src.crs == ref.crs and src.crs.to_epsg() == 3857
        assert src.transform == ref.transform
        assert (src.width, src.height) == (ref.width, ref.height)
        assert np.isnan(src.nodata) and src.dtypes[0] == "float32"
        assert np.isnan(ref.read(1)).any() and np.isnan(out).any()  # same NaN-for-nodata convention
        # the target pixel under the scene's centre (scene: 30 km x 26 km) holds a value in the data's range
        xs, ys = warp_points("EPSG:32632", ref.crs, [390_000.0 + 50 * W], [1_000_000.0 - 50 * H])
        row, col = rowcol(ref.transform, xs[0], ys[0])
    assert np.isfinite(out[row, col]) and 90.0 < out[row, col] < 160.0
    assert 2 <= np.isfinite(out).sum() <= 30  # only the few ~7.65 km pixels the scene touches


# ------------------------------------------------------------------------------------ (e) windowed reads
def test_reader_only_sees_windows(scene, tmp_path):
    path, _ = scene
    calls: list[tuple[Window, tuple[int, int]]] = []
    chip = 40
    with raster_reader(path) as (read, grid):
        def recording_read(window: Window, out_shape: tuple[int, int]) -> np.ndarray:
            calls.append((window, out_shape))
            return read(window, out_shape)

        predict_map(recording_read, grid, band_mean, tmp_path / "map.tif", chip_px=chip, stride_px=20)

    chips = [w for w, shape in calls if shape == (chip, chip) and (w.width, w.height) == (chip, chip)]
    assert len(chips) == 12 * 14  # row origins 0..220, column origins 0..260, 20 apart
    largest = max(calls, key=lambda c: c[0].width * c[0].height)[0]
    assert largest.width <= BLOCK_PX and largest.height <= BLOCK_PX  # one chip or one output tile
    assert largest.width * largest.height < W * H
    # the output mask is read tile by tile: the tiles partition the scene exactly once
    covered = np.zeros((H, W), int)
    for w, shape in calls:
        if (w.width, w.height) != (chip, chip):
            assert shape == (w.height, w.width)
            covered[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert (covered == 1).all()


# -------------------------------------------------------------------------------------------- (f) quicklook
def test_quicklook_png(scene, tmp_path):
    path, _ = scene
    first, second = tmp_path / "a.tif", tmp_path / "b.tif"
    run_map(path, first, chip_px=40, stride_px=20)
    run_map(path, second, predict=lambda b: -band_mean(b), chip_px=40, stride_px=40)
    png_a = write_quicklook(first, tmp_path / "ql" / "a.png", title="mean")
    png_b = write_quicklook(second, tmp_path / "ql" / "b.png", title="negated", cmap="magma")
    images = []
    for png in (png_a, png_b):
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100
            images.append(np.asarray(img.convert("RGB")))
    assert images[0].shape != images[1].shape or (images[0] != images[1]).any()
    with pytest.raises(GeocnnError, match="band 3"):
        write_quicklook(first, tmp_path / "bad.png", band=3)
    assert not (tmp_path / "bad.png").exists()
    assert sorted(p.name for p in (tmp_path / "ql").iterdir()) == ["a.png", "b.png"]


# ---------------------------------------------------------------------------------------------- (g) geojson
def test_geojson_points_round_trip(tmp_path):
    frame = pd.DataFrame({"lat": [9.05, -1.5, np.nan], "lon": [7.49, 36.8, 3.0], "name": ["Abuja", "Nairobi", "x"],
                          "wealth": [0.25, np.nan, 1.0], "n": np.array([3, 4, 5], np.int64),
                          "urban": [True, False, True]})
    path = write_geojson_points(frame, tmp_path / "points.geojson")
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 3
    first, second, third = doc["features"]
    assert first["type"] == "Feature" and first["geometry"] == {"type": "Point", "coordinates": [7.49, 9.05]}
    assert first["properties"] == {"name": "Abuja", "wealth": 0.25, "n": 3, "urban": True}
    assert second["geometry"]["coordinates"] == [36.8, -1.5] and second["properties"]["wealth"] is None
    assert third["geometry"] is None  # missing latitude
    with pytest.raises(GeocnnError, match="latitude"):
        write_geojson_points(frame, tmp_path / "bad.geojson", lat_column="latitude")
    with pytest.raises(GeocnnError, match="swapped"):
        write_geojson_points(frame.assign(lat=[91.0, 0.0, 0.0]), tmp_path / "bad.geojson")
    assert not (tmp_path / "bad.geojson").exists()


# ------------------------------------------------------------------------------------------- (h) atomicity
def test_failure_leaves_no_output(scene, tmp_path):
    path, _ = scene
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("model crashed")
        return band_mean(batch)

    with raster_reader(path) as (read, grid):
        with pytest.raises(RuntimeError, match="model crashed"):
            predict_map(read, grid, flaky, out_dir / "map.tif", chip_px=40, stride_px=20, batch_size=8)
        assert calls["n"] == 3 and list(out_dir.iterdir()) == []

        # a failure while writing (the nodata mask read) keeps an existing map and leaves no staging files
        (out_dir / "map.tif").write_bytes(b"old map")

        def failing_mask_read(window: Window, out_shape: tuple[int, int]) -> np.ndarray:
            if window.width > 40:
                raise OSError("disk gone")
            return read(window, out_shape)

        with pytest.raises(OSError, match="disk gone"):
            predict_map(failing_mask_read, grid, band_mean, out_dir / "map.tif", chip_px=40, stride_px=40)
    assert [p.name for p in out_dir.iterdir()] == ["map.tif"]
    assert (out_dir / "map.tif").read_bytes() == b"old map"


# ------------------------------------------------------------------ (i) tags, grid masks, differences, legends
PROVENANCE = {"TARGET": "wealth", "UNITS": "asset index (sd)", "MODEL": "experiment nigeria, backbone test_resnet",
              "MLFLOW_RUN_ID": "0123abcd", "CREATED": "2024-05-01T12:00:00+00:00"}


def write_grid(path: Path, data: np.ndarray, transform, crs: str = "EPSG:32633", nodata: float | None = None) -> Path:
    """A one-band raster (a target grid, a reference map) holding ``data``."""
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data, 1)
    return path


def test_cog_carries_provenance_tags(scene, tmp_path):
    path, _ = scene
    run_map(path, tmp_path / "map.tif", chip_px=40, stride_px=40, band_names=["wealth"], tags=PROVENANCE)
    with rasterio.open(tmp_path / "map.tif") as src:
        assert {k: src.tags()[k] for k in PROVENANCE} == PROVENANCE
        assert src.descriptions == ("wealth",)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"  # tagged before the COG copy: still a COG


@pytest.mark.parametrize("kind", ["nan", "nodata_value"])
def test_target_grid_mask_leaves_nan_exactly_where_the_grid_has_no_data(scene, tmp_path, kind):
    path, _ = scene
    rng = np.random.default_rng(5)
    invalid = rng.random((90, 100)) < 0.3  # 20 m grid inside the scene's valid area (x +600..+2600 m)
    invalid[30:60, 40:70] = True  # "the sea"
    if kind == "nan":
        values = np.where(invalid, np.nan, rng.normal(size=invalid.shape)).astype(np.float32)
        grid_path = write_grid(tmp_path / "grid.tif", values, from_origin(500_600.0, 3_999_400.0, 20.0, 20.0))
    else:
        values = np.where(invalid, 0, rng.integers(1, 9, invalid.shape)).astype(np.uint8)
        grid_path = write_grid(tmp_path / "grid.tif", values, from_origin(500_600.0, 3_999_400.0, 20.0, 20.0),
                               nodata=0)
    target = Grid.from_raster(grid_path)
    unmasked = run_map(path, tmp_path / "all.tif", chip_px=40, stride_px=20, target_grid=target)[0]
    masked = run_map(path, tmp_path / "masked.tif", chip_px=40, stride_px=20, target_grid=target,
                     mask_to=grid_path)[0]
    assert np.isfinite(unmasked).all()  # the grid lies inside the scene: every pixel has a prediction
    np.testing.assert_array_equal(np.isnan(masked), invalid)
    np.testing.assert_array_equal(masked[~invalid], unmasked[~invalid])
    with raster_reader(path) as (read, grid), pytest.raises(GeocnnError, match="mask with the grid raster"):
        predict_map(read, grid, band_mean, tmp_path / "x.tif", chip_px=40, stride_px=40, target_grid=target,
                    mask_to=path)
    assert not (tmp_path / "x.tif").exists()


def test_difference_map_is_ours_minus_reference_on_pixels_both_have(tmp_path):
    rng = np.random.default_rng(6)
    transform = from_origin(300_000.0, 1_500_000.0, 7650.0, 7650.0)
    ref = rng.normal(size=(143, 176)).astype(np.float32)
    ours = (0.8 * ref + rng.normal(scale=0.5, size=ref.shape) + 0.25).astype(np.float32)
    ref[:20] = np.nan
    ours[:, :15] = np.nan
    a = write_grid(tmp_path / "ours.tif", ours, transform, "EPSG:3857", nodata=np.nan)
    b = write_grid(tmp_path / "ref.tif", ref, transform, "EPSG:3857")
    assert is_prediction_map(b)
    stats = write_difference(a, b, tmp_path / "diff.tif", tags=PROVENANCE)
    both = np.isfinite(ours) & np.isfinite(ref)
    with rasterio.open(tmp_path / "diff.tif") as src:
        diff = src.read(1)
        assert src.tags()["MLFLOW_RUN_ID"] == "0123abcd" and src.tags()["REFERENCE"] == str(b)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    np.testing.assert_array_equal(np.isfinite(diff), both)
    np.testing.assert_allclose(diff[both], ours[both] - ref[both], rtol=1e-6)
    assert stats["n"] == both.sum() == 123 * 161
    assert stats["pearson_r"] == pytest.approx(np.corrcoef(ours[both], ref[both])[0, 1], abs=1e-9)
    assert stats["mean_difference"] == pytest.approx(float(np.mean(ours[both] - ref[both].astype(float))), abs=1e-6)
    assert 0.8 < stats["pearson_r"] < 0.9 and stats["mean_difference"] == pytest.approx(0.25, abs=0.03)
    with pytest.raises(GeocnnError, match="not on the grid"):
        write_difference(a, write_grid(tmp_path / "other.tif", ref[:100], transform, "EPSG:3857"),
                         tmp_path / "bad.tif")
    assert not (tmp_path / "bad.tif").exists()


def test_colour_scale_is_diverging_at_zero_when_the_values_span_it():
    cmap, norm = colour_scale(-0.9, 1.9)  # the Nigeria asset-index map's range
    assert isinstance(norm, TwoSlopeNorm) and cmap.name.startswith(DIVERGING_CMAP)
    assert (norm.vmin, norm.vcenter, norm.vmax) == (-0.9, 0.0, 1.9) and norm(0.0) == 0.5
    cmap, norm = colour_scale(0.5, 3.0)  # all positive (night lights): sequential
    assert not isinstance(norm, TwoSlopeNorm) and cmap.name.startswith("viridis") and (norm.vmin, norm.vmax) == (0.5, 3)
    _, norm = colour_scale(0.5, 3.0, diverging=True)  # forced: still centred at 0
    assert isinstance(norm, TwoSlopeNorm) and (norm.vmin, norm.vcenter, norm.vmax) == (-3.0, 0.0, 3.0)
    cmap, norm = colour_scale(-1.0, 1.0, diverging=False, cmap="magma")
    assert not isinstance(norm, TwoSlopeNorm) and cmap.name.startswith("magma")


def _drawn(monkeypatch) -> list[dict]:
    """What each quicklook drew: axis labels and limits, colour-bar label, legend entries, norm, caption, save."""
    records: list[dict] = []
    save = Figure.savefig

    def spy(self, *args, **kwargs):
        save(self, *args, **kwargs)
        ax, bar = self.axes[0], self.axes[1]
        records.append({"xlabel": ax.get_xlabel(), "xlim": ax.get_xlim(), "ylim": ax.get_ylim(),
                        "bar": bar.get_ylabel(), "norm": ax.images[0].norm, "bbox_inches": kwargs.get("bbox_inches"),
                        "legend": [t.get_text() for leg in self.legends for t in leg.get_texts()],
                        "caption": [leg.get_title().get_text() for leg in self.legends],
                        "points": [len(c.get_offsets()) for c in ax.collections]})

    monkeypatch.setattr(Figure, "savefig", spy)
    return records


def test_quicklook_labels_legend_points_and_degrees(tmp_path, monkeypatch):
    drawn = _drawn(monkeypatch)
    rng = np.random.default_rng(7)
    values = rng.normal(size=(143, 176)).astype(np.float32)
    values[:, :30] = np.nan  # "the sea"
    tif = write_grid(tmp_path / "wealth.tif", values, from_origin(290_700.0, 1_568_250.0, 7650.0, 7650.0),
                     "EPSG:3857", nodata=np.nan)
    with rasterio.open(tif, "r+") as dst:
        dst.descriptions = ("wealth",)
        dst.update_tags(UNITS="asset index (sd)", DEFINITION="first principal component of household assets")
    lon, lat = [7.49, 3.38, 8.52, 40.0], [9.06, 6.52, 12.0, 40.0]  # Abuja, Lagos, Kano; one far outside
    write_quicklook(tif, tmp_path / "wealth.png", points=(lon, lat))
    (rec,) = drawn
    assert rec["bar"] == "wealth [asset index (sd)]"
    assert rec["legend"] == ["no data", "survey clusters (4)"] and rec["points"] == [4]
    assert rec["caption"] == ["wealth: first principal component of household assets"]  # TARGET from the band
    assert isinstance(rec["norm"], TwoSlopeNorm) and rec["norm"].vcenter == 0.0
    assert rec["xlabel"].startswith("longitude") and rec["bbox_inches"] == "tight"
    # Nigeria's box, in degrees (the EPSG:3857 map is drawn on longitude/latitude axes; 7.65 km is ~0.07 deg)
    with rasterio.open(tif) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    assert (west, east) == pytest.approx((2.611, 14.706), abs=0.01)
    assert rec["xlim"] == pytest.approx((west, east), abs=0.07)
    assert rec["ylim"] == pytest.approx((south, north), abs=0.07)

    # a 3 km scene stays on its own (UTM) axes; positive values: sequential; no points: no point legend entry
    path = tmp_path / "scene.tif"
    data = write_scene(path)
    run_map(path, tmp_path / "pos.tif", chip_px=40, stride_px=40, max_nodata_fraction=1.0)
    write_quicklook(tmp_path / "pos.tif", tmp_path / "pos.png")
    assert not isinstance(drawn[1]["norm"], TwoSlopeNorm) and drawn[1]["xlabel"].startswith("easting [metre]")
    assert drawn[1]["legend"] == ["no data"] and np.isnan(data).any()  # the scene's nodata corner
