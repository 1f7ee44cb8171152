"""Mosaics of many scenes: footprints in STR-trees, each chip read from the scenes covering its point, opened lazily.

A mosaic reads a chip exactly as :func:`geocnn.data.sources.raster.read_chip` does over the whole scene list: the
scenes whose extent the chip touches, those holding the point first (in list order), and the first chip with the
least nodata is kept. The footprints only narrow which scenes are tried: one STR-tree per CRS holds the scenes'
extents in their own CRS, the points are transformed once per CRS, and the exact test is the reader's own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from rasterio.warp import transform
from rasterio.windows import Window

from geocnn.data.sources.raster import (
    WGS84,
    Scene,
    SceneInfo,
    best_chip,
    covering,
    metres_per_degree,
    metres_to_crs,
    nodata_fraction,
    open_scene,
)
from geocnn.errors import GeocnnError

INDEX_FROM = 8
"""Mosaics with more scenes than this narrow each chip's scenes with the footprint index (fewer: try them all)."""
MARGIN = 0.01
"""Relative margin around a chip's extent when querying footprints (the exact test follows)."""


@dataclass
class _Footprints:
    """The scenes of one CRS: their positions in the mosaic, extents in that CRS in an STR-tree, largest pixel."""

    crs: object
    positions: np.ndarray
    tree: "shapely.STRtree"
    res: tuple[float, float]


class Mosaic:
    """Many scenes read as one: grids known up front, files opened on demand (at most ``max_open`` at once).

    Opening validates every scene as :func:`open_scene` does (files, georeferencing, bands) and records its grid
    (:class:`SceneInfo`); the first ``max_open`` stay open. Use it as a context manager, or call ``close()``.
    """

    def __init__(self, sources: Sequence[str], bands: Sequence[str | int] | None = None,
                 nodata: float | None = None, max_open: int = 32) -> None:
        if not sources:
            raise GeocnnError("a mosaic needs at least one scene; list earth.scenes.")
        self.sources = [str(s) for s in sources]
        self.bands = list(bands) if bands is not None else None
        self.nodata = nodata
        self.max_open = max(1, max_open)
        self._open: OrderedDict[int, Scene] = OrderedDict()
        self.infos: list[SceneInfo] = []
        try:
            for i, source in enumerate(self.sources):
                scene = open_scene(source, self.bands, nodata)
                self.infos.append(scene.info(source))
                self._keep(i, scene)
        except BaseException:
            self.close()
            raise
        counts = {s.count for s in self.infos}
        if len(counts) > 1:
            detail = ", ".join(f"{s.paths[0]}: {s.count}" for s in self.infos)
            raise GeocnnError(f"mosaic scenes must have the same number of bands ({detail}). Select the same bands "
                              "in every scene.")
        indexed = len(self.infos) > INDEX_FROM
        self._footprints = _footprints(self.infos) if indexed else None
        self.opened = len(self.infos)
        """How many times a scene was opened (the first pass included): for tests and benchmarks."""

    def __len__(self) -> int:
        return len(self.infos)

    def __enter__(self) -> "Mosaic":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def count(self) -> int:
        """Bands per chip."""
        return self.infos[0].count

    def close(self) -> None:
        """Close every open scene (idempotent)."""
        while self._open:
            self._open.popitem(last=False)[1].close()

    def scene(self, i: int) -> Scene:
        """Scene ``i``, opened now unless still open (the least recently used one is closed beyond max_open)."""
        scene = self._open.get(i)
        if scene is not None:
            self._open.move_to_end(i)
            return scene
        scene = open_scene(self.sources[i], self.bands, self.nodata)
        self.opened += 1
        self._keep(i, scene)
        return scene

    def release(self, i: int) -> None:
        """Close scene ``i`` if it is open."""
        scene = self._open.pop(i, None)
        if scene is not None:
            scene.close()

    def open_count(self) -> int:
        """How many scenes are open now."""
        return len(self._open)

    def covering(self, lon: float, lat: float, size_m: float | None = None,
                 size_px: float | None = None) -> list[tuple[int, Window]]:
        """Scenes whose extent a chip touches, with its window in each, those holding the point first."""
        near = self.nearby(np.array([lon], float), np.array([lat], float), size_m, size_px)[0]
        return [(near[j], w) for j, w in covering([self.infos[i] for i in near], lon, lat, size_m, size_px)]

    def nearby(self, lons: np.ndarray, lats: np.ndarray, size_m: float | np.ndarray | None = None,
               size_px: float | None = None) -> list[list[int]]:
        """Per point, the scenes (positions, ascending) whose footprint a chip around it may touch (a superset)."""
        n = len(lons)
        if self._footprints is None:
            return [list(range(len(self.infos))) for _ in range(n)]
        found: list[set[int]] = [set() for _ in range(n)]
        for group in self._footprints:
            xs, ys = _to_crs(group.crs, lons, lats)
            hx, hy = _half_extent(group, lats, size_m, size_px)
            ok = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys) & np.isfinite(hx) & np.isfinite(hy))
            if not len(ok):
                continue
            boxes = shapely.box(xs[ok] - hx[ok], ys[ok] - hy[ok], xs[ok] + hx[ok], ys[ok] + hy[ok])
            points, hits = group.tree.query(boxes, predicate="intersects")
            for p, h in zip(ok[points], group.positions[hits]):
                found[p].add(int(h))
        return [sorted(f) for f in found]

    def read(self, lon: float, lat: float, out_px: int, size_m: float | None = None,
             size_px: float | None = None) -> tuple[np.ndarray, float]:
        """One chip and its nodata fraction, as :func:`read_chip` gives it over the whole mosaic."""
        candidates = ((self.scene(i), window) for i, window in self.covering(lon, lat, size_m, size_px))
        return best_chip(candidates, self.count, out_px)

    def read_many(self, lons: np.ndarray, lats: np.ndarray, out_px: int, size_m: float | np.ndarray,
                  where: Callable[[int], str] | None = None) -> Iterator[tuple[int, np.ndarray, float]]:
        """Chips of many points, scene by scene: each scene opened once, its chips read together, then closed.

        Every point gets the chip :meth:`read` gives it (a point touching several scenes keeps the first chip,
        in :func:`covering` order, with the least nodata); reads that cannot win are skipped.

        Args:
            lons, lats: the chip centres (EPSG:4326).
            out_px: chip side in pixels.
            size_m: chip footprint in metres, one for all or one per point.
            where: names point ``p`` in errors (e.g. its catalog row).

        Yields:
            (point position, chip (bands, out_px, out_px) float32, nodata fraction), each point once, as soon as
            every scene it touches is read (in no particular order).
        """
        if out_px < 1:
            raise GeocnnError(f"read_chip: out_px must be >= 1, not {out_px}.")
        lons, lats = np.asarray(lons, float), np.asarray(lats, float)
        sizes = np.broadcast_to(np.asarray(size_m, float), lons.shape)
        by_scene: dict[int, list[tuple[int, int, Window]]] = {}
        left = np.zeros(len(lons), int)
        for p, near in enumerate(self.nearby(lons, lats, sizes)):
            try:
                found = covering([self.infos[i] for i in near], float(lons[p]), float(lats[p]), float(sizes[p]))
            except GeocnnError as exc:
                raise _at(where, p, exc) from None
            if not found:
                yield p, np.full((self.count, out_px, out_px), np.nan, np.float32), 1.0
            for rank, (j, window) in enumerate(found):
                by_scene.setdefault(near[j], []).append((p, rank, window))
            left[p] = len(found)
        best: dict[int, tuple[np.ndarray, float, int]] = {}
        for i in sorted(by_scene):
            for p, rank, window in by_scene[i]:
                held = best.get(p)
                if held is None or held[1] > 0.0 or rank < held[2]:
                    try:
                        chip = self.scene(i).read(window, (out_px, out_px))
                    except GeocnnError as exc:
                        raise _at(where, p, exc) from None
                    frac = nodata_fraction(chip)
                    if held is None or (frac, rank) < (held[1], held[2]):
                        best[p] = (chip, frac, rank)
                left[p] -= 1
                if left[p] == 0:
                    chip, frac, _ = best.pop(p)
                    yield p, chip, frac
            self.release(i)

    def _keep(self, i: int, scene: Scene) -> None:
        self._open[i] = scene
        self._open.move_to_end(i)
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()


def _at(where: Callable[[int], str] | None, p: int, exc: GeocnnError) -> GeocnnError:
    return GeocnnError(f"{where(p)}: {exc}") if where else exc


def _footprints(infos: list[SceneInfo]) -> list[_Footprints]:
    """The scenes grouped by CRS, each group's extents (in that CRS) in an STR-tree."""
    groups: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        groups.setdefault(info.crs.to_wkt() if info.crs is not None else "", []).append(i)
    out = []
    for members in groups.values():
        boxes = []
        for i in members:
            t, w, h = infos[i].transform, infos[i].width, infos[i].height
            xs, ys = zip(*(t * corner for corner in ((0, 0), (w, 0), (0, h), (w, h))))
            boxes.append(shapely.box(min(xs), min(ys), max(xs), max(ys)))
        res = (max(abs(infos[i].res[0]) for i in members), max(abs(infos[i].res[1]) for i in members))
        out.append(_Footprints(infos[members[0]].crs, np.array(members), shapely.STRtree(boxes), res))
    return out


def _to_crs(crs: object, lons: np.ndarray, lats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:4326 points in ``crs``; NaN where they cannot be transformed (outside its domain)."""
    if crs is None:
        return np.full(len(lons), np.nan), np.full(len(lons), np.nan)
    if crs == WGS84:
        return lons.astype(float), lats.astype(float)
    valid = np.isfinite(lons) & np.isfinite(lats)
    xs, ys = np.full(len(lons), np.nan), np.full(len(lons), np.nan)
    if valid.any():
        try:
            tx, ty = transform(WGS84, crs, lons[valid].tolist(), lats[valid].tolist())
        except Exception:  # noqa: BLE001 - PROJ errors: fall back to one point at a time
            tx, ty = [], []
            for lon, lat in zip(lons[valid], lats[valid]):
                try:
                    a, b = transform(WGS84, crs, [lon], [lat])
                    tx.append(a[0])
                    ty.append(b[0])
                except Exception:  # noqa: BLE001 - this point is outside the CRS's domain
                    tx.append(np.nan)
                    ty.append(np.nan)
        xs[valid], ys[valid] = tx, ty
    return xs, ys


def _half_extent(group: _Footprints, lats: np.ndarray, size_m: float | np.ndarray | None,
                 size_px: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Half the chip's extent in the group's CRS units at each point, with a margin."""
    n = len(lats)
    if size_px is not None:
        hx = np.full(n, size_px * group.res[0] / 2)
        hy = np.full(n, size_px * group.res[1] / 2)
    else:
        sizes = np.broadcast_to(np.asarray(size_m, float), (n,)).astype(float)
        crs = group.crs
        if crs is not None and crs.is_geographic:  # type: ignore[attr-defined]
            ok = np.isfinite(lats) & (np.abs(np.nan_to_num(lats, nan=99.0)) <= 90)
            per = np.array([metres_per_degree(float(lat)) if good else (np.nan, np.nan)
                            for lat, good in zip(lats, ok)]).reshape(n, 2)
            hx, hy = sizes / per[:, 0] / 2, sizes / per[:, 1] / 2
        else:
            ux, uy = metres_to_crs(crs, 0.0, 1.0)  # type: ignore[arg-type]
            hx, hy = sizes * ux / 2, sizes * uy / 2
    pad = 1.0 + MARGIN
    return hx * pad + 1e-9, hy * pad + 1e-9


__all__ = ["INDEX_FROM", "Mosaic"]
