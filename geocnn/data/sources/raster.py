"""GeoTIFF scenes (one multi-band file or one file per band): boundless windowed chips around lon/lat points."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import transform
from rasterio.windows import Window

from geocnn.data.sources.uris import gdal_path, is_uri, storage_error
from geocnn.errors import GeocnnError

BAND_TOKEN = "{band}"
"""Placeholder in a scene path that stacks one file per band (``..._{band}.tif`` with bands ``[B4, B3, B2]``)."""

WGS84 = CRS.from_epsg(4326)
"""The CRS of survey points (lon/lat)."""

_A = 6378137.0
"""WGS84 semi-major axis (m)."""
_E2 = 6.69437999014e-3
"""WGS84 first eccentricity squared."""

_FIX_GEOREF = ("Georeference it (e.g. gdal_translate -a_srs EPSG:... -a_ullr ..., or gdalwarp onto a CRS), or pass "
               "allow_no_crs=True to read it in pixel coordinates only.")


# --------------------------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------------------------


class Scene:
    """One grid of bands, from one multi-band GeoTIFF or one file per band (same CRS, transform and shape).

    Open it with :func:`open_scene`. Reads are windowed and boundless: pixels outside the raster and nodata
    pixels (the file's or the configured nodata value, and NaN/inf in float rasters) come back as NaN.

    Attributes:
        paths: the files, in band order (one for a multi-band file).
        crs: the rasterio CRS (None only when opened with ``allow_no_crs``).
        transform: the Affine pixel -> CRS transform.
        width, height: the grid size in pixels.
        count: the number of bands read.
        band_names: band descriptions, the ``{band}`` tokens or file tokens of a stack, else ``band1..``.
        nodata: per band, the value read as NaN (None: none besides NaN/inf).
        dtypes: per band, the file's data type.
        res: (x, y) pixel size in CRS units.
        bounds: (left, bottom, right, top) in CRS units.
    """

    def __init__(self, members: list[tuple[Any, list[int]]], band_names: list[str], nodata: list[float | None],
                 spec: dict[str, Any]) -> None:
        first = members[0][0]
        self._members = members
        self._spec = spec
        self.paths: list[str] = list(dict.fromkeys(ds.name for ds, _ in members))
        self.crs: CRS | None = first.crs
        self.transform = first.transform
        self.width: int = first.width
        self.height: int = first.height
        self.count: int = len(band_names)
        self.band_names: list[str] = band_names
        self.nodata: list[float | None] = nodata
        self.dtypes: list[str] = [ds.dtypes[i - 1] for ds, idx in members for i in idx]
        self.res: tuple[float, float] = first.res
        self.bounds = first.bounds

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Scene({self.paths[0] if len(self.paths) == 1 else self.paths}, bands={self.band_names}, "
                f"{self.width}x{self.height}, crs={self.crs})")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle as the open_scene arguments (open datasets cannot cross processes, e.g. DataLoader workers)."""
        return self._spec

    def __setstate__(self, spec: dict[str, Any]) -> None:
        self.__dict__.update(open_scene(**spec).__dict__)

    def close(self) -> None:
        """Close the files (idempotent)."""
        for ds, _ in self._members:
            ds.close()

    def info(self, source: str | None = None) -> "SceneInfo":
        """The scene's grid and bands without its open files (what placing a chip needs)."""
        return SceneInfo(source=source if source is not None else str(self._spec["source"]), paths=list(self.paths),
                         crs=self.crs, transform=self.transform, width=self.width, height=self.height,
                         count=self.count, band_names=list(self.band_names), res=self.res,
                         bounds=tuple(self.bounds))

    def read(self, window: Window, out_shape: tuple[int, int] | None = None,
             resampling: Resampling = Resampling.bilinear) -> np.ndarray:
        """Read a (float) window of every band, resampled to ``out_shape``.

        Windows inside the raster are plain windowed reads; windows crossing the edge are padded (native
        resolution) or read through rasterio's boundless reader (resampled; about 10x slower, 1-4 ms).

        Args:
            window: the pixel window (may extend beyond the raster, or lie wholly outside it).
            out_shape: (rows, cols) of the result; default the window's size rounded (native resolution).
            resampling: how to resample when ``out_shape`` differs from the window size.

        Returns:
            float32 array (count, rows, cols); NaN outside the raster and where the data is nodata.

        Raises:
            GeocnnError: when the file cannot be read (damaged data), naming the file and the window.
        """
        shape = out_shape or (max(1, round(window.height)), max(1, round(window.width)))
        if len(shape) != 2 or min(shape) < 1:
            raise GeocnnError(f"out_shape {tuple(shape)} must be (rows, cols) with both >= 1.")
        out = np.full((self.count, *shape), np.nan, np.float32)
        rows_in, cols_in = _coverage(window, shape, self.width, self.height)
        if not rows_in.any() or not cols_in.any():
            return out
        band = 0
        for ds, indexes in self._members:
            raw = _read_member(ds, indexes, window, shape, resampling)
            for k in range(len(indexes)):
                out[band + k] = _as_float(raw[k], self.nodata[band + k])
            band += len(indexes)
        out[:, ~rows_in, :] = np.nan
        out[:, :, ~cols_in] = np.nan
        return out


@dataclass(frozen=True)
class SceneInfo:
    """A scene's grid and bands, kept after its files are closed (mosaics of many scenes open them on demand).

    It has the attributes of :class:`Scene` that place a chip (``chip_window``, ``pixel_of``), but no ``read``.
    """

    source: str
    paths: list[str]
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    count: int
    band_names: list[str]
    res: tuple[float, float]
    bounds: tuple[float, float, float, float]


def open_scene(source: str | Path | Sequence[str | Path], bands: Sequence[str | int] | None = None,
               nodata: float | None = None, allow_no_crs: bool = False) -> Scene:
    """Open a scene: a (multi-band) raster, a path pattern with ``{band}``, or a list of single-grid files.

    Args:
        source: a raster path; or a path containing ``{band}``, one file per band, stacked in the order of
            ``bands`` (e.g. ``.../LC81070352015122LGN00_{band}.tif`` with ``["B4", "B3", "B2"]``); or a list of
            files stacked in order (all their bands).
        bands: the bands to read, by name (see ``Scene.band_names``) or 1-based index; default all. Required
            with ``{band}`` (it names the files).
        nodata: value read as NaN in every band, overriding the files' nodata (None: the files').
        allow_no_crs: accept rasters without CRS or geotransform (pixel coordinates only; no lon/lat chips).

    Returns:
        An open Scene (use it as a context manager, or call ``close()``).

    Raises:
        GeocnnError: on a missing or unreadable file, a missing CRS/geotransform, files whose grids differ,
            or an unknown band (listing the available ones).
    """
    spec = {"source": source, "bands": bands, "nodata": nodata, "allow_no_crs": allow_no_crs}
    if isinstance(source, (str, Path)) and BAND_TOKEN in str(source):
        if not bands:
            raise GeocnnError(f"{source}: the path contains '{BAND_TOKEN}' (one file per band) but no bands are "
                              "configured. List the band tokens in order, e.g. bands: [B4, B3, B2].")
        tokens = [str(b) for b in bands]
        paths = [str(source).replace(BAND_TOKEN, t) for t in tokens]
        picks = None
    else:
        paths = [str(p) for p in source] if isinstance(source, (list, tuple)) else [str(source)]
        if not paths:
            raise GeocnnError("open_scene: the list of scene files is empty; give at least one raster.")
        tokens, picks = None, bands
    datasets: list[Any] = []
    try:
        for i, path in enumerate(paths):
            what = f" (band {tokens[i]!r})" if tokens else ""
            datasets.append(_open_file(path, allow_no_crs, what))
        for ds in datasets[1:]:
            _check_same_grid(datasets[0], ds)
        available = _band_list(datasets, tokens)
        where = paths[0] if len(paths) == 1 else str(paths)
        chosen = available if picks is None else [available[i] for i in select_bands(
            [n for _, _, n in available], picks, where, "earth.bands, or the band list given to this scene")]
    except BaseException:
        for ds in datasets:
            ds.close()
        raise
    members = _group_members(chosen)
    names = [name for _, _, name in chosen]
    nodatas = [nodata if nodata is not None else ds.nodatavals[i - 1] for ds, i, _ in chosen]
    return Scene(members, names, [None if v is None else float(v) for v in nodatas], spec)


# --------------------------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine pixel-to-CRS transform (of pixel corners), and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_raster(cls, path: str | Path) -> "Grid":
        """Read the grid of an existing raster (e.g. a published GeoTIFF map)."""
        with open_raster(path) as src:
            if src.crs is None:
                raise GeocnnError(f"{path}: raster has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:...)")
            return cls(crs=src.crs, transform=src.transform, width=src.width, height=src.height)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height, self.width


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster for reading, with a GeocnnError naming the file when it is missing or unreadable."""
    if not Path(path).is_file():
        raise GeocnnError(f"{path}: raster file not found; check the path")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise GeocnnError(f"{path}: not a readable raster ({exc}); re-export it as GeoTIFF") from exc



# --------------------------------------------------------------------------------------------------------------
# Chips around points
# --------------------------------------------------------------------------------------------------------------


def chip_window(scene: Scene | SceneInfo, lon: float, lat: float, size_m: float | None = None,
                size_px: float | None = None) -> Window:
    """The (float) pixel window of a square chip centred on a lon/lat point.

    Args:
        scene: the scene whose pixel grid the window is on.
        lon, lat: the centre (EPSG:4326), transformed to the scene CRS.
        size_m: chip side in metres: CRS units (scaled to metres) for a projected CRS; for a geographic CRS
            converted to degrees at ``lat`` (WGS84 ellipsoid), separately for x and y.
        size_px: chip side in native pixels (instead of ``size_m``).

    Returns:
        A Window of float offsets and sizes (it may extend beyond the raster).

    Raises:
        GeocnnError: if not exactly one of size_m/size_px is given, the point is invalid or the scene has no CRS.
    """
    _check_size(size_m, size_px)
    col, row = pixel_of(scene, lon, lat)
    if size_px is not None:
        width = height = float(size_px)
    else:
        size_x, size_y = metres_to_crs(scene.crs, lat, float(size_m))  # type: ignore[arg-type]
        width, height = size_x / scene.res[0], size_y / scene.res[1]
    return Window(col - width / 2, row - height / 2, width, height)


def read_chip(scenes: Scene | Sequence[Scene], lon: float, lat: float, out_px: int, size_m: float | None = None,
              size_px: float | None = None) -> tuple[np.ndarray, float]:
    """Read a square chip around a lon/lat point, from one scene or the best scene of a mosaic.

    Args:
        scenes: one Scene, or several with the same band count (a mosaic): the scenes whose extent the chip
            touches are read, those holding the point first, and the chip with the least nodata is kept.
        lon, lat: the chip centre (EPSG:4326).
        out_px: side of the returned chip in pixels (resampled bilinearly).
        size_m, size_px: the chip footprint (exactly one; see :func:`chip_window`).

    Returns:
        The chip, float32 (bands, out_px, out_px) with NaN for nodata, and its nodata fraction (share of
        pixels where any band is NaN; 1.0 when no scene covers the chip).

    Raises:
        GeocnnError: on mosaics with different band counts, a bad point or size, or an unreadable file.
    """
    items = [scenes] if isinstance(scenes, Scene) else list(scenes)
    if not items:
        raise GeocnnError("read_chip: no scenes given.")
    counts = {s.count for s in items}
    if len(counts) > 1:
        detail = ", ".join(f"{s.paths[0]}: {s.count}" for s in items)
        raise GeocnnError(f"mosaic scenes must have the same number of bands ({detail}). Select the same bands "
                          "in every scene.")
    return best_chip(_candidates(items, lon, lat, size_m, size_px), items[0].count, out_px)


def best_chip(candidates: Iterable[tuple[Scene, Window]], count: int, out_px: int) -> tuple[np.ndarray, float]:
    """The chip with the least nodata among the candidate (scene, window) reads, in order (the first without
    nodata ends the search), and its nodata fraction; all NaN when there is no candidate."""
    if out_px < 1:
        raise GeocnnError(f"read_chip: out_px must be >= 1, not {out_px}.")
    best: tuple[np.ndarray, float] | None = None
    for scene, window in candidates:
        chip = scene.read(window, (out_px, out_px))
        frac = nodata_fraction(chip)
        if best is None or frac < best[1]:
            best = (chip, frac)
        if frac == 0.0:
            break
    if best is None:
        return np.full((count, out_px, out_px), np.nan, np.float32), 1.0
    return best


def nodata_fraction(chip: np.ndarray) -> float:
    """Share of pixels of a (bands, rows, cols) chip where any band is NaN."""
    return float(np.isnan(chip).any(axis=0).mean())


def cluster_points(lon: float, lat: float, box_m: float, n: int) -> list[tuple[float, float]]:
    """Centres of an n x n grid of chips covering a square box of ``box_m`` metres around a point.

    Jean et al. (2016) take several chips per ~10 km cluster box and average their features.

    Args:
        lon, lat: the box centre (EPSG:4326).
        box_m: side of the box in metres.
        n: chips per side (n = 1 gives the point itself).

    Returns:
        n*n (lon, lat) pairs, row by row from north to south, west to east within a row.
    """
    _check_point(lon, lat)
    if n < 1 or not box_m > 0:
        raise GeocnnError(f"cluster_points: need n >= 1 and box_m > 0 (got n={n}, box_m={box_m}).")
    offsets = (np.arange(n) + 0.5) * (box_m / n) - box_m / 2
    per_lon, per_lat = metres_per_degree(lat)
    out = []
    for dy in offsets[::-1]:
        for dx in offsets:
            x = (lon + dx / per_lon + 180.0) % 360.0 - 180.0
            out.append((float(x), float(lat + dy / per_lat)))
    return out


def label_statistic(scene: Scene, lon: float, lat: float, stat: Literal["mean", "median", "max"],
                    size_m: float | None = None, size_px: float | None = None, band: int = 0) -> float:
    """A statistic of one band over the native pixels of a chip footprint (e.g. mean night lights).

    The footprint (see :func:`chip_window`) is snapped to whole pixels (:func:`snap_window`); nodata is ignored.

    Args:
        scene: the label raster.
        lon, lat: the centre (EPSG:4326).
        stat: mean, median or max.
        size_m, size_px: the footprint (exactly one); ``size_px=1`` is the pixel holding the point.
        band: 0-based band of the scene.

    Returns:
        The statistic, or NaN when every pixel is nodata or outside the raster.
    """
    funcs = {"mean": np.mean, "median": np.median, "max": np.max}
    if stat not in funcs:
        raise GeocnnError(f"label statistic {stat!r} is not one of {list(funcs)}.")
    if not 0 <= band < scene.count:
        raise GeocnnError(f"{scene.paths[0]}: band {band} (0-based) does not exist; the scene has {scene.count} "
                          f"band(s): {scene.band_names}.")
    values = scene.read(snap_window(chip_window(scene, lon, lat, size_m, size_px)))[band]
    valid = values[~np.isnan(values)]
    return float(funcs[stat](valid)) if valid.size else float("nan")


def snap_window(window: Window) -> Window:
    """The whole-pixel window nearest a float window: its size rounded (at least 1), centred where it was.

    An odd size is centred on the pixel holding the window centre (``size 1`` = that pixel).
    """
    width, height = max(1, round(window.width)), max(1, round(window.height))
    centre_col, centre_row = window.col_off + window.width / 2, window.row_off + window.height / 2
    col0 = math.floor(centre_col - width / 2 + 0.5)
    row0 = math.floor(centre_row - height / 2 + 0.5)
    return Window(col0, row0, width, height)


def tile_windows(scene: Scene, chip_px: int, stride_px: int) -> Iterator[Window]:
    """Windows of ``chip_px`` pixels every ``stride_px`` covering the whole scene, row by row.

    The last row and column of windows may extend beyond the raster (boundless reads give NaN there).
    """
    if chip_px < 1 or stride_px < 1:
        raise GeocnnError(f"tile_windows: chip_px and stride_px must be >= 1 (got {chip_px}, {stride_px}).")
    for row in _offsets(scene.height, chip_px, stride_px):
        for col in _offsets(scene.width, chip_px, stride_px):
            yield Window(col, row, chip_px, chip_px)


# --------------------------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------------------------


def pixel_of(scene: Scene | SceneInfo, lon: float, lat: float) -> tuple[float, float]:
    """(col, row) float pixel coordinates of a lon/lat point in the scene (pixel corners are integers)."""
    _check_point(lon, lat)
    if scene.crs is None:
        raise GeocnnError(f"{scene.paths[0]}: the scene has no CRS, so lon/lat points cannot be placed on it. "
                          + _FIX_GEOREF.split(", or pass")[0] + ".")
    x, y = to_scene_crs(scene.crs, lon, lat)
    inv = ~scene.transform
    return float(inv.a * x + inv.b * y + inv.c), float(inv.d * x + inv.e * y + inv.f)


def to_scene_crs(crs: CRS, lon: float, lat: float) -> tuple[float, float]:
    """Transform one EPSG:4326 point to ``crs`` (x, y)."""
    if crs == WGS84:
        return float(lon), float(lat)
    try:
        xs, ys = transform(WGS84, crs, [lon], [lat])
    except Exception as exc:  # noqa: BLE001 - PROJ errors come in several types
        raise GeocnnError(f"point lon={lon}, lat={lat} cannot be transformed to {crs} ({exc}).") from None
    if not (math.isfinite(xs[0]) and math.isfinite(ys[0])):
        raise GeocnnError(f"point lon={lon}, lat={lat} lies outside the valid area of {crs}.")
    return float(xs[0]), float(ys[0])


def metres_per_degree(lat: float) -> tuple[float, float]:
    """(metres per degree of longitude, metres per degree of latitude) at a latitude on the WGS84 ellipsoid."""
    phi = math.radians(lat)
    w = math.sqrt(1.0 - _E2 * math.sin(phi) ** 2)
    per_lon = math.pi * _A * math.cos(phi) / (180.0 * w)
    per_lat = math.pi * _A * (1.0 - _E2) / (180.0 * w ** 3)
    return max(per_lon, 1e-6), per_lat


def metres_to_crs(crs: CRS | None, lat: float, size_m: float) -> tuple[float, float]:
    """A length in metres as (x, y) lengths in CRS units at a latitude (degrees for a geographic CRS)."""
    if crs is None:
        raise GeocnnError("a chip size in metres needs a scene with a CRS; give the size in pixels instead.")
    if crs.is_geographic:
        per_lon, per_lat = metres_per_degree(lat)
        return size_m / per_lon, size_m / per_lat
    try:
        factor = float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - CRS without linear units: assume metres
        factor = 1.0
    return size_m / factor, size_m / factor


# --------------------------------------------------------------------------------------------------------------
# Internals: opening
# --------------------------------------------------------------------------------------------------------------


def _open_file(path: str, allow_no_crs: bool, what: str = "") -> Any:
    """Open one raster, failing with a GeocnnError naming it (missing, not a raster, no georeferencing)."""
    if is_uri(path) or path.startswith("/vsi"):  # s3://, gs://, https://: through GDAL's virtual file systems
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                ds = rasterio.open(gdal_path(path))
        except Exception as exc:  # noqa: BLE001 - GDAL reports missing buckets, refused keys, 404s as IO errors
            err = storage_error(exc, path, "opening the raster")
            raise GeocnnError(f"{err}{what and f' ({what.strip()})'}") from None
        return _georeferenced(ds, path + what, allow_no_crs)
    p = Path(path).expanduser()
    if not p.exists():
        raise GeocnnError(f"{path}{what}: raster file does not exist. Fix the scene path (relative paths are "
                          "relative to the working directory).")
    if p.is_dir():
        raise GeocnnError(f"{path}{what}: is a folder, not a raster file (GeoTIFF).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(p)
    except Exception as exc:  # noqa: BLE001 - GDAL raises several types for unreadable files
        raise GeocnnError(f"{path}{what}: not a readable raster (GDAL: {_gdal_message(exc)}). Replace the file "
                          "with a valid GeoTIFF (it may be truncated or not an image).") from None
    return _georeferenced(ds, path + what, allow_no_crs)


def _georeferenced(ds: Any, name: str, allow_no_crs: bool) -> Any:
    """``ds`` once its georeferencing is checked (closed, and the error raised, when it is not)."""
    try:
        _check_georef(ds, name, allow_no_crs)
    except GeocnnError:
        ds.close()
        raise
    return ds


def _check_georef(ds: Any, name: str, allow_no_crs: bool) -> None:
    if allow_no_crs:
        return
    if ds.transform.is_identity:
        gcps = " (it has ground control points only: warp it first with gdalwarp)" if ds.gcps[0] else ""
        raise GeocnnError(f"{name}: the raster has no geotransform{gcps}, so its pixels have no position on "
                          f"Earth. {_FIX_GEOREF}")
    if ds.crs is None or not ds.crs.to_wkt():
        raise GeocnnError(f"{name}: the raster has no CRS (coordinate reference system). {_FIX_GEOREF}")


def _check_same_grid(first: Any, other: Any) -> None:
    """Fail naming both files when two files of a stack differ in CRS, transform or shape."""
    diffs = []
    if first.crs != other.crs:
        diffs.append(f"CRS {first.crs} vs {other.crs}")
    if (first.width, first.height) != (other.width, other.height):
        diffs.append(f"shape {first.width}x{first.height} vs {other.width}x{other.height}")
    if not first.transform.almost_equals(other.transform, precision=1e-9 * max(first.res)):
        diffs.append(f"transform {tuple(first.transform)[:6]} vs {tuple(other.transform)[:6]}")
    if diffs:
        raise GeocnnError(f"{first.name} and {other.name}: files of one scene must share CRS, transform and "
                          f"shape, but they differ ({'; '.join(diffs)}). Resample them onto one grid (gdalwarp "
                          "-tap/-te/-tr) or configure them as separate scenes.")


def _band_list(datasets: list[Any], tokens: list[str] | None) -> list[tuple[Any, int, str]]:
    """Every (dataset, 1-based band, name) of the stacked files, in order."""
    if tokens is not None:
        for ds, token in zip(datasets, tokens):
            if ds.count != 1:
                raise GeocnnError(f"{ds.name} (band {token!r}): has {ds.count} bands, but a '{BAND_TOKEN}' path "
                                  "expects one band per file. Use the file as a scene of its own.")
        return [(ds, 1, t) for ds, t in zip(datasets, tokens)]
    out = []
    for ds in datasets:
        stem = Path(ds.name).stem
        token = stem.rsplit("_", 1)[-1] if len(datasets) > 1 else ""
        for i in range(1, ds.count + 1):
            desc = ds.descriptions[i - 1]
            if desc:
                name = desc
            elif token:
                name = token if ds.count == 1 else f"{token}_band{i}"
            else:
                name = f"band{i}"
            out.append((ds, i, name))
    names = [n for _, _, n in out]
    if len(set(names)) < len(names):
        out = [(ds, i, f"{Path(ds.name).stem}:{n}") for ds, i, n in out]
    return out


def select_bands(names: Sequence[str], bands: Sequence[str | int], source: str,
                 key: str = "earth.bands") -> list[int]:
    """0-based positions of ``bands`` (names, or 1-based indices) among ``names``.

    Raises:
        GeocnnError: naming ``source``, the band not found, the available bands and the config ``key`` to fix.
    """
    out = []
    for band in bands:
        want = str(band).strip()
        if want in names:
            out.append(list(names).index(want))
        elif want.isdigit() and 1 <= int(want) <= len(names):
            out.append(int(want) - 1)
        else:
            raise GeocnnError(f"{source}: band {band!r} not found. Available bands: {list(names)} (or 1-based "
                              f"indices 1..{len(names)}). Fix the configured bands ({key}).")
    return out


def _group_members(chosen: list[tuple[Any, int, str]]) -> list[tuple[Any, list[int]]]:
    """Consecutive bands of one file grouped into one read."""
    members: list[tuple[Any, list[int]]] = []
    for ds, index, _ in chosen:
        if members and members[-1][0] is ds:
            members[-1][1].append(index)
        else:
            members.append((ds, [index]))
    return members


# --------------------------------------------------------------------------------------------------------------
# Internals: reading
# --------------------------------------------------------------------------------------------------------------


def _coverage(window: Window, shape: tuple[int, int], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output row and column: does its pixel centre fall inside the raster?"""
    rows = window.row_off + (np.arange(shape[0]) + 0.5) * (window.height / shape[0])
    cols = window.col_off + (np.arange(shape[1]) + 0.5) * (window.width / shape[1])
    return (rows >= 0) & (rows < height), (cols >= 0) & (cols < width)


def _is_native(window: Window, shape: tuple[int, int]) -> bool:
    """Whole-pixel window read at its own size (no resampling)."""
    vals = (window.col_off, window.row_off, window.width, window.height)
    return all(float(v).is_integer() for v in vals) and (int(window.height), int(window.width)) == tuple(shape)


def _read_member(ds: Any, indexes: list[int], window: Window, shape: tuple[int, int],
                 resampling: Resampling) -> np.ndarray:
    """Read bands of one file: plain inside the raster, padded at native size, else rasterio boundless."""
    inside = (window.col_off >= 0 and window.row_off >= 0 and window.col_off + window.width <= ds.width
              and window.row_off + window.height <= ds.height)
    out_shape = (len(indexes), *shape)
    try:
        if inside:
            return ds.read(indexes, window=window, out_shape=out_shape, resampling=resampling)
        if _is_native(window, shape):
            return _read_padded(ds, indexes, window)
        fill = ds.nodata if ds.nodata is not None and math.isfinite(ds.nodata) else 0
        with warnings.catch_warnings():  # rasterio's boundless reader uses Affine '*' (PendingDeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            return ds.read(indexes, window=window, out_shape=out_shape, resampling=resampling, boundless=True,
                           fill_value=fill)
    except Exception as exc:  # noqa: BLE001 - GDAL raises several types for damaged data
        w = window
        raise GeocnnError(f"{ds.name}: reading bands {indexes} at window col={w.col_off:g}, row={w.row_off:g}, "
                          f"{w.width:g}x{w.height:g} px failed (GDAL: {_gdal_message(exc)}). The file is damaged or "
                          "truncated: re-download or re-export it.") from None


def _read_padded(ds: Any, indexes: list[int], window: Window) -> np.ndarray:
    """A whole-pixel window partly outside the raster: read the overlap, zeros elsewhere (masked later)."""
    col0, row0 = int(window.col_off), int(window.row_off)
    w, h = int(window.width), int(window.height)
    c0, r0 = max(col0, 0), max(row0, 0)
    c1, r1 = min(col0 + w, ds.width), min(row0 + h, ds.height)
    out = np.zeros((len(indexes), h, w), dtype=ds.dtypes[indexes[0] - 1])
    if c1 > c0 and r1 > r0:
        part = ds.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0))
        out[:, r0 - row0:r1 - row0, c0 - col0:c1 - col0] = part
    return out


def _as_float(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """One band as float32 with NaN where it equals nodata (compared in the file's type) or is not finite."""
    bad = _equals(raw, nodata)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 (e.g. -1.7e308) -> inf -> NaN
        out = raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.complexfloating):
        bad |= ~np.isfinite(out)
    out[bad] = np.nan
    return out


def _equals(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """Where a band equals its nodata value (nothing when the value cannot occur in that type)."""
    if nodata is None or math.isnan(nodata):
        return np.zeros(raw.shape, bool)
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        if not float(nodata).is_integer() or not info.min <= nodata <= info.max:
            return np.zeros(raw.shape, bool)
        return raw == raw.dtype.type(int(nodata))
    with np.errstate(over="ignore"):
        return raw == raw.dtype.type(nodata)


def _gdal_message(exc: BaseException) -> str:
    """The error and the GDAL errors chained under it (rasterio says "See previous exception for details")."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        text = str(seen).replace("See previous exception for details.", "").strip().rstrip(".")
        if text and text not in parts:
            parts.append(text)
        seen = seen.__cause__ or seen.__context__
    return "; ".join(reversed(parts)) or type(exc).__name__


def covering(scenes: Sequence[Scene | SceneInfo], lon: float, lat: float, size_m: float | None = None,
             size_px: float | None = None) -> list[tuple[int, Window]]:
    """Positions of the scenes whose extent a chip touches, with its window in each; those holding the point first.

    This is the order :func:`read_chip` reads a mosaic in (the first chip with the least nodata is kept).
    """
    _check_size(size_m, size_px)
    _check_point(lon, lat)
    holding, touching = [], []
    for i, scene in enumerate(scenes):
        if scene.crs is None:
            pixel_of(scene, lon, lat)  # raises: no CRS
        try:
            window = chip_window(scene, lon, lat, size_m, size_px)
        except GeocnnError:  # the point lies outside this scene's projection domain: the scene cannot cover it
            continue
        col, row = window.col_off + window.width / 2, window.row_off + window.height / 2
        if 0 <= col < scene.width and 0 <= row < scene.height:
            holding.append((i, window))
        elif (window.col_off < scene.width and window.col_off + window.width > 0
              and window.row_off < scene.height and window.row_off + window.height > 0):
            touching.append((i, window))
    return holding + touching


def _candidates(scenes: list[Scene], lon: float, lat: float, size_m: float | None,
                size_px: float | None) -> list[tuple[Scene, Window]]:
    """Scenes whose extent the chip touches, with their windows; those holding the point first."""
    return [(scenes[i], window) for i, window in covering(scenes, lon, lat, size_m, size_px)]


def _check_size(size_m: float | None, size_px: float | None) -> None:
    if (size_m is None) == (size_px is None):
        raise GeocnnError("give exactly one chip size: size_m (metres) or size_px (native pixels), "
                          f"not size_m={size_m}, size_px={size_px}.")
    size = size_m if size_m is not None else size_px
    if not (isinstance(size, (int, float, np.number)) and math.isfinite(size) and size > 0):
        raise GeocnnError(f"chip size must be a positive number, not {size!r}.")


def _check_point(lon: float, lat: float) -> None:
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise GeocnnError(f"point lon={lon}, lat={lat} is not a valid EPSG:4326 coordinate (lon in [-180, 180], "
                          "lat in [-90, 90]); are the lat/lon columns swapped?")


def _offsets(length: int, chip: int, stride: int) -> list[int]:
    """Window offsets from 0 every ``stride`` until a window reaches the end."""
    out = [0]
    while out[-1] + chip < length:
        out.append(out[-1] + stride)
    return out
