"""Wall-to-wall maps of an Earth model: sliding windows over a scene through the one forward loop -> COG + PNG."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from geocnn import __version__
from geocnn.config.earth import MapsConfig
from geocnn.data.chips import M_PER_DEG, ChipSpec
from geocnn.data.profile import check_inputs, enforce, flag_targets, flags_outputs, pixel_size_m
from geocnn.data.sources.raster import Grid, Scene, open_scene
from geocnn.errors import GeocnnError
from geocnn.evaluation.conformal import Calibration, intervals
from geocnn.fanout import SEQUENTIAL, Mapper
from geocnn.inference.bundle import Bundle, load_bundle
from geocnn.inference.predict import Forward
from geocnn.outputs.cog import is_prediction_map, predict_map, write_difference, write_quicklook
from geocnn.outputs.mosaic import merge_maps, warp_to, write_vrt
from geocnn.outputs.tables import write_tables

LOG = logging.getLogger("geocnn")


def map_reader(scenes: list[Scene], layers: list[Scene]) -> Callable:
    """read(window, out_shape) over the first scene, with the extra layers read over the same ground box."""
    scene = scenes[0]

    def read(window: Window, out_shape: tuple[int, int]) -> np.ndarray:
        parts = [scene.read(window, out_shape)]
        if layers:
            b = window_bounds(window, scene.transform)
            for layer in layers:
                lb = transform_bounds(scene.crs, layer.crs, *b) if layer.crs != scene.crs else b
                parts.append(layer.read(from_bounds(*lb, transform=layer.transform), out_shape))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    read.exact_strips = not layers  # type: ignore[attr-defined]  # one scene: a strip reads what its windows do
    return read


def offset_reader(read: Callable, col_off: int, row_off: int) -> Callable:
    """A reader of a sub-window of the scene, in that sub-window's pixel coordinates."""

    def shifted(window: Window, out_shape: tuple[int, int]) -> np.ndarray:
        return read(Window(window.col_off + col_off, window.row_off + row_off, window.width, window.height), out_shape)

    shifted.exact_strips = getattr(read, "exact_strips", False)  # type: ignore[attr-defined]
    return shifted


def window_px(scene: Scene, chips: ChipSpec, footprint_m: float | None) -> int:
    """The model's window in native scene pixels: its chip footprint over the scene's pixel size."""
    if chips.chip_px is not None and not chips.files:
        return int(chips.chip_px)
    metres = chips.chip_m or footprint_m
    if metres is None:
        raise GeocnnError("the model's chip footprint in metres is unknown (tiles without a geotransform); set "
                          "earth.chip_m when training so that maps can use the same footprint")
    geographic = scene.crs is not None and scene.crs.is_geographic
    res = abs(scene.res[1]) * (M_PER_DEG if geographic else 1.0)
    return max(1, int(round(metres / res)))


def map_scene(bundle: Bundle, scenes: list[str], out_dir: Path, stride_px: int | None = None,
              target_grid: str | None = None, batch_size: int = 128, device: str = "auto",
              title: str = "", style: MapsConfig | None = None, points: Points | None = None,
              model: str | None = None, strict: bool = False, guard: bool = True) -> dict[str, Path]:
    """Sliding-window prediction over the first of ``scenes`` with a bundle (its views and stage 2) -> COG + PNG.

    Windows of the model's chip footprint, ``stride_px`` apart (default half a window; overlaps are averaged), are
    cut exactly as training chips are and go through :class:`~geocnn.inference.predict.Forward`, so a window that
    covers a cluster's chip predicts what the table says for that cluster.

    The COG carries :func:`map_tags` (``style``: units, definition; ``model``: how the model was asked for). On
    ``target_grid``, pixels the grid raster has no value for are nodata (``style.mask_to_grid``), and when the grid
    is itself a prediction map (one float band) a difference map ours - reference is written too (keys
    ``map_diff_tif``, ``map_diff_png``). ``points`` (lon, lat) are drawn on the quicklook.

    With ``guard`` (and a bundle that has a training profile), a sample of the scene's windows is checked against
    what the model was trained on (:func:`scene_warnings`): differences are logged, and with ``strict`` refused
    before anything is written; a map whose predictions fall far outside the training target range is logged too.
    """
    style = style or MapsConfig()
    pre = bundle.preprocessing
    chips = pre.chips
    name = pre.output_names[0]
    footprint = pre.resolution_m * pre.chip_px if pre.resolution_m else None
    with ExitStack() as stack:
        opened = [stack.enter_context(open_scene(s, chips.bands, chips.nodata)) for s in scenes]
        layers = [stack.enter_context(open_scene(p)) for p in chips.layers]
        scene = opened[0]
        extra = sum(layer.count for layer in layers)
        if scene.count + extra != len(pre.bands):
            raise GeocnnError(f"{scenes[0]}: {scene.count} band(s) + {extra} from layers, but the model expects "
                              f"{len(pre.bands)} ({', '.join(pre.bands)}); give scenes with the same bands")
        chip_native = window_px(scene, chips, footprint)
        if min(scene.width, scene.height) < chip_native:
            raise GeocnnError(f"{scenes[0]}: the scene is {scene.width}x{scene.height} px, smaller than the model's "
                              f"{chip_native} px window; map a larger scene (or mosaic several).")
        if guard:
            enforce(scene_warnings(bundle, scene, layers), scenes[0], strict)
        stride = min(stride_px or max(1, chip_native // 2), chip_native)
        grid = Grid(scene.crs, scene.transform, scene.width, scene.height)
        read = map_reader(opened, layers)
        target = None
        if target_grid:
            target = Grid.from_raster(target_grid)
            west, south, east, north = array_bounds(target.height, target.width, target.transform)
            lb = transform_bounds(target.crs, scene.crs, west, south, east, north)
            win = from_bounds(*lb, transform=scene.transform).round_offsets().round_lengths()
            try:
                win = win.intersection(Window(0, 0, scene.width, scene.height))
            except Exception:  # noqa: BLE001 - rasterio raises WindowError when they do not overlap
                raise GeocnnError(f"maps.target_grid {target_grid} does not overlap the scene {scenes[0]}") from None
            grid = Grid(scene.crs, window_transform(win, scene.transform), int(win.width), int(win.height))
            read = offset_reader(read, int(win.col_off), int(win.row_off))
        forward = Forward(bundle.net, pre.tta_views, device, head=bundle.stage2)
        max_nodata = chips.max_nodata_fraction if chips.max_nodata_fraction is not None else 0.5
        predict, bands = with_intervals(forward.batch, pre.calibration, name)
        try:
            tif = predict_map(read, grid, predict, out_dir / "prediction.tif", chip_px=chip_native,
                              stride_px=stride, in_px=pre.chip_px, batch_size=batch_size,
                              max_nodata_fraction=max_nodata, band_names=bands, target_grid=target,
                              tags=map_tags(bundle, scenes, style, model),
                              mask_to=target_grid if target_grid and style.mask_to_grid else None)
        finally:
            forward.release()  # callers keep using the network on the host
    warn_out_of_range(bundle, tif, scenes[0])
    paths = {"map_tif": tif,
             "map_png": write_quicklook(tif, out_dir / "prediction.png", title=title or f"predicted {name}",
                                        diverging=style.diverging, points=points)}
    if target_grid and is_prediction_map(target_grid):
        paths.update(difference_map(tif, target_grid, out_dir, map_tags(bundle, scenes, style, model), points))
    if len(bands) > 1:
        level = pre.calibration.level if pre.calibration else 0
        paths["map_width_png"] = write_quicklook(tif, out_dir / "interval_width.png", cmap="magma",
                                                 band=bands.index(INTERVAL_BANDS[-1]) + 1,
                                                 title=f"width of the {level:.0%} prediction interval of {name}")
    return paths


Points = tuple[Sequence[float], Sequence[float]]
"""Survey clusters to draw on a map: (longitudes, latitudes) in EPSG:4326."""

GUARD_WINDOWS = 8
"""The input check reads GUARD_WINDOWS x GUARD_WINDOWS windows spread evenly over a scene."""


def scene_warnings(bundle: Bundle, scene: Scene, layers: list[Scene], factor: float = 2.0) -> list[str]:
    """How a scene (with the model's layers) differs from the training data (:func:`geocnn.data.profile.check_inputs`:
    its pixel size, band type and names, and the values of an even grid of windows cut as the map cuts them); []
    for a bundle without a training profile."""
    pre = bundle.preprocessing
    if pre.profile is None:
        return []
    footprint = pre.resolution_m * pre.chip_px if pre.resolution_m else None
    window = window_px(scene, pre.chips, footprint)
    read = map_reader([scene], layers)
    rows = np.unique(np.linspace(0, max(0, scene.height - window), GUARD_WINDOWS).astype(int))
    cols = np.unique(np.linspace(0, max(0, scene.width - window), GUARD_WINDOWS).astype(int))
    sample = np.stack([read(Window(c, r, window, window), (pre.chip_px, pre.chip_px)) for r in rows for c in cols])
    bands = list(scene.band_names) + [f"{Path(p).stem}:{b}" for p, layer in zip(pre.chips.layers, layers)
                                      for b in layer.band_names]
    return check_inputs(pre.profile, sample, bands, str(scene.dtypes[0]), pixel_size_m(scene.crs, scene.res), factor)


def check_scene(bundle: Bundle, scene: str, strict: bool = False) -> list[str]:
    """Open a scene and check it against the model's training data: warnings logged (``strict``: refused)."""
    chips = bundle.preprocessing.chips
    if bundle.preprocessing.profile is None:
        return []
    with ExitStack() as stack:
        opened = stack.enter_context(open_scene(scene, chips.bands, chips.nodata))
        layers = [stack.enter_context(open_scene(p)) for p in chips.layers]
        warnings = scene_warnings(bundle, opened, layers)
    enforce(warnings, scene, strict)
    return warnings


def out_of_range(bundle: Bundle, low: float, high: float) -> bool:
    """Whether a map's lowest or highest prediction lies far outside the training target range (flag_targets)."""
    pre = bundle.preprocessing
    name = pre.output_names[0]
    return bool(flag_targets(pre.profile, np.array([[low], [high]]), [name]).any())


def warn_out_of_range(bundle: Bundle, tif: Path, source: str, max_px: int = 1024) -> float | None:
    """Log the share of a map's pixels (read at most ``max_px`` wide) predicted far outside the training target
    range; returns it (None when the bundle records no range for the mapped output)."""
    pre = bundle.preprocessing
    name = pre.output_names[0]
    if not flags_outputs(pre.profile, [name], 1):
        return None
    with rasterio.open(tif) as src:
        step = max(1, -(-max(src.width, src.height) // max_px))
        values = src.read(1, out_shape=(max(1, src.height // step), max(1, src.width // step)), masked=True)
    values = values.astype(np.float64).filled(np.nan).ravel()
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    share = float(flag_targets(pre.profile, values[:, None], [name]).mean())
    if share > 0:
        r = pre.profile.targets[name]
        low, high = r.allowed()
        LOG.warning("%s: %.0f%% of the map's pixels predict %s outside %.4g to %.4g (the training values span %.4g "
                    "to %.4g; predictions %.4g to %.4g): the scene is probably unlike the training data", source,
                    100 * share, name, low, high, r.min, r.max, values.min(), values.max())
    return share


def map_tags(bundle: Bundle, scenes: list[str], style: MapsConfig | None = None,
             model: str | None = None) -> dict[str, str]:
    """Provenance of a map GeoTIFF (dataset tags): TARGET, UNITS, DEFINITION, MODEL (experiment, backbone and
    ``model``, e.g. a registry URI with its version), MLFLOW_RUN_ID, DATA (the scenes), TRAINING_DATA (the chip
    store key), CREATED (UTC, ISO 8601) and GEOCNN_VERSION; those not known are left out."""
    style = style or MapsConfig()
    meta = bundle.meta
    described = [f"experiment {meta['experiment']}" if meta.get("experiment") else "",
                 f"backbone {bundle.spec.backbone}", model or ""]
    tags = {"TARGET": bundle.preprocessing.output_names[0], "UNITS": style.units, "DEFINITION": style.definition,
            "MODEL": ", ".join(d for d in described if d), "MLFLOW_RUN_ID": meta.get("run_id"),
            "DATA": "; ".join(scenes), "TRAINING_DATA": meta.get("store_key"),
            "CREATED": datetime.now(timezone.utc).isoformat(timespec="seconds"), "GEOCNN_VERSION": __version__}
    return {k: str(v) for k, v in tags.items() if v}


def difference_map(tif: Path, reference: str, out_dir: Path, tags: dict[str, str],
                   points: Points | None = None) -> dict[str, Path]:
    """ours - reference on the reference's grid: a COG and a quicklook (diverging at 0) whose title gives the
    pooled Pearson r and mean difference over the pixels both maps have."""
    name = tags.get("TARGET", "prediction")
    diff = out_dir / "difference.tif"
    stats = write_difference(tif, reference, diff, {**tags, "TARGET": f"{name} (this map - {Path(reference).name})"})
    title = (f"{name}: this map - {Path(reference).name}\npooled r = {stats['pearson_r']:.3f}, mean difference "
             f"{stats['mean_difference']:+.3f} ({int(stats['n'])} pixels)")
    return {"map_diff_tif": diff,
            "map_diff_png": write_quicklook(diff, out_dir / "difference.png", title=title, diverging=True,
                                            points=points)}


INTERVAL_BANDS = ("lower", "upper", "interval_width")
"""Bands a map gets after its prediction when the bundle carries conformal intervals (band descriptions)."""


def with_intervals(predict: Callable[[np.ndarray], np.ndarray], cal: Calibration | None,
                   name: str) -> tuple[Callable[[np.ndarray], np.ndarray], list[str]]:
    """The map's predictor and band names: the prediction, and with an interval calibration of one output its
    lower and upper bounds and width (the pooled quantile: a pixel has no group; normalised intervals would need
    each window's spread). Overlapping windows average the bounds as they average the prediction."""
    if cal is None or cal.kind != "interval" or list(cal.quantiles) != [name]:
        return predict, [name]

    def bounded(chips: np.ndarray) -> np.ndarray:
        pred = np.asarray(predict(chips), np.float64).reshape(len(chips), -1)
        lower, upper = intervals(cal, pred, [name])
        return np.concatenate([pred, lower, upper, upper - lower], axis=1).astype(np.float32)

    return bounded, [name, *INTERVAL_BANDS]


@dataclass(frozen=True)
class SceneJob:
    """One scene to map, as a unit of work: the bundle is read from its folder, outputs go to ``out_dir``."""

    bundle_dir: str
    scene: str
    out_dir: str
    stride_px: int | None
    target_grid: str | None
    batch_size: int
    device: str
    crs: str | None
    """The mosaic's CRS: a map in another CRS gets a reprojected copy for the mosaic."""
    style: MapsConfig | None = None
    points: Points | None = None
    model: str | None = None


def map_one(job: SceneJob) -> dict[str, Any]:
    """Map one scene (COG + PNG, atomically) and summarise it: a row of the per-scene table."""
    started = time.perf_counter()
    bundle = load_bundle(Path(job.bundle_dir))
    out = Path(job.out_dir)
    paths = map_scene(bundle, [job.scene], out, job.stride_px, job.target_grid, job.batch_size, job.device,
                      title=f"{Path(job.scene).name}: predicted {bundle.preprocessing.output_names[0]}",
                      style=job.style, points=job.points, model=job.model, guard=False)
    with rasterio.open(paths["map_tif"]) as src:
        crs = src.crs
        values = src.read(1, masked=True).astype(np.float64).filled(np.nan)
    mosaic_tif = paths["map_tif"]
    if job.crs is not None and crs is not None and CRS.from_user_input(job.crs) != crs:
        mosaic_tif = warp_to(paths["map_tif"], CRS.from_user_input(job.crs), out / "prediction_mosaic_crs.tif")
    finite = values[np.isfinite(values)]
    return {"scene": job.scene, "map_tif": str(paths["map_tif"]), "map_png": str(paths["map_png"]),
            "mosaic_tif": str(mosaic_tif), "crs": str(crs), "width": int(values.shape[1]),
            "height": int(values.shape[0]), "valid_pixels": int(finite.size),
            "mean": float(finite.mean()) if finite.size else np.nan,
            "min": float(finite.min()) if finite.size else np.nan,
            "max": float(finite.max()) if finite.size else np.nan,
            "out_of_range": out_of_range(bundle, finite.min(), finite.max()) if finite.size else False,
            "seconds": round(time.perf_counter() - started, 3)}


def scene_folders(scenes: list[str]) -> list[str]:
    """A distinct output folder name per scene: its file stem, with a short hash where stems repeat."""
    stems = [Path(s.rstrip("/")).stem or "scene" for s in scenes]
    repeated = {s for s in stems if stems.count(s) > 1}
    return [f"{stem}-{hashlib.blake2b(scene.encode(), digest_size=4).hexdigest()}" if stem in repeated else stem
            for stem, scene in zip(stems, scenes)]


def map_scenes(bundle_dir: Path, scenes: list[str], out_dir: Path, stride_px: int | None = None,
               target_grid: str | None = None, batch_size: int = 128, device: str = "auto",
               mapper: Mapper = SEQUENTIAL, title: str = "", style: MapsConfig | None = None,
               points: Points | None = None, model: str | None = None, strict: bool = False,
               guard: bool = True) -> dict[str, Path]:
    """Map every scene as its own unit (``mapper``: one after another, or side by side on a task runner), then
    mosaic them: a VRT and a merged COG with overviews (maps in another CRS than the first are reprojected into
    it), a PNG of the mosaic, and a per-scene table (scenes.csv / scenes.parquet).

    One scene writes prediction.tif / prediction.png in ``out_dir`` itself (as ``geocnn map`` always did).
    ``style``, ``points`` and ``model``: as for :func:`map_scene` (the mosaic gets the tags of all the scenes).
    With ``guard``, every scene is checked against the training data before any is mapped (``strict``: refused).
    """
    if guard:
        bundle = load_bundle(bundle_dir)
        for scene in scenes:
            check_scene(bundle, scene, strict)
    if len(scenes) == 1:
        return map_scene(load_bundle(bundle_dir), scenes, out_dir, stride_px, target_grid, batch_size, device,
                         title=title, style=style, points=points, model=model, guard=False)
    with open_scene(scenes[0]) as first:
        crs = first.crs.to_wkt() if first.crs is not None else None
    jobs = [SceneJob(str(bundle_dir), scene, str(out_dir / "scenes" / name), stride_px, target_grid, batch_size,
                     device, crs, style, points, model) for scene, name in zip(scenes, scene_folders(scenes))]
    rows = mapper.map("map-scene", map_one, jobs)
    table = pd.DataFrame(rows)
    tifs = [Path(p) for p in table["mosaic_tif"]]
    paths = {"map_vrt": write_vrt(tifs, out_dir / "mosaic.vrt"),
             "map_tif": merge_maps(tifs, out_dir / "prediction.tif",
                                   extra=map_tags(load_bundle(bundle_dir), scenes, style, model))}
    name = load_bundle(bundle_dir).preprocessing.output_names[0]
    paths["map_png"] = write_quicklook(paths["map_tif"], out_dir / "prediction.png",
                                       title=title or f"predicted {name} ({len(scenes)} scenes)",
                                       diverging=(style or MapsConfig()).diverging, points=points)
    csv, parquet = write_tables(table, out_dir, stem="scenes")
    paths.update({"scenes_csv": csv, "scenes_parquet": parquet})
    return paths


def scenes_of(bundle: Bundle, scenes: list[str] | None, source: Any = "the model") -> list[str]:
    """The scenes to map: those given, else the ones the model was trained on."""
    chosen = list(scenes or bundle.preprocessing.chips.scenes)
    if not chosen:
        raise GeocnnError(f"{source}: the model was trained on tiles and names no scene; give --scene SCENE.tif")
    return chosen
