"""Sliding windows over a scene: window layout, strip reads, batched prediction averaged into stride cells."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm.auto import tqdm

from geocnn.data.sources.raster import Grid, open_scene
from geocnn.errors import GeocnnError

BLOCK_PX = 256
"""Tile size (pixels, square) of every written map; also the unit in which nodata blocks are tracked."""

Reader = Callable[[Window, tuple[int, int]], np.ndarray]
"""``read(window, (h, w))`` -> float32 (C, h, w) scene pixels resampled to (h, w), NaN for nodata."""
Predictor = Callable[[np.ndarray], np.ndarray]
"""``predict(batch)`` with batch float32 (B, C, in_px, in_px) -> (B,) or (B, K) predictions."""


@contextlib.contextmanager
def raster_reader(path: str | Path, bands: Sequence[int] | None = None,
                  resampling: Resampling = Resampling.average) -> Iterator[tuple[Reader, Grid]]:
    """Open a scene and yield ``(read, grid)`` for :func:`predict_map`: boundless windowed reads, NaN nodata.

    ``bands`` are 1-based band indexes (default all); ``resampling`` is used when ``out_shape`` differs from
    the window size. Reads go through the same :class:`~geocnn.data.sources.raster.Scene` as ``geocnn map``: plain
    windowed reads inside the raster, padded at its edges.
    """
    with open_scene(path, list(bands) if bands is not None else None, allow_no_crs=True) as scene:

        def read(window: Window, out_shape: tuple[int, int]) -> np.ndarray:
            return scene.read(window, out_shape, resampling)

        read.exact_strips = True  # type: ignore[attr-defined]  # plain windowed reads: a strip = its windows
        yield read, Grid(crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height)


# ----------------------------------------------------------------------------------------- window layout
def _origins(size: int, chip: int, stride: int) -> np.ndarray:
    """Window start offsets along one axis, stride apart, the last one reaching the scene edge (or beyond)."""
    return np.arange(math.ceil(max(size - chip, 0) / stride) + 1) * stride


def _cell_centres(size: int, stride: int) -> np.ndarray:
    """Centre of each stride cell along one axis; the last (partial) cell's centre is clipped to the scene."""
    starts = np.arange(math.ceil(size / stride)) * stride
    return (starts + np.minimum(starts + stride, size)) / 2.0


def check_args(grid: Grid, chip_px: int, stride_px: int, in_px: int, batch_size: int,
                max_nodata_fraction: float, band_names: Sequence[str]) -> None:
    """Reject inconsistent sliding-window settings with the fix."""
    if chip_px < 1 or in_px < 1 or batch_size < 1:
        raise GeocnnError(f"chip_px={chip_px}, in_px={in_px}, batch_size={batch_size}: all must be >= 1")
    if not 1 <= stride_px <= chip_px:
        raise GeocnnError(f"stride_px={stride_px}: must be in 1..chip_px ({chip_px}) so that windows cover the "
                          "scene; lower stride_px")
    if not 0.0 <= max_nodata_fraction <= 1.0:
        raise GeocnnError(f"max_nodata_fraction={max_nodata_fraction}: must be between 0 and 1")
    if grid.width < 1 or grid.height < 1:
        raise GeocnnError(f"grid {grid.width}x{grid.height}: the scene grid is empty")
    if not band_names:
        raise GeocnnError("band_names is empty; give one name per prediction output")


# ---------------------------------------------------------------------------------- cell accumulation
class CellAccumulator:
    """Per-stride-cell sum and count of the window predictions that cover each cell."""

    def __init__(self, grid: Grid, chip: int, stride: int, n_out: int) -> None:
        self.grid = grid
        # Output blocks (BLOCK_PX tiles) holding a nodata input pixel; None when the reader could not tell.
        self.nodata_blocks: np.ndarray | None = np.zeros((-(-grid.height // BLOCK_PX), -(-grid.width // BLOCK_PX)),
                                                         bool)
        self.rows = _cell_centres(grid.height, stride)
        self.cols = _cell_centres(grid.width, stride)
        self.chip = chip
        self.n_out = n_out
        self.sums = np.zeros((n_out, len(self.rows), len(self.cols)), np.float64)
        self.counts = np.zeros((n_out, len(self.rows), len(self.cols)), np.int32)

    def add(self, origins: list[tuple[int, int]], preds: np.ndarray) -> None:
        """Add (B, K) predictions of the windows at ``origins`` (row, col) to every cell each covers (non-finite
        values skipped)."""
        finite = np.isfinite(preds)
        values = np.where(finite, preds, 0.0).T  # (K, B)
        ok = finite.T.astype(np.int32)
        r0, c0 = np.asarray(origins, dtype=np.int64).reshape(-1, 2).T
        r_lo, r_hi = np.searchsorted(self.rows, r0, "left"), np.searchsorted(self.rows, r0 + self.chip, "left")
        c_lo, c_hi = np.searchsorted(self.cols, c0, "left"), np.searchsorted(self.cols, c0 + self.chip, "left")
        # Every window covers a run of cell rows and columns; add the batch offset by offset (vectorised).
        for dr in range(int((r_hi - r_lo).max(initial=0))):
            for dc in range(int((c_hi - c_lo).max(initial=0))):
                m = (r_lo + dr < r_hi) & (c_lo + dc < c_hi)
                if m.any():
                    rr, cc = r_lo[m] + dr, c_lo[m] + dc
                    np.add.at(self.sums, (slice(None), rr, cc), values[:, m])
                    np.add.at(self.counts, (slice(None), rr, cc), ok[:, m])

    def mark_nodata(self, row0: int, nan: np.ndarray) -> None:
        """Flag the output blocks where the (h, w) strip starting at scene row ``row0`` has nodata pixels."""
        if self.nodata_blocks is None or not nan.any():
            return
        r, c = np.nonzero(nan)
        r = r + row0
        inside = (r < self.grid.height) & (c < self.grid.width)  # boundless padding is not the scene's nodata
        self.nodata_blocks[r[inside] // BLOCK_PX, c[inside] // BLOCK_PX] = True

    def means(self) -> np.ndarray:
        """(K, cell rows, cell cols) float32 average prediction, NaN where no window predicted."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.sums / self.counts
        out[self.counts == 0] = np.nan
        return out.astype(np.float32)


def _as_predictions(raw: Any, batch: int, band_names: Sequence[str]) -> np.ndarray:
    """Validate ``predict``'s output and return it as (B, K) float64."""
    preds = np.asarray(raw, dtype=np.float64)
    if preds.ndim == 1:
        preds = preds[:, None]
    if preds.ndim != 2 or preds.shape[0] != batch:
        raise GeocnnError(f"predict returned shape {np.shape(raw)} for a batch of {batch}; it must return (B,) "
                          "or (B, K)")
    if preds.shape[1] != len(band_names):
        raise GeocnnError(f"predict returned {preds.shape[1]} outputs but band_names has {len(band_names)} "
                          f"({list(band_names)}); give one band name per output")
    return preds


def read_checked(read: Reader, window: Window, shape: tuple[int, int], bands: int | None) -> np.ndarray:
    """Call ``read`` and check it returned a (C, h, w) array (C equal to ``bands`` when given)."""
    data = np.asarray(read(window, shape), dtype=np.float32)
    if data.ndim != 3 or data.shape[1:] != shape or (bands is not None and data.shape[0] != bands):
        raise GeocnnError(f"read({window}, {shape}) returned shape {data.shape}; it must return (C, {shape[0]}, "
                          f"{shape[1]}) float32 with NaN for nodata")
    return data


def accumulate(read: Reader, grid: Grid, predict: Predictor, chip: int, stride: int, in_px: int,
                batch_size: int, max_nodata: float, band_names: Sequence[str], progress: bool) -> CellAccumulator:
    """Slide windows strip by strip, batch the usable ones through ``predict``, and average into cells."""
    acc = CellAccumulator(grid, chip, stride, len(band_names))
    pending: list[tuple[tuple[int, int], np.ndarray]] = []  # (row, col) origin, chip
    n_used = 0

    def flush() -> None:
        batch = np.stack([x for _, x in pending])
        acc.add([w for w, _ in pending], _as_predictions(predict(batch), len(pending), band_names))
        pending.clear()

    col_origins = _origins(grid.width, chip, stride)
    # A reader marked exact_strips returns the same pixels for one strip as for its windows read one by one:
    # then each row of windows is one read (at native resolution), cut into windows with array views.
    strips = bool(getattr(read, "exact_strips", False)) and in_px == chip
    strip_w = int(col_origins[-1]) + chip
    row_origins = _origins(grid.height, chip, stride)
    if not strips:
        acc.nodata_blocks = None  # resampled windows: the nodata mask is re-read when the map is written
        bands = None  # every window must have the first one's band count
        for row in tqdm(row_origins, desc="map strips", unit="strip", disable=None if progress else True):
            for col in col_origins:
                chip_data = read_checked(read, Window(int(col), int(row), chip, chip), (in_px, in_px), bands)
                bands = chip_data.shape[0]
                nodata = float(np.isnan(chip_data).any(axis=0).mean())
                if nodata >= 1.0 or nodata > max_nodata:
                    continue
                pending.append(((int(row), int(col)), chip_data))
                n_used += 1
                if len(pending) == batch_size:
                    flush()
    else:
        def read_strip(row: int) -> np.ndarray:
            return read_checked(read, Window(0, int(row), strip_w, chip), (chip, strip_w), None)

        # Strips are read one ahead in a thread (GDAL decodes without the GIL) while the model predicts.
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(read_strip, row_origins[0])
            strips = tqdm(row_origins, desc="map strips", unit="strip", disable=None if progress else True)
            for i, row in enumerate(strips):
                strip = ahead.result()
                if i + 1 < len(row_origins):
                    ahead = pool.submit(read_strip, row_origins[i + 1])
                strip_nan = np.isnan(strip).any(axis=0)
                acc.mark_nodata(int(row), strip_nan)
                # nodata fraction of every window of the strip at once (column sums, then window sums)
                col_sums = np.concatenate([[0], np.cumsum(strip_nan.sum(axis=0))])
                fractions = (col_sums[col_origins + chip] - col_sums[col_origins]) / (chip * chip)
                keep = col_origins[(fractions < 1.0) & (fractions <= max_nodata)]
                views = np.lib.stride_tricks.sliding_window_view(strip, chip, axis=2)  # (C, chip, W - chip + 1, chip)
                for col in keep:
                    pending.append(((int(row), int(col)), views[:, :, int(col), :]))
                    if len(pending) == batch_size:
                        flush()
                n_used += len(keep)
    if pending:
        flush()
    if n_used == 0:
        raise GeocnnError(f"no window of {chip} px had at most {max_nodata:.0%} nodata, so nothing was predicted; "
                          "check the scene has valid pixels or raise max_nodata_fraction")
    return acc


