"""Admin-level aggregates of a map: a hand computation on a 4x4 raster, the published Nigeria wealth map and
population raster with polygons whose answer numpy gives, reprojection, bad inputs, all-or-nothing writes, the CLI."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.errors import GeocnnError
from geocnn.outputs.aggregate import aggregate

CRS = "EPSG:32631"
X0, Y0, PX = 500_000.0, 1_000_040.0, 10.0  # 4x4 pixels of 10 m: x 500000..500040, y 1000000..1000040
VALUES = np.array([[np.nan, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]], dtype=np.float32)
PEOPLE = np.array([[10, 1, 1, 1], [2, 3, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=np.float32)
OUTPUTS = {"aggregates.gpkg", "aggregates.geojson", "aggregates.csv", "aggregates.parquet"}


def write_raster(path: Path, bands: list[np.ndarray], names: list[str] | None = None, crs: str = CRS,
                 transform: rasterio.Affine | None = None) -> Path:
    """A float32 GeoTIFF, NaN as nodata, with band descriptions when given."""
    height, width = bands[0].shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=len(bands), dtype="float32",
                       crs=crs, transform=transform or from_origin(X0, Y0, PX, PX)) as dst:
        for i, band in enumerate(bands, start=1):
            dst.write(band.astype(np.float32), i)
        if names:
            dst.descriptions = tuple(names)
    return path


def cells(row0: int, col0: int, rows: float, cols: float) -> object:
    """A box over pixel rows/cols of the 4x4 grid (fractions allowed)."""
    return box(X0 + col0 * PX, Y0 - (row0 + rows) * PX, X0 + (col0 + cols) * PX, Y0 - row0 * PX)


def write_polygons(path: Path, geoms: list[object], crs: str = CRS, names: list[str] | None = None) -> Path:
    """Polygons with a ``name`` column."""
    names = names or [f"p{i}" for i in range(len(geoms))]
    gpd.GeoDataFrame({"name": names}, geometry=geoms, crs=crs).to_file(path)
    return path


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Path]:
    """A 4x4 map with prediction/lower/upper/interval_width bands, a population raster on its grid, and three
    polygons: the top-left 2x2 block (one NaN pixel), the left half of one pixel, a 1x2 block half off the map."""
    lower, upper = VALUES - 1, VALUES + 2
    return {
        "map": write_raster(tmp_path / "map.tif", [VALUES, lower, upper, upper - lower],
                            ["prediction", "lower", "upper", "interval_width"]),
        "population": write_raster(tmp_path / "pop.tif", [PEOPLE]),
        "polygons": write_polygons(tmp_path / "units.gpkg", [cells(0, 0, 2, 2), cells(3, 0, 1, 0.5),
                                                             cells(2, 3, 2, 2)], names=["A", "B", "C"]),
    }


def test_hand_computation_population_weighted(small: dict[str, Path], tmp_path: Path) -> None:
    result = aggregate(small["map"], small["polygons"], tmp_path / "out", population=small["population"],
                       id_column="name")
    t = result.table.set_index("name")
    # A: pixels 1 (1 person), 4 (2), 5 (3); the NaN pixel's 10 people count in the population, not in the mean
    assert t.loc["A", "prediction_mean"] == pytest.approx((1 * 1 + 4 * 2 + 5 * 3) / 6)
    assert t.loc["A", "lower_mean"] == pytest.approx(4.0 - 1) and t.loc["A", "upper_mean"] == pytest.approx(4.0 + 2)
    assert t.loc["A", "population"] == pytest.approx(16)
    assert t.loc["A", "n_pixels"] == pytest.approx(3)
    assert t.loc["A", "coverage_fraction"] == pytest.approx(0.75) and t.loc["A", "nodata_share"] == pytest.approx(0.25)
    # B: half of the pixel 12 (1 person)
    assert t.loc["B", "prediction_mean"] == pytest.approx(12)
    assert t.loc["B", "n_pixels"] == pytest.approx(0.5) and t.loc["B", "population"] == pytest.approx(0.5)
    assert t.loc["B", "coverage_fraction"] == pytest.approx(1.0) and t.loc["B", "nodata_share"] == pytest.approx(0)
    # C: 2x2 cells from the last column outward: pixels 11 (1 person) and 15 (0 people) on the map, half outside
    assert t.loc["C", "prediction_mean"] == pytest.approx(11)
    assert t.loc["C", "n_pixels"] == pytest.approx(2)
    assert t.loc["C", "coverage_fraction"] == pytest.approx(0.5) and t.loc["C", "nodata_share"] == pytest.approx(0)
    assert (t["weighting"] == "population").all()
    assert list(result.table.columns[:2]) == ["name", "prediction_mean"] and result.notes == []
    # the three files hold the same numbers
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"aggregates.gpkg", "aggregates.csv",
                                                              "aggregates.parquet"}
    for read in (pd.read_csv, pd.read_parquet, gpd.read_file):
        back = read(result.paths[{pd.read_csv: "aggregate_csv", pd.read_parquet: "aggregate_parquet",
                                  gpd.read_file: "aggregate_vector"}[read]]).set_index("name")
        np.testing.assert_allclose(back["prediction_mean"], t["prediction_mean"], rtol=1e-6)
        np.testing.assert_allclose(back["coverage_fraction"], t["coverage_fraction"], rtol=1e-6)


def test_hand_computation_area_weighted_single_band(tmp_path: Path) -> None:
    """No population: area-weighted; an undescribed one-band map is the prediction, no interval columns."""
    map_path = write_raster(tmp_path / "map.tif", [VALUES])
    polys = write_polygons(tmp_path / "units.geojson", [cells(0, 0, 2, 2), cells(1, 1, 1.5, 1),
                                                        cells(0, 10, 1, 1)])
    result = aggregate(map_path, polys, tmp_path / "out", fmt="geojson")
    t = result.table
    assert t["prediction_mean"].iloc[0] == pytest.approx((1 + 4 + 5) / 3)
    assert t["prediction_mean"].iloc[1] == pytest.approx((5 * 1 + 9 * 0.5) / 1.5)  # pixel 9 half inside
    assert np.isnan(t["prediction_mean"].iloc[2]) and t["n_pixels"].iloc[2] == 0  # off the map
    assert t["coverage_fraction"].iloc[2] == 0 and t["nodata_share"].iloc[2] == 1
    assert "lower_mean" not in t.columns and "population" not in t.columns and (t["weighting"] == "area").all()
    assert any("1 of 3 polygon(s) have no valid map pixel" in n for n in result.notes)
    assert gpd.read_file(result.paths["aggregate_vector"]).crs.to_epsg() == 4326  # GeoJSON: RFC 7946


def test_coarser_population_on_an_aligned_grid_weighs_each_map_pixel_by_its_cell(small: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    """A population raster of 2x2-pixel cells on the map's origin is accepted: each map pixel weighs its cell's
    people (density uniform within a cell); the population sum takes the polygon's share of each cell."""
    coarse = write_raster(tmp_path / "pop20.tif", [np.array([[4, 8], [1, 1]])],
                          transform=from_origin(X0, Y0, 2 * PX, 2 * PX))
    polys = write_polygons(tmp_path / "two.gpkg", [cells(0, 1, 2, 2)])  # pixels 1, 5 (4 people/cell), 2, 6 (8)
    t = aggregate(small["map"], polys, tmp_path / "out", population=coarse).table
    assert t["prediction_mean"].iloc[0] == pytest.approx((1 * 4 + 5 * 4 + 2 * 8 + 6 * 8) / 24)
    assert t["population"].iloc[0] == pytest.approx(4 / 2 + 8 / 2)


@pytest.fixture(scope="module")
def nigeria(shared_data: Path) -> dict[str, object]:
    """The published Nigeria wealth map and population raster (same 7.65 km EPSG:3857 grid), read with rasterio."""
    folder = shared_data / "satellite" / "reference_maps"
    paths = {"map": folder / "nigeria_2012_2014_msnl_wealth_pred.tif", "population": folder / "nigeria_population.tif"}
    with rasterio.open(paths["map"]) as src, rasterio.open(paths["population"]) as pop:
        assert (src.crs, src.transform, src.shape) == (pop.crs, pop.transform, pop.shape)
        return {**paths, "values": src.read(1).astype(float), "people": pop.read(1).astype(float),
                "transform": src.transform, "crs": src.crs}


def block(n: dict, row0: int, col0: int, rows: int, cols: int) -> object:
    """A polygon exactly on whole pixels of the Nigeria grid (it may run past the map's edge)."""
    t = n["transform"]
    return box(t.c + col0 * t.a, t.f + (row0 + rows) * t.e, t.c + (col0 + cols) * t.a, t.f + row0 * t.e)


def expected(n: dict, row0: int, col0: int, rows: int, cols: int) -> dict[str, float]:
    """numpy's answer for a whole-pixel block: population-weighted mean over valid pixels and the shares."""
    v = n["values"][row0:row0 + rows, col0:col0 + cols]
    p = np.nan_to_num(n["people"][row0:row0 + rows, col0:col0 + cols])
    ok = ~np.isnan(v)
    return {"prediction_mean": float((v[ok] * p[ok]).sum() / p[ok].sum()), "population": float(p.sum()),
            "n_pixels": float(ok.sum()), "coverage_fraction": ok.sum() / (rows * cols),  # slices end at the map
            "nodata_share": 1 - ok.sum() / v.size, "area_mean": float(v[ok].mean())}


BLOCKS = {"inland": (60, 60, 20, 20), "border": (40, 150, 20, 20), "map_edge": (133, 45, 20, 20)}
"""Whole-pixel blocks: all valid; across the country's border (about half NaN); half off the map's bottom edge."""


def test_nigeria_blocks_match_numpy(nigeria: dict, tmp_path: Path) -> None:
    polys = write_polygons(tmp_path / "blocks.gpkg", [block(nigeria, *b) for b in BLOCKS.values()], crs="EPSG:3857",
                           names=list(BLOCKS))
    result = aggregate(nigeria["map"], polys, tmp_path / "out", population=nigeria["population"], id_column="name")
    t = result.table.set_index("name")
    for name, b in BLOCKS.items():
        want = expected(nigeria, *b)
        for column in ("prediction_mean", "population", "n_pixels", "coverage_fraction"):
            assert t.loc[name, column] == pytest.approx(want[column], rel=1e-5, abs=1e-9), (name, column)
    assert expected(nigeria, *BLOCKS["inland"])["coverage_fraction"] == 1
    assert 0.3 < t.loc["border", "coverage_fraction"] < 0.7  # the block does cross the border
    assert t.loc["border", "nodata_share"] == pytest.approx(expected(nigeria, *BLOCKS["border"])["nodata_share"])
    # half the map_edge block is off the map: coverage is of the whole polygon, nodata share of the part on the map
    on_map = ~np.isnan(nigeria["values"][133:143, 45:65])
    assert t.loc["map_edge", "coverage_fraction"] == pytest.approx(on_map.sum() / 400)
    assert t.loc["map_edge", "nodata_share"] == pytest.approx(1 - on_map.mean()) and 0 < on_map.mean() < 1
    # population weighting matters: it differs from the area-weighted mean, which matches numpy's plain mean
    plain = aggregate(nigeria["map"], polys, tmp_path / "plain", id_column="name").table.set_index("name")
    assert plain.loc["inland", "prediction_mean"] == pytest.approx(expected(nigeria, *BLOCKS["inland"])["area_mean"],
                                                                   rel=1e-5)
    assert abs(plain.loc["inland", "prediction_mean"] - t.loc["inland", "prediction_mean"]) > 0.01


def test_polygons_in_another_crs_are_reprojected_with_the_same_answer(nigeria: dict, tmp_path: Path) -> None:
    geoms = gpd.GeoSeries([block(nigeria, *b) for b in BLOCKS.values()], crs="EPSG:3857")
    in_3857 = aggregate(nigeria["map"], write_polygons(tmp_path / "a.gpkg", list(geoms), "EPSG:3857"),
                        tmp_path / "a", population=nigeria["population"]).table
    lonlat = write_polygons(tmp_path / "b.geojson", list(geoms.to_crs("EPSG:4326")), "EPSG:4326")
    result = aggregate(nigeria["map"], lonlat, tmp_path / "b", population=nigeria["population"])
    assert result.notes == ["b.geojson: polygons in EPSG:4326 reprojected to the map's CRS EPSG:3857"]
    assert result.table.crs == in_3857.crs
    for column in ("prediction_mean", "population", "coverage_fraction", "nodata_share"):
        np.testing.assert_allclose(result.table[column], in_3857[column], rtol=1e-6, atol=1e-9)


def test_polygons_off_the_map_fail_and_write_nothing(nigeria: dict, tmp_path: Path) -> None:
    far = write_polygons(tmp_path / "australia.geojson", [box(130, -30, 140, -20)], "EPSG:4326")
    with pytest.raises(GeocnnError, match=r"australia.geojson: no polygon overlaps the map .*nigeria.*the polygons "
                                          r"span .* the map \(290700.0, "):
        aggregate(nigeria["map"], far, tmp_path / "out", population=nigeria["population"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("grid", ["shifted", "crs"])
def test_population_on_another_grid_fails_and_writes_nothing(nigeria: dict, tmp_path: Path, grid: str) -> None:
    t = nigeria["transform"]
    transform = t * rasterio.Affine.translation(0.5, 0) if grid == "shifted" else from_origin(2.6, 14.1, 0.07, 0.07)
    pop = write_raster(tmp_path / "pop.tif", [nigeria["people"]], crs="EPSG:3857" if grid == "shifted" else
                       "EPSG:4326", transform=transform)
    polys = write_polygons(tmp_path / "blocks.gpkg", [block(nigeria, *BLOCKS["inland"])], "EPSG:3857")
    with pytest.raises(GeocnnError, match=r"pop.tif: the population raster is on another grid than the map .*"
                                          r"gdalwarp -r sum -t_srs EPSG:3857 -tr 7650 7650 -te 290700 "):
        aggregate(nigeria["map"], polys, tmp_path / "out", population=pop)
    assert not (tmp_path / "out").exists()


def test_bad_polygons_and_failed_writes_leave_nothing(small: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GeocnnError, match=r"units.gpkg: no column 'district' for --id-column; columns are \['name'\]"):
        aggregate(small["map"], small["polygons"], tmp_path / "out", id_column="district")
    twice = write_polygons(tmp_path / "twice.gpkg", [cells(0, 0, 1, 1), cells(1, 1, 1, 1)], names=["A", "A"])
    with pytest.raises(GeocnnError, match=r"twice.gpkg: column 'name' repeats \['A'\]"):
        aggregate(small["map"], twice, tmp_path / "out", id_column="name")
    out = tmp_path / "out"
    out.mkdir()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        aggregate(small["map"], small["polygons"], out)
    assert list(out.iterdir()) == []  # neither the vector nor the CSV written before the failure, no staging


def test_cli_aggregate(small: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["aggregate", str(small["map"]), str(small["polygons"]), "--population",
                              str(small["population"]), "--out", str(out), "--id-column", "name",
                              "--format", "geojson"])
    assert res.exit_code == 0, res.output
    assert "aggregate_vector" in res.output and {p.name for p in out.iterdir()} == OUTPUTS - {"aggregates.gpkg"}
    table = pd.read_csv(out / "aggregates.csv").set_index("name")
    assert table.loc["A", "prediction_mean"] == pytest.approx(4.0)
    assert table.loc["C", "coverage_fraction"] == pytest.approx(0.5)
    bad = runner.invoke(app, ["aggregate", str(small["map"]), str(small["polygons"]), "--format", "shp",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--format 'shp': use one of ['geojson', 'gpkg']" in bad.output
