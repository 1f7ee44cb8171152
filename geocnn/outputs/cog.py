"""Maps as files: stride-cell predictions written as a Cloud Optimized GeoTIFF, and a PNG quicklook of any raster."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: flows run without a display; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import rasterio.shutil  # noqa: E402
from affine import Affine  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402
from rasterio.warp import reproject  # noqa: E402
from rasterio.windows import transform as window_transform  # noqa: E402

from geocnn.atomic import atomic_path  # noqa: E402
from geocnn.data.sources.raster import Grid, open_raster  # noqa: E402
from geocnn.errors import GeocnnError  # noqa: E402
from geocnn.inference.sliding import BLOCK_PX, Predictor, Reader, accumulate, check_args, read_checked  # noqa: E402

GDAL_CACHE_BYTES = 128 * 2**20
"""GDAL block cache while a map is made: enough for a strip of input tiles; GDAL's default (5 % of RAM) grows
with the map being written, so peak memory would grow with the scene."""
QUICKLOOK_MAX_PX = 1024
"""``write_quicklook`` reads the raster decimated to at most this many pixels on its longer side."""


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
            nodata = np.isnan(read_checked(read, win, (win.height, win.width), None)).any(axis=0)
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
    check_args(grid, chip_px, stride_px, in_px, batch_size, max_nodata_fraction, band_names)
    out_path = Path(out_path)
    # GDAL_CACHEMAX in bytes (rasterio hands it to GDALSetCacheMax64); overviews computed on every core
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_NUM_THREADS="ALL_CPUS"), atomic_path(out_path) as tmp:
        stage = tmp.with_name(tmp.name + ".stage.tif")
        try:
            acc = accumulate(read, grid, predict, chip_px, stride_px, in_px, batch_size, max_nodata_fraction,
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
    with open_raster(tif_path) as src:
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


