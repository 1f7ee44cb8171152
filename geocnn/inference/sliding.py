"""Wall-to-wall prediction maps (sliding windows -> averaged stride cells -> COG) and map/point exports."""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: flows run without a display; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import rasterio  # noqa: E402
import rasterio.errors  # noqa: E402
import rasterio.shutil  # noqa: E402
from affine import Affine  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402
from rasterio.warp import reproject  # noqa: E402
from rasterio.windows import Window  # noqa: E402
from rasterio.windows import transform as window_transform  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from geocnn.errors import GeocnnError  # noqa: E402
from geocnn.atomic import atomic_path  # noqa: E402

__all__ = ["BLOCK_PX", "QUICKLOOK_MAX_PX", "Grid", "predict_map", "raster_reader", "write_geojson_points",
           "write_quicklook"]

BLOCK_PX = 256
"""Tile size (pixels, square) of every written map; also the unit of block-by-block writing."""
GDAL_CACHE_BYTES = 128 * 2**20
"""GDAL block cache while a map is made: enough for a strip of input tiles; GDAL's default (5 % of RAM) grows
with the map being written, so peak memory would grow with the scene."""
QUICKLOOK_MAX_PX = 1024
"""``write_quicklook`` reads the raster decimated to at most this many pixels on its longer side."""

Reader = Callable[[Window, tuple[int, int]], np.ndarray]
"""``read(window, (h, w))`` -> float32 (C, h, w) scene pixels resampled to (h, w), NaN for nodata."""
Predictor = Callable[[np.ndarray], np.ndarray]
"""``predict(batch)`` with batch float32 (B, C, in_px, in_px) -> (B,) or (B, K) predictions."""


# ------------------------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine pixel-to-CRS transform (of pixel corners), and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_raster(cls, path: str | Path) -> Grid:
        """Read the grid of an existing raster (e.g. a published GeoTIFF map)."""
        with _open(path) as src:
            if src.crs is None:
                raise GeocnnError(f"{path}: raster has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:...)")
            return cls(crs=src.crs, transform=src.transform, width=src.width, height=src.height)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height, self.width


def _open(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster for reading, with a GeocnnError naming the file when it is missing or unreadable."""
    if not Path(path).is_file():
        raise GeocnnError(f"{path}: raster file not found; check the path")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise GeocnnError(f"{path}: not a readable raster ({exc}); re-export it as GeoTIFF") from exc


@contextlib.contextmanager
def raster_reader(path: str | Path, bands: Sequence[int] | None = None,
                  resampling: Resampling = Resampling.average) -> Iterator[tuple[Reader, Grid]]:
    """Open a scene and yield ``(read, grid)`` for :func:`predict_map`: boundless windowed reads, NaN nodata.

    ``bands`` are 1-based band indexes (default all); ``resampling`` is used when ``out_shape`` differs from
    the window size. Reads go through the same :class:`~geocnn.data.sources.raster.Scene` as ``geocnn map``: plain
    windowed reads inside the raster, padded at its edges.
    """
    from geocnn.data.sources.raster import open_scene

    with open_scene(path, list(bands) if bands is not None else None, allow_no_crs=True) as scene:

        def read(window: Window, out_shape: tuple[int, int]) -> np.ndarray:
            return scene.read(window, out_shape, resampling)

        read.exact_strips = True  # type: ignore[attr-defined]  # plain windowed reads: a strip = its windows
        yield read, Grid(crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height)


# ----------------------------------------------------------------------------------------- window layout
def _origins(size: int, chip: int, stride: int) -> np.ndarray:
    """Window start offsets along one axis, stride apart, the last one reaching the scene edge (or beyond)."""
    return np.arange(math.ceil(max(size - chip, 0) / stride) + 1) * stride


def _cell_centres(size: int, stride: int) -> np.ndarray:
    """Centre of each stride cell along one axis; the last (partial) cell's centre is clipped to the scene."""
    starts = np.arange(math.ceil(size / stride)) * stride
    return (starts + np.minimum(starts + stride, size)) / 2.0


def _check_args(grid: Grid, chip_px: int, stride_px: int, in_px: int, batch_size: int,
                max_nodata_fraction: float, band_names: Sequence[str]) -> None:
    """Reject inconsistent sliding-window settings with the fix."""
    if chip_px < 1 or in_px < 1 or batch_size < 1:
        raise GeocnnError(f"chip_px={chip_px}, in_px={in_px}, batch_size={batch_size}: all must be >= 1")
    if not 1 <= stride_px <= chip_px:
        raise GeocnnError(f"stride_px={stride_px}: must be in 1..chip_px ({chip_px}) so that windows cover the "
                          "scene; lower stride_px")
    if not 0.0 <= max_nodata_fraction <= 1.0:
        raise GeocnnError(f"max_nodata_fraction={max_nodata_fraction}: must be between 0 and 1")
    if grid.width < 1 or grid.height < 1:
        raise GeocnnError(f"grid {grid.width}x{grid.height}: the scene grid is empty")
    if not band_names:
        raise GeocnnError("band_names is empty; give one name per prediction output")


# ---------------------------------------------------------------------------------- cell accumulation
class _CellAccumulator:
    """Per-stride-cell sum and count of the window predictions that cover each cell."""

    def __init__(self, grid: Grid, chip: int, stride: int, n_out: int) -> None:
        self.grid = grid
        # Output blocks (BLOCK_PX tiles) holding a nodata input pixel; None when the reader could not tell.
        self.nodata_blocks: np.ndarray | None = np.zeros((-(-grid.height // BLOCK_PX), -(-grid.width // BLOCK_PX)),
                                                         bool)
        self.rows = _cell_centres(grid.height, stride)
        self.cols = _cell_centres(grid.width, stride)
        self.chip = chip
        self.n_out = n_out
        self.sums = np.zeros((n_out, len(self.rows), len(self.cols)), np.float64)
        self.counts = np.zeros((n_out, len(self.rows), len(self.cols)), np.int32)

    def add(self, origins: list[tuple[int, int]], preds: np.ndarray) -> None:
        """Add (B, K) predictions of the windows at ``origins`` (row, col) to every cell each covers (non-finite
        values skipped)."""
        finite = np.isfinite(preds)
        values = np.where(finite, preds, 0.0).T  # (K, B)
        ok = finite.T.astype(np.int32)
        r0, c0 = np.asarray(origins, dtype=np.int64).reshape(-1, 2).T
        r_lo, r_hi = np.searchsorted(self.rows, r0, "left"), np.searchsorted(self.rows, r0 + self.chip, "left")
        c_lo, c_hi = np.searchsorted(self.cols, c0, "left"), np.searchsorted(self.cols, c0 + self.chip, "left")
        # Every window covers a run of cell rows and columns; add the batch offset by offset (vectorised).
        for dr in range(int((r_hi - r_lo).max(initial=0))):
            for dc in range(int((c_hi - c_lo).max(initial=0))):
                m = (r_lo + dr < r_hi) & (c_lo + dc < c_hi)
                if m.any():
                    rr, cc = r_lo[m] + dr, c_lo[m] + dc
                    np.add.at(self.sums, (slice(None), rr, cc), values[:, m])
                    np.add.at(self.counts, (slice(None), rr, cc), ok[:, m])

    def mark_nodata(self, row0: int, nan: np.ndarray) -> None:
        """Flag the output blocks where the (h, w) strip starting at scene row ``row0`` has nodata pixels."""
        if self.nodata_blocks is None or not nan.any():
            return
        r, c = np.nonzero(nan)
        r = r + row0
        inside = (r < self.grid.height) & (c < self.grid.width)  # boundless padding is not the scene's nodata
        self.nodata_blocks[r[inside] // BLOCK_PX, c[inside] // BLOCK_PX] = True

    def means(self) -> np.ndarray:
        """(K, cell rows, cell cols) float32 average prediction, NaN where no window predicted."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.sums / self.counts
        out[self.counts == 0] = np.nan
        return out.astype(np.float32)


def _as_predictions(raw: Any, batch: int, band_names: Sequence[str]) -> np.ndarray:
    """Validate ``predict``'s output and return it as (B, K) float64."""
    preds = np.asarray(raw, dtype=np.float64)
    if preds.ndim == 1:
        preds = preds[:, None]
    if preds.ndim != 2 or preds.shape[0] != batch:
        raise GeocnnError(f"predict returned shape {np.shape(raw)} for a batch of {batch}; it must return (B,) "
                          "or (B, K)")
    if preds.shape[1] != len(band_names):
        raise GeocnnError(f"predict returned {preds.shape[1]} outputs but band_names has {len(band_names)} "
                          f"({list(band_names)}); give one band name per output")
    return preds


def _read_checked(read: Reader, window: Window, shape: tuple[int, int], bands: int | None) -> np.ndarray:
    """Call ``read`` and check it returned a (C, h, w) array (C equal to ``bands`` when given)."""
    data = np.asarray(read(window, shape), dtype=np.float32)
    if data.ndim != 3 or data.shape[1:] != shape or (bands is not None and data.shape[0] != bands):
        raise GeocnnError(f"read({window}, {shape}) returned shape {data.shape}; it must return (C, {shape[0]}, "
                          f"{shape[1]}) float32 with NaN for nodata")
    return data


def _accumulate(read: Reader, grid: Grid, predict: Predictor, chip: int, stride: int, in_px: int,
                batch_size: int, max_nodata: float, band_names: Sequence[str], progress: bool) -> _CellAccumulator:
    """Slide windows strip by strip, batch the usable ones through ``predict``, and average into cells."""
    acc = _CellAccumulator(grid, chip, stride, len(band_names))
    pending: list[tuple[tuple[int, int], np.ndarray]] = []  # (row, col) origin, chip
    n_used = 0

    def flush() -> None:
        batch = np.stack([x for _, x in pending])
        acc.add([w for w, _ in pending], _as_predictions(predict(batch), len(pending), band_names))
        pending.clear()

    col_origins = _origins(grid.width, chip, stride)
    # A reader marked exact_strips returns the same pixels for one strip as for its windows read one by one:
    # then each row of windows is one read (at native resolution), cut into windows with array views.
    strips = bool(getattr(read, "exact_strips", False)) and in_px == chip
    strip_w = int(col_origins[-1]) + chip
    row_origins = _origins(grid.height, chip, stride)
    if not strips:
        acc.nodata_blocks = None  # resampled windows: the nodata mask is re-read when the map is written
        bands = None  # every window must have the first one's band count
        for row in tqdm(row_origins, desc="map strips", unit="strip", disable=not progress):
            for col in col_origins:
                chip_data = _read_checked(read, Window(int(col), int(row), chip, chip), (in_px, in_px), bands)
                bands = chip_data.shape[0]
                nodata = float(np.isnan(chip_data).any(axis=0).mean())
                if nodata >= 1.0 or nodata > max_nodata:
                    continue
                pending.append(((int(row), int(col)), chip_data))
                n_used += 1
                if len(pending) == batch_size:
                    flush()
    else:
        def read_strip(row: int) -> np.ndarray:
            return _read_checked(read, Window(0, int(row), strip_w, chip), (chip, strip_w), None)

        # Strips are read one ahead in a thread (GDAL decodes without the GIL) while the model predicts.
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(read_strip, row_origins[0])
            for i, row in enumerate(tqdm(row_origins, desc="map strips", unit="strip", disable=not progress)):
                strip = ahead.result()
                if i + 1 < len(row_origins):
                    ahead = pool.submit(read_strip, row_origins[i + 1])
                strip_nan = np.isnan(strip).any(axis=0)
                acc.mark_nodata(int(row), strip_nan)
                # nodata fraction of every window of the strip at once (column sums, then window sums)
                col_sums = np.concatenate([[0], np.cumsum(strip_nan.sum(axis=0))])
                fractions = (col_sums[col_origins + chip] - col_sums[col_origins]) / (chip * chip)
                keep = col_origins[(fractions < 1.0) & (fractions <= max_nodata)]
                views = np.lib.stride_tricks.sliding_window_view(strip, chip, axis=2)  # (C, chip, W - chip + 1, chip)
                for col in keep:
                    pending.append(((int(row), int(col)), views[:, :, int(col), :]))
                    if len(pending) == batch_size:
                        flush()
                n_used += len(keep)
    if pending:
        flush()
    if n_used == 0:
        raise GeocnnError(f"no window of {chip} px had at most {max_nodata:.0%} nodata, so nothing was predicted; "
                          "check the scene has valid pixels or raise max_nodata_fraction")
    return acc


# -------------------------------------------------------------------------------------------- writing
def _stage_profile(grid: Grid, count: int) -> dict[str, Any]:
    """Tiled float32 GeoTIFF profile with NaN nodata for the temporary stage that the COG is copied from.

    ZSTD level 1: a quarter of DEFLATE's time, and the stage is read once and deleted (the COG is DEFLATE).
    """
    return dict(driver="GTiff", width=grid.width, height=grid.height, count=count, dtype="float32",
                crs=grid.crs, transform=grid.transform, nodata=np.nan, tiled=True, blockxsize=BLOCK_PX,
                blockysize=BLOCK_PX, compress="zstd", zstd_level=1, BIGTIFF="IF_SAFER", num_threads="ALL_CPUS")


def _write_scene_blocks(dst: rasterio.io.DatasetWriter, cells: np.ndarray, read: Reader, stride: int,
                        nodata_blocks: np.ndarray | None) -> None:
    """Fill the scene-grid output block by block: each pixel its stride cell's value, NaN where input is NaN.

    The input is re-read only for blocks flagged in ``nodata_blocks`` (all of them when it is None).
    """
    for (bi, bj), win in dst.block_windows(1):
        rows = np.arange(win.row_off, win.row_off + win.height) // stride
        cols = np.arange(win.col_off, win.col_off + win.width) // stride
        values = cells[:, rows[:, None], cols[None, :]]
        if nodata_blocks is None or nodata_blocks[bi, bj]:
            nodata = np.isnan(_read_checked(read, win, (win.height, win.width), None)).any(axis=0)
            values[:, nodata] = np.nan
        dst.write(values, window=win)


def _write_target_blocks(dst: rasterio.io.DatasetWriter, cells: np.ndarray, grid: Grid, stride: int,
                         target: Grid) -> None:
    """Fill the target-grid output block by block by averaging the stride-cell map reprojected onto it."""
    cell_transform = grid.transform @ Affine.scale(stride)
    for _, win in dst.block_windows(1):
        block = np.full((cells.shape[0], win.height, win.width), np.nan, np.float32)
        reproject(cells, block, src_transform=cell_transform, src_crs=grid.crs, src_nodata=np.nan,
                  dst_transform=window_transform(win, target.transform), dst_crs=target.crs, dst_nodata=np.nan,
                  resampling=Resampling.average)
        dst.write(block, window=win)


def _to_cog(stage: Path, out: Path) -> None:
    """Copy a tiled GeoTIFF to a Cloud Optimized GeoTIFF (DEFLATE, predictor 3, 256 px tiles, overviews)."""
    rasterio.shutil.copy(stage, out, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=str(BLOCK_PX),
                         RESAMPLING="AVERAGE", OVERVIEWS="AUTO", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")


def predict_map(read: Reader, grid: Grid, predict: Predictor, out_path: str | Path, chip_px: int, stride_px: int,
                in_px: int | None = None, batch_size: int = 64, max_nodata_fraction: float = 0.5,
                band_names: Sequence[str] = ("prediction",), target_grid: Grid | None = None,
                progress: bool = False) -> Path:
    """Predict a wall-to-wall map with sliding windows and write it as a float32 COG (atomically).

    Windows of ``chip_px`` scene pixels, ``stride_px`` apart, cover the whole scene (edge windows reach past
    it; ``read`` is boundless). Each is read resampled to ``in_px`` (default ``chip_px``); windows whose nodata
    fraction (pixels NaN in any band) exceeds ``max_nodata_fraction``, or that are all nodata, are skipped. The
    prediction of a window is added to every stride cell whose centre lies inside it; a cell's value is the
    mean over those windows (NaN if none). Windows are read strip by strip and predicted ``batch_size`` at a
    time, so memory holds one batch plus the per-cell accumulators, never the full-resolution scene (and
    GDAL's block cache is capped at ``GDAL_CACHE_BYTES``): peak memory does not grow with the scene.

    Output: K bands (``band_names``), NaN nodata, 256 px tiles, DEFLATE + predictor 3, with overviews. With
    ``target_grid`` None it is on the scene grid (each pixel its cell's value, NaN where the input is nodata,
    written block by block); otherwise the cell map is reprojected (average) onto exactly ``target_grid``.
    """
    in_px = chip_px if in_px is None else in_px
    _check_args(grid, chip_px, stride_px, in_px, batch_size, max_nodata_fraction, band_names)
    out_path = Path(out_path)
    # GDAL_CACHEMAX in bytes (rasterio hands it to GDALSetCacheMax64); overviews computed on every core
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_NUM_THREADS="ALL_CPUS"), atomic_path(out_path) as tmp:
        stage = tmp.with_name(tmp.name + ".stage.tif")
        try:
            acc = _accumulate(read, grid, predict, chip_px, stride_px, in_px, batch_size, max_nodata_fraction,
                              band_names, progress)
            cells = acc.means()
            out_grid = grid if target_grid is None else target_grid
            with rasterio.open(stage, "w", **_stage_profile(out_grid, len(band_names))) as dst:
                dst.descriptions = tuple(band_names)
                if target_grid is None:
                    _write_scene_blocks(dst, cells, read, stride_px, acc.nodata_blocks)
                else:
                    _write_target_blocks(dst, cells, grid, stride_px, target_grid)
            _to_cog(stage, tmp)
        finally:
            stage.unlink(missing_ok=True)
            Path(f"{stage}.aux.xml").unlink(missing_ok=True)
    return out_path


# ------------------------------------------------------------------------------------------ quicklook
def _crs_name(crs: CRS | None) -> str:
    """Human name of a CRS (from its WKT), e.g. ``WGS 84 / UTM zone 33N``."""
    if crs is None:
        return "no CRS"
    match = re.match(r'\s*\w+\["([^"]+)"', crs.to_wkt())
    code = crs.to_string() if crs.to_epsg() else ""
    name = match.group(1) if match else code
    return f"{name} ({code})" if code and code not in name else name


def _axis_labels(crs: CRS | None) -> tuple[str, str]:
    """x/y axis labels with the CRS name and units."""
    name = _crs_name(crs)
    if crs is not None and crs.is_geographic:
        return f"longitude [deg], {name}", f"latitude [deg], {name}"
    units = crs.linear_units if crs is not None else "pixel"
    return f"easting [{units}], {name}", f"northing [{units}], {name}"


def _read_decimated(src: rasterio.DatasetReader, band: int) -> np.ndarray:
    """Read one band at most ``QUICKLOOK_MAX_PX`` on a side (overviews are used when present), NaN nodata."""
    factor = max(1, math.ceil(max(src.width, src.height) / QUICKLOOK_MAX_PX))
    shape = (math.ceil(src.height / factor), math.ceil(src.width / factor))
    data = src.read(band, out_shape=shape, masked=True, resampling=Resampling.average)
    return data.astype(np.float64).filled(np.nan)


def write_quicklook(tif_path: str | Path, png_path: str | Path, title: str = "", cmap: str = "viridis",
                    band: int = 1) -> Path:
    """Render one raster band to a PNG (atomically) with a colour bar and CRS coordinate ticks; NaN is grey."""
    with _open(tif_path) as src:
        if not 1 <= band <= src.count:
            raise GeocnnError(f"{tif_path}: band {band} out of range; the raster has bands 1..{src.count}")
        data = _read_decimated(src, band)
        bounds, crs = src.bounds, src.crs
        label = src.descriptions[band - 1] or f"band {band}"
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    colours = plt.get_cmap(cmap).with_extremes(bad=(0, 0, 0, 0))  # NaN transparent over the grey background
    aspect = data.shape[1] / max(data.shape[0], 1)
    fig = plt.figure(figsize=(min(12.0, 4.0 + 5.0 * aspect), 6.0), layout="constrained")
    try:
        ax = fig.add_subplot()
        ax.set_facecolor("0.85")
        image = ax.imshow(data, cmap=colours, vmin=vmin, vmax=vmax, interpolation="nearest",
                          extent=(bounds.left, bounds.right, bounds.bottom, bounds.top))
        fig.colorbar(image, ax=ax, label=label, shrink=0.85)
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(axis="x", labelrotation=30)
        xlabel, ylabel = _axis_labels(crs)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title or Path(tif_path).name)
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return Path(png_path)


# -------------------------------------------------------------------------------------------- geojson
def _json_value(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars unwrapped, NaN/inf/NA -> None, timestamps as ISO text."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in value]
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(value).isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value if isinstance(value, str) else str(value)


def _point(lat: Any, lon: Any, row: Any, lat_column: str, lon_column: str) -> dict[str, Any] | None:
    """RFC 7946 Point geometry (lon, lat), or None where a coordinate is missing."""
    if pd.isna(lat) or pd.isna(lon):
        return None
    lat, lon = float(lat), float(lon)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise GeocnnError(f"row {row!r}: {lat_column}={lat}, {lon_column}={lon} is not a WGS84 lat/lon; check "
                          "the columns are not swapped and the coordinates are in degrees")
    return {"type": "Point", "coordinates": [lon, lat]}


def write_geojson_points(frame: pd.DataFrame, out_path: str | Path, lat_column: str = "lat",
                         lon_column: str = "lon") -> Path:
    """Write rows as a GeoJSON FeatureCollection of Points (lon, lat order), other columns as properties.

    Rows with a missing coordinate get a null geometry; NaN properties become null.
    """
    missing = [c for c in (lat_column, lon_column) if c not in frame.columns]
    if missing:
        raise GeocnnError(f"columns {missing} not in the table (columns: {list(frame.columns)}); pass "
                          "lat_column/lon_column")
    for column in (lat_column, lon_column):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise GeocnnError(f"column {column!r} has dtype {frame[column].dtype}; coordinates must be numbers "
                              "in degrees")
    props = frame.drop(columns=[lat_column, lon_column])
    names = [str(c) for c in props.columns]
    features = []
    for index, lat, lon, values in zip(frame.index, frame[lat_column], frame[lon_column],
                                       props.itertuples(index=False, name=None), strict=True):
        features.append({"type": "Feature", "geometry": _point(lat, lon, index, lat_column, lon_column),
                         "properties": {n: _json_value(v) for n, v in zip(names, values, strict=True)}})
    with atomic_path(out_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"type": "FeatureCollection", "features": features}, fh, ensure_ascii=False,
                      allow_nan=False)
    return Path(out_path)
