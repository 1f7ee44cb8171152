"""Wall-to-wall maps of an Earth model: sliding windows over a scene through the one forward loop -> COG + PNG."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from geocnn.data.chips import M_PER_DEG, ChipSpec
from geocnn.data.sources.raster import Grid, Scene, open_scene
from geocnn.errors import GeocnnError
from geocnn.inference.bundle import Bundle
from geocnn.inference.predict import Forward
from geocnn.outputs.cog import predict_map, write_quicklook


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
              title: str = "") -> dict[str, Path]:
    """Sliding-window prediction over the first of ``scenes`` with a bundle (its views and stage 2) -> COG + PNG.

    Windows of the model's chip footprint, ``stride_px`` apart (default half a window; overlaps are averaged), are
    cut exactly as training chips are and go through :class:`~geocnn.inference.predict.Forward`, so a window that
    covers a cluster's chip predicts what the table says for that cluster.
    """
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
        try:
            tif = predict_map(read, grid, forward.batch, out_dir / "prediction.tif", chip_px=chip_native,
                              stride_px=stride, in_px=pre.chip_px, batch_size=batch_size,
                              max_nodata_fraction=max_nodata, band_names=[name], target_grid=target)
        finally:
            forward.release()  # callers keep using the network on the host
    png = write_quicklook(tif, out_dir / "prediction.png", title=title or f"predicted {name}")
    return {"map_tif": tif, "map_png": png}


def scenes_of(bundle: Bundle, scenes: list[str] | None, source: Any = "the model") -> list[str]:
    """The scenes to map: those given, else the ones the model was trained on."""
    chosen = list(scenes or bundle.preprocessing.chips.scenes)
    if not chosen:
        raise GeocnnError(f"{source}: the model was trained on tiles and names no scene; give --scene SCENE.tif")
    return chosen
