"""Test helper: cut a real raster into a grid of GeoTIFF tiles (same pixels, each tile its own georeferenced file)."""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.windows import Window


def cut_tiles(source: Path, out: Path, n: int, overlap: int = 0) -> list[Path]:
    """``n`` tiles covering the raster in rows of near-equal tiles (``overlap`` extra pixels on each side)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with rasterio.open(source) as ds:
        rows = max(1, round((n / 2) ** 0.5))
        base, extra = divmod(n, rows)
        for r in range(rows):
            cols = base + (1 if r < extra else 0)
            r0, r1 = max(0, r * ds.height // rows - overlap), min(ds.height, (r + 1) * ds.height // rows + overlap)
            for c in range(cols):
                c0, c1 = max(0, c * ds.width // cols - overlap), min(ds.width, (c + 1) * ds.width // cols + overlap)
                window = Window(c0, r0, c1 - c0, r1 - r0)
                profile = {**ds.profile, "width": c1 - c0, "height": r1 - r0, "transform": ds.window_transform(window),
                           "tiled": False, "compress": None}
                for key in ("blockxsize", "blockysize"):
                    profile.pop(key, None)
                path = out / f"tile_{r:02d}_{c:02d}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(ds.read(window=window))
                    for i, desc in enumerate(ds.descriptions, 1):
                        if desc:
                            dst.set_band_description(i, desc)
                paths.append(path)
    return paths


def write_vrt(tiles: list[Path], like: Path, out: Path) -> Path:
    """A GDAL VRT mosaic of ``tiles`` on the grid of ``like`` (one SimpleSource per tile and band)."""
    with rasterio.open(like) as ds:
        t = ds.transform
        dtype = {"uint8": "Byte", "uint16": "UInt16", "float32": "Float32", "float64": "Float64"}[ds.dtypes[0]]
        bands = []
        for b in range(1, ds.count + 1):
            sources = []
            for tile in tiles:
                with rasterio.open(tile) as tt:
                    col = round((tt.transform.c - t.c) / t.a)
                    row = round((tt.transform.f - t.f) / t.e)
                    sources.append(
                        f'<SimpleSource><SourceFilename relativeToVRT="0">{tile}</SourceFilename>'
                        f"<SourceBand>{b}</SourceBand>"
                        f'<SrcRect xOff="0" yOff="0" xSize="{tt.width}" ySize="{tt.height}"/>'
                        f'<DstRect xOff="{col}" yOff="{row}" xSize="{tt.width}" ySize="{tt.height}"/></SimpleSource>')
            nodata = f"<NoDataValue>{ds.nodata}</NoDataValue>" if ds.nodata is not None else ""
            bands.append(f'<VRTRasterBand dataType="{dtype}" band="{b}">{nodata}{"".join(sources)}</VRTRasterBand>')
        xml = (f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}"><SRS>{ds.crs.to_wkt()}</SRS>'
               f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>{''.join(bands)}</VRTDataset>")
    out.write_text(xml)
    return out
