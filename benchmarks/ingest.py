"""Ingest: chips per second of geocnn's chip-store build vs reading the same windows one by one naively.

Real workloads from ../shared/data:
- the 19,669 DHS clusters, 16 x 16 chips from the two WorldClim rasters (max temperature as the scene,
  precipitation as an extra layer), resampled bilinearly;
- the same with the max-temperature raster cut into 201 tiles in a temporary folder, given as a glob: a
  201-scene mosaic (footprint index, each tile opened once, its clusters read together) against the one scene,
  with how many chips are identical to the one-scene store's (the others touch a tile edge: a mosaic keeps the
  one scene with the least nodata, so they are partly NaN or bilinear at the tile's edge);
- random points inside the Landsat 8 scene LC08_107035 (bands 2, 3, 4 in three files), 64 x 64 native chips.
The naive reader opens every file for every chip, transforms the point, and reads the window with rasterio's
boundless reader.

    python benchmarks/ingest.py [--shared ../shared/data] [--landsat-points 3000] [--tiles 201]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import transform
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, row  # noqa: E402
from geocnn.config import load_config  # noqa: E402
from geocnn.data.store import ChipStore  # noqa: E402
from geocnn.domains import ingest  # noqa: E402


def geocnn_chips_per_s(cfg_overrides: list[str]) -> tuple[float, int]:
    rate, n, _ = geocnn_store(cfg_overrides)
    return rate, n


def geocnn_store(cfg_overrides: list[str]) -> tuple[float, int, ChipStore]:
    """Chips per second of one store build (scene resolution, hashing and writing included), and the store."""
    cfg = load_config(overrides=cfg_overrides)
    start = time.perf_counter()
    store = ingest(cfg, progress=False)
    seconds = time.perf_counter() - start
    return len(store.index) / seconds, len(store.index), store


def cut_tiles(source: Path, out: Path, n: int) -> list[Path]:
    """``n`` GeoTIFF tiles covering a raster in rows of near-equal tiles (the raster's pixels, georeferenced)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with rasterio.open(source) as ds:
        rows = max(1, round((n / 2) ** 0.5))
        base, extra = divmod(n, rows)
        for r in range(rows):
            cols = base + (1 if r < extra else 0)
            r0, r1 = r * ds.height // rows, (r + 1) * ds.height // rows
            for c in range(cols):
                c0, c1 = c * ds.width // cols, (c + 1) * ds.width // cols
                window = Window(c0, r0, c1 - c0, r1 - r0)
                profile = {**ds.profile, "width": c1 - c0, "height": r1 - r0, "transform": ds.window_transform(window),
                           "tiled": False}
                profile.pop("blockxsize", None)
                profile.pop("blockysize", None)
                paths.append(out / f"tile_{r:02d}_{c:02d}.tif")
                with rasterio.open(paths[-1], "w", **profile) as dst:
                    dst.write(ds.read(window=window))
    return paths


def same_chips(a: ChipStore, b: ChipStore) -> int:
    """How many chips of two stores of the same catalog are identical (NaN equal to NaN)."""
    x, y = np.asarray(a.chips), np.asarray(b.chips)
    return int(sum(np.array_equal(u, v, equal_nan=True) for u, v in zip(x, y)))


def naive_chips_per_s(files: list[Path], lats: np.ndarray, lons: np.ndarray, native_px: int, out_px: int,
                      limit: int) -> float:
    """Open each file for each chip and read the window around the point (boundless, bilinear)."""
    n = min(limit, len(lats))
    start = time.perf_counter()
    for lat, lon in zip(lats[:n], lons[:n]):
        bands = []
        for f in files:
            with rasterio.open(f) as src:
                xs, ys = transform("EPSG:4326", src.crs, [lon], [lat])
                r, c = src.index(xs[0], ys[0], op=float)
                win = Window(c - native_px / 2, r - native_px / 2, native_px, native_px)
                data = src.read(1, window=win, out_shape=(out_px, out_px), boundless=True, masked=True,
                                resampling=Resampling.bilinear)
                bands.append(data.astype(np.float32).filled(np.nan))
        np.stack(bands)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--landsat-points", type=int, default=3000)
    p.add_argument("--naive-limit", type=int, default=2000, help="chips timed for the naive reader")
    p.add_argument("--tiles", type=int, default=201, help="scenes of the many-scene mosaic")
    p.add_argument("--repeats", type=int, default=2, help="one-scene and mosaic builds, alternated (best kept)")
    args = p.parse_args()
    d = args.shared
    print(f"machine: {machine('cpu')}\n")
    print(row("workload", "chips", "geocnn chips/s", "naive chips/s", "ratio"))
    print(row("---", "---:", "---:", "---:", "---:"))
    with tempfile.TemporaryDirectory() as tmp:
        wc = [d / "satellite/worldclim/wc2.0_bio_10m_05_max_temp_warmest_month.tif",
              d / "satellite/worldclim/wc2.0_bio_10m_12_annual_precipitation.tif"]
        dhs = d / "poverty/dhs_clusters.csv"
        fast, n = geocnn_chips_per_s([
            "data.format=survey", f"data.catalog={dhs}", "data.targets=[wealthpooled]", "data.chip_size=16",
            f"data.store_root={tmp}/a", f"earth.scenes=[{wc[0]}]", f"earth.layers=[{wc[1]}]", "earth.chip_px=4",
            "earth.max_nodata_fraction=1.0"])
        frame = pd.read_csv(dhs)
        slow = naive_chips_per_s(wc, frame["lat"].to_numpy(), frame["lon"].to_numpy(), 4, 16, args.naive_limit)
        print(row("DHS clusters x WorldClim (2 rasters, 16 px)", n, f"{fast:,.0f}", f"{slow:,.0f}",
                  f"{fast / slow:.1f}x"), flush=True)

        bands = sorted((d / "satellite/landsat/LC08_107035_20150502").glob("*_B[234].tif"))
        with rasterio.open(bands[0]) as src:
            rng = np.random.default_rng(0)
            x = rng.uniform(src.bounds.left + 3000, src.bounds.right - 3000, args.landsat_points)
            y = rng.uniform(src.bounds.bottom + 3000, src.bounds.top - 3000, args.landsat_points)
            lons, lats = transform(src.crs, "EPSG:4326", list(x), list(y))
        pts = pd.DataFrame({"lat": lats, "lon": lons, "y": rng.normal(size=len(lats))})
        pts.to_csv(Path(tmp) / "pts.csv", index=False)
        pattern = str(bands[0]).replace("_B2.tif", "_B{band}.tif")
        fast, n = geocnn_chips_per_s([
            "data.format=survey", f"data.catalog={tmp}/pts.csv", "data.targets=[y]", "data.chip_size=64",
            f"data.store_root={tmp}/b", f"earth.scenes=['{pattern}']", "earth.bands=[2, 3, 4]", "earth.chip_px=64",
            "earth.max_nodata_fraction=1.0"])
        slow = naive_chips_per_s(bands, np.asarray(lats), np.asarray(lons), 64, 64, args.naive_limit)
        print(row("Landsat 8 scene, 3 band files (64 px native)", n, f"{fast:,.0f}", f"{slow:,.0f}",
                  f"{fast / slow:.1f}x"), flush=True)

        tiles = cut_tiles(wc[0], Path(tmp) / "tiles", args.tiles)
        common = ["data.format=survey", f"data.catalog={dhs}", "data.targets=[wealthpooled]", "data.chip_size=16",
                  f"earth.layers=[{wc[1]}]", "earth.chip_px=4", "earth.max_nodata_fraction=1.0"]
        one_rate, many_rate = [], []
        for k in range(args.repeats):  # alternated: this machine's load drifts
            rate, n, one = geocnn_store(common + [f"data.store_root={tmp}/one{k}", f"earth.scenes=[{wc[0]}]"])
            one_rate.append(rate)
            rate, n, many = geocnn_store(common + [f"data.store_root={tmp}/many{k}",
                                                   f"earth.scenes=['{tiles[0].parent}/*.tif']"])
            many_rate.append(rate)
        print(f"\n{len(tiles)}-scene mosaic vs one scene (DHS clusters, WorldClim; best of {args.repeats}, "
              "alternated)\n")
        print(row("scenes", "chips", "geocnn chips/s", "one-scene / mosaic", "chips identical to one scene"))
        print(row("---", "---:", "---:", "---:", "---:"))
        print(row("1 (the whole raster)", n, f"{max(one_rate):,.0f}", "1.0x", n))
        print(row(f"{len(tiles)} tiles (glob)", n, f"{max(many_rate):,.0f}", f"{max(one_rate) / max(many_rate):.2f}x",
                  same_chips(one, many)), flush=True)


if __name__ == "__main__":
    main()
