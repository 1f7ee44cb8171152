"""Synthetic galaxy images with known morphology, axis ratio and bulge fraction, for demos and tests."""

from __future__ import annotations

import csv
import functools
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.special import k1

from geocnn.atomic import atomic_path
from geocnn.errors import GeocnnError

CLASSES: list[str] = ["elliptical", "spiral", "barred", "ring", "edge_on"]
"""Morphology classes; in :func:`make_galaxies` row ``i`` of the unshuffled list has class ``CLASSES[i % 5]``."""

CATALOG_COLUMNS: list[str] = ["id", "file", "morphology", "axis_ratio", "bulge_fraction"]
"""Columns of the ``catalog.csv`` written by :func:`make_galaxies`, in order."""

MIN_SIZE = 32
"""Smallest image side in pixels; below it the galaxy, PSF and stars no longer fit meaningfully."""

_OVERSAMPLE = 2  # sub-pixels per pixel side when evaluating profiles (thin discs and cusps alias otherwise)
_SALT = 0x6A1A  # keeps these random streams apart from other users of the same integer seed
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

# Flux ratios (g, r, z) of the stellar populations; r is the reference band.
_OLD = (0.45, 1.0, 1.45)  # bulges and ellipticals: red
_DISC = (0.75, 1.0, 1.15)  # smooth discs: intermediate
_YOUNG = (1.45, 1.0, 0.72)  # spiral arms and star-forming rings: blue
_BAR = (0.55, 1.0, 1.35)  # bars: old stars
_PSF_SCALE = (1.08, 1.0, 0.94)  # seeing is worse at short wavelengths
_DUST = (1.35, 1.0, 0.65)  # dust optical depth relative to r

_PARAM_KEYS = (
    "axis_ratio", "bulge_fraction", "position_angle", "half_light_radius", "centre_x", "centre_y", "psf_fwhm",
    "surface_brightness", "total_flux", "n_arms", "pitch_angle", "bar_length", "ring_radius", "dust_lane",
    "n_stars",
)


@dataclass
class _Component:
    """One light component: its unnormalised shape on the oversampled grid, (g, r, z) colour and flux share."""

    image: np.ndarray
    colour: tuple[float, float, float]
    fraction: float
    bulge: bool = False
    clumps: tuple[float, float] | None = None  # (smoothing px, amplitude) of star-forming knots, at pixel scale


@functools.lru_cache(maxsize=16)
def _axis(lo: int, hi: int, k: int) -> np.ndarray:
    """Sub-pixel centres of pixels lo..hi-1 along one axis, in pixel units (pixel i spans [i-0.5, i+0.5])."""
    axis = (np.arange((hi - lo) * k, dtype=np.float32) + np.float32(0.5)) / np.float32(k) + np.float32(lo - 0.5)
    axis.setflags(write=False)
    return axis


def _ellipse(dx: np.ndarray, dy: np.ndarray, pa: float, q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Major-axis and stretched minor-axis coordinates (u, v/q) and elliptical radius, position angle ``pa``."""
    c, s = math.cos(pa), math.sin(pa)
    u = dx * c + dy * s
    v = (dy * c - dx * s) * (1.0 / q)
    return u, v, np.sqrt(u * u + v * v)


def _sersic(r: np.ndarray, re: float, n: float) -> np.ndarray:
    """Sersic profile of index ``n`` and half-light radius ``re``, normalised to 1 at ``re``."""
    b = 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)
    return np.exp(-b * ((r / re) ** (1.0 / n) - 1.0))


def _taper(r: np.ndarray, r_out: float) -> np.ndarray:
    """1 inside 0.6 r_out, a cosine-squared fall to 0 at r_out, 0 beyond: keeps the galaxy inside the frame."""
    t = np.clip((r / r_out - 0.6) / 0.4, 0.0, 1.0)
    return np.cos(0.5 * np.pi * t) ** 2


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, a smooth cubic in between."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _arms(r: np.ndarray, phi: np.ndarray, m: int, pitch: float, phase: float, r0: float, sharp: float) -> np.ndarray:
    """Logarithmic spiral pattern with ``m`` arms (values in [0, 1]) passing through azimuth ``phase`` at ``r0``."""
    wind = np.log(np.maximum(r, 1e-3) / r0) / math.tan(pitch)
    return (0.5 * (1.0 + np.cos(m * (phi - phase - wind)))) ** sharp


def _clumps(shape: tuple[int, ...], rng: np.random.Generator, scale: float, amplitude: float) -> np.ndarray:
    """Multiplicative star-forming clumpiness: 1 + amplitude * smoothed unit noise, clipped at 0."""
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), scale)
    field *= amplitude / (float(field.std()) + 1e-12)
    field += 1.0
    return np.maximum(field, 0.0)


def _downsample(a: np.ndarray, k: int) -> np.ndarray:
    """Average k x k blocks of sub-pixels into pixels."""
    out = a[0::k, 0::k].copy()
    for i in range(k):
        for j in range(k):
            if i or j:
                out += a[i::k, j::k]
    out *= 1.0 / (k * k)
    return out


@functools.lru_cache(maxsize=1)
def _edge_on_table() -> tuple[np.ndarray, np.ndarray]:
    """Tabulated x K1(x), the projected profile of an edge-on exponential disc (1 at x = 0)."""
    x = np.linspace(0.0, 12.0, 4801)
    y = np.empty_like(x)
    y[0], y[1:] = 1.0, x[1:] * k1(x[1:])
    return x, y


def _asinh(x: np.ndarray) -> np.ndarray:
    """Element-wise arcsinh via logarithms (several times faster than np.arcsinh for float32)."""
    ax = np.abs(x)
    out = np.log(ax + np.sqrt(ax * ax + 1.0))
    return np.copysign(out, x, out=out)


def _jitter(colour: tuple[float, float, float], rng: np.random.Generator) -> tuple[float, float, float]:
    """Colour with a few per cent random scatter per band (r stays the reference)."""
    g, r, z = colour
    e = np.exp(rng.normal(0.0, 0.07, 2))
    return (g * float(e[0]), r, z * float(e[1]))


def _bulge(dx: np.ndarray, dy: np.ndarray, pa: float, q_disc: float, re: float, r_out: float,
           rng: np.random.Generator, n_range: tuple[float, float] = (1.5, 3.5),
           q_range: tuple[float, float] = (0.65, 0.95)) -> np.ndarray:
    """A compact, rounder-than-the-disc Sersic bulge sharing the disc's position angle."""
    q_b = max(q_disc, float(rng.uniform(*q_range)))
    re_b = float(rng.uniform(0.12, 0.25)) * re
    _, _, r_b = _ellipse(dx, dy, pa, q_b)
    return _sersic(r_b, max(re_b, 0.6), float(rng.uniform(*n_range))) * _taper(r_b, r_out)


def _check_size(size: object) -> int:
    """Validate an image side length."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise GeocnnError(f"size must be an integer number of pixels, got {size!r}; pass e.g. size=128.")
    if size < MIN_SIZE:
        raise GeocnnError(f"size={size} is too small for a synthetic galaxy; use size >= {MIN_SIZE} (e.g. 64 or 128).")
    return int(size)


def _check_kind(kind: object) -> str:
    """Validate a morphology name."""
    if kind not in CLASSES:
        raise GeocnnError(f"unknown galaxy kind {kind!r}; use one of {', '.join(CLASSES)}.")
    return str(kind)


def render_galaxy(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Return an RGB uint8 image (size, size, 3) of one galaxy and its continuous parameters.

    The galaxy is drawn from noiseless light profiles (Sersic bulges, exponential discs, logarithmic
    spiral arms, bars, rings, dust lanes) on a 2x oversampled grid, tapered to stay inside the central
    ~56% of the frame, convolved with a Gaussian PSF (FWHM 1.5-3 px), given sky noise with a Poisson-like
    signal term and a few faint foreground stars near the edges, and asinh-stretched. The three channels
    are (R, G, B) = (z, r, g)-like bands, so old populations look orange and star-forming ones blue.

    Args:
        kind: one of :data:`CLASSES`.
        size: image side in pixels, at least :data:`MIN_SIZE`.
        rng: the random generator; the same generator state gives identical pixels.

    Returns:
        The image, shape (size, size, 3), dtype uint8, and a dict of floats: ``axis_ratio`` (apparent b/a of
        the main component: the disc, or the whole elliptical), ``bulge_fraction`` (bulge-to-total r flux,
        before PSF and noise; 1 for ellipticals), ``position_angle`` (degrees from the +x (column) axis
        towards +y (row)), ``half_light_radius`` (nominal, before truncation, px), ``centre_x``/``centre_y``
        (px, pixel centres at integers), ``psf_fwhm`` (px), ``surface_brightness`` (face-on mean within the
        half-light radius, in sky-noise units), ``total_flux`` (r, sky-noise units), ``n_arms``, ``pitch_angle`` (deg),
        ``bar_length`` (px), ``ring_radius`` (px), ``dust_lane`` (0/1), ``n_stars``; zero where not applicable.

    Raises:
        GeocnnError: for an unknown ``kind`` or a too small ``size``.
    """
    kind = _check_kind(kind)
    size = _check_size(size)
    k = _OVERSAMPLE
    half = 0.5 * (size - 1)
    pad = int(math.ceil(0.3 * size)) + 2  # profiles are evaluated only in this box; the galaxy is zero outside
    lo, hi = max(int(half) - pad, 0), min(int(half) + pad + 2, size)

    # Placement and size common to all kinds.
    off_r = 0.03 * size * math.sqrt(float(rng.uniform())) * 0.98
    off_t = float(rng.uniform(0.0, 2.0 * math.pi))
    cx, cy = half + off_r * math.cos(off_t), half + off_r * math.sin(off_t)
    pa = float(rng.uniform(0.0, 2.0 * math.pi))
    re = float(rng.uniform(0.08, 0.18)) * size
    r_out = min(2.6 * re, 0.28 * size - off_r)  # major-axis extent: inside 0.28 * size of the frame centre
    axis = _axis(lo, hi, k)
    dx = axis[None, :] - np.float32(cx)
    dy = axis[:, None] - np.float32(cy)
    p = dict.fromkeys(_PARAM_KEYS, 0.0)

    comps: list[_Component] = []
    dust: np.ndarray | None = None  # r-band optical depth on the oversampled grid
    h = re / 1.678  # exponential scale length with half-light radius re
    if kind == "elliptical":
        q = float(rng.uniform(0.5, 1.0))
        _, _, r = _ellipse(dx, dy, pa, q)
        comps.append(_Component(_sersic(r, re, float(rng.uniform(3.0, 5.5))) * _taper(r, r_out),
                                _jitter(_OLD, rng), 1.0, bulge=True))
    elif kind in ("spiral", "barred", "ring"):
        q = float(rng.uniform(0.4, 1.0))
        u, v, r = _ellipse(dx, dy, pa, q)
        phi = np.arctan2(v, u)
        disc = np.exp(-r / h) * _taper(r, r_out)
        if kind == "spiral":
            bt = float(rng.uniform(0.05, 0.4))
            m = int(rng.integers(2, 5))
            pitch = math.radians(float(rng.uniform(12.0, 28.0)))
            chir = float(rng.choice([-1.0, 1.0]))
            pattern = _arms(r, phi, m, chir * pitch, float(rng.uniform(0, 2 * math.pi)), h,
                            float(rng.uniform(2.5, 5.0)))
            window = 1.0 - np.exp(-((r / (0.7 * h)) ** 2))
            arm = disc * pattern * window
            a = float(rng.uniform(0.35, 0.6))
            comps.append(_Component(_bulge(dx, dy, pa, q, re, r_out, rng), _jitter(_OLD, rng), bt, bulge=True))
            comps.append(_Component(disc, _jitter(_DISC, rng), (1 - bt) * (1 - a)))
            comps.append(_Component(arm, _jitter(_YOUNG, rng), (1 - bt) * a, clumps=(1.2, 0.5)))
            p.update(n_arms=float(m), pitch_angle=math.degrees(pitch))
        elif kind == "barred":
            bt = float(rng.uniform(0.05, 0.25))
            f_bar = float(rng.uniform(0.12, 0.25))
            length = min(float(rng.uniform(1.1, 1.8)) * h, 0.55 * r_out)
            beta = float(rng.uniform(0.0, math.pi))
            cb, sb_ = math.cos(beta), math.sin(beta)
            u_d, v_d = u * cb + v * sb_, v * cb - u * sb_  # disc-plane coordinates along and across the bar
            rb2 = (u_d / length) ** 2 + (v_d / (float(rng.uniform(0.2, 0.32)) * length)) ** 2
            bar = np.clip(1.0 - rb2, 0.0, None)
            pitch = math.radians(float(rng.uniform(22.0, 38.0)))
            chir = float(rng.choice([-1.0, 1.0]))
            pattern = _arms(r, phi, 2, chir * pitch, beta, 0.9 * length, float(rng.uniform(3.0, 5.0)))
            window = _smoothstep(r, 0.7 * length, 1.0 * length)
            arm = disc * pattern * window
            a = float(rng.uniform(0.4, 0.6))
            f_disc = 1.0 - bt - f_bar
            comps.append(_Component(_bulge(dx, dy, pa, q, re, r_out, rng), _jitter(_OLD, rng), bt, bulge=True))
            comps.append(_Component(bar, _jitter(_BAR, rng), f_bar))
            comps.append(_Component(disc, _jitter(_DISC, rng), f_disc * (1 - a)))
            comps.append(_Component(arm, _jitter(_YOUNG, rng), f_disc * a, clumps=(1.2, 0.4)))
            p.update(n_arms=2.0, pitch_angle=math.degrees(pitch), bar_length=length)
        else:  # ring
            bt = float(rng.uniform(0.3, 0.5))
            f_disc = float(rng.uniform(0.12, 0.25))
            r_ring = float(rng.uniform(0.4, 0.7)) * r_out
            width = max(float(rng.uniform(0.05, 0.08)) * r_out, 0.7)
            ring = np.exp(-0.5 * ((r - r_ring) / width) ** 2)
            ring *= 1.0 + 0.25 * np.cos(2.0 * (phi - float(rng.uniform(0, math.pi))))  # mild lopsidedness
            comps.append(_Component(_bulge(dx, dy, pa, q, re * 0.8, r_out, rng, n_range=(2.0, 4.0)),
                                    _jitter(_OLD, rng), bt, bulge=True))
            comps.append(_Component(disc, _jitter(_DISC, rng), f_disc))
            comps.append(_Component(ring, _jitter(_YOUNG, rng), 1.0 - bt - f_disc, clumps=(1.5, 0.3)))
            p.update(ring_radius=r_ring)
    else:  # edge_on
        q = float(rng.uniform(0.08, 0.2))
        u, v, r = _ellipse(dx, dy, pa, q)
        disc = np.interp(r * (1.0 / h), *_edge_on_table()).astype(np.float32) * _taper(r, r_out)
        bt = float(rng.uniform(0.0, 0.3))
        bulge = _bulge(dx, dy, pa, q, re, r_out, rng, n_range=(1.0, 3.0), q_range=(0.5, 0.8))
        comps.append(_Component(bulge, _jitter(_OLD, rng), bt, bulge=True))
        comps.append(_Component(disc, _jitter(_DISC, rng), 1.0 - bt))
        if rng.uniform() < 0.6:  # dust lane slightly off the mid-plane: the disc is not exactly edge-on
            z = v * q  # height above the mid-plane in pixels
            zw = max(0.45 * q * h, 0.5)
            lane = np.exp(-0.5 * ((z - float(rng.uniform(-0.5, 0.5)) * zw) / zw) ** 2) * np.exp(-np.abs(u) / (3 * h))
            dust = lane * float(rng.uniform(1.0, 2.5))
            p["dust_lane"] = 1.0

    # Sum the components per band on the oversampled grid, then average down to pixels.
    sb = float(np.exp(rng.uniform(math.log(4.0), math.log(30.0))))  # face-on mean SB inside re, sky-noise units
    total = sb * 2.0 * math.pi * re * re  # inclining a transparent disc keeps its flux, raising its SB by 1/q
    tau = None if dust is None else _downsample(dust, k)
    bands = np.zeros((3, size, size), dtype=np.float32)
    bulge_r = 0.0
    for comp in comps:
        img = _downsample(comp.image, k)
        if comp.clumps is not None:
            img *= _clumps(img.shape, rng, *comp.clumps)
        img *= comp.fraction * total / max(float(img.sum(dtype=np.float64)), 1e-12)
        for b in range(3):
            band = img * comp.colour[b]
            if tau is not None:
                band = band * np.exp(-_DUST[b] * tau)
            bands[b, lo:hi, lo:hi] += band
            if b == 1 and comp.bulge:
                bulge_r += float(band.sum(dtype=np.float64))
    bulge_fraction = min(max(bulge_r / max(float(bands[1].sum(dtype=np.float64)), 1e-12), 0.0), 1.0)

    # Faint foreground stars as point sources near the edges, outside the central 60% of the frame.
    n_stars = int(rng.integers(0, 4))
    for _ in range(n_stars):
        rad = float(rng.uniform(0.36, 0.47)) * size
        ang = float(rng.uniform(0, 2 * math.pi))
        sx = int(np.clip(round(half + rad * math.cos(ang)), 1, size - 2))
        sy = int(np.clip(round(half + rad * math.sin(ang)), 1, size - 2))
        flux = total * float(np.exp(rng.uniform(math.log(0.002), math.log(0.015))))
        colour = (float(rng.uniform(0.4, 1.4)), 1.0, float(rng.uniform(0.7, 1.5)))
        for b in range(3):
            bands[b, sy, sx] += flux * colour[b]

    # PSF, then noise: unit sky noise plus a Poisson-like term growing with the signal.
    fwhm = float(rng.uniform(1.5, 3.0))
    for b in range(3):
        bands[b] = gaussian_filter(bands[b], fwhm * _FWHM_TO_SIGMA * _PSF_SCALE[b], mode="constant")
    peak = float(bands.max())
    gain = float(rng.uniform(10.0, 40.0))
    noise = rng.standard_normal(bands.shape, dtype=np.float32)
    noisy = bands + noise * np.sqrt(1.0 + np.maximum(bands, 0.0) * (1.0 / gain))

    # Shared asinh stretch for the three bands (keeps colours); black point slightly below the sky.
    soft = float(rng.uniform(1.5, 3.0))
    black = math.asinh(-1.5 / soft)
    white = math.asinh(peak * float(rng.uniform(1.0, 1.5)) / soft)
    stretched = (_asinh(noisy * (1.0 / soft)) - black) * (255.0 / (white - black))
    rgb = np.clip(np.rint(stretched[::-1].transpose(1, 2, 0)), 0, 255).astype(np.uint8)

    p.update(axis_ratio=q, bulge_fraction=bulge_fraction, position_angle=math.degrees(pa) % 360.0,
             half_light_radius=re, centre_x=cx, centre_y=cy, psf_fwhm=fwhm, surface_brightness=sb,
             total_flux=total, n_stars=float(n_stars))
    return rgb, {key: float(val) for key, val in p.items()}


def _galaxy_rng(seed: int, index: int) -> np.random.Generator:
    """The independent random stream of galaxy ``index`` (does not depend on how many are made)."""
    return np.random.default_rng([_SALT, seed, 1, index])


def make_galaxies(out_dir: str | Path, n: int, size: int = 128, seed: int = 0) -> Path:
    """Write out_dir/images/<id>.png and out_dir/catalog.csv; return the catalog path.

    Classes are balanced: the i-th of ``n`` labels is ``CLASSES[i % 5]``, and the labels are then shuffled
    over the ids (deterministically from ``seed`` and ``n``). Each galaxy draws from its own random stream
    keyed by ``seed`` and its index. The same arguments give a byte-identical catalog and identical pixels.

    Args:
        out_dir: folder to write into (created if missing; existing files of the same names are replaced).
        n: number of galaxies, at least 1.
        size: image side in pixels, at least :data:`MIN_SIZE`.
        seed: non-negative integer seed.

    Returns:
        Path of ``catalog.csv`` with columns :data:`CATALOG_COLUMNS`: ``id`` (``syn000000``...), ``file``
        (``images/<id>.png``, relative to the catalog's folder), ``morphology`` (one of :data:`CLASSES`),
        ``axis_ratio`` (apparent b/a in (0, 1]) and ``bulge_fraction`` (bulge-to-total flux in [0, 1]).

    Raises:
        GeocnnError: for ``n`` < 1, ``size`` < :data:`MIN_SIZE`, a negative or non-integer seed, or an
            ``out_dir`` that is an existing file.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise GeocnnError(f"n must be a positive integer number of galaxies, got {n!r}; pass e.g. n=1000.")
    size = _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise GeocnnError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0.")
    n, seed = int(n), int(seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GeocnnError(f"output folder {out} is an existing file; pass a folder path for out_dir.")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)

    labels = [CLASSES[i % len(CLASSES)] for i in range(n)]
    order = np.random.default_rng([_SALT, seed, 0, n]).permutation(n)
    rows: list[list[str]] = []
    for index in range(n):
        kind = labels[int(order[index])]
        image, params = render_galaxy(kind, size, _galaxy_rng(seed, index))
        gid = f"syn{index:06d}"
        rel = f"images/{gid}.png"
        with atomic_path(out / rel) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        rows.append([gid, rel, kind, f"{params['axis_ratio']:.6f}", f"{params['bulge_fraction']:.6f}"])

    catalog = out / "catalog.csv"
    with atomic_path(catalog) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CATALOG_COLUMNS)
            writer.writerows(rows)
    return catalog
