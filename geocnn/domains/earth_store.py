"""Earth ingest: survey points (or sampled points) + GeoTIFF scenes -> a chip store with labels and a drop report."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from geocnn import __version__
from geocnn.data.catalog import ID
from geocnn.config import EarthConfig, ExperimentConfig
from geocnn.errors import GeocnnError
from geocnn.atomic import atomic_dir
from geocnn.data.store import CHIPS, INDEX, META, STORE_FORMAT, ChipStore, _file_digest

REPORT = "ingest_report.json"
M_PER_DEG = 110_574.0


def read_points(cfg: ExperimentConfig) -> pd.DataFrame:
    """The survey points of an Earth experiment (id, lat, lon, targets, group, urban, weight), validated."""
    from geocnn.data.sources.survey import read_survey

    data, earth = cfg.data, cfg.earth
    if not data.catalog:
        raise GeocnnError("data.format=survey needs data.catalog: a CSV, Parquet or GeoJSON file of survey points")
    targets = [t for t in data.targets if t != earth.label_name or not earth.label_raster]
    return read_survey(data.catalog, earth.lat_column, earth.lon_column, targets, data.id_column, data.group_column,
                       earth.urban_column, earth.weight_column)


def scene_paths(earth: EarthConfig) -> list[str]:
    """Every file the chips are read from (scenes with {band} expanded, then layers), for hashing."""
    paths = []
    for s in earth.scenes:
        paths += [s.format(band=b) for b in earth.bands] if "{band}" in s and earth.bands else [s]
    return paths + list(earth.layers) + ([earth.label_raster] if earth.label_raster else [])


def footprint_m(scene: Any, earth: EarthConfig, lat: float) -> float:
    """Chip side in metres: earth.chip_m, or chip_px native pixels of the first scene (geographic: at the equator
    north-south, i.e. 1 degree = 110.6 km)."""
    if earth.chip_m is not None:
        return float(earth.chip_m)
    if earth.chip_px is None:
        raise GeocnnError("earth: set earth.chip_m (chip side in metres) or earth.chip_px (in native scene pixels)")
    res = abs(scene.res[1])
    return earth.chip_px * res * (M_PER_DEG if scene.crs is not None and scene.crs.is_geographic else 1.0)


def chip_centres(points: pd.DataFrame, earth: EarthConfig) -> pd.DataFrame:
    """One row per chip: the point itself, or an n x n grid over cluster_box_m around it (column 'cluster')."""
    from geocnn.data.sources.raster import cluster_points

    n = earth.chips_per_cluster
    base = points.assign(cluster=points[ID], cluster_lat=points["lat"], cluster_lon=points["lon"])
    if n == 1:
        return base
    rows = []
    for rec in base.to_dict("records"):
        for k, (lon, lat) in enumerate(cluster_points(rec["lon"], rec["lat"], earth.cluster_box_m, n)):
            rows.append({**rec, ID: f"{rec[ID]}#{k}", "lon": lon, "lat": lat})
    return pd.DataFrame(rows)


def build_earth_store(points: pd.DataFrame, targets: list[str], cfg: ExperimentConfig, out_px: int,
                      kind: str = "survey", progress: bool = True) -> ChipStore:
    """Chips around every point from the scenes (+ layers as extra bands), labels from the label raster.

    Chips whose nodata fraction exceeds earth.max_nodata_fraction are dropped and counted in ingest_report.json.
    Content-addressed like the galaxy store: same points, rasters and parameters -> the same store, reused.
    """
    import hashlib

    from geocnn.data.sources.raster import label_statistic, open_scene, read_chip

    earth = cfg.earth
    if not earth.scenes:
        raise GeocnnError("earth.scenes is empty: list the GeoTIFF scene(s) to cut chips from")
    params = {"kind": kind, "earth": earth.model_dump(exclude={"synthetic_size", "synthetic_clusters",
                                                              "synthetic_seed"}), "out_px": out_px,
              "targets": targets}
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"params": params, "format": STORE_FORMAT}, sort_keys=True, default=str).encode())
    h.update(pd.util.hash_pandas_object(points, index=False).to_numpy().tobytes())
    for p in scene_paths(earth):
        if not Path(p).exists():
            raise GeocnnError(f"{p}: raster not found (earth.scenes / earth.layers / earth.label_raster)")
        h.update(_file_digest(p).encode())
    key = h.hexdigest()
    root = Path(cfg.data.store_root) / key[:20]
    if (root / META).exists():
        return ChipStore.open(root)

    chips_at = chip_centres(points, earth)
    with ExitStack() as stack:
        scenes = [stack.enter_context(open_scene(s, earth.bands, earth.nodata)) for s in earth.scenes]
        layers = [stack.enter_context(open_scene(p)) for p in earth.layers]
        label = stack.enter_context(open_scene(earth.label_raster)) if earth.label_raster else None
        bands = list(scenes[0].band_names) + [f"{Path(p).stem}:{b}" for p, s in zip(earth.layers, layers)
                                              for b in s.band_names]
        n_bands = len(bands)
        with atomic_dir(root) as tmp:
            chips = np.lib.format.open_memmap(tmp / CHIPS, mode="w+", dtype=np.float32,
                                              shape=(len(chips_at), n_bands, out_px, out_px))
            keep = np.zeros(len(chips_at), bool)
            nodata = np.zeros(len(chips_at))
            labels = np.full(len(chips_at), np.nan)
            lons, lats = chips_at["lon"].to_numpy(float), chips_at["lat"].to_numpy(float)
            it = tqdm(range(len(chips_at)), desc="chips", disable=not progress)
            for i in it:
                size = footprint_m(scenes[0], earth, lats[i])
                chip, frac = read_chip(scenes, lons[i], lats[i], out_px, size_m=size)
                parts = [chip] + [read_chip(layer, lons[i], lats[i], out_px, size_m=size)[0] for layer in layers]
                full = np.concatenate(parts, axis=0) if len(parts) > 1 else chip
                frac = float(np.mean(np.isnan(full).any(axis=0)))
                nodata[i] = frac
                if frac > earth.max_nodata_fraction:
                    continue
                keep[i] = True
                chips[i] = full
                if label is not None:
                    labels[i] = label_statistic(label, lons[i], lats[i], earth.label_statistic, size_m=size)
            chips.flush()
            del chips
            n_keep = int(keep.sum())
            if n_keep == 0:
                raise GeocnnError(_no_usable_chips(cfg, scenes, lons, lats))
            index = chips_at.loc[keep].reset_index(drop=True)
            index.insert(1, "row", np.arange(n_keep))
            index["nodata_fraction"] = nodata[keep]
            all_targets = list(targets)
            classes: list[str] = []
            if label is not None:
                values = labels[keep]
                bad = ~np.isfinite(values)
                if bad.any():
                    raise GeocnnError(f"{earth.label_raster}: no valid label pixel under {int(bad.sum())} kept chips "
                                      f"(e.g. id {index[ID].iloc[int(np.flatnonzero(bad)[0])]!r}); lower "
                                      "earth.max_nodata_fraction or check the label raster's nodata")
                if earth.label_classes:
                    from geocnn.data.sources.nightlights import nightlight_classes

                    cls, thresholds = nightlight_classes(values, earth.label_classes, earth.n_label_classes,
                                                         seed=cfg.seed)
                    index[earth.label_name] = cls
                    classes = [f"class{k}" for k in range(earth.n_label_classes)] if kind == "stage1" else []
                    thresholds_meta = [float(t) for t in thresholds]
                else:
                    index[earth.label_name] = values
                    thresholds_meta = []
                index[f"{earth.label_name}_value"] = values
                if kind == "stage1" and earth.label_name not in all_targets:
                    all_targets.append(earth.label_name)
            if n_keep < len(chips_at):
                _compact(tmp / CHIPS, keep)
            report = {"chips_requested": int(len(chips_at)), "chips_kept": n_keep,
                      "chips_dropped_nodata": int(len(chips_at) - n_keep),
                      "max_nodata_fraction": earth.max_nodata_fraction,
                      "dropped_ids": chips_at.loc[~keep, ID].astype(str).tolist()[:1000]}
            (tmp / REPORT).write_text(json.dumps(report, indent=2))
            index.to_parquet(tmp / INDEX, index=False)
            meta = {"key": key, "params": params, "bands": bands, "dtype": "float32",
                    "shape": [n_keep, n_bands, out_px, out_px], "targets": all_targets, "classes": classes,
                    "source": str(cfg.data.catalog or "sampled points"), "geocnn_version": __version__,
                    "store_format": STORE_FORMAT, "crs": str(scenes[0].crs), "report": report,
                    "label_thresholds": thresholds_meta if label is not None else []}
            (tmp / META).write_text(json.dumps(meta, indent=2))
    return ChipStore.open(root)


def _compact(path: Path, keep: np.ndarray) -> None:
    """Rewrite a .npy chip array keeping only the given rows (chunked, bounded memory)."""
    src = np.load(path, mmap_mode="r")
    tmp = path.with_suffix(".compact.npy")
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(int(keep.sum()), *src.shape[1:]))
    rows = np.flatnonzero(keep)
    for start in range(0, len(rows), 1024):
        sel = rows[start:start + 1024]
        dst[start:start + len(sel)] = src[sel]
    dst.flush()
    del dst, src
    tmp.replace(path)


def ingest_report(store: ChipStore) -> dict[str, Any]:
    """The drop counts written when the store was built."""
    p = store.root / REPORT
    return json.loads(p.read_text()) if p.exists() else {}


def sample_points(cfg: ExperimentConfig, n: int, seed: int) -> pd.DataFrame:
    """n random points inside the first scene's valid footprint (stage-1 chips of two-stage transfer)."""
    from rasterio.warp import transform as warp

    from geocnn.data.sources.raster import open_scene

    with open_scene(cfg.earth.scenes[0], cfg.earth.bands, cfg.earth.nodata) as scene:
        left, bottom, right, top = scene.bounds
        rng = np.random.default_rng(seed)
        margin = 0.02
        xs = rng.uniform(left + margin * (right - left), right - margin * (right - left), n)
        ys = rng.uniform(bottom + margin * (top - bottom), top - margin * (top - bottom), n)
        lon, lat = warp(scene.crs, "EPSG:4326", xs.tolist(), ys.tolist())
    return pd.DataFrame({ID: [f"s{i}" for i in range(n)], "lat": lat, "lon": lon})


def _no_usable_chips(cfg: ExperimentConfig, scenes: list, lons: np.ndarray, lats: np.ndarray) -> str:
    """Why no chip could be used: points outside every scene, or scenes that are nodata where the points are."""
    from rasterio.warp import transform_bounds

    boxes = [transform_bounds(s.crs, "EPSG:4326", *s.bounds) if s.crs else None for s in scenes]
    inside = np.zeros(len(lons), bool)
    for b in boxes:
        if b is not None:
            inside |= (lons >= b[0]) & (lons <= b[2]) & (lats >= b[1]) & (lats <= b[3])
    where = "; ".join(f"{Path(s.paths[0]).name} covers lon {b[0]:.3f}..{b[2]:.3f}, lat {b[1]:.3f}..{b[3]:.3f}"
                      for s, b in zip(scenes, boxes) if b is not None)
    n_out = int((~inside).sum())
    if n_out == len(lons):
        return (f"{cfg.data.catalog}: all {len(lons)} chip centres lie outside every scene ({where}). Check the "
                "survey's earth.lat_column/earth.lon_column (not swapped, in degrees) and earth.scenes.")
    return (f"{cfg.data.catalog}: every one of the {len(lons)} chips has more than "
            f"{cfg.earth.max_nodata_fraction:.0%} nodata ({n_out} centres outside every scene: {where}); the scenes "
            "are nodata where the points are. Check earth.scenes / earth.nodata, or raise earth.max_nodata_fraction.")
