"""Ingest: chips per second of geocnn's chip-store build vs reading the same windows one by one naively.

Two real workloads from ../shared/data:
- the 19,669 DHS clusters, 16 x 16 chips from the two WorldClim rasters (max temperature as the scene,
  precipitation as an extra layer), resampled bilinearly;
- random points inside the Landsat 8 scene LC08_107035 (bands 2, 3, 4 in three files), 64 x 64 native chips.
The naive reader opens every file for every chip, transforms the point, and reads the window with rasterio's
boundless reader.

    python benchmarks/ingest.py [--shared ../shared/data] [--landsat-points 3000]
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
from geocnn.domains import ingest  # noqa: E402


def geocnn_chips_per_s(cfg_overrides: list[str]) -> tuple[float, int]:
    cfg = load_config(overrides=cfg_overrides)
    start = time.perf_counter()
    store = ingest(cfg, progress=False)
    seconds = time.perf_counter() - start
    return len(store.index) / seconds, len(store.index)


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


if __name__ == "__main__":
    main()
