"""What a model was trained on (dtype, bands, value ranges, resolution, targets) and checks of new inputs against it.

The out-of-distribution guard of ``geocnn map``, ``geocnn predict`` and the watch folder. The rules, precisely:

* **Resolution** (Earth): the new imagery's ground pixel size ``r`` against the training one ``r0`` is flagged when
  ``max(r / r0, r0 / r) > factor`` (default 2).
* **Data type**: flagged when the input's type (the scene file's band type for chips cut from scenes, else the chips'
  own type) differs from the training one, e.g. ``uint8`` against ``uint16``.
* **Band names**: flagged when a band's name differs from the training name at the same position, or the band
  count differs; generic names (``band1``, ``band2``, ... of files without band descriptions) match anything.
* **Band values**, per band, from the training quantiles q0.1 %, q1 %, q50 %, q99 %, q99.9 %: with
  ``margin = 0.5 * (q99.9 - q0.1)`` (half the training band's central 99.8 % range), the band is flagged when more
  than ``OUTSIDE_SHARE`` (5 %) of the new finite values lie outside ``[q0.1 - margin, q99.9 + margin]``, or when the
  new values' median lies outside the training ``[q1, q99]``. NaN (nodata) is ignored on both sides.
* **Predictions** (:func:`flag_targets`): a prediction of a target is out of range when it lies outside
  ``[min - 0.5 * (max - min), max + 0.5 * (max - min)]`` of that target's training values (in the units the model
  predicts); a row is flagged when any of its targets is.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import rasterio
from pydantic import BaseModel, ConfigDict, Field

from geocnn.data.chips import M_PER_DEG
from geocnn.data.store import ChipStore
from geocnn.errors import GeocnnError

LOG = logging.getLogger("geocnn")
LEVELS = (0.001, 0.01, 0.5, 0.99, 0.999)
"""Quantile levels recorded per band: 0.1 %, 1 %, 50 %, 99 %, 99.9 %."""
MAX_CHIPS = 2000
"""Train chips sampled (seeded) for the band quantiles."""
MAX_VALUES = 1_000_000
"""Pixel values per band kept for the quantiles (random pixels of the sampled chips)."""
MARGIN = 0.5
"""Band values: the allowed range extends the training [q0.1, q99.9] by this share of its width on each side."""
OUTSIDE_SHARE = 0.05
"""Band values: the share of new values outside the allowed range above which a band is flagged."""
TARGET_MARGIN = 0.5
"""Predictions: the allowed range extends the training [min, max] by this share of its width on each side."""
GENERIC_BAND = re.compile(r"^band\d+$", re.IGNORECASE)


class BandRange(BaseModel):
    """Value distribution of one band over the sampled train chips (finite values only)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    q001: float = Field(description="0.1 % quantile.")
    q01: float = Field(description="1 % quantile.")
    q50: float = Field(description="Median.")
    q99: float = Field(description="99 % quantile.")
    q999: float = Field(description="99.9 % quantile.")
    min: float
    max: float

    def allowed(self) -> tuple[float, float]:
        """The range new values may take: [q0.1, q99.9] widened by MARGIN of its width on each side."""
        margin = MARGIN * (self.q999 - self.q001)
        return self.q001 - margin, self.q999 + margin


class TargetRange(BaseModel):
    """Range of one training target, in the units the model predicts (e.g. vote counts as fractions)."""

    model_config = ConfigDict(extra="forbid")

    min: float
    q01: float
    q99: float
    max: float

    def allowed(self) -> tuple[float, float]:
        """Predictions outside [min - 0.5 * range, max + 0.5 * range] are flagged."""
        width = self.max - self.min
        return self.min - TARGET_MARGIN * width, self.max + TARGET_MARGIN * width


class TrainingProfile(BaseModel):
    """What the training chips and targets looked like: the reference new inputs are checked against."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = Field(description="Input data type: the scene files' band type (chips cut from scenes), else the "
                                   "stored chips' type.")
    bands: list[BandRange] = Field(description="Per band (chip order): quantiles, min and max of the train chips.")
    n_chips: int = Field(description="Train chips sampled for the quantiles.")
    resolution_m: float | None = Field(None, description="Ground pixel size of the training imagery (Earth).")
    chip_m: float | None = Field(None, description="Ground side of a chip in metres (Earth).")
    targets: dict[str, TargetRange] = Field(default_factory=dict, description="Per continuous output: the range of "
                                            "its training values (empty for class outputs).")

    @property
    def band_names(self) -> list[str]:
        """Band names in chip order."""
        return [b.name for b in self.bands]


def profile_store(store: ChipStore, train_rows: np.ndarray, targets: pd.DataFrame | None = None,
                  resolution_m: float | None = None, chip_m: float | None = None, dtype: str | None = None,
                  max_chips: int = MAX_CHIPS, seed: int = 0) -> TrainingProfile:
    """The profile of a store's train chips: up to ``max_chips`` of ``train_rows`` sampled (seeded) from the memmap.

    Args:
        store: the chip store the model was trained on.
        train_rows: store rows (chips) of the train split.
        targets: training target values, one column per model output (prediction units), one row per train sample;
            non-numeric columns (classes) are left out.
        resolution_m, chip_m: ground pixel size of the training imagery and chip side in metres (Earth).
        dtype: the input data type (default: the store's chip dtype).
        max_chips, seed: how many chips to sample, and the sampling seed.
    """
    rows = np.asarray(train_rows, dtype=np.int64)
    if len(rows) == 0:
        raise GeocnnError(f"{store.root}: no train chips to profile; the train split is empty")
    rng = np.random.default_rng(seed)
    if len(rows) > max_chips:
        rows = rng.choice(rows, max_chips, replace=False)
    rows = np.sort(rows)
    chips = store.chips
    n_bands = chips.shape[1]
    per_chip = max(1, math.ceil(MAX_VALUES / len(rows)))
    kept: list[np.ndarray] = []
    lo = np.full(n_bands, np.inf)
    hi = np.full(n_bands, -np.inf)
    for start in range(0, len(rows), 256):
        block = np.asarray(chips[rows[start:start + 256]], dtype=np.float64).reshape(-1, n_bands,
                                                                                    np.prod(chips.shape[2:]))
        finite = np.isfinite(block)
        lo = np.minimum(lo, np.where(finite, block, np.inf).min(axis=(0, 2)))
        hi = np.maximum(hi, np.where(finite, block, -np.inf).max(axis=(0, 2)))
        if per_chip < block.shape[2]:
            block = block[:, :, rng.choice(block.shape[2], per_chip, replace=False)]
        kept.append(block.transpose(1, 0, 2).reshape(n_bands, -1))
    values = np.concatenate(kept, axis=1)
    bands = []
    for b, name in enumerate(store.bands):
        v = values[b][np.isfinite(values[b])]
        if not v.size:
            raise GeocnnError(f"{store.root}: band {name!r} has no valid (non-nodata) pixel in the sampled train "
                              "chips; check its nodata value (earth.nodata) or drop the band")
        q = np.quantile(v, LEVELS)
        bands.append(BandRange(name=name, q001=q[0], q01=q[1], q50=q[2], q99=q[3], q999=q[4], min=lo[b], max=hi[b]))
    ranges: dict[str, TargetRange] = {}
    for column in (targets.columns if targets is not None else []):
        if not pd.api.types.is_numeric_dtype(targets[column]) or pd.api.types.is_bool_dtype(targets[column]):
            continue
        t = targets[column].to_numpy(np.float64)
        t = t[np.isfinite(t)]
        if t.size:
            q = np.quantile(t, (0.01, 0.99))
            ranges[str(column)] = TargetRange(min=t.min(), q01=q[0], q99=q[1], max=t.max())
    return TrainingProfile(dtype=dtype or str(store.meta["dtype"]), bands=bands, n_chips=len(rows),
                           resolution_m=resolution_m, chip_m=chip_m, targets=ranges)


def check_inputs(profile: TrainingProfile, chips_sample: np.ndarray, bands: Sequence[str], dtype: str,
                 resolution_m: float | None = None, factor: float = 2.0) -> list[str]:
    """How new inputs differ from the training data (module docstring: the rules), as sentences; [] when alike.

    Args:
        profile: the bundle's training profile.
        chips_sample: (N, C, H, W) chips (or windows) of the new inputs as the model would get them.
        bands: their band names, in chip order.
        dtype: their data type (the scene file's band type, else the chips').
        resolution_m: their ground pixel size in metres (None: unknown, not checked).
        factor: the resolution ratio beyond which they are flagged.
    """
    out = []
    if resolution_m and profile.resolution_m and max(resolution_m / profile.resolution_m,
                                                     profile.resolution_m / resolution_m) > factor:
        ratio = resolution_m / profile.resolution_m
        out.append(f"ground resolution {resolution_m:.4g} m per pixel, the model was trained on "
                   f"{profile.resolution_m:.4g} m ({ratio:.3g}x; more than the {factor:g}x allowed): objects appear "
                   f"{'smaller' if ratio > 1 else 'larger'} than in training")
    if str(dtype) != profile.dtype:
        out.append(f"data type {dtype}, the model was trained on {profile.dtype} inputs (a different scaling, e.g. "
                   "0-255 display values instead of reflectance or digital numbers?)")
    names = list(bands)
    trained = profile.band_names
    differ = [(k, a, b) for k, (a, b) in enumerate(zip(names, trained))
              if a != b and not GENERIC_BAND.match(a) and not GENERIC_BAND.match(b)]
    if len(names) != len(trained) or differ:
        out.append(f"band names {names}, the model was trained on {trained} (another sensor or band order?)")
    sample = np.asarray(chips_sample, dtype=np.float64)
    if sample.ndim == 4 and sample.shape[1] == len(profile.bands):
        for b, ref in enumerate(profile.bands):
            v = sample[:, b].ravel()
            v = v[np.isfinite(v)]
            if not v.size:
                continue
            low, high = ref.allowed()
            outside = float(np.mean((v < low) | (v > high)))
            median = float(np.median(v))
            if outside > OUTSIDE_SHARE or not ref.q01 <= median <= ref.q99:
                out.append(f"band {ref.name!r}: values {v.min():.4g} to {v.max():.4g} (median {median:.4g}), "
                           f"{outside:.0%} outside {low:.4g} to {high:.4g} around the training range (0.1-99.9 % "
                           f"{ref.q001:.4g} to {ref.q999:.4g}, median {ref.q50:.4g})")
    return out


def enforce(warnings: list[str], source: str, strict: bool = False) -> None:
    """Log each warning (logger ``geocnn``) naming ``source``; with ``strict``, refuse instead.

    Raises:
        GeocnnError: with ``strict`` and any warning, listing them all.
    """
    if not warnings:
        return
    if strict:
        raise GeocnnError(f"{source}: unlike the data the model was trained on, nothing written (--strict): "
                          + "; ".join(warnings) + ". Preprocess the inputs as the training data were, or drop "
                          "--strict to predict anyway (with warnings).")
    for text in warnings:
        LOG.warning("%s: %s; predictions may be unreliable", source, text)


def flag_targets(profile: TrainingProfile | None, pred: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Per row: whether any output's prediction lies outside [min - 0.5 * range, max + 0.5 * range] of its training
    values (outputs without a recorded range, and NaN predictions, are never flagged).

    Args:
        profile: the bundle's training profile (None: nothing flagged).
        pred: (N, K) predictions, one column per name.
        names: the output names of the columns.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    flags = np.zeros(len(pred), bool)
    if profile is None or pred.shape[1] != len(names):
        return flags
    for j, name in enumerate(names):
        if name in profile.targets:
            low, high = profile.targets[name].allowed()
            with np.errstate(invalid="ignore"):
                flags |= (pred[:, j] < low) | (pred[:, j] > high)
    return flags


def flags_outputs(profile: TrainingProfile | None, names: Sequence[str], width: int) -> bool:
    """Whether :func:`flag_targets` applies to these outputs: continuous ones, one column each, with a range."""
    return profile is not None and width == len(names) and any(n in profile.targets for n in names)


def pixel_size_m(crs: object, res: tuple[float, float]) -> float:
    """Ground size of a raster pixel in metres (degrees of a geographic CRS at 110.574 km per degree)."""
    geographic = crs is not None and getattr(crs, "is_geographic", False)
    return abs(float(res[1])) * (M_PER_DEG if geographic else 1.0)


def file_dtype(path: str) -> str:
    """The first band's data type of a raster file."""
    with rasterio.open(path) as src:
        return str(src.dtypes[0])
