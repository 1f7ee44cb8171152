"""Synthetic Earth scenes: file formats, determinism, reuse, night lights dark over the poor, daytime signal there."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_points
from scipy.ndimage import uniform_filter
from scipy.spatial import Delaunay
from scipy.stats import spearmanr
from shapely.geometry import Point

from geocnn.errors import GeocnnError
from geocnn.synthetic.earth import (
    BANDS,
    CLUSTER_BOX_PX,
    CLUSTER_COLUMNS,
    FILES,
    LIGHTS_FACTOR,
    REFLECTANCE_OFFSET,
    REFLECTANCE_SCALE,
    make_scene,
)

SIZE = 512
N_CLUSTERS = 120
N_COUNTRIES = 4
CHIP = 32
GRID_HALF = 3 * CHIP // 2  # a 3 x 3 grid of chips around the cluster


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated scene shared by the read-only tests."""
    return make_scene(tmp_path_factory.mktemp("earth") / "scene0", size_px=SIZE, n_clusters=N_CLUSTERS,
                      n_countries=N_COUNTRIES, seed=0)


def _clusters(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of clusters.csv."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _pixels(ds: rasterio.DatasetReader, rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each cluster on the grid of ``ds``."""
    xs, ys = warp_points("EPSG:4326", ds.crs, [float(r["lon"]) for r in rows], [float(r["lat"]) for r in rows])
    rc = [ds.index(x, y) for x, y in zip(xs, ys)]
    return np.array([r for r, _ in rc]), np.array([c for _, c in rc])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def measured(scene: dict[str, Path]) -> dict[str, np.ndarray]:
    """Per cluster: survey wealth, true 1 km wealth, night lights at the point, chip statistics, position."""
    _, rows = _clusters(scene["clusters"])
    with rasterio.open(scene["scene"]) as ds:
        dn = ds.read()
        r, c = _pixels(ds, rows)
    with rasterio.open(scene["wealth"]) as ds:
        wealth = ds.read(1)
    with rasterio.open(scene["nightlights"]) as ds:
        lights = ds.read(1)
        lr, lc = _pixels(ds, rows)
    refl = dn.astype(np.float64) * REFLECTANCE_SCALE + REFLECTANCE_OFFSET
    red, nir = refl[2], refl[3]
    land = (nir > 0.08).astype(np.float64)  # leaves out water (and nodata)
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6) * land
    built = (refl[0] > 0.15) * land  # bright in blue: metal roofs, a building-density proxy
    chip_land = uniform_filter(land, CHIP)[r, c]
    return {
        "survey": np.array([float(x["wealth"]) for x in rows]),
        "true": uniform_filter(wealth, CLUSTER_BOX_PX, mode="nearest")[r, c].astype(np.float64),
        "lights": lights[lr, lc],
        "ndvi_chip": uniform_filter(ndvi, CHIP)[r, c] / chip_land,
        "built_chip": uniform_filter(built, CHIP)[r, c] / chip_land,
        "row": r, "col": c,
    }


def test_rasters_open_with_stated_metadata(scene: dict[str, Path]) -> None:
    assert set(scene) == set(FILES) and all(p.parent == scene["scene"].parent for p in scene.values())
    with rasterio.open(scene["scene"]) as ds:
        assert ds.crs.to_epsg() == 32633
        assert (ds.count, ds.width, ds.height) == (4, SIZE, SIZE)
        assert ds.dtypes == ("uint16",) * 4 and ds.nodata == 0
        assert ds.descriptions == tuple(BANDS) == ("blue", "green", "red", "nir")
        assert ds.res == (30.0, 30.0)
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        assert ds.compression.name.lower() == "deflate"
        assert ds.scales == (REFLECTANCE_SCALE,) * 4 and ds.offsets == (REFLECTANCE_OFFSET,) * 4
        dn = ds.read()
        bounds, crs = ds.bounds, ds.crs
        (lon,), (lat,) = warp_points(crs, "EPSG:4326", [(bounds.left + bounds.right) / 2],
                                     [(bounds.top + bounds.bottom) / 2])
    assert abs(lon - 15.0) < 0.1 and abs(lat - 5.0) < 0.1
    nodata = (dn == 0).all(axis=0)
    assert 0.002 < nodata.mean() < 0.08, "a small nodata corner/strip, as real scenes have"
    assert ((dn == 0).any(axis=0) == nodata).all(), "nodata in all bands at once"
    valid = dn[:, ~nodata].astype(np.float64) * REFLECTANCE_SCALE + REFLECTANCE_OFFSET
    assert valid.min() > -0.2 and valid.max() < 1.0
    # vegetation dominates: NIR above red over most of the scene
    assert np.mean(valid[3] > valid[2] * 1.5) > 0.5

    with rasterio.open(scene["nightlights"]) as ds:
        assert ds.crs == crs and ds.dtypes == ("float32",) and ds.count == 1
        assert ds.res == (30.0 * LIGHTS_FACTOR,) * 2 and ds.bounds == bounds
        lights = ds.read(1)
    assert lights.min() == 0.0 and lights.max() > 10.0
    with rasterio.open(scene["wealth"]) as ds:
        assert ds.crs == crs and ds.dtypes == ("float32",) and ds.bounds == bounds and ds.shape == (SIZE, SIZE)
        wealth = ds.read(1)
    assert 0.0 <= wealth.min() and wealth.max() <= 1.0


def test_clusters_inside_valid_area_with_countries(scene: dict[str, Path], measured: dict[str, np.ndarray]) -> None:
    header, rows = _clusters(scene["clusters"])
    assert header == CLUSTER_COLUMNS and len(rows) == N_CLUSTERS
    assert sorted(int(r["cluster_id"]) for r in rows) == list(range(1, N_CLUSTERS + 1))
    assert {r["urban"] for r in rows} == {"0", "1"}
    assert all(15 <= int(r["households"]) <= 30 for r in rows)
    with rasterio.open(scene["scene"]) as ds:
        valid = ds.read(1) > 0
    r, c = measured["row"], measured["col"]
    # a 3 x 3 grid of 32 px chips (plus one chip of slack) around every cluster is inside the data
    half = GRID_HALF + CHIP
    assert r.min() >= half and c.min() >= half and r.max() < SIZE - half and c.max() < SIZE - half
    assert all(valid[i - half:i + half, j - half:j + half].all() for i, j in zip(r, c))

    country = np.array([x["country"] for x in rows])
    names = sorted(set(country))
    assert len(names) == N_COUNTRIES
    assert min(int((country == n).sum()) for n in names) >= 10
    pts = np.stack([c, r], axis=1).astype(np.float64)
    for n in names:  # contiguous (here convex) regions: no other country's cluster inside a country's hull
        hull = Delaunay(pts[country == n])
        assert (hull.find_simplex(pts[country != n]) < 0).all(), f"country {n} is not a contiguous region"

    # survey wealth = 1 km mean of the hidden field + noise: a perfect model reaches R2 about 0.8
    r2 = np.corrcoef(measured["survey"], measured["true"])[0, 1] ** 2
    assert 0.65 < r2 < 0.92
    urban = np.array([int(x["urban"]) for x in rows], bool)
    assert measured["true"][urban].mean() > measured["true"][~urban].mean() + 0.05


def test_night_lights_are_zero_over_the_poor(scene: dict[str, Path], measured: dict[str, np.ndarray]) -> None:
    lights, true = measured["lights"], measured["true"]
    dark = lights == 0
    assert dark.mean() >= 0.4
    assert not dark[true >= np.quantile(true, 0.8)].any()

    # exactly 0 in every cell whose mean hidden wealth is below a threshold, > 0 in every other
    with rasterio.open(scene["wealth"]) as ds:
        wealth = ds.read(1)
    with rasterio.open(scene["nightlights"]) as ds:
        grid = ds.read(1)
    m = SIZE // LIGHTS_FACTOR
    cell = wealth.reshape(m, LIGHTS_FACTOR, m, LIGHTS_FACTOR).mean(axis=(1, 3))
    assert cell[grid == 0].max() < cell[grid > 0].min()
    assert spearmanr(cell[grid > 0], grid[grid > 0])[0] > 0.5  # and brighter where wealthier
    assert 0.2 < (grid == 0).mean() < 0.9


def test_daytime_image_ranks_clusters_in_the_dark(measured: dict[str, np.ndarray]) -> None:
    dark = measured["lights"] == 0
    assert dark.sum() >= 40
    true, survey = measured["true"][dark], measured["survey"][dark]
    r_ndvi = np.corrcoef(measured["ndvi_chip"][dark], true)[0, 1]
    r_built = np.corrcoef(measured["built_chip"][dark], true)[0, 1]
    assert r_ndvi < -0.5, f"chip NDVI vs wealth among unlit clusters: r={r_ndvi:.2f}"
    assert r_built > 0.5, f"bright-roof fraction vs wealth among unlit clusters: r={r_built:.2f}"
    assert np.corrcoef(measured["ndvi_chip"][dark], survey)[0, 1] < -0.3  # still visible through survey noise


def test_deterministic_reused_and_seeded(tmp_path: Path, scene: dict[str, Path]) -> None:
    again = make_scene(tmp_path / "again", size_px=SIZE, n_clusters=N_CLUSTERS, n_countries=N_COUNTRIES, seed=0)
    for key in FILES:
        assert _digest(again[key]) == _digest(scene[key]), f"{key} differs for the same seed"
    assert not [p for p in tmp_path.iterdir() if p.name != "again"], "no temporary folder left behind"

    stamps = {k: p.stat().st_mtime_ns for k, p in again.items()}
    assert make_scene(tmp_path / "again", size_px=SIZE, n_clusters=N_CLUSTERS, n_countries=N_COUNTRIES,
                      seed=0) == again
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == stamps, "a complete set is not regenerated"

    other = make_scene(tmp_path / "again", size_px=256, n_clusters=40, n_countries=2, seed=1)
    assert _digest(other["scene"]) != _digest(scene["scene"])
    _, rows = _clusters(other["clusters"])
    assert len(rows) == 40 and len({r["country"] for r in rows}) == 2
    with rasterio.open(other["scene"]) as ds:
        assert ds.shape == (256, 256)


def test_refuses_bad_arguments_and_foreign_folders(tmp_path: Path) -> None:
    for kwargs, message in (({"size_px": 500}, "size_px must be a multiple of 8"),
                            ({"size_px": 128}, "size_px must be an integer >= 256, got 128"),
                            ({"size_px": 512.0}, "size_px must be an integer >= 256, got 512.0"),
                            ({"n_countries": 0}, "n_countries must be an integer >= 1, got 0"),
                            ({"n_countries": 13}, "n_countries must be at most 12"),
                            ({"n_clusters": 5, "n_countries": 4}, "n_clusters must be an integer >= 12, got 5"),
                            ({"seed": -1}, "seed must be an integer >= 0, got -1"),
                            ({"seed": True}, "seed must be an integer >= 0, got True")):
        with pytest.raises(GeocnnError, match=message.replace(".", r"\.").replace("+", r"\+")):
            make_scene(tmp_path / "x", **{"size_px": 256, "n_clusters": 40, **kwargs})
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(GeocnnError, match="notes.txt"):
        make_scene(busy, size_px=256, n_clusters=40)
    assert (busy / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("")
    with pytest.raises(GeocnnError, match="existing file"):
        make_scene(tmp_path / "file", size_px=256, n_clusters=40)


def test_country_polygons_hold_their_clusters_and_population_follows_towns(scene: dict[str, Path]) -> None:
    """The admin units and population raster for aggregating maps: each cluster lies in its own country's polygon,
    the polygons do not overlap, and population is dense in towns and 0 outside the valid scene."""
    countries = gpd.read_file(scene["countries"])
    assert sorted(countries["country"]) == [f"C{i:02d}" for i in range(1, N_COUNTRIES + 1)]
    assert countries.geometry.is_valid.all()
    _, rows = _clusters(scene["clusters"])
    inside = [countries.loc[countries["country"] == r["country"]].geometry.iloc[0].contains(
        Point(float(r["lon"]), float(r["lat"]))) for r in rows]
    assert np.mean(inside) == 1.0
    areas = countries.to_crs("EPSG:32633").geometry
    assert areas.union_all().area == pytest.approx(areas.area.sum(), rel=1e-6)  # no overlaps
    with rasterio.open(scene["population"]) as src, rasterio.open(scene["nightlights"]) as lights:
        pop = src.read(1)
        assert src.transform == lights.transform and src.shape == lights.shape
    with rasterio.open(scene["scene"]) as src:
        valid = src.read_masks(1)[:: SIZE // pop.shape[0], :: SIZE // pop.shape[1]] > 0
    assert (pop >= 0).all() and pop[~valid].max(initial=0) < pop[valid].max()
    assert np.percentile(pop[valid], 99) > 10 * np.median(pop[valid])  # towns stand out
