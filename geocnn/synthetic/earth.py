"""Synthetic Landsat-like scenes with night lights and survey clusters of known wealth, for demos and tests.

The Earth counterpart of :mod:`geocnn.synthetic.galaxies`: one call writes a 4-band daytime scene, a coarser
night-lights
raster, the hidden wealth field and a ``clusters.csv`` of survey points, all georeferenced in UTM zone 33N
around 15 E, 5 N. The night lights are exactly zero over about the poorer half of the survey clusters, while the daytime
scene still shows more buildings, metal roofs, roads and bare ground (and less vegetation) where people are
wealthier, so a model that reads daytime imagery (Jean et al. 2016) can rank the clusters that night lights
cannot.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.features import shapes
from rasterio.warp import transform as reproject_points
from rasterio.warp import transform_geom
from scipy.ndimage import gaussian_filter, maximum_filter, minimum_filter, uniform_filter, zoom

from geocnn.atomic import atomic_dir
from geocnn.errors import GeocnnError

FILES: dict[str, str] = {"scene": "scene.tif", "nightlights": "nightlights.tif", "wealth": "wealth.tif",
                         "clusters": "clusters.csv", "countries": "countries.geojson", "population": "population.tif"}
"""File name of each output of :func:`make_scene`, by the key of the returned dict."""

CLUSTER_COLUMNS: list[str] = ["cluster_id", "lat", "lon", "wealth", "country", "urban", "households"]
"""Columns of ``clusters.csv``, in order."""

BANDS: list[str] = ["blue", "green", "red", "nir"]
"""Band descriptions of ``scene.tif``, in band order."""

CRS = "EPSG:32633"
"""UTM zone 33N (WGS 84), the CRS of every raster."""

PIXEL_M = 30.0
"""Scene pixel size in metres (Landsat)."""

LIGHTS_FACTOR = 8
"""Night-light cells are LIGHTS_FACTOR x LIGHTS_FACTOR scene pixels (240 m); the grids share extent and CRS."""

CHIP_PX = 32
"""Chip side the cluster margin is counted in."""

CLUSTER_BOX_PX = 33
"""Side (px, ~1 km) of the box the hidden wealth is averaged over for a cluster's true wealth."""

REFLECTANCE_SCALE = 2.75e-5
REFLECTANCE_OFFSET = -0.2
"""Landsat Collection 2 Level-2 scaling: reflectance = DN * REFLECTANCE_SCALE + REFLECTANCE_OFFSET (also stored as
the bands' scale/offset). Valid pixels are therefore >= 7273 (zero reflectance); 0 is nodata."""

NODATA = 0
"""Nodata value of ``scene.tif``."""

LIGHTS_QUANTILE = 0.5
"""Night lights are zero in every cell whose mean hidden wealth is below this quantile of the clusters' true
(1 km mean) wealth, so about this share of the clusters sits in the dark."""

SURVEY_R2 = 0.8
"""Share of the variance of the clusters' survey wealth that is signal (the rest is sampling noise): the R2 a
perfect model of the 1 km mean of the hidden field could reach."""

MIN_SIZE_PX = 256
"""Smallest scene side; below it no country, town and cluster margin fit."""

MAX_COUNTRIES = 12

_SALT = 0xEA27  # keeps these random streams apart from other users of the same integer seed
_VERSION = 2  # bump when the output for the same arguments changes
_TAG = "GEOCNN_SYNTHETIC_EARTH"
_CENTRE_LONLAT = (15.0, 5.0)

# Surface reflectance spectra (blue, green, red, nir).
_WOOD = (0.030, 0.055, 0.035, 0.340)  # woodland / dense natural vegetation
_CROP = (0.040, 0.080, 0.050, 0.420)  # green crop
_FALLOW = (0.060, 0.090, 0.110, 0.260)  # dry grass, fallow
_BARE = (0.085, 0.120, 0.175, 0.240)  # ploughed field, bare laterite soil
_URBAN = (0.130, 0.150, 0.180, 0.210)  # compacted ground, concrete between buildings
_YARD = (0.100, 0.130, 0.180, 0.220)  # swept compound around a homestead
_METAL = (0.240, 0.260, 0.280, 0.300)  # metal (zinc) roof
_THATCH = (0.100, 0.125, 0.165, 0.215)  # thatch or mud roof
_ASPHALT = (0.090, 0.100, 0.110, 0.130)
_DIRT = (0.100, 0.150, 0.240, 0.280)  # dirt track, laterite road
_WATER = (0.060, 0.050, 0.030, 0.015)
_HAZE = (0.030, 0.020, 0.012, 0.004)  # path radiance at full haze
_NOISE = (0.004, 0.004, 0.004, 0.006)  # sensor noise (reflectance units)

# Building footprints (rows, cols) and their shares; mean area 2.4 px.
_FOOTPRINTS = ((1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3))
_FOOTPRINT_P = (0.45, 0.15, 0.15, 0.12, 0.05, 0.05, 0.03)


def _spec(values: tuple[float, ...]) -> np.ndarray:
    """A spectrum as a (4, 1, 1) float32 array that broadcasts over (4, rows, cols)."""
    return np.asarray(values, np.float32)[:, None, None]


def _rng(seed: int, part: int) -> np.random.Generator:
    """Independent random stream ``part`` of a scene (changing one layer does not shift the others)."""
    return np.random.default_rng([_SALT, seed, part])


def _check_int(name: str, value: object, lo: int, hint: str) -> int:
    """Validate an integer argument >= lo."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise GeocnnError(f"{name} must be an integer >= {lo}, got {value!r}; pass e.g. {name}={hint}.")
    return int(value)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise on an n x n grid, correlation length ``sigma`` px, mean 0, SD 1.

    Large scales are filtered on a coarser grid and upsampled (bilinear), so the cost does not grow with sigma.
    """
    f = max(1, int(sigma // 4))
    m = -(-n // f) + 2
    coarse = gaussian_filter(rng.standard_normal((m, m)).astype(np.float32), sigma / f, mode="wrap")
    field = zoom(coarse, f, order=1, grid_mode=True, mode="nearest")[:n, :n] if f > 1 else coarse[:n, :n]
    field = field - field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, a smooth cubic in between."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _hash_uniform(a: np.ndarray, b: np.ndarray, key: int) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on the integer pairs (a, b) and ``key`` (a splitmix-style hash)."""
    with np.errstate(over="ignore"):
        h = a.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= b.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h ^= np.uint64(key & 0xFFFFFFFFFFFFFFFF)
        for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            h ^= h >> np.uint64(33)
            h *= np.uint64(mult)
        h ^= h >> np.uint64(33)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre column (x) and row (y) coordinates, shape (n, n) each."""
    ax = np.arange(n, dtype=np.float32)
    return np.meshgrid(ax, ax)


def _margin(n: int) -> int:
    """Distance (px) every cluster keeps from the scene edge and from nodata: 8 chips, at most a quarter side."""
    return min(8 * CHIP_PX, n // 4)


# --------------------------------------------------------------------------------------------- layers


def _valid_mask(rng: np.random.Generator, n: int) -> np.ndarray:
    """Where the scene has data: all but a cut corner (ragged diagonal edge) and a thin strip along one side."""
    x, y = _grid(n)
    corner = int(rng.integers(4))
    cx = x if corner in (0, 2) else (n - 1) - x
    cy = y if corner in (0, 1) else (n - 1) - y
    leg = n * float(rng.uniform(0.12, 0.2))
    ragged = 2.0 * np.sin(cx * 0.9 + float(rng.uniform(0, 6.3)))
    valid = cx + cy + ragged >= leg
    strip = max(2, n // 128)
    side = int(rng.integers(4))
    edge = (x, y, (n - 1) - x, (n - 1) - y)[side]
    return valid & (edge >= strip)


def _countries(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Country label image (int8, 0..k-1): k equal wedges around the scene centre, randomly rotated (the Voronoi
    cells of k points on a circle), so each country is a convex region reaching the centre of the cluster area."""
    x, y = _grid(n)
    c = 0.5 * (n - 1)
    rot = float(rng.uniform(0, 2 * math.pi))
    if k == 1:
        return np.zeros((n, n), np.int8)
    ang = np.mod(np.arctan2(y - c, x - c) - rot, 2 * math.pi)
    return np.minimum((ang * (k / (2 * math.pi))).astype(np.int8), k - 1)


def _towns(rng: np.random.Generator, n: int) -> list[tuple[float, float, float]]:
    """Town centres and radii (x, y, sigma px): about one per 125 km2 (at least two), half in the cluster area."""
    m = _margin(n)
    count = max(2, round(n * n / 140_000))
    inner = max(1, count // 2)
    towns: list[tuple[float, float, float]] = []
    for i in range(count):
        lo, hi = (m + 10, n - m - 10) if i < inner else (20, n - 20)
        for _ in range(200):
            x, y = (float(v) for v in rng.uniform(lo, hi, 2))
            if all(math.hypot(x - tx, y - ty) > 0.18 * n for tx, ty, _ in towns):
                break
        sigma = float(rng.uniform(9.0, 16.0)) * (1.5 if i == 0 else 1.0)
        towns.append((x, y, sigma))
    return towns


def _town_field(n: int, towns: list[tuple[float, float, float]]) -> np.ndarray:
    """Town intensity in [0, 1]: slightly elongated Gaussian cores (the max over towns)."""
    x, y = _grid(n)
    field = np.zeros((n, n), np.float32)
    for tx, ty, s in towns:
        r = int(4 * s)
        y0, y1, x0, x1 = max(0, int(ty) - r), min(n, int(ty) + r), max(0, int(tx) - r), min(n, int(tx) + r)
        dx, dy = x[y0:y1, x0:x1] - tx, y[y0:y1, x0:x1] - ty
        blob = np.exp(-(dx * dx / (1.3 * s * s) + dy * dy / (0.8 * s * s)) * 0.5)
        field[y0:y1, x0:x1] = np.maximum(field[y0:y1, x0:x1], blob)
    return field


def _uniform_ranks(raw: np.ndarray) -> np.ndarray:
    """Ranks of the pixels of ``raw`` mapped to (0, 1): a uniform field that keeps its order."""
    order = np.argsort(raw, axis=None, kind="stable")
    ranks = np.empty(raw.size, np.float32)
    ranks[order] = (np.arange(raw.size, dtype=np.float32) + 0.5) / raw.size
    return ranks.reshape(raw.shape)


def _wealth(rng: np.random.Generator, n: int, town: np.ndarray, countries: np.ndarray, k: int) -> np.ndarray:
    """Hidden wealth in [0, 1]: smooth two-scale noise with a small step per country, lifted towards 1 in towns
    (so every town is wealthy whatever the background), rank-mapped so that its pixel distribution is uniform."""
    raw = _smooth_noise(rng, n, max(45.0, n / 11)) + 0.6 * _smooth_noise(rng, n, max(20.0, n / 30))
    offsets = rng.normal(0.0, 0.25, k).astype(np.float32)
    raw += gaussian_filter(offsets[countries], 3.0)
    background = _uniform_ranks(raw)
    return _uniform_ranks(1.0 - (1.0 - background) * (1.0 - 0.95 * town) ** 3)


def _polyline(rng: np.random.Generator, a: tuple[float, float], b: tuple[float, float], wiggle: float,
              step: float = 6.0, bend_px: float = 60.0) -> np.ndarray:
    """Points (m, 2) of a gently meandering line from a to b: the perpendicular offset is noise smoothed over
    ``bend_px`` along the line, scaled to at most ``wiggle`` px and pinned to 0 at both ends."""
    (x0, y0), (x1, y1) = a, b
    length = math.hypot(x1 - x0, y1 - y0)
    m = max(2, int(length / step) + 1)
    t = np.linspace(0.0, 1.0, m)
    pad = int(2 * bend_px / step) + 2
    off = gaussian_filter(rng.standard_normal(m + 2 * pad), bend_px / step / 2, mode="nearest")[pad:pad + m]
    off = off / (np.abs(off).max() + 1e-9) * wiggle * np.sin(math.pi * t) ** 0.5
    nx, ny = -(y1 - y0) / max(length, 1e-9), (x1 - x0) / max(length, 1e-9)
    return np.stack([x0 + t * (x1 - x0) + off * nx, y0 + t * (y1 - y0) + off * ny], axis=1)


def _segments(points: list[np.ndarray]) -> np.ndarray:
    """Segments (s, 4) = x0, y0, x1, y1 of consecutive points of each polyline."""
    return np.concatenate([np.concatenate([p[:-1], p[1:]], axis=1) for p in points if len(p) > 1], axis=0)


def _rasterise(n: int, seg: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Max of ``value`` over the pixels each segment passes through (dense sampling along each segment)."""
    out = np.zeros((n, n), np.float32)
    if len(seg) == 0:
        return out
    x0, y0, x1, y1 = seg.T
    steps = np.ceil(np.hypot(x1 - x0, y1 - y0) * 2.0).astype(np.int64) + 1
    idx = np.repeat(np.arange(len(seg)), steps)
    start = np.concatenate([[0], np.cumsum(steps)[:-1]])
    t = (np.arange(int(steps.sum())) - start[idx]) / np.maximum(steps[idx] - 1, 1)
    xs = np.rint(x0[idx] + t * (x1 - x0)[idx]).astype(np.int64)
    ys = np.rint(y0[idx] + t * (y1 - y0)[idx]).astype(np.int64)
    ok = (xs >= 0) & (xs < n) & (ys >= 0) & (ys < n)
    np.maximum.at(out, (ys[ok], xs[ok]), value[idx][ok].astype(np.float32))
    return out


def _water(rng: np.random.Generator, n: int, towns: list[tuple[float, float, float]]) -> np.ndarray:
    """Water coverage in [0, 1]: a meandering river across the scene and a lake away from the towns."""
    side = int(rng.integers(2))
    a, b = sorted(rng.uniform(0.1 * n, 0.9 * n, 2))
    ends = (((a, -5.0), (b, n + 5.0)) if side == 0 else ((-5.0, a), (n + 5.0, b)))
    river = _polyline(rng, ends[0], ends[1], wiggle=0.06 * n, step=3.0, bend_px=40.0)
    core = _rasterise(n, _segments([river]), np.ones(len(river) - 1)) > 0
    width = 3 if n >= 512 else 2
    water = maximum_filter(core, size=width)
    x, y = _grid(n)
    for _ in range(100):
        lx, ly = (float(v) for v in rng.uniform(0.1 * n, 0.9 * n, 2))
        if all(math.hypot(lx - tx, ly - ty) > 4 * s + 0.06 * n for tx, ty, s in towns):
            break
    radius = 0.035 * n
    shape = np.hypot(x - lx, (y - ly) * 1.4) / radius + 0.35 * _smooth_noise(rng, n, 6.0)
    water |= shape < 1.0
    return np.clip(gaussian_filter(water.astype(np.float32), 0.6), 0.0, 1.0)


def _roads(rng: np.random.Generator, n: int, wealth: np.ndarray, town: np.ndarray,
           towns: list[tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Paved and dirt road coverage in [0, 1].

    Main roads join the towns (a spanning tree) and two roads cross the scene; they are paved where the area
    is wealthier. Tracks are short straight lines whose density rises with wealth and which are paved only in
    wealthy places. Towns get a street grid.
    """
    # Main roads: spanning tree over the towns (Prim) plus two through roads.
    lines = []
    pts = [(tx, ty) for tx, ty, _ in towns]
    done, todo = [0], list(range(1, len(pts)))
    while todo:
        i, j = min(((i, j) for i in done for j in todo), key=lambda p: math.dist(pts[p[0]], pts[p[1]]))
        lines.append(_polyline(rng, pts[i], pts[j], wiggle=0.04 * math.dist(pts[i], pts[j])))
        done.append(j)
        todo.remove(j)
    for k in range(2):
        tx, ty = pts[k % len(pts)]
        ang = float(rng.uniform(0, math.pi))
        dx, dy = math.cos(ang) * 2 * n, math.sin(ang) * 2 * n
        lines.append(_polyline(rng, (tx - dx, ty - dy), (tx + dx, ty + dy), wiggle=0.03 * n, step=8.0))
    main = _rasterise(n, _segments(lines), np.full(sum(len(p) - 1 for p in lines), 0.85))
    main = np.maximum(maximum_filter(main, size=2), 0.35 * maximum_filter(main, size=4))

    # Tracks: density rises with wealth; each a short straight segment of random direction.
    density = (0.25 + 2.0 * wealth * wealth) * (1.0 / 900.0)
    starts = np.flatnonzero(rng.random((n, n), dtype=np.float32) < density)
    sy, sx = (starts // n).astype(np.float64), (starts % n).astype(np.float64)
    ang = rng.uniform(0, math.pi, len(starts))
    length = rng.uniform(8.0, 40.0, len(starts))
    seg = np.stack([sx, sy, sx + np.cos(ang) * length, sy + np.sin(ang) * length], axis=1)
    tracks = _rasterise(n, seg, rng.uniform(0.35, 0.6, len(starts)))

    # Town street grids.
    x, y = _grid(n)
    streets = np.zeros((n, n), np.float32)
    for tx, ty, s in towns:
        th = float(rng.uniform(0, math.pi / 2))
        spacing = float(rng.uniform(5.0, 8.0))
        u = (x - tx) * math.cos(th) + (y - ty) * math.sin(th)
        v = (y - ty) * math.cos(th) - (x - tx) * math.sin(th)
        on = (np.mod(u, spacing) < 1.0) | (np.mod(v, spacing) < 1.0)
        streets = np.maximum(streets, np.where(on & (np.hypot(u, v) < 2.5 * s), 0.6, 0.0).astype(np.float32))
    streets *= town > 0.25

    paved_main = _smoothstep(wealth, 0.3, 0.45)
    paved_minor = _smoothstep(wealth, 0.6, 0.9)
    paved = np.maximum(main * paved_main, np.maximum(tracks, streets) * paved_minor)
    dirt = np.maximum(main * (1 - paved_main), np.maximum(tracks, streets) * (1 - paved_minor))
    return paved.astype(np.float32), dirt.astype(np.float32)


def _plots(rng: np.random.Generator, n: int, countries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two per-field uniforms (state, brightness) for a patchwork of strip fields, oriented per country.

    Fields are rows of random height (2-6 px) along a rotated axis, cut into plots of random width (2-7 px,
    one width per row): the uniforms are hashes of (row, plot), so every pixel of a plot shares them.
    """
    x, y = _grid(n)
    u1 = np.empty((n, n), np.float64)
    u2 = np.empty((n, n), np.float64)
    span = 1.5 * n
    for c in range(k):
        sel = countries == c
        th = float(rng.uniform(0, math.pi))
        px, py = x[sel] - 0.5 * n, y[sel] - 0.5 * n
        u = px * math.cos(th) + py * math.sin(th)
        v = py * math.cos(th) - px * math.sin(th)
        heights = rng.integers(2, 7, int(span) + 2)
        edges = np.cumsum(heights) - span
        row = np.searchsorted(edges, v)
        width = rng.uniform(2.0, 7.0, len(edges) + 1)
        offset = rng.uniform(0.0, 7.0, len(edges) + 1)
        col = np.floor((u + offset[row]) / width[row]).astype(np.int64)
        key = int(rng.integers(2**62))
        u1[sel] = _hash_uniform(row, col, key)
        u2[sel] = _hash_uniform(row, col, key ^ 0x5DEECE66D)
    return u1.astype(np.float32), u2.astype(np.float32)


def _buildings(rng: np.random.Generator, n: int, wealth: np.ndarray, town: np.ndarray, roads: np.ndarray,
               water: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Building coverage and roof type (1 = metal, 0 = thatch/mud), brightness folded into the coverage.

    Buildings are 1x1 to 3x3 px rectangles dropped as a Poisson process whose density rises smoothly with
    wealth (also across the poorest half), is much higher in towns, higher near roads and clumped into hamlets.
    The chance of a metal roof rises with wealth from 8% to 93%.
    """
    hamlets = np.exp(0.6 * _smooth_noise(rng, n, 4.0) - 0.18)
    near_road = maximum_filter(roads > 0.2, size=7)
    cover = (0.012 + 0.2 * wealth * (1.0 - 0.45 * wealth)) * hamlets * (1.0 + 0.5 * near_road) / 1.25
    cover = cover + 0.1 * _smoothstep(wealth, 0.9, 1.0) + 0.4 * _smoothstep(town, 0.25, 0.75)
    p = np.clip(cover / 2.4, 0.0, 0.4) * (water < 0.05)
    centres = np.flatnonzero(rng.random((n, n), dtype=np.float32) < p)
    w = wealth.ravel()[centres]
    metal = rng.random(len(centres)) < 0.08 + 0.85 * w
    bright = rng.uniform(0.75, 1.15, len(centres))
    value = (bright + 2.0 * metal).astype(np.float32)  # metal wins where footprints overlap
    kind = rng.choice(len(_FOOTPRINTS), size=len(centres), p=_FOOTPRINT_P)
    out = np.zeros((n, n), np.float32)
    for i, (h, wd) in enumerate(_FOOTPRINTS):
        layer = np.zeros(n * n, np.float32)
        sel = kind == i
        layer[centres[sel]] = value[sel]
        layer = layer.reshape(n, n)
        if (h, wd) != (1, 1):
            layer = maximum_filter(layer, size=(h, wd))
        out = np.maximum(out, layer)
    is_metal = (out >= 2.0).astype(np.float32)
    bright = out - 2.0 * is_metal
    coverage = np.where(out > 0, (0.7 + 0.25 * wealth) * bright, 0.0).astype(np.float32)
    return coverage * (water < 0.05), is_metal


def _render(seed: int, n: int, valid: np.ndarray, wealth: np.ndarray, town: np.ndarray, water: np.ndarray,
            countries: np.ndarray, k: int, towns: list[tuple[float, float, float]]) -> np.ndarray:
    """The scene as uint16 DN (4, n, n), Landsat C2 L2 scaling, nodata 0 outside ``valid``."""
    paved, dirt = _roads(_rng(seed, 11), n, wealth, town, towns)
    building, metal = _buildings(_rng(seed, 12), n, wealth, town, np.maximum(paved, dirt), water)
    u_state, u_bright = _plots(_rng(seed, 13), n, countries, k)
    rng = _rng(seed, 14)

    # Fields and natural vegetation: more woodland where poor, more bare ground where wealthier.
    p_wood = 0.5 * (1.0 - wealth)
    state = ((u_state >= p_wood).astype(np.int8) + (u_state >= p_wood + 0.28) + (u_state >= p_wood + 0.40))
    table = np.stack([_WOOD, _CROP, _FALLOW, _BARE], axis=1).astype(np.float32)  # (4 bands, 4 states)
    refl = table[:, state]
    moist = 1.0 + 0.08 * _smooth_noise(rng, n, 60.0)
    texture = 1.0 + 0.1 * gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), 0.7)  # ~4% grain
    canopy = 1.0 + np.where(state == 0, 0.10, 0.0) * rng.standard_normal((n, n), dtype=np.float32)
    refl *= (0.85 + 0.3 * u_bright) * texture * canopy
    veg = (state <= 1).astype(np.float32)
    refl[3] *= 1.0 + (moist - 1.0) * (0.5 + veg)
    refl[:3] *= 1.0 - 0.5 * (moist - 1.0) * veg

    def blend(cov: np.ndarray, spectrum: np.ndarray | tuple[float, ...]) -> None:
        s = _spec(spectrum) if isinstance(spectrum, tuple) else spectrum
        refl[...] = refl * (1.0 - cov) + cov * s

    blend(0.25 * wealth, _BARE)  # sparser canopy, cleared ground: greenness falls smoothly with wealth
    urban = np.clip(1.6 * town - 0.4, 0.0, 0.85) * (1.0 + 0.1 * texture - 0.1)
    blend(urban.astype(np.float32), _URBAN)
    yard = (maximum_filter(building > 0, size=3) & (building == 0)).astype(np.float32) * 0.35
    blend(yard, _YARD)
    blend(dirt, _DIRT)
    blend(paved, _ASPHALT)
    roof = _spec(_METAL) * metal + _spec(_THATCH) * (1.0 - metal)
    blend(np.minimum(building, 1.0), roof)
    turbid = _spec(_WATER) * (1.0 + 0.15 * _smooth_noise(rng, n, 20.0))
    blend(water, turbid)

    haze = 0.2 + 0.8 * _smoothstep(_smooth_noise(rng, n, 150.0), -2.0, 2.0)
    refl = refl * (1.0 - 0.05 * haze) + _spec(_HAZE) * haze
    noise = rng.standard_normal(refl.shape, dtype=np.float32)
    refl += noise * (_spec(_NOISE) + 0.01 * refl)

    dn = np.rint((np.clip(refl, -0.19, 1.5) - REFLECTANCE_OFFSET) / REFLECTANCE_SCALE)
    dn = np.clip(dn, 1, 65535).astype(np.uint16)
    dn[:, ~valid] = NODATA
    return dn


def _nightlights(rng: np.random.Generator, wealth: np.ndarray, town: np.ndarray, threshold: float) -> np.ndarray:
    """Night-light radiance (nW/cm2/sr) on the coarse grid: 0 in cells whose mean wealth is below ``threshold``,
    above it rising (convex) with wealth and much brighter in towns, blurred and with multiplicative noise."""
    f = LIGHTS_FACTOR
    m = wealth.shape[0] // f
    cell_w = wealth.reshape(m, f, m, f).mean(axis=(1, 3))
    cell_t = town.reshape(m, f, m, f).mean(axis=(1, 3))
    lit = cell_w >= threshold
    s = np.clip((cell_w - threshold) / max(1.0 - threshold, 1e-6), 0.0, 1.0)
    raw = np.where(lit, 0.4 + 12.0 * s ** 1.6 + 45.0 * cell_t ** 1.5, 0.0)
    blurred = gaussian_filter(raw, 0.8, mode="nearest")
    noisy = blurred * np.exp(rng.normal(0.0, 0.2, blurred.shape))
    return np.where(lit, np.maximum(noisy, 0.05), 0.0).astype(np.float32)


def _clusters(rng: np.random.Generator, n: int, n_clusters: int, k: int, valid: np.ndarray, wealth: np.ndarray,
              town: np.ndarray, water: np.ndarray, countries: np.ndarray) -> dict[str, np.ndarray]:
    """Survey clusters: pixel positions, true (1 km mean) and survey wealth, country, urban flag, households.

    Each country gets an equal share; inside it, points are drawn without replacement (Gumbel top-k) from the
    pixels at least :func:`_margin` from nodata and the edge and away from water, with weight 1 + 20 x (town core)
    intensity, so towns are over-sampled as in stratified surveys.
    """
    m = _margin(n)
    ok = minimum_filter(valid, size=2 * m + 1, mode="constant", cval=False)
    ok &= minimum_filter(water < 0.05, size=11, mode="nearest")
    weight = 1.0 + 20.0 * _smoothstep(town, 0.3, 0.6)
    keys = np.log(weight) - np.log(-np.log(rng.random((n, n))))
    counts = [n_clusters // k + (1 if c < n_clusters % k else 0) for c in range(k)]
    picked = []
    for c in range(k):
        cand = np.flatnonzero((ok & (countries == c)).ravel())
        if len(cand) < counts[c]:
            raise GeocnnError(f"size_px={n} leaves too little room for {counts[c]} clusters per country; "
                              f"use a larger size_px or fewer n_clusters / n_countries.")
        top = cand[np.argpartition(-keys.ravel()[cand], counts[c] - 1)[:counts[c]]]
        picked.append(np.sort(top))
    flat = np.concatenate(picked)
    flat = flat[rng.permutation(len(flat))]
    row, col = flat // n, flat % n
    box_w = uniform_filter(wealth, size=CLUSTER_BOX_PX, mode="nearest")
    box_t = uniform_filter(town, size=CLUSTER_BOX_PX, mode="nearest")
    true = box_w[row, col].astype(np.float64)
    households = rng.integers(15, 31, len(flat))
    inv = 1.0 / households
    noise_var = true.var() * (1.0 - SURVEY_R2) / SURVEY_R2 * inv / inv.mean()
    survey = true + rng.standard_normal(len(flat)) * np.sqrt(noise_var)
    return {"row": row + rng.uniform(-0.5, 0.5, len(flat)), "col": col + rng.uniform(-0.5, 0.5, len(flat)),
            "true": true, "wealth": survey, "country": countries[row, col].astype(np.int64),
            "urban": (box_t[row, col] >= 0.35).astype(np.int64), "households": households}


# --------------------------------------------------------------------------------------------- output


def _transform(n: int) -> Affine:
    """Affine transform of an n x n, 30 m grid centred near 15 E, 5 N in UTM 33N (corners on 30 m multiples)."""
    xs, ys = reproject_points("EPSG:4326", CRS, [_CENTRE_LONLAT[0]], [_CENTRE_LONLAT[1]])
    cx, cy = round(xs[0] / PIXEL_M) * PIXEL_M, round(ys[0] / PIXEL_M) * PIXEL_M
    half = (n // 2) * PIXEL_M
    return Affine(PIXEL_M, 0.0, cx - half, 0.0, -PIXEL_M, cy + half)


def _params(n: int, n_clusters: int, k: int, seed: int) -> str:
    """The generator arguments as stored in the scene's metadata (to recognise a complete, matching set)."""
    return f"version={_VERSION} size_px={n} n_clusters={n_clusters} n_countries={k} seed={seed}"


def _write_raster(path: Path, data: np.ndarray, transform: Affine, nodata: float | None, descriptions: list[str],
                  tiled: bool, tags: dict[str, str] | None = None, scale: float | None = None,
                  offset: float | None = None) -> None:
    """A deflate-compressed GeoTIFF (bands, rows, cols) in :data:`CRS`."""
    count, rows, cols = data.shape
    profile = {"driver": "GTiff", "width": cols, "height": rows, "count": count, "dtype": data.dtype.name,
               "crs": CRS, "transform": transform, "nodata": nodata, "compress": "deflate",
               "predictor": 3 if data.dtype.kind == "f" else 2}
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions, start=1):
            dst.set_band_description(i, d)
        if scale is not None:
            dst.scales = (scale,) * count
            dst.offsets = (offset or 0.0,) * count
        if tags:
            dst.update_tags(**tags)


def _population(rng: np.random.Generator, town: np.ndarray, valid: np.ndarray, factor: int) -> np.ndarray:
    """Persons per coarse cell (float32): a rural base with noise, dense in towns, 0 outside the valid scene."""
    n = town.shape[0] // factor
    block = lambda a: a.reshape(n, factor, n, factor).mean(axis=(1, 3))  # noqa: E731
    density = 40.0 * rng.lognormal(0.0, 0.5, (n, n)) + 4000.0 * block(town.astype(np.float64))
    return (density * block(valid.astype(np.float64))).astype(np.float32)


def _country_polygons(countries: np.ndarray, valid: np.ndarray, affine: Affine) -> dict:
    """The countries as a GeoJSON FeatureCollection in EPSG:4326 (``country`` C01..., as in clusters.csv), clipped
    to the valid part of the scene: admin units for aggregating maps."""
    features = []
    labels = np.where(valid, countries.astype(np.int16), -1)
    for geom, value in shapes(labels, mask=valid, transform=affine, connectivity=4):
        features.append({"type": "Feature", "properties": {"country": f"C{int(value) + 1:02d}"},
                         "geometry": transform_geom(CRS, "EPSG:4326", geom)})
    merged: dict[str, dict] = {}
    for feat in features:  # a country split by the nodata corner becomes one MultiPolygon
        name = feat["properties"]["country"]
        rings = [feat["geometry"]["coordinates"]]
        if name in merged:
            merged[name]["geometry"]["coordinates"] += rings
        else:
            merged[name] = {"type": "Feature", "properties": {"country": name},
                            "geometry": {"type": "MultiPolygon", "coordinates": rings}}
    return {"type": "FeatureCollection", "features": [merged[k] for k in sorted(merged)]}


def _is_complete(paths: dict[str, Path], params: str) -> bool:
    """True when every output exists and the scene was written by the same generator arguments."""
    if not all(p.is_file() for p in paths.values()):
        return False
    try:
        with rasterio.open(paths["scene"]) as ds:
            return ds.tags().get(_TAG) == params
    except Exception:  # noqa: BLE001 - an unreadable scene is an incomplete set
        return False


def make_scene(folder: str | Path, size_px: int = 1024, n_clusters: int = 300, n_countries: int = 4,
               seed: int = 0) -> dict[str, Path]:
    """Write a synthetic satellite scene, night lights, hidden wealth and survey clusters into ``folder``.

    The folder is built beside itself and renamed into place when complete. If it already holds a complete set
    made with the same arguments nothing is regenerated; a set made with other arguments is replaced. A folder
    holding anything else is never touched. The same arguments give byte-identical files.

    What the scene contains (30 m pixels, size_px x size_px, centred near 15 E, 5 N):
        a hidden wealth field (smooth multi-scale noise plus a few towns, uniform in [0, 1]); strip fields and
        woodland (woodland dominates poor areas, bare ground grows with wealth); buildings (1-3 px rectangles,
        density and metal-roof share rising smoothly with wealth, clumped into hamlets, dense in towns, with
        swept yards); main roads between towns (paved where wealthier), tracks (denser and paved where
        wealthier) and town street grids; a river and a lake; slight haze; sensor noise; a nodata corner and
        edge strip.

    Args:
        folder: output folder (its parent is created if missing).
        size_px: scene side in pixels, a multiple of :data:`LIGHTS_FACTOR` and at least :data:`MIN_SIZE_PX`.
        n_clusters: number of survey clusters, at least 3 per country.
        n_countries: number of countries (wedge-shaped regions around the scene centre), 1 to 12.
        seed: non-negative integer seed.

    Returns:
        Paths by key (:data:`FILES`):
        ``scene``: ``scene.tif``, uint16 (blue, green, red, nir), Landsat C2 L2 scaling (:data:`REFLECTANCE_SCALE`,
        :data:`REFLECTANCE_OFFSET`, also set as band scale/offset), nodata 0, EPSG:32633, tiled 256, deflate;
        ``nightlights``: ``nightlights.tif``, float32 radiance on 240 m cells (same extent), exactly 0 in every
        cell whose mean hidden wealth is below the :data:`LIGHTS_QUANTILE` quantile of the clusters' true
        wealth; ``wealth``: ``wealth.tif``, the hidden field (float32, scene grid);
        ``clusters``: ``clusters.csv`` with :data:`CLUSTER_COLUMNS`: ``cluster_id`` (1..n), ``lat``/``lon``
        (EPSG:4326), ``wealth`` (the field averaged over a ~1 km box plus survey noise, so that a perfect model
        of the 1 km mean reaches R2 about :data:`SURVEY_R2`; noise variance inversely proportional to
        ``households``), ``country`` (``C01``...), ``urban`` (0/1: inside a town), ``households`` (15-30);
        ``countries``: ``countries.geojson``, the country regions as (Multi)Polygons in EPSG:4326 with a
        ``country`` property (admin units to aggregate maps over); ``population``: ``population.tif``, float32
        persons per 240 m cell (the night-light grid), dense in towns, 0 outside the valid scene.
        Every cluster is at least 8 chips of 32 px (at most a quarter of the side) from the edge and nodata.

    Raises:
        GeocnnError: for invalid arguments, a folder that is a file or holds other files.
    """
    n = _check_int("size_px", size_px, MIN_SIZE_PX, "1024")
    if n % LIGHTS_FACTOR:
        raise GeocnnError(f"size_px must be a multiple of {LIGHTS_FACTOR} (the night-light cell), got {n}; "
                          f"pass e.g. size_px={n - n % LIGHTS_FACTOR + LIGHTS_FACTOR}.")
    k = _check_int("n_countries", n_countries, 1, "4")
    if k > MAX_COUNTRIES:
        raise GeocnnError(f"n_countries must be at most {MAX_COUNTRIES}, got {k}.")
    n_clusters = _check_int("n_clusters", n_clusters, 3 * k, str(max(300, 3 * k)))
    seed = _check_int("seed", seed, 0, "0")

    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise GeocnnError(f"output folder {out} is an existing file; pass a folder path.")
    paths = {key: out / name for key, name in FILES.items()}
    params = _params(n, n_clusters, k, seed)
    if _is_complete(paths, params):
        return paths
    if out.exists():
        ours = tuple(FILES.values())
        foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(ours))
        if foreign:
            raise GeocnnError(f"{out} holds files that are not part of a synthetic scene ({', '.join(foreign[:5])}); "
                              f"pass a new or empty folder for make_scene.")

    countries = _countries(_rng(seed, 1), n, k)
    towns = _towns(_rng(seed, 2), n)
    town = _town_field(n, towns)
    wealth = _wealth(_rng(seed, 3), n, town, countries, k)
    valid = _valid_mask(_rng(seed, 4), n)
    water = _water(_rng(seed, 10), n, towns)
    scene = _render(seed, n, valid, wealth, town, water, countries, k, towns)
    cl = _clusters(_rng(seed, 5), n, n_clusters, k, valid, wealth, town, water, countries)
    threshold = float(np.quantile(cl["true"], LIGHTS_QUANTILE))
    lights = _nightlights(_rng(seed, 6), wealth, town, threshold)

    affine = _transform(n)
    xs = affine.c + (cl["col"] + 0.5) * affine.a
    ys = affine.f + (cl["row"] + 0.5) * affine.e
    lons, lats = reproject_points(CRS, "EPSG:4326", list(xs), list(ys))
    tags = {_TAG: params, "lights_threshold": f"{threshold:.6f}"}
    with atomic_dir(out) as tmp:
        _write_raster(tmp / FILES["scene"], scene, affine, NODATA, BANDS, True, tags=tags,
                      scale=REFLECTANCE_SCALE, offset=REFLECTANCE_OFFSET)
        f = LIGHTS_FACTOR
        coarse = Affine(affine.a * f, 0.0, affine.c, 0.0, affine.e * f, affine.f)
        _write_raster(tmp / FILES["nightlights"], lights[None], coarse, None, ["radiance"], False,
                      tags={"units": "nW/cm2/sr", "lights_threshold": f"{threshold:.6f}"})
        _write_raster(tmp / FILES["wealth"], wealth[None], affine, None, ["wealth"], True)
        _write_raster(tmp / FILES["population"], _population(_rng(seed, 7), town, valid, f)[None], coarse, None,
                      ["population"], False, tags={"units": "persons per 240 m cell"})
        (tmp / FILES["countries"]).write_text(json.dumps(_country_polygons(countries, valid, affine)))
        with open(tmp / FILES["clusters"], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CLUSTER_COLUMNS)
            for i in range(len(lons)):
                writer.writerow([i + 1, f"{lats[i]:.7f}", f"{lons[i]:.7f}", f"{cl['wealth'][i]:.5f}",
                                 f"C{int(cl['country'][i]) + 1:02d}", int(cl["urban"][i]),
                                 int(cl["households"][i])])
    return paths
