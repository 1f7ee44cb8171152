"""The HTML map on a generated 4-band COG: self-contained, and rendered by a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import geopandas as gpd
import matplotlib
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds

from geocnn.errors import GeocnnError
from geocnn.outputs.webmap import write_webmap

W, H, PIXEL = 60, 40, 100.0
ORIGIN = (500_000.0, 1_000_000.0)
"""A 6 x 4 km map in UTM 32N (near 9 N, 9 E), its top-left 5 x 5 pixels nodata."""
N_CLUSTERS = 7
BANDS = ("iwi", "lower", "upper", "interval_width")


def write_cog(path: Path, descriptions: tuple[str, ...] | None = BANDS, crs: str | None = "EPSG:32632",
              **tags: str) -> np.ndarray:
    """A prediction rising from 0 (top left) to 100 (bottom right) with interval bands of width 5..15 (a COG)."""
    pred = (np.linspace(0, 50, W)[None, :] + np.linspace(0, 50, H)[:, None]).astype(np.float32)
    width = (5 + 10 * np.linspace(0, 1, W)[None, :] * np.ones((H, 1))).astype(np.float32)
    data = np.stack([pred, pred - width / 2, pred + width / 2, width])[: len(descriptions or BANDS[:1])]
    data[:, :5, :5] = np.nan
    with rasterio.open(path, "w", driver="COG", width=W, height=H, count=len(data), dtype="float32", crs=crs,
                       transform=from_origin(*ORIGIN, PIXEL, PIXEL), nodata=np.nan) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
        dst.update_tags(**tags)
    return data


def clusters_table() -> pd.DataFrame:
    """Held-out clusters inside the map (one with an unknown observation), with folds and splits."""
    rng = np.random.default_rng(3)
    xs = ORIGIN[0] + rng.uniform(500, W * PIXEL - 500, N_CLUSTERS)
    ys = ORIGIN[1] - rng.uniform(500, H * PIXEL - 500, N_CLUSTERS)
    lon, lat = warp_points("EPSG:32632", "EPSG:4326", xs, ys)
    table = pd.DataFrame({"id": [f"c{i}" for i in range(N_CLUSTERS)], "split": "test",
                          "fold": np.arange(N_CLUSTERS) % 3, "lat": lat, "lon": lon,
                          "iwi": rng.uniform(0, 100, N_CLUSTERS), "pred_iwi": rng.uniform(0, 100, N_CLUSTERS)})
    table.loc[3, "iwi"] = np.nan
    return table


def aggregates() -> gpd.GeoDataFrame:
    """Two admin areas over the top half of the map (UTM), with zonal means."""
    left, top = ORIGIN
    boxes = [shapely.box(left, top - 2000, left + 3000, top), shapely.box(left + 3000, top - 2000, left + 6000, top)]
    return gpd.GeoDataFrame({"admin": ["North", "East"], "prediction_mean": [12.5, 61.0], "n_pixels": [600, 600]},
                            geometry=boxes, crs="EPSG:32632")


def overlays(html: str) -> list[tuple[str, list[list[float]]]]:
    """(PNG data URI, [[south, west], [north, east]]) of every image overlay in the page."""
    found = re.findall(r'L\.imageOverlay\(\s*"(data:image/png;base64,[^"]+)",\s*(\[\[.*?\]\])', html, re.DOTALL)
    return [(uri, json.loads(bounds)) for uri, bounds in found]


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGBA"))


def cluster_properties(html: str) -> list[dict]:
    """Properties of the point features embedded in the page."""
    points = re.findall(r'\{"geometry": \{"coordinates": \[[^\]]*\], "type": "Point"\}, "properties": (\{[^}]*\})',
                        html)
    return [json.loads(p) for p in points]


@pytest.fixture
def page(tmp_path: Path) -> Path:
    write_cog(tmp_path / "prediction.tif")
    return write_webmap(tmp_path / "prediction.tif", tmp_path / "prediction.html", clusters=clusters_table(),
                        aggregates=aggregates(), target="iwi", units="IWI points", title="test run: predicted iwi")


def test_page_is_self_contained_with_both_rasters_on_their_ground(page: Path) -> None:
    html = page.read_text()
    # nothing would be fetched: no remote script or stylesheet, Leaflet inlined, no base map tiles by default
    assert not re.search(r"<(script|link)\b[^>]*(src|href)\s*=\s*[\"']?(https?:)?//", html, re.IGNORECASE)
    assert "L.map(" in html and "leaflet-control-layers" in html and "tileLayer(" not in html
    assert not re.search(r"url\(images/", html)  # Leaflet's CSS images are data URIs
    layers = overlays(html)
    assert len(layers) == 2  # prediction and interval width
    expected = transform_bounds("EPSG:32632", "EPSG:4326", ORIGIN[0], ORIGIN[1] - H * PIXEL, ORIGIN[0] + W * PIXEL,
                                ORIGIN[1])
    for _, ((south, west), (north, east)) in layers:
        np.testing.assert_allclose([west, south, east, north], expected, atol=2e-3)  # within ~200 m (warp padding)
    viridis, magma = matplotlib.colormaps["viridis"], matplotlib.colormaps["magma"]
    pred, width = decode(layers[0][0]), decode(layers[1][0])
    h, w = pred.shape[:2]
    assert pred[2, 2, 3] == 0 and pred[h // 2, w // 2, 3] == 255  # nodata corner transparent, the rest opaque
    # the prediction runs 0 (top left) -> 100 (bottom right) on viridis, the width 5 (left) -> 15 (right) on magma
    assert np.abs(pred[-2, -2, :3].astype(int) - np.array(viridis(1.0, bytes=True)[:3])).max() <= 12
    assert np.abs(pred[8, 8, :3].astype(int) - np.array(viridis(0.1, bytes=True)[:3])).max() <= 25
    assert np.abs(width[h // 2, -2, :3].astype(int) - np.array(magma(1.0, bytes=True)[:3])).max() <= 12
    assert np.abs(width[h // 2, 1, :3].astype(int) - np.array(magma(0.0, bytes=True)[:3])).max() <= 25


def test_clusters_carry_observed_predicted_and_fold(page: Path) -> None:
    props = cluster_properties(page.read_text())
    table = clusters_table()
    assert [p["id"] for p in props] == list(table["id"])
    for p, (_, row) in zip(props, table.iterrows()):
        assert p["fold"] == str(row["fold"]) and p["split"] == "test"
        assert float(p["predicted"]) == pytest.approx(row["pred_iwi"], rel=1e-3)
        if np.isnan(row["iwi"]):
            assert p["observed"] == "–" and p["_fill"] == "#ffffff"  # unknown observation: white
        else:  # filled with the observed value on the prediction's scale (0..100 on viridis)
            assert float(p["observed"]) == pytest.approx(row["iwi"], rel=1e-3)
            fill = np.array(matplotlib.colors.to_rgb(p["_fill"])) * 255
            expected = np.array(matplotlib.colormaps["viridis"](row["iwi"] / 100.0, bytes=True)[:3])
            assert np.abs(fill - expected).max() < 12


def test_areas_are_filled_by_their_mean_on_the_prediction_scale(page: Path) -> None:
    found = re.findall(r'"type": "Polygon"\}, "id": "\d+", "properties": (\{[^}]*\})', page.read_text())
    areas = [json.loads(p) for p in found]
    assert [(a["admin"], a["prediction_mean"], a["n_pixels"]) for a in areas] == [("North", "12.5", "600"),
                                                                                  ("East", "61", "600")]
    lo, hi = 50 * 5 / (W - 1), 100.0  # the map's finite range (its top-left 5 x 5 pixels are nodata)
    for area in areas:
        fill = np.array(matplotlib.colors.to_rgb(area["_fill"])) * 255
        expected = matplotlib.colormaps["viridis"]((float(area["prediction_mean"]) - lo) / (hi - lo), bytes=True)
        assert np.abs(fill - np.array(expected[:3])).max() < 6


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is needed for the HTML map check (.ci/run installs it)")
        pytest.skip("no chromium here for the HTML map check")
    return chromium


def test_page_renders_in_headless_chromium_without_console_errors(page: Path, tmp_path: Path) -> None:
    browser = [chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
               "--window-size=1000,700", "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'prof'}"]
    url = page.resolve().as_uri()
    run = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    dom = run.stdout
    # Chromium prints every console message of the page as INFO:CONSOLE (uncaught errors as "Uncaught ...")
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    overlays_listed = re.findall(r'leaflet-control-layers-selector"[^>]*>\s*<span>\s*([^<]+)</span>', dom)
    assert [name.strip() for name in overlays_listed] == ["predicted iwi", "interval width", "area aggregates",
                                                          "survey clusters"]
    # the prediction's colour bar with its units; the width layer is off at first, and so is its colour bar
    assert re.findall(r'class="geocnn-colourbar-caption"[^>]*>([^<]*)<', dom) == ["predicted iwi [IWI points]"]
    assert len(re.findall(r'<img[^>]*class="[^"]*leaflet-image-layer', dom)) == 1  # the prediction is drawn
    paths = re.findall(r'<path[^>]*class="[^"]*leaflet-interactive', dom)
    assert len(paths) == N_CLUSTERS + len(aggregates())  # circle markers + admin polygons
    shot = tmp_path / "webmap.png"
    subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (700, 1000) and pixels.std() > 20  # a drawn map, not a blank page
    # the bright corner of the prediction (viridis near 1 at 80 % opacity over Leaflet's #ddd background)
    bright = 0.8 * np.array(matplotlib.colormaps["viridis"](0.95, bytes=True)[:3]) + 0.2 * 221
    assert (np.abs(pixels - bright).max(axis=2) < 25).sum() > 500


def test_one_undescribed_band_is_the_prediction_alone_with_the_tagged_units(tmp_path: Path) -> None:
    write_cog(tmp_path / "map.tif", descriptions=None, UNITS="IWI points", DEFINITION="International Wealth Index")
    html = write_webmap(tmp_path / "map.tif", tmp_path / "map.html", target="iwi").read_text()
    assert len(overlays(html)) == 1 and "interval width" not in html and "survey clusters" not in html
    assert "predicted iwi [IWI points]" in html and "International Wealth Index" in html


def test_errors_name_the_input_and_leave_nothing(tmp_path: Path) -> None:
    write_cog(tmp_path / "map.tif")
    out = tmp_path / "map.html"
    with pytest.raises(GeocnnError, match=r"clusters table: no column\(s\) pred_iwi"):
        write_webmap(tmp_path / "map.tif", out, clusters=clusters_table().drop(columns="pred_iwi"), target="iwi")
    write_cog(tmp_path / "nocrs.tif", crs=None)
    with pytest.raises(GeocnnError, match="nocrs.tif: the raster has no CRS"):
        write_webmap(tmp_path / "nocrs.tif", out)
    (tmp_path / "areas.gpkg").write_text("not a geopackage")
    with pytest.raises(GeocnnError, match="areas.gpkg: cannot read the area aggregates"):
        write_webmap(tmp_path / "map.tif", out, aggregates=tmp_path / "areas.gpkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["areas.gpkg", "map.tif", "nocrs.tif"]
