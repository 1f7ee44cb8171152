"""Admin-level aggregates of a prediction map: (population-)weighted means and intervals per polygon (exactextract).

exactextract weighs every pixel by the fraction of it inside the polygon, so small districts and ragged borders
are measured exactly, not by pixel centres. Per polygon: the weighted mean of the prediction band (and of the
``lower``/``upper`` bands when the map has conformal intervals), the valid pixels, the share of the polygon the
map covers with valid pixels, the nodata share of the part inside the map, and the population.

The aggregated ``lower_mean``/``upper_mean`` are the weighted means of the pixel bounds: the interval of the
polygon's mean if the pixels' errors were perfectly correlated. That is conservative (wider than independent
errors would give) and the honest choice when the errors are spatially correlated, as survey residuals are.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from exactextract import exact_extract
from exactextract.raster import RasterioRasterSource
from rasterio.crs import CRS
from shapely.geometry import box

from geocnn.atomic import atomic_dir
from geocnn.errors import GeocnnError

LOG = logging.getLogger("geocnn")
INTERVAL_BANDS = ("lower", "upper")
"""Interval bands aggregated when the map has them, found by their band descriptions."""
FORMATS = {"gpkg": "GPKG", "geojson": "GeoJSON"}
STATS = ("prediction_mean", "lower_mean", "upper_mean", "population", "n_pixels", "coverage_fraction",
         "nodata_share", "weighting")
"""Columns the aggregate adds to the polygons' own attributes."""


@dataclass
class AggregateResult:
    """The aggregate table (one row per polygon, in the map's CRS) and the files written."""

    table: gpd.GeoDataFrame
    paths: dict[str, Path]
    notes: list[str] = field(default_factory=list)
    """What was done to the inputs (e.g. polygons reprojected) or found in them, also logged as warnings."""


def band_indexes(src: rasterio.DatasetReader, band: int = 1) -> dict[str, int]:
    """Band numbers of ``prediction``, ``lower`` and ``upper`` by their descriptions; the prediction is ``band``
    (default 1) when no band is described as ``prediction``."""
    described = {d: i + 1 for i, d in enumerate(src.descriptions) if d in ("prediction", *INTERVAL_BANDS)}
    if "prediction" not in described and not 1 <= band <= src.count:
        raise GeocnnError(f"{src.name}: band {band} does not exist (the map has {src.count} band(s)); give "
                          f"--band 1..{src.count}")
    return {"prediction": described.get("prediction", band), **{k: v for k, v in described.items()
                                                                 if k != "prediction"}}


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    LOG.warning(text)


def read_polygons(path: str | Path, crs: CRS, notes: list[str], id_column: str | None = None) -> gpd.GeoDataFrame:
    """Polygons from GeoJSON / GeoPackage / Shapefile in the map's CRS (reprojected when needed, and said so)."""
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio's errors do not always name the file
        raise GeocnnError(f"{path}: cannot read polygons ({exc}); give a GeoJSON, GeoPackage or Shapefile") from None
    if frame.empty:
        raise GeocnnError(f"{path}: holds no features; give the admin units to aggregate over")
    kinds = set(frame.geom_type.dropna())
    if not kinds or not kinds <= {"Polygon", "MultiPolygon"}:
        raise GeocnnError(f"{path}: aggregates need polygons, found {sorted(kinds) or 'empty geometries'}")
    if frame.crs is None:
        raise GeocnnError(f"{path}: the polygons have no CRS; set one (e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg in)")
    if id_column is not None:
        if id_column not in frame.columns:
            raise GeocnnError(f"{path}: no column {id_column!r} for --id-column; columns are "
                              f"{[c for c in frame.columns if c != frame.geometry.name]}")
        repeated = frame[id_column][frame[id_column].duplicated()].unique().tolist()
        if repeated:
            raise GeocnnError(f"{path}: column {id_column!r} repeats {repeated[:5]}; give a column that names each "
                              "polygon once (or dissolve the polygons first)")
    clashes = [c for c in STATS if c in frame.columns]
    if clashes:
        _note(notes, f"{Path(path).name}: columns {clashes} are replaced by the aggregates of the same name")
        frame = frame.drop(columns=clashes)
    if frame.crs != crs:
        _note(notes, f"{Path(path).name}: polygons in {frame.crs.to_string()} reprojected to the map's CRS "
                     f"{crs.to_string()}")
        frame = frame.to_crs(crs)
    frame = frame.rename_geometry("geometry") if frame.geometry.name != "geometry" else frame
    if id_column is not None:  # the id first, then the polygons' other attributes
        frame = frame[[id_column, *[c for c in frame.columns if c != id_column]]]
    return frame.reset_index(drop=True)


def check_population_grid(population: str | Path, src: rasterio.DatasetReader) -> None:
    """The population raster must share the map's CRS and cell alignment: equal cells, or whole multiples of them
    on a common origin (exactextract then weighs on the finer grid, and the extents may differ). Anything else is
    not resampled here: the right resampling of people (a sum, not a mean) is the user's call, so the error says
    how to warp it onto the map's grid."""
    with rasterio.open(population) as pop:
        ratio = np.array([pop.res[0] / src.res[0], pop.res[1] / src.res[1]])
        ratio = np.where(ratio < 1, 1 / ratio, ratio)
        finer = min(pop.res[0], src.res[0]), min(pop.res[1], src.res[1])
        steps = np.array([(pop.bounds.left - src.bounds.left) / finer[0], (pop.bounds.top - src.bounds.top) / finer[1]])
        aligned = np.allclose(ratio, np.round(ratio), atol=1e-6) and np.allclose(steps, np.round(steps), atol=1e-3)
        if pop.crs != src.crs or not aligned:
            raise GeocnnError(
                f"{population}: the population raster is on another grid than the map {src.name}: "
                f"{pop.crs}, {pop.res[0]:g} x {pop.res[1]:g} cells from ({pop.bounds.left:g}, {pop.bounds.top:g}) "
                f"vs {src.crs}, {src.res[0]:g} x {src.res[1]:g} from ({src.bounds.left:g}, {src.bounds.top:g}). "
                "Warp it onto the map's grid first, summing people, e.g. gdalwarp -r sum -t_srs "
                f"{src.crs} -tr {src.res[0]:g} {src.res[1]:g} -te {src.bounds.left:g} {src.bounds.bottom:g} "
                f"{src.bounds.right:g} {src.bounds.top:g} population.tif population_on_map.tif")


def _bounds(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)


def aggregate(map_path: str | Path, polygons_path: str | Path, out_dir: str | Path,
              population: str | Path | None = None, id_column: str | None = None, band: int = 1,
              fmt: str = "gpkg") -> AggregateResult:
    """Aggregate a prediction map over polygons and write ``aggregates.<gpkg|geojson>``, ``aggregates.csv`` and
    ``aggregates.parquet`` under ``out_dir`` (all or nothing).

    Per polygon, with exactextract's exact pixel fractions:

    - ``prediction_mean``: the mean of the prediction band weighted by population (when ``population`` is given;
      cells without population data weigh 0) or by area (the pixel fraction inside the polygon);
    - ``lower_mean``/``upper_mean`` (maps with ``lower``/``upper`` bands): the same weighted means of the pixel
      bounds, i.e. the interval of the polygon's mean under perfectly correlated pixel errors (conservative);
    - ``population``: the people inside (sum of the population raster, pixel fractions applied);
    - ``n_pixels``: valid map pixels inside, each counted by the fraction of it inside the polygon;
    - ``coverage_fraction``: share of the polygon's area covered by valid map pixels;
    - ``nodata_share``: share of the polygon's part inside the map's extent that is nodata (NaN or the nodata value;
      1 for a polygon off the map, whose means are NaN).

    The prediction is the band described ``prediction``, else ``band``. Polygons in another CRS are reprojected to
    the map's (noted in the result and logged). Errors (no polygon on the map, a population raster on another
    grid, unreadable input) are raised before anything is written. GeoJSON is written in EPSG:4326 (RFC 7946),
    GeoPackage in the map's CRS.
    """
    if fmt not in FORMATS:
        raise GeocnnError(f"--format {fmt!r}: use one of {sorted(FORMATS)}")
    notes: list[str] = []
    with rasterio.open(map_path) as src:
        if src.crs is None:
            raise GeocnnError(f"{map_path}: the map has no CRS, so polygons cannot be placed on it; write it with one")
        bands = band_indexes(src, band)
        polygons = read_polygons(polygons_path, src.crs, notes, id_column)
        inside = polygons.geometry.intersection(box(*src.bounds)).area.to_numpy(float)
        if not (inside > 0).any():
            raise GeocnnError(f"{polygons_path}: no polygon overlaps the map {map_path}: the polygons span "
                              f"{_bounds(polygons.total_bounds)}, the map {_bounds(src.bounds)} (both in "
                              f"{src.crs}); give polygons of the mapped area")
        if population is not None:
            check_population_grid(population, src)
        columns: dict[str, np.ndarray] = {}
        with rasterio.open(population) if population is not None else nullcontext() as weights:
            op = "weighted_mean(default_weight=0)" if weights is not None else "mean"
            for name, index in bands.items():
                stats = exact_extract(RasterioRasterSource(src, index), polygons, [op, "count"], output="pandas",
                                      weights=None if weights is None else RasterioRasterSource(weights, 1))
                columns[f"{name}_mean"] = stats.iloc[:, 0].to_numpy(float)
                if name == "prediction":
                    valid = stats["count"].to_numpy(float)
            if weights is not None:
                people = exact_extract(RasterioRasterSource(weights, 1), polygons, ["sum"], output="pandas")
                columns["population"] = people["sum"].to_numpy(float)
        cell = abs(src.res[0] * src.res[1])
    table = polygons.copy()
    for name, values in columns.items():
        table[name] = values
    table["n_pixels"] = valid
    area = polygons.geometry.area.to_numpy(float)
    table["coverage_fraction"] = np.clip(valid * cell / np.maximum(area, 1e-300), 0, 1)
    table["nodata_share"] = np.where(inside > 0, np.clip(1 - valid * cell / np.maximum(inside, 1e-300), 0, 1), 1.0)
    table["weighting"] = "population" if population is not None else "area"
    table = table[[c for c in table.columns if c != "geometry"] + ["geometry"]]
    missed = int((valid == 0).sum())
    if missed:
        _note(notes, f"{polygons_path}: {missed} of {len(table)} polygon(s) have no valid map pixel (mean NaN)")
    return AggregateResult(table, write_aggregates(table, Path(out_dir), fmt), notes)


def write_aggregates(table: gpd.GeoDataFrame, out_dir: Path, fmt: str = "gpkg") -> dict[str, Path]:
    """The aggregate as vector + CSV + Parquet, written together in a staging folder, then moved into ``out_dir``."""
    stage = out_dir / ".aggregates"
    names = {"aggregate_vector": f"aggregates.{fmt}", "aggregate_csv": "aggregates.csv",
             "aggregate_parquet": "aggregates.parquet"}
    with atomic_dir(stage) as tmp:
        vector = table.to_crs("EPSG:4326") if fmt == "geojson" else table
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vector.to_file(tmp / names["aggregate_vector"], driver=FORMATS[fmt])
        flat = pd.DataFrame(table.drop(columns="geometry"))
        flat.to_csv(tmp / names["aggregate_csv"], index=False)
        flat.to_parquet(tmp / names["aggregate_parquet"], index=False)
    paths = {}
    for key, name in names.items():
        (stage / name).replace(out_dir / name)
        paths[key] = out_dir / name
    stage.rmdir()
    return paths
