"""ChipStore: a catalog materialised once as a memory-mapped (N, C, H, W) array + index.parquet + meta.json."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from geocnn import __version__
from geocnn.data.catalog import ID, IMAGE, Catalog
from geocnn.data.sources.images import crop_resize
from geocnn.errors import GeocnnError
from geocnn.atomic import atomic_dir

CHIPS = "chips.npy"
INDEX = "index.parquet"
META = "meta.json"
STORE_FORMAT = 1


@dataclass
class ChipStore:
    """An on-disk chip array with its index (id, row, targets, group) and metadata."""

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


def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def store_key(catalog: Catalog, params: dict[str, Any]) -> str:
    """Content hash of the inputs: catalog rows, the bytes of every image, and the chip parameters."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"params": params, "format": STORE_FORMAT, "targets": catalog.targets,
                         "classes": catalog.classes}, sort_keys=True).encode())
    h.update(pd.util.hash_pandas_object(catalog.frame.drop(columns=[IMAGE]), index=False).to_numpy().tobytes())
    with ThreadPoolExecutor(4) as pool:
        for digest in pool.map(_file_digest, catalog.frame[IMAGE].tolist()):
            h.update(digest.encode())
    return h.hexdigest()


def build_galaxy_store(catalog: Catalog, store_root: str | Path, crop: int, chip_size: int, channels: str = "rgb",
                       progress: bool = True) -> ChipStore:
    """Materialise a galaxy catalog as chips (centre crop + resize), or reuse an identical earlier build.

    The store lives at ``store_root/<content hash>``; it is written to a temporary folder and renamed only
    when complete, so an interrupted build leaves nothing behind.
    """
    from geocnn.data.sources.galaxy_tables import load_image

    params = {"kind": "galaxy", "crop": crop, "chip_size": chip_size, "channels": channels}
    key = store_key(catalog, params)
    root = Path(store_root) / key[:20]
    if (root / META).exists():
        return ChipStore.open(root)

    paths = catalog.frame[IMAGE].tolist()

    def load(i: int) -> np.ndarray:
        try:
            return crop_resize(load_image(Path(paths[i]), channels), crop, chip_size, source=paths[i])
        except GeocnnError as exc:
            raise GeocnnError(f"{catalog.source}: row {i + 2} (id {catalog.frame[ID].iloc[i]!r}): {exc}") from None

    first = load(0)
    with atomic_dir(root) as tmp:
        chips = np.lib.format.open_memmap(tmp / CHIPS, mode="w+", dtype=first.dtype,
                                          shape=(len(paths), *first.shape))
        chips[0] = first
        with ThreadPoolExecutor(2) as pool:
            it = pool.map(load, range(1, len(paths)))
            for i, chip in enumerate(tqdm(it, total=len(paths) - 1, desc="chips", disable=not progress), start=1):
                if chip.shape != first.shape:
                    raise GeocnnError(f"{paths[i]}: has {chip.shape[0]} bands, the first image has {first.shape[0]}; "
                                      "all images must have the same bands (set data.channels).")
                chips[i] = chip
        chips.flush()
        del chips
        index = catalog.frame.drop(columns=[IMAGE]).copy()
        index.insert(1, "row", np.arange(len(index)))
        index["image"] = catalog.frame[IMAGE].to_numpy()
        index.to_parquet(tmp / INDEX, index=False)
        bands = ["red", "green", "blue"] if first.shape[0] == 3 else [f"band{b + 1}" for b in range(first.shape[0])]
        meta = {"key": key, "params": params, "bands": bands, "dtype": str(first.dtype),
                "shape": [len(paths), *first.shape], "targets": catalog.targets, "classes": catalog.classes,
                "source": catalog.source, "geocnn_version": __version__, "store_format": STORE_FORMAT}
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return ChipStore.open(root)


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
