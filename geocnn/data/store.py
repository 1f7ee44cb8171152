"""ChipStore: a catalog materialised once as a memory-mapped (N, C, H, W) array + index.parquet + meta.json."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from geocnn import __version__
from geocnn.atomic import atomic_dir
from geocnn.data.catalog import ID, IMAGE, Catalog
from geocnn.data.chips import Chip, ChipSource, ChipSpec, chip_ids
from geocnn.data.sources.nightlights import nightlight_classes
from geocnn.errors import GeocnnError

CHIPS = "chips.npy"
INDEX = "index.parquet"
META = "meta.json"
REPORT = "ingest_report.json"
STORE_FORMAT = 2
SAMPLE = "sample"
"""Index column: the catalog id a chip belongs to (several chips per sample for an n x n grid)."""
CHIP_COLUMNS = ("chip_lat", "chip_lon", "nodata_fraction")
"""Index columns describing each chip (its centre and nodata share)."""


class LabelSpec(BaseModel):
    """A target derived from the label raster (night lights): its name, and classes by quantiles or a GMM."""

    model_config = ConfigDict(extra="forbid")

    name: str = "nightlights"
    classes: Literal["quantiles", "gmm"] | None = None
    n_classes: int = 3
    seed: int = 0
    as_target: bool = False
    """Add it to the store's targets (stage 1 of two-stage transfer); else kept as ``<name>_value`` only."""


@dataclass
class ChipStore:
    """An on-disk chip array with its index (one row per chip: id, row, sample, catalog columns) and metadata."""

    root: Path
    meta: dict[str, Any]
    index: pd.DataFrame

    @property
    def chips(self) -> np.ndarray:
        """The chips, memory-mapped read-only: (N, C, H, W) in the native dtype."""
        return np.load(self.root / CHIPS, mmap_mode="r")

    @property
    def targets(self) -> list[str]:
        """Target columns, in model-output order."""
        return list(self.meta["targets"])

    @property
    def classes(self) -> list[str]:
        """Class names for a classification target (else empty)."""
        return list(self.meta.get("classes", []))

    @property
    def bands(self) -> list[str]:
        """Band names, in chip order."""
        return list(self.meta["bands"])

    @property
    def spec(self) -> ChipSpec:
        """How the chips were cut (rebuilt by predict from a bundle)."""
        return ChipSpec.model_validate(self.meta["params"]["chips"])

    @property
    def report(self) -> dict[str, Any]:
        """Chips requested, kept and dropped (nodata) when the store was built."""
        return dict(self.meta.get("report", {}))

    def samples(self) -> pd.DataFrame:
        """One row per sample in catalog order (its first chip's index row), without the per-chip columns."""
        first = self.index.drop_duplicates(SAMPLE)
        first = first.drop(columns=[c for c in (ID, "row", *CHIP_COLUMNS) if c in first.columns])
        return first.rename(columns={SAMPLE: ID}).reset_index(drop=True)

    def sample_of_rows(self) -> np.ndarray:
        """Position of every chip's sample in :meth:`samples` (chips -> samples)."""
        return pd.factorize(self.index[SAMPLE].astype(str))[0]

    def sample_means(self, values: np.ndarray) -> np.ndarray:
        """Per-chip values (N_chips, K) averaged over each sample's chips -> (N_samples, K), in samples() order."""
        codes = self.sample_of_rows()
        n = int(codes.max()) + 1 if len(codes) else 0
        sums = np.zeros((n, values.shape[1]))
        np.add.at(sums, codes, values)
        return sums / np.bincount(codes, minlength=n)[:, None]

    @classmethod
    def open(cls, root: str | Path) -> "ChipStore":
        """Open an existing store; errors say which file is missing."""
        root = Path(root)
        for name in (CHIPS, INDEX, META):
            if not (root / name).exists():
                raise GeocnnError(f"{root}: not a complete chip store ({name} missing). Delete the folder and rerun "
                                  "to rebuild it.")
        meta = json.loads((root / META).read_text())
        return cls(root=root, meta=meta, index=pd.read_parquet(root / INDEX))


def file_digest(path: str) -> str:
    """BLAKE2 digest of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def store_key(catalog: Catalog, params: dict[str, Any], inputs: list[str]) -> str:
    """Content hash of the inputs: catalog rows, the bytes of every file read, and the chip parameters."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"params": params, "format": STORE_FORMAT, "targets": catalog.targets,
                         "classes": catalog.classes}, sort_keys=True, default=str).encode())
    frame = catalog.frame.drop(columns=[IMAGE], errors="ignore")
    h.update(pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy().tobytes())
    files = (catalog.frame[IMAGE].tolist() if IMAGE in catalog.frame.columns else []) + inputs
    with ThreadPoolExecutor(4) as pool:
        for digest in pool.map(file_digest, files):
            h.update(digest.encode())
    return h.hexdigest()


def build_store(catalog: Catalog, spec: ChipSpec, store_root: str | Path, labels: LabelSpec | None = None,
                progress: bool = True) -> ChipStore:
    """Cut every catalog row into chips (its file, or scene windows around its point), or reuse an identical build.

    Chips with more nodata than ``spec.max_nodata_fraction`` are dropped and counted in the report. The store lives
    at ``store_root/<content hash>``; it is written to a temporary folder and renamed only when complete, so an
    interrupted build leaves nothing behind.
    """
    if len(catalog) == 0:
        raise GeocnnError(f"{catalog.source}: the catalog is empty; nothing to cut into chips")
    missing = [c for c in ("lat", "lon") if spec.needs_points and c not in catalog.frame.columns]
    if missing:
        raise GeocnnError(f"{catalog.source}: chips around points need the columns {missing}")
    if spec.files and IMAGE not in catalog.frame.columns:
        raise GeocnnError(f"{catalog.source}: no image or tile file per row; give data.tiles or earth.scenes")
    params = {"chips": spec.model_dump(), "labels": labels.model_dump() if labels else None}
    for path in spec.inputs():
        if "{band}" not in path and not Path(path).exists():
            raise GeocnnError(f"{path}: raster not found (earth.scenes / earth.layers / earth.label_raster)")
    key = store_key(catalog, params, [p for p in spec.inputs() if "{band}" not in p])
    root = Path(store_root) / key[:20]
    if (root / META).exists():
        return ChipStore.open(root)
    rows = catalog.frame.to_dict("records")
    with ChipSource(spec, catalog.source) as src, atomic_dir(root) as tmp:

        def make(i: int) -> list[Chip]:
            try:
                return src.make(rows[i])
            except GeocnnError as exc:
                raise GeocnnError(f"{catalog.source}: row {i + 2} (id {rows[i][ID]!r}): {exc}") from None

        first = make(0)
        per = len(first)
        shape = first[0].pixels.shape
        dtype = first[0].pixels.dtype
        bands = src.band_names(rows[0])
        chips = np.lib.format.open_memmap(tmp / CHIPS, mode="w+", dtype=dtype, shape=(len(rows) * per, *shape))
        meta_rows: list[dict[str, Any]] = []
        keep = np.zeros(len(rows) * per, bool)
        pool = ThreadPoolExecutor(2) if src.threaded else None
        made = pool.map(make, range(1, len(rows))) if pool else (make(i) for i in range(1, len(rows)))
        try:
            for i, sample_chips in enumerate(tqdm([first] if len(rows) == 1 else _chain(first, made),
                                                  total=len(rows), desc="chips", disable=None if progress else True)):
                ids = chip_ids(str(rows[i][ID]), sample_chips)
                for k, chip in enumerate(sample_chips):
                    j = i * per + k
                    if chip.pixels.shape != shape or chip.pixels.dtype != dtype:
                        where = rows[i].get(IMAGE, rows[i][ID])
                        raise GeocnnError(f"{where}: chip of shape {chip.pixels.shape} ({chip.pixels.dtype}), the "
                                          f"first row's is {shape} ({dtype}); all images must have the same bands "
                                          "and type (set data.channels / data.bands, or earth.bands).")
                    meta_rows.append({ID: ids[k], "sample": str(rows[i][ID]), "chip_lat": chip.lat,
                                      "chip_lon": chip.lon, "nodata_fraction": chip.nodata, "label": chip.label})
                    limit = spec.max_nodata_fraction
                    if limit is None or chip.nodata <= limit:
                        keep[j] = True
                        chips[j] = chip.pixels
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        chips.flush()
        del chips
        chip_meta = pd.DataFrame(meta_rows)
        if not keep.any():
            raise GeocnnError(src.no_usable_chips(chip_meta["chip_lon"].to_numpy(float),
                                                  chip_meta["chip_lat"].to_numpy(float)))
        if not keep.all():
            _compact(tmp / CHIPS, keep)
        index, targets, classes, thresholds = _index(catalog, chip_meta, keep, labels, spec)
        report = {"chips_requested": int(len(keep)), "chips_kept": int(keep.sum()),
                  "chips_dropped_nodata": int((~keep).sum()), "max_nodata_fraction": spec.max_nodata_fraction,
                  "dropped_ids": chip_meta.loc[~keep, ID].astype(str).tolist()[:1000]}
        (tmp / REPORT).write_text(json.dumps(report, indent=2))
        index.to_parquet(tmp / INDEX, index=False)
        meta = {"key": key, "params": params, "bands": bands, "dtype": str(dtype),
                "shape": [int(keep.sum()), *shape], "targets": targets, "classes": classes,
                "source": catalog.source, "geocnn_version": __version__, "store_format": STORE_FORMAT,
                "crs": str(src.scenes[0].crs) if src.scenes else None, "report": report,
                "label_thresholds": thresholds}
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
    return ChipStore.open(root)


def _chain(first: list[Chip], rest: Any) -> Any:
    yield first
    yield from rest


def _index(catalog: Catalog, chip_meta: pd.DataFrame, keep: np.ndarray, labels: LabelSpec | None,
           spec: ChipSpec) -> tuple[pd.DataFrame, list[str], list[str], list[float]]:
    """The index of the kept chips: id, row, sample, the catalog's columns, chip centre and nodata, label values."""
    kept = chip_meta.loc[keep].reset_index(drop=True)
    frame = catalog.frame.copy()
    frame.insert(0, SAMPLE, frame.pop(ID).astype(str))
    if IMAGE in frame.columns:
        frame[IMAGE] = frame.pop(IMAGE)
    index = kept[[ID, SAMPLE]].merge(frame, on=SAMPLE, how="left", sort=False)
    index.insert(1, "row", np.arange(len(index)))
    for col in CHIP_COLUMNS:
        index[col] = kept[col].to_numpy()
    targets, classes, thresholds = list(catalog.targets), list(catalog.classes), []
    if spec.label_raster:
        name = labels.name if labels else "nightlights"
        values = kept["label"].to_numpy(float)
        bad = ~np.isfinite(values)
        if bad.any():
            raise GeocnnError(f"{spec.label_raster}: no valid label pixel under {int(bad.sum())} kept chips (e.g. id "
                              f"{index[ID].iloc[int(np.flatnonzero(bad)[0])]!r}); lower earth.max_nodata_fraction "
                              "or check the label raster's nodata")
        index[f"{name}_value"] = values
        if labels is not None and labels.as_target:
            if labels.classes:
                codes, thresholds = nightlight_classes(values, labels.classes, labels.n_classes, seed=labels.seed)
                index[name] = codes
                classes = [f"class{k}" for k in range(labels.n_classes)]
            else:
                index[name] = values
            targets = [*targets, name] if name not in targets else targets
    return index, targets, classes, [float(t) for t in thresholds]


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


def band_stats(chips: np.ndarray, rows: np.ndarray, batch: int = 512) -> tuple[list[float], list[float]]:
    """Per-band mean and std over the given rows (the train split only), in float64 batches; NaN (nodata) skipped."""
    if len(rows) == 0:
        raise GeocnnError("cannot compute band statistics: the train split is empty; lower split.val_fraction "
                          "and split.test_fraction or add samples")
    c = chips.shape[1]
    total = np.zeros(c)
    sq = np.zeros(c)
    n = np.zeros(c)
    for start in range(0, len(rows), batch):
        block = np.asarray(chips[np.sort(rows[start:start + batch])], dtype=np.float64)
        valid = np.isfinite(block)
        block = np.where(valid, block, 0.0)
        total += block.sum(axis=(0, 2, 3))
        sq += (block ** 2).sum(axis=(0, 2, 3))
        n += valid.sum(axis=(0, 2, 3))
    if (n == 0).any():
        raise GeocnnError(f"band(s) {np.flatnonzero(n == 0).tolist()} have no valid (non-nodata) pixel in the train "
                          "chips; check the band's nodata value (earth.nodata) or drop the band")
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean ** 2, 0))
    return mean.tolist(), np.where(std > 1e-8, std, 1.0).tolist()
