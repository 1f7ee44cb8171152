"""Mosaics of per-scene maps: a GDAL VRT indexing them, and one merged Cloud Optimized GeoTIFF with overviews."""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.merge
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

from geocnn.atomic import atomic_path
from geocnn.data.sources.raster import Grid
from geocnn.errors import GeocnnError
from geocnn.outputs.cog import _stage_profile, _to_cog

MERGE_MEM_MB = 256
"""Memory rasterio.merge may hold per chunk while writing the merged map (the mosaic is written window by window)."""


def warp_to(src_path: Path, crs: CRS, out_path: Path) -> Path:
    """A map reprojected into ``crs`` (average resampling, NaN nodata) as a COG, written atomically."""
    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        grid = Grid(crs, transform, int(width), int(height))
        with atomic_path(out_path) as tmp:
            stage = tmp.with_name(tmp.name + ".stage.tif")
            try:
                with rasterio.open(stage, "w", **_stage_profile(grid, src.count)) as dst:
                    dst.descriptions = src.descriptions
                    dst.update_tags(**src.tags())  # provenance (TARGET, MODEL, ...) travels with the map
                    for band in range(1, src.count + 1):
                        reproject(rasterio.band(src, band), rasterio.band(dst, band), src_nodata=np.nan,
                                  dst_nodata=np.nan, resampling=Resampling.average)
                _to_cog(stage, tmp)
            finally:
                stage.unlink(missing_ok=True)
    return out_path


def write_vrt(maps: list[Path], out_path: Path) -> Path:
    """A GDAL VRT mosaic of maps in one CRS (sources referenced relative to the VRT; the first map's pixel size;
    where maps overlap, the later one is drawn on top), written atomically."""
    if not maps:
        raise GeocnnError("mosaic: no maps to index")
    metas = []
    for path in maps:
        with rasterio.open(path) as src:
            metas.append((path, src.crs, src.bounds, src.res, src.count, src.descriptions))
    crs, res, count = metas[0][1], metas[0][3], metas[0][4]
    for path, other, *_ in metas[1:]:
        if other != crs:
            raise GeocnnError(f"mosaic: {path} is in {other}, {metas[0][0]} in {crs}; reproject the maps first")
    west = min(m[2].left for m in metas)
    south = min(m[2].bottom for m in metas)
    east = max(m[2].right for m in metas)
    north = max(m[2].top for m in metas)
    width, height = math.ceil((east - west) / res[0] - 1e-6), math.ceil((north - south) / res[1] - 1e-6)
    folder = out_path.parent.resolve()
    bands = []
    for band in range(1, count + 1):
        sources = []
        for path, _, b, r, _, _ in metas:
            with rasterio.open(path) as src:
                w, h = src.width, src.height
            x, y = (b.left - west) / res[0], (north - b.top) / res[1]
            rel = Path(path).resolve().relative_to(folder) if Path(path).resolve().is_relative_to(folder) else None
            name = escape(str(rel if rel is not None else Path(path).resolve()))
            sources.append(
                f'    <ComplexSource resampling="average">\n'
                f'      <SourceFilename relativeToVRT="{int(rel is not None)}">{name}</SourceFilename>\n'
                f"      <SourceBand>{band}</SourceBand>\n"
                f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>\n'
                f'      <DstRect xOff="{x:.6f}" yOff="{y:.6f}" xSize="{(b.right - b.left) / res[0]:.6f}" '
                f'ySize="{(b.top - b.bottom) / res[1]:.6f}"/>\n'
                f"      <NODATA>nan</NODATA>\n"
                f"    </ComplexSource>\n")
        label = escape(metas[0][5][band - 1] or f"band {band}")
        bands.append(f'  <VRTRasterBand dataType="Float32" band="{band}">\n    <Description>{label}</Description>\n'
                     f"    <NoDataValue>nan</NoDataValue>\n{''.join(sources)}  </VRTRasterBand>\n")
    doc = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n  <SRS>{escape(crs.to_wkt())}</SRS>\n'
           f"  <GeoTransform>{west!r}, {res[0]!r}, 0.0, {north!r}, 0.0, {-res[1]!r}</GeoTransform>\n"
           f"{''.join(bands)}</VRTDataset>\n")
    with atomic_path(out_path) as tmp:
        tmp.write_text(doc)
    return out_path


def merge_maps(maps: list[Path], out_path: Path, extra: dict[str, str] | None = None) -> Path:
    """One COG (overviews, NaN nodata) of maps in one CRS; where they overlap, the first valid value wins. Written
    window by window (rasterio.merge to a file), so memory does not grow with the mosaic. Its tags: the first
    map's, updated with ``extra``."""
    with atomic_path(out_path) as tmp:
        stage = tmp.with_name(tmp.name + ".stage.tif")
        try:
            with rasterio.open(maps[0]) as first:
                descriptions, tags = first.descriptions, first.tags()
            rasterio.merge.merge([str(p) for p in maps], nodata=np.nan, dtype="float32", method="first",
                                 dst_path=str(stage), mem_limit=MERGE_MEM_MB,
                                 dst_kwds={"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "zstd",
                                           "BIGTIFF": "IF_SAFER"})
            with rasterio.open(stage, "r+") as dst:
                dst.descriptions = descriptions
                dst.update_tags(**{**tags, **(extra or {})})
            _to_cog(stage, tmp)
        finally:
            stage.unlink(missing_ok=True)
            Path(f"{stage}.aux.xml").unlink(missing_ok=True)
    return out_path
