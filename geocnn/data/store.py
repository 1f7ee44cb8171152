"""ChipStore: a catalog materialised once as a memory-mapped (N, C, H, W) array + index.parquet + meta.json."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from geocnn import __version__, fanout
from geocnn.atomic import atomic_dir, atomic_path
from geocnn.data.catalog import ID, IMAGE, Catalog
from geocnn.data.chips import Chip, ChipSource, ChipSpec, chip_ids
from geocnn.data.sources.nightlights import nightlight_classes
from geocnn.data.sources.uris import fingerprint, is_uri, path_exists
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
    """BLAKE2 digest of a file's bytes (a remote object: its ETag and size, see uris.fingerprint)."""
    if is_uri(path):
        return fingerprint(path)
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
                progress: bool = True, shard_size: int = 2000) -> ChipStore:
    """Cut every catalog row into chips (its file, or scene windows around its point), or reuse an identical build.

    Chips with more nodata than ``spec.max_nodata_fraction`` are dropped and counted in the report. The store lives
    at ``store_root/<content hash>``; it is written to a temporary folder and renamed only when complete, so an
    interrupted build leaves nothing behind. Under a parallel task runner (:mod:`geocnn.fanout`), the rows are cut
    in shards of ``shard_size`` rows side by side and assembled in catalog order: the same store, byte for byte.
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
        if "{band}" not in path and not path_exists(path):
            raise GeocnnError(f"{path}: raster not found (earth.scenes / earth.layers / earth.label_raster)")
    key = store_key(catalog, params, [p for p in spec.inputs() if "{band}" not in p])
    root = Path(store_root) / key[:20]
    if (root / META).exists():
        return ChipStore.open(root)
    with _build_lock(root):  # one builder per store (DDP ranks under torchrun, workers); the others wait, then reuse
        if (root / META).exists():
            return ChipStore.open(root)
        return _build(catalog, spec, root, key, params, labels, progress, shard_size)


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on ``.<root>.lock`` beside the store while it is built (DDP ranks, workers, two commands):
    the others wait, then find the store. The lock file is removed when the holder is done (a waiter that then holds
    a removed file's lock takes a fresh one), so nothing is left beside the stores."""
    root.parent.mkdir(parents=True, exist_ok=True)
    path = root.parent / f".{root.name}.lock"
    while True:
        handle = open(path, "a")  # noqa: SIM115 - held open across the yield
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # the file was removed by the previous holder: lock the current one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _build(catalog: Catalog, spec: ChipSpec, root: Path, key: str, params: dict[str, Any],
           labels: LabelSpec | None, progress: bool, shard_size: int = 2000) -> ChipStore:
    """Cut the chips into a temporary folder that becomes ``root`` only when complete."""
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
        meta_rows: list[dict[str, Any]] = [{}] * (len(rows) * per)  # filled by position: rows may come unordered
        keep = np.zeros(len(rows) * per, bool)
        pool = ThreadPoolExecutor(2) if src.threaded else None
        mapper = fanout.current()
        if mapper.parallel and len(rows) - 1 > shard_size:
            made = _sharded(rows, spec, catalog.source, tmp, mapper, shard_size)
        else:
            made = (enumerate(pool.map(make, range(1, len(rows))), 1) if pool
                    else src.make_rows(rows, range(1, len(rows))))
        try:
            for i, sample_chips in tqdm(_chain((0, first), made), total=len(rows), desc="chips",
                                        disable=None if progress else True):
                ids = chip_ids(str(rows[i][ID]), sample_chips)
                for k, chip in enumerate(sample_chips):
                    j = i * per + k
                    if chip.pixels.shape != shape or chip.pixels.dtype != dtype:
                        where = rows[i].get(IMAGE, rows[i][ID])
                        raise GeocnnError(f"{where}: chip of shape {chip.pixels.shape} ({chip.pixels.dtype}), the "
                                          f"first row's is {shape} ({dtype}); all images must have the same bands "
                                          "and type (set data.channels / data.bands, or earth.bands).")
                    meta_rows[j] = {ID: ids[k], "sample": str(rows[i][ID]), "chip_lat": chip.lat,
                                    "chip_lon": chip.lon, "nodata_fraction": chip.nodata, "label": chip.label}
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


@dataclass(frozen=True)
class ShardCut:
    """Catalog rows to cut into chips as a unit of work (rows keyed by their catalog position)."""

    spec: ChipSpec
    source: str
    rows: dict[int, dict[str, Any]]
    out: str


def cut_shard(job: ShardCut) -> str:
    """Cut a shard's rows (scene by scene, as the whole build would) into ``out``: chips.npy in position order and
    chips.json (each row's chip metadata). Written atomically, so a rerun after a lost worker starts clean."""
    positions = sorted(job.rows)
    with ChipSource(job.spec, job.source) as src:
        made = dict(src.make_rows(job.rows, positions))
    pixels = [c.pixels for i in positions for c in made[i]]
    first = pixels[0]
    for i in positions:
        for c in made[i]:
            if c.pixels.shape != first.shape or c.pixels.dtype != first.dtype:
                where = job.rows[i].get(IMAGE, job.rows[i][ID])
                raise GeocnnError(f"{where}: chip of shape {c.pixels.shape} ({c.pixels.dtype}), others are "
                                  f"{first.shape} ({first.dtype}); all images must have the same bands and type (set "
                                  "data.channels / data.bands, or earth.bands).")
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / CHIPS) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.stack(pixels))
    meta = [[{"suffix": c.suffix, "lat": c.lat, "lon": c.lon, "label": c.label, "nodata": c.nodata} for c in made[i]]
            for i in positions]
    with atomic_path(out / "chips.json") as tmp:
        tmp.write_text(json.dumps({"positions": positions, "chips": meta}))
    return str(out)


def _sharded(rows: list[dict[str, Any]], spec: ChipSpec, source: str, tmp: Path, mapper: fanout.Mapper,
             shard_size: int) -> Iterator[tuple[int, list[Chip]]]:
    """Rows 1.. cut in shards by ``mapper`` (each a unit writing under ``tmp/shards``), yielded in catalog order."""
    jobs = [ShardCut(spec, source, {i: rows[i] for i in range(a + 1, b + 1)}, str(tmp / "shards" / f"{k:05d}"))
            for k, (a, b) in enumerate(fanout.shards(len(rows) - 1, shard_size))]
    for folder in map(Path, mapper.map("ingest-shard", cut_shard, jobs)):
        chips = np.load(folder / CHIPS, mmap_mode="r")
        meta = json.loads((folder / "chips.json").read_text())
        j = 0
        for i, described in zip(meta["positions"], meta["chips"]):
            made = []
            for d in described:
                made.append(Chip(np.asarray(chips[j]), suffix=d["suffix"], lat=d["lat"], lon=d["lon"],
                                 label=d["label"], nodata=d["nodata"]))
                j += 1
            yield i, made
        del chips
        shutil.rmtree(folder)
    shutil.rmtree(tmp / "shards", ignore_errors=True)


def _chain(first: Any, rest: Any) -> Any:
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
