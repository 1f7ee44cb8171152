"""Chip sources: how one catalog row becomes chips, from its own file or from scene windows around its point.

A :class:`ChipSpec` is data (it travels in the chip store's metadata and in every bundle), so the chips a model
was trained on and the chips it later predicts are cut by the same code with the same settings.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform as warp
from rasterio.warp import transform_bounds

from geocnn.data.catalog import ID, IMAGE, LAT, LON
from geocnn.data.sources.images import TIFF_SUFFIXES, crop_resize, read_image
from geocnn.data.sources.mosaic import Mosaic
from geocnn.data.sources.raster import (
    Scene,
    SceneInfo,
    cluster_points,
    label_statistic,
    metres_per_degree,
    open_scene,
    read_chip,
)
from geocnn.data.sources.scenes import vrt_sources
from geocnn.data.sources.uris import path_exists
from geocnn.errors import GeocnnError

M_PER_DEG = 110_574.0
"""Metres per degree of latitude at the equator (a geographic scene's native pixel in metres, north-south)."""


class ChipSpec(BaseModel):
    """How chips are cut: from a file per sample (``files``) or from windows of ``scenes`` around lat/lon."""

    model_config = ConfigDict(extra="forbid")

    out_px: int = Field(gt=0, description="Side of a stored chip in pixels.")
    files: bool = Field(True, description="Pixels from each sample's own file (catalog column 'image'); else from "
                        "scene windows around its lat/lon.")
    crop: int | None = Field(None, description="Files: centre crop in pixels before resizing (None: whole file).")
    channels: Literal["rgb", "gray"] = "rgb"
    bands: list[str | int] | None = Field(None, description="Bands kept from files or scenes (names or 1-based).")
    nodata: float | None = Field(None, description="Value read as NaN (default: the files').")
    scenes: list[str] = Field(default_factory=list)
    chip_m: float | None = Field(None, description="Chip footprint in metres (windows, layers, labels).")
    chip_px: int | None = Field(None, description="Chip footprint in native pixels of the first scene.")
    per_sample: int = Field(1, ge=1, description="n: an n x n grid of windows over box_m around each point.")
    box_m: float = 10000.0
    layers: list[str] = Field(default_factory=list, description="Rasters appended as bands over the chip's box.")
    label_raster: str | None = None
    label_statistic: Literal["mean", "median", "max"] = "mean"
    max_nodata_fraction: float | None = Field(None, description="Drop chips with more nodata (None: keep all).")

    @property
    def needs_points(self) -> bool:
        """Whether rows must carry lat/lon (windows, layers or labels around the sample's point)."""
        return not self.files or bool(self.layers) or self.label_raster is not None

    def inputs(self) -> list[str]:
        """The raster files chips are read from (besides each row's own file), for content keys."""
        paths: list[str] = []
        for scene in self.scenes:
            paths += [scene.format(band=b) for b in self.bands] if "{band}" in scene and self.bands else [scene]
        rasters = paths + list(self.layers) + ([self.label_raster] if self.label_raster else [])
        return rasters + [p for p in vrt_sources(rasters) if p not in rasters]


@dataclass
class Chip:
    """One chip: its id suffix within the sample, pixels (C, H, W), its centre and label statistic if known."""

    pixels: np.ndarray
    suffix: str = ""
    lat: float = float("nan")
    lon: float = float("nan")
    label: float = float("nan")
    nodata: float = 0.0


@dataclass
class ChipSource:
    """An open :class:`ChipSpec`: rasters opened once, then :meth:`make` per catalog row (use as a context).

    Scenes form a :class:`Mosaic`: their grids are known up front (``scenes``), their files are opened on demand;
    :meth:`make_rows` reads many rows scene by scene (each scene opened once, its chips read together).
    """

    spec: ChipSpec
    source: str = "catalog"
    scenes: list[SceneInfo] = field(default_factory=list)
    mosaic: Mosaic | None = None
    layers: list[Scene] = field(default_factory=list)
    label: Scene | None = None
    _stack: ExitStack = field(default_factory=ExitStack)

    def __enter__(self) -> "ChipSource":
        spec = self.spec
        for path in spec.inputs():
            if "{band}" not in path and not path_exists(path):
                raise GeocnnError(f"{path}: raster not found (earth.scenes / earth.layers / earth.label_raster)")
        if spec.scenes:
            self.mosaic = self._stack.enter_context(Mosaic(spec.scenes, spec.bands, spec.nodata))
            self.scenes = list(self.mosaic.infos)
        self.layers = [self._stack.enter_context(open_scene(p)) for p in spec.layers]
        self.label = self._stack.enter_context(open_scene(spec.label_raster)) if spec.label_raster else None
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def threaded(self) -> bool:
        """Rows may be made in threads (each opens its own file; shared raster handles are not thread-safe)."""
        return self.spec.files and not self.layers and self.label is None

    def band_names(self, row: dict[str, Any]) -> list[str]:
        """Names of the chip bands in order: the file's (or first scene's), then each layer's ``<file stem>:<band>``."""
        spec = self.spec
        base = (read_image(row[IMAGE], spec.channels, spec.bands, spec.nodata).bands if spec.files
                else list(self.scenes[0].band_names))
        return base + [f"{Path(p).stem}:{b}" for p, s in zip(spec.layers, self.layers) for b in s.band_names]

    def footprint_m(self, row: dict[str, Any] | None = None) -> float:
        """Chip side in metres: chip_m, chip_px native pixels of the first scene, or a georeferenced tile's size."""
        spec = self.spec
        if spec.chip_m is not None:
            return float(spec.chip_m)
        if self.scenes and spec.chip_px is not None:
            scene = self.scenes[0]
            geographic = scene.crs is not None and scene.crs.is_geographic
            return spec.chip_px * abs(scene.res[1]) * (M_PER_DEG if geographic else 1.0)
        if row is not None and IMAGE in row:
            size = tile_size_m(row[IMAGE], row.get(LAT, 0.0))
            if size is not None:
                return size
            raise GeocnnError(f"{row[IMAGE]}: the tile has no geotransform, so its ground size is unknown and "
                              "earth.layers / earth.label_raster cannot be read around it; set earth.chip_m (the "
                              "tile's side in metres)")
        raise GeocnnError("earth: set earth.chip_m (chip side in metres) or earth.chip_px (in native scene pixels)")

    def make(self, row: dict[str, Any]) -> list[Chip]:
        """The chips of one catalog row (several for an n x n grid), with labels and nodata fractions."""
        spec = self.spec
        if spec.files:
            image = read_image(row[IMAGE], spec.channels, spec.bands, spec.nodata)
            pixels = crop_resize(image.pixels, spec.crop, spec.out_px, source=str(row[IMAGE]))
            chips = [Chip(pixels, lat=float(row.get(LAT, np.nan)), lon=float(row.get(LON, np.nan)))]
        else:
            chips = []
            size = self.footprint_m(row)
            n = spec.per_sample
            points = [(row[LON], row[LAT])] if n == 1 else cluster_points(row[LON], row[LAT], spec.box_m, n)
            for k, (lon, lat) in enumerate(points):
                if self.mosaic is None:
                    raise GeocnnError(f"{self.source}: chips around points need scenes; list earth.scenes.")
                pixels, _ = self.mosaic.read(lon, lat, spec.out_px, size_m=size)
                chips.append(Chip(pixels, suffix="" if n == 1 else f"#{k}", lat=lat, lon=lon))
        return self._finish(row, chips)

    def make_rows(self, rows: list[dict[str, Any]], positions: Iterable[int]) -> Iterator[tuple[int, list[Chip]]]:
        """The chips of many rows as (row position, chips), each row once; errors name the catalog row.

        Rows of a mosaic of several scenes are read scene by scene (each scene opened once, the chips that fall in
        it read together, then closed), so rows come in no particular order; each row's chips are those
        :meth:`make` gives it. Otherwise rows come in order.
        """
        positions = list(positions)
        if self.spec.files or self.mosaic is None or len(self.mosaic) < 2:
            for i in positions:
                try:
                    yield i, self.make(rows[i])
                except GeocnnError as exc:
                    raise self._row_error(rows, i, exc) from None
            return
        spec, n = self.spec, self.spec.per_sample
        owner: list[tuple[int, int]] = []
        lons: list[float] = []
        lats: list[float] = []
        sizes: list[float] = []
        for i in positions:
            row = rows[i]
            try:
                size = self.footprint_m(row)
                points = [(row[LON], row[LAT])] if n == 1 else cluster_points(row[LON], row[LAT], spec.box_m, n)
            except GeocnnError as exc:
                raise self._row_error(rows, i, exc) from None
            for k, (lon, lat) in enumerate(points):
                owner.append((i, k))
                lons.append(float(lon))
                lats.append(float(lat))
                sizes.append(size)
        waiting: dict[int, list[Chip | None]] = {}
        for p, pixels, _ in self.mosaic.read_many(np.array(lons), np.array(lats), spec.out_px, np.array(sizes),
                                                  where=lambda p: self._row_prefix(rows, owner[p][0])):
            i, k = owner[p]
            chips = waiting.setdefault(i, [None] * (1 if n == 1 else n * n))
            chips[k] = Chip(pixels, suffix="" if n == 1 else f"#{k}", lat=lats[p], lon=lons[p])
            if all(c is not None for c in chips):
                del waiting[i]
                try:
                    yield i, self._finish(rows[i], [c for c in chips if c is not None])
                except GeocnnError as exc:
                    raise self._row_error(rows, i, exc) from None

    def _row_prefix(self, rows: list[dict[str, Any]], i: int) -> str:
        return f"{self.source}: row {i + 2} (id {rows[i][ID]!r})"

    def _row_error(self, rows: list[dict[str, Any]], i: int, exc: GeocnnError) -> GeocnnError:
        return GeocnnError(f"{self._row_prefix(rows, i)}: {exc}")

    def _finish(self, row: dict[str, Any], chips: list[Chip]) -> list[Chip]:
        """Layers appended, the label statistic and each chip's nodata fraction."""
        spec = self.spec
        if self.layers or self.label is not None:
            size = self.footprint_m(row)
            for chip in chips:
                if self.layers:
                    parts = [read_chip(layer, chip.lon, chip.lat, spec.out_px, size_m=size)[0]
                             for layer in self.layers]
                    chip.pixels = np.concatenate([chip.pixels.astype(np.float32), *parts], axis=0)
                if self.label is not None:
                    chip.label = label_statistic(self.label, chip.lon, chip.lat, spec.label_statistic, size_m=size)
        for chip in chips:
            if chip.pixels.dtype.kind == "f":
                chip.nodata = float(np.isnan(chip.pixels).any(axis=0).mean())
        return chips

    def no_usable_chips(self, lons: np.ndarray, lats: np.ndarray) -> str:
        """Why no chip could be used: points outside every scene, or scenes that are nodata where the points are."""
        limit = self.spec.max_nodata_fraction or 0.0
        if not self.scenes:
            return (f"{self.source}: every chip has more than {limit:.0%} nodata; check the tiles' nodata "
                    "(earth.nodata) or raise earth.max_nodata_fraction.")
        boxes = [transform_bounds(s.crs, "EPSG:4326", *s.bounds) if s.crs else None for s in self.scenes]
        inside = np.zeros(len(lons), bool)
        for b in boxes:
            if b is not None:
                inside |= (lons >= b[0]) & (lons <= b[2]) & (lats >= b[1]) & (lats <= b[3])
        where = "; ".join(f"{Path(s.paths[0]).name} covers lon {b[0]:.3f}..{b[2]:.3f}, lat {b[1]:.3f}..{b[3]:.3f}"
                          for s, b in list(zip(self.scenes, boxes))[:10] if b is not None)
        where += f"; and {len(self.scenes) - 10} more scenes" if len(self.scenes) > 10 else ""
        n_out = int((~inside).sum())
        if n_out == len(lons):
            return (f"{self.source}: all {len(lons)} chip centres lie outside every scene ({where}). Check the "
                    "survey's earth.lat_column/earth.lon_column (not swapped, in degrees) and earth.scenes.")
        return (f"{self.source}: every one of the {len(lons)} chips has more than {limit:.0%} nodata ({n_out} "
                f"centres outside every scene: {where}); the scenes are nodata where the points are. Check "
                "earth.scenes / earth.nodata, or raise earth.max_nodata_fraction.")


def tile_size_m(path: str, lat: float) -> float | None:
    """Ground side in metres of a georeferenced GeoTIFF tile (None for arrays and tiles without a geotransform)."""
    if not str(path).lower().endswith(TIFF_SUFFIXES):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a tile without a geotransform: answered below
        ds = rasterio.open(path)
    with ds:
        if ds.transform.is_identity or ds.crs is None:
            return None
        width = ds.width * abs(ds.res[0])
        if ds.crs.is_geographic:
            return width * metres_per_degree(lat)[0]
        return width * float(ds.crs.linear_units_factor[1])


def sample_points(spec: ChipSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random (lon, lat) points inside the first scene, 2 % away from its edges (stage-1 chips)."""
    with open_scene(spec.scenes[0], spec.bands, spec.nodata) as scene:
        left, bottom, right, top = scene.bounds
        rng = np.random.default_rng(seed)
        margin = 0.02
        xs = rng.uniform(left + margin * (right - left), right - margin * (right - left), n)
        ys = rng.uniform(bottom + margin * (top - bottom), top - margin * (top - bottom), n)
        lon, lat = warp(scene.crs, "EPSG:4326", xs.tolist(), ys.tolist())
    return np.asarray(lon), np.asarray(lat)


def chip_ids(sample: str, chips: list[Chip]) -> list[str]:
    """Store ids of a sample's chips: the sample id, or ``<id>#k`` for a grid."""
    return [f"{sample}{c.suffix}" for c in chips]


__all__ = ["Chip", "ChipSource", "ChipSpec", "ID", "chip_ids", "sample_points", "tile_size_m"]
