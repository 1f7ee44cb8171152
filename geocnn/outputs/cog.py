"""Maps as files: stride-cell predictions written as a Cloud Optimized GeoTIFF, and a PNG quicklook of any raster."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: flows run without a display; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import rasterio.shutil  # noqa: E402
from affine import Affine  # noqa: E402
from matplotlib.colors import Colormap, Normalize, TwoSlopeNorm  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from rasterio.coords import BoundingBox  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402
from rasterio.transform import from_bounds as transform_from_bounds  # noqa: E402
from rasterio.warp import calculate_default_transform, reproject, transform_bounds  # noqa: E402
from rasterio.warp import transform as warp_points  # noqa: E402
from rasterio.windows import Window  # noqa: E402
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
GEOGRAPHIC_SPAN_DEG = 3.0
"""``write_quicklook`` draws a projected map spanning more than this (longitude or latitude) in degrees."""
DIVERGING_CMAP = "RdBu"
"""Colour map of quicklooks of values centred at 0 (red below, blue above)."""
NODATA_GREY = "0.85"
"""Colour of pixels without data in quicklooks (and of their legend entry)."""
WGS84 = CRS.from_epsg(4326)
"""Longitude/latitude: the CRS of survey points and of quicklook axes in degrees."""


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
                         target: Grid, mask: rasterio.DatasetReader | None = None) -> None:
    """Fill the target-grid output block by block by averaging the stride-cell map reprojected onto it (NaN where
    ``mask``, a raster on exactly the target grid, has no valid value)."""
    cell_transform = grid.transform @ Affine.scale(stride)
    for _, win in dst.block_windows(1):
        block = np.full((cells.shape[0], win.height, win.width), np.nan, np.float32)
        reproject(cells, block, src_transform=cell_transform, src_crs=grid.crs, src_nodata=np.nan,
                  dst_transform=window_transform(win, target.transform), dst_crs=target.crs, dst_nodata=np.nan,
                  resampling=Resampling.average)
        if mask is not None:
            block[:, ~valid_pixels(mask, win)] = np.nan
        dst.write(block, window=win)


def valid_pixels(src: rasterio.DatasetReader, window: Window | None = None) -> np.ndarray:
    """Where band 1 of a raster holds data: not its nodata value, not NaN (a boolean array of the window)."""
    data = src.read(1, window=window, masked=True)
    return ~np.ma.getmaskarray(data) & np.isfinite(data.filled(0))


def _to_cog(stage: Path, out: Path) -> None:
    """Copy a tiled GeoTIFF to a Cloud Optimized GeoTIFF (DEFLATE, predictor 3, 256 px tiles, overviews)."""
    rasterio.shutil.copy(stage, out, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=str(BLOCK_PX),
                         RESAMPLING="AVERAGE", OVERVIEWS="AUTO", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")


def predict_map(read: Reader, grid: Grid, predict: Predictor, out_path: str | Path, chip_px: int, stride_px: int,
                in_px: int | None = None, batch_size: int = 64, max_nodata_fraction: float = 0.5,
                band_names: Sequence[str] = ("prediction",), target_grid: Grid | None = None,
                progress: bool = False, tags: Mapping[str, str] | None = None,
                mask_to: str | Path | None = None) -> Path:
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
    written block by block); otherwise the cell map is reprojected (average) onto exactly ``target_grid``, and
    with ``mask_to`` (a raster on that grid, e.g. the grid raster itself) pixels where it has no valid value
    are NaN. ``tags`` (provenance: TARGET, UNITS, MODEL, ...) become the COG's dataset tags.
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
            with ExitStack() as stack:
                dst = stack.enter_context(rasterio.open(stage, "w", **_stage_profile(out_grid, len(band_names))))
                dst.descriptions = tuple(band_names)
                dst.update_tags(**dict(tags or {}))
                if target_grid is None:
                    _write_scene_blocks(dst, cells, read, stride_px, acc.nodata_blocks)
                else:
                    mask = stack.enter_context(open_raster(mask_to)) if mask_to is not None else None
                    if mask is not None and (mask.width, mask.height) != (target_grid.width, target_grid.height):
                        raise GeocnnError(f"{mask_to}: {mask.width}x{mask.height} px, but the map's grid is "
                                          f"{target_grid.width}x{target_grid.height}; mask with the grid raster")
                    _write_target_blocks(dst, cells, grid, stride_px, target_grid, mask)
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


def colour_scale(vmin: float, vmax: float, diverging: bool | None = None,
                 cmap: str | None = None) -> tuple[Colormap, Normalize]:
    """The colour map and norm of a quicklook over values in [vmin, vmax].

    Diverging (``cmap`` or ``DIVERGING_CMAP``, a TwoSlopeNorm centred at 0: the target's natural zero, e.g. a
    centred asset index or a difference) when ``diverging`` is True, or None and the values span 0; otherwise
    sequential (``cmap`` or viridis, linear). NaN is transparent (drawn over the grey no-data background).
    """
    spans = vmin < 0.0 < vmax
    if spans if diverging is None else diverging:
        half = max(abs(vmin), abs(vmax)) or 1.0
        norm: Normalize = TwoSlopeNorm(0.0, vmin, vmax) if spans else TwoSlopeNorm(0.0, -half, half)
        name = cmap or DIVERGING_CMAP
    else:
        norm = Normalize(vmin, vmax)
        name = cmap or "viridis"
    return plt.get_cmap(name).with_extremes(bad=(0, 0, 0, 0)), norm


def _display_grid(data: np.ndarray, bounds: BoundingBox, crs: CRS | None) -> tuple[np.ndarray, tuple, CRS | None]:
    """The array, extent (left, right, bottom, top) and CRS to draw: a projected map spanning more than
    ``GEOGRAPHIC_SPAN_DEG`` is reprojected (nearest) to EPSG:4326 so that its axes read in degrees."""
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
    if crs is None or crs.is_geographic:
        return data, extent, crs
    west, south, east, north = transform_bounds(crs, WGS84, *bounds)
    if max(east - west, north - south) <= GEOGRAPHIC_SPAN_DEG:
        return data, extent, crs
    height, width = data.shape
    src_transform = transform_from_bounds(*bounds, width, height)
    dst_transform, dst_w, dst_h = calculate_default_transform(crs, WGS84, width, height, *bounds)
    out = np.full((int(dst_h), int(dst_w)), np.nan, np.float64)
    reproject(data, out, src_transform=src_transform, src_crs=crs, src_nodata=np.nan, dst_transform=dst_transform,
              dst_crs=WGS84, dst_nodata=np.nan, resampling=Resampling.nearest)
    left, top = dst_transform * (0, 0)
    right, bottom = dst_transform * (int(dst_w), int(dst_h))
    return out, (left, right, bottom, top), CRS.from_epsg(4326)


def write_quicklook(tif_path: str | Path, png_path: str | Path, title: str = "", cmap: str | None = None,
                    band: int = 1, diverging: bool | None = None,
                    points: tuple[Sequence[float], Sequence[float]] | None = None,
                    points_label: str = "survey clusters") -> Path:
    """Render one raster band to a PNG (atomically) that stands on its own.

    The colour bar names the band (its description) and the raster's UNITS tag; its DEFINITION tag is printed
    under the map. Colours follow :func:`colour_scale` (``diverging`` None: diverging at 0 when the values span
    0). Pixels without data are grey, with a "no data" legend entry when there are any. ``points`` (lon, lat in
    EPSG:4326, e.g. the survey clusters) are drawn as dots. Maps in EPSG:4326, and projected maps spanning more
    than ``GEOGRAPHIC_SPAN_DEG``, are drawn on longitude/latitude axes; smaller ones on their CRS's axes. Saved
    with a tight bounding box, so legends and captions are never cut off.
    """
    with open_raster(tif_path) as src:
        if not 1 <= band <= src.count:
            raise GeocnnError(f"{tif_path}: band {band} out of range; the raster has bands 1..{src.count}")
        data = _read_decimated(src, band)
        bounds, crs, tags = src.bounds, src.crs, src.tags()
        label = src.descriptions[band - 1] or f"band {band}"
    data, extent, crs = _display_grid(data, bounds, crs)
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    colours, norm = colour_scale(vmin, vmax, diverging, cmap)
    units = tags.get("UNITS")
    aspect = data.shape[1] / max(data.shape[0], 1)
    fig = plt.figure(figsize=(min(12.0, 4.0 + 5.0 * aspect), 6.0), layout="constrained")
    try:
        ax = fig.add_subplot()
        ax.set_facecolor(NODATA_GREY)
        image = ax.imshow(data, cmap=colours, norm=norm, interpolation="nearest", extent=extent)
        fig.colorbar(image, ax=ax, label=f"{label} [{units}]" if units else label, shrink=0.85)
        handles = []
        if np.isnan(data).any():
            handles.append(Patch(facecolor=NODATA_GREY, edgecolor="0.5", label="no data"))
        if points is not None and crs is not None:
            lon, lat = (np.asarray(v, np.float64) for v in points)
            keep = np.isfinite(lon) & np.isfinite(lat)
            xs, ys = (lon[keep], lat[keep]) if crs == WGS84 else warp_points(WGS84, crs, lon[keep], lat[keep])
            handles.append(ax.scatter(xs, ys, s=4, c="black", edgecolors="none", alpha=0.6,
                                      label=f"{points_label} ({int(keep.sum())})"))
            ax.set(xlim=extent[:2], ylim=extent[2:])
        caption = textwrap.fill(f"{tags.get('TARGET', label)}: {tags['DEFINITION']}", 90) \
            if tags.get("DEFINITION") else None
        if handles or caption:  # under the map: the definition of what is mapped above its legend entries
            fig.legend(handles=handles, loc="outside lower center", ncols=max(1, len(handles)), frameon=False,
                       title=caption, title_fontsize=8, fontsize=9)
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(axis="x", labelrotation=30)
        xlabel, ylabel = _axis_labels(crs)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title or Path(tif_path).name)
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(fig)
    return Path(png_path)


def is_prediction_map(path: str | Path) -> bool:
    """Whether a grid raster is itself a map of values to compare with (one float band, e.g. a published
    wealth map), rather than only a grid (integer classes, several bands)."""
    with open_raster(path) as src:
        return src.count == 1 and np.issubdtype(np.dtype(src.dtypes[0]), np.floating)


def write_difference(ours: str | Path, reference: str | Path, out_path: str | Path,
                     tags: Mapping[str, str] | None = None) -> dict[str, float]:
    """Write ours - reference (band 1 of each; the same grid) as a float32 COG, atomically, block by block.

    Pixels where either has no value are NaN. Returns ``n`` (pixels valid in both), ``pearson_r`` (pooled over
    them) and ``mean_difference``.
    """
    out_path = Path(out_path)
    sums = np.zeros(6)  # a, b, aa, bb, ab, n
    with open_raster(ours) as a, open_raster(reference) as b:
        if (a.crs, a.transform, a.width, a.height) != (b.crs, b.transform, b.width, b.height):
            raise GeocnnError(f"{reference}: not on the grid of {ours} ({b.width}x{b.height} px, {b.crs}); the "
                              "difference map needs the map written on that grid (maps.target_grid / --grid)")
        grid = Grid(a.crs, a.transform, a.width, a.height)
        name = a.descriptions[0] or "prediction"
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), atomic_path(out_path) as tmp:
            stage = tmp.with_name(tmp.name + ".stage.tif")
            try:
                with rasterio.open(stage, "w", **_stage_profile(grid, 1)) as dst:
                    dst.descriptions = (f"{name} difference",)
                    dst.update_tags(**{**dict(tags or {}), "REFERENCE": str(reference)})
                    for _, win in dst.block_windows(1):
                        x = a.read(1, window=win).astype(np.float64)
                        y = b.read(1, window=win).astype(np.float64)
                        ok = valid_pixels(a, win) & valid_pixels(b, win)
                        diff = np.where(ok, x - y, np.nan)
                        dst.write(diff.astype(np.float32)[None], window=win)
                        x, y = x[ok], y[ok]
                        sums += [x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum(), ok.sum()]
                _to_cog(stage, tmp)
            finally:
                stage.unlink(missing_ok=True)
                Path(f"{stage}.aux.xml").unlink(missing_ok=True)
    sa, sb, saa, sbb, sab, n = sums
    if n < 2:
        return {"n": float(n), "pearson_r": float("nan"), "mean_difference": (sa - sb) / n if n else float("nan")}
    cov, va, vb = sab - sa * sb / n, saa - sa * sa / n, sbb - sb * sb / n
    r = cov / np.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")
    return {"n": float(n), "pearson_r": float(r), "mean_difference": float((sa - sb) / n)}
