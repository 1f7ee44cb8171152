"""Train/val/test assignment (random, stratified, grouped), deterministic for a seed and persisted in the store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from geocnn.config import SplitConfig
from geocnn.errors import GeocnnError
from geocnn.io_utils import atomic_path
from geocnn.store import ChipStore, band_stats

SPLITS = ("train", "val", "test")


@dataclass
class SplitView:
    """A store plus one split assignment and the train-only band statistics."""

    store: ChipStore
    split: np.ndarray
    mean: list[float]
    std: list[float]
    key: str

    def rows(self, name: str) -> np.ndarray:
        """Store rows of one partition (train, val or test)."""
        return np.flatnonzero(self.split == name)


def _counts(n: int, cfg: SplitConfig) -> tuple[int, int]:
    n_test = int(round(n * cfg.test_fraction))
    n_val = int(round(n * cfg.val_fraction))
    return n_val, n_test


def assign_splits(index: pd.DataFrame, cfg: SplitConfig, stratify: str | None = None) -> np.ndarray:
    """Return 'train'/'val'/'test' per row; the same inputs and seed give the same answer.

    Errors name the config key to change when a partition would be empty.
    """
    n = len(index)
    n_val, n_test = _counts(n, cfg)
    if cfg.val_fraction > 0 and n_val == 0 or cfg.test_fraction > 0 and n_test == 0 or n - n_val - n_test < 1:
        raise GeocnnError(f"split: {n} samples are too few for val_fraction={cfg.val_fraction} and "
                          f"test_fraction={cfg.test_fraction} (a partition would be empty); add samples or change "
                          "split.val_fraction / split.test_fraction")
    out = np.full(n, "train", dtype=object)
    if cfg.method == "grouped":
        col = cfg.group_column
        if not col or col not in index.columns:
            raise GeocnnError(f"split.method=grouped needs split.group_column naming a catalog column; got {col!r}. "
                              f"Columns: {list(index.columns)}")
        groups = index[col].astype(str).to_numpy()
        uniq = np.unique(groups)
        if len(uniq) < 3:
            raise GeocnnError(f"split: grouped split on '{col}' needs at least 3 groups, found {len(uniq)}")
        order = np.random.default_rng(cfg.seed).permutation(uniq)
        sizes = pd.Series(groups).value_counts()
        filled = {"test": 0, "val": 0}
        targets = {"test": n_test, "val": n_val}
        for g in order:
            for part in ("test", "val"):
                if filled[part] < targets[part]:
                    out[groups == g] = part
                    filled[part] += int(sizes[g])
                    break
        _check_partitions(out, cfg)
        return out
    rows = np.arange(n)
    strat = None
    if cfg.method == "stratified":
        col = cfg.stratify_column or stratify
        if not col or col not in index.columns:
            raise GeocnnError(f"split.method=stratified needs split.stratify_column naming a class column; got {col!r}")
        strat = index[col].to_numpy()
        if pd.Series(strat).value_counts().min() < 3:
            raise GeocnnError(f"split: a class of '{col}' has fewer than 3 samples, too few to stratify; use "
                              "split.method=random or add samples")
        k = pd.Series(strat).nunique()
        for part, size in (("val", n_val), ("test", n_test)):
            if 0 < size < k:
                raise GeocnnError(f"split: the {part} partition would hold {size} samples, fewer than the {k} "
                                  f"classes of '{col}', so it cannot be stratified; raise split.{part}_fraction, "
                                  "add samples, or use split.method=random")
    rest, test = train_test_split(rows, test_size=n_test, random_state=cfg.seed, stratify=strat) if n_test else (rows, [])
    if n_val:
        train, val = train_test_split(rest, test_size=n_val, random_state=cfg.seed + 1,
                                      stratify=None if strat is None else strat[rest])
        out[val] = "val"
    out[test] = "test"
    return out


def _check_partitions(split: np.ndarray, cfg: SplitConfig) -> None:
    """Fail when train, or a requested val/test partition, came out empty (e.g. too few, too large groups)."""
    wanted = {"train": True, "val": cfg.val_fraction > 0, "test": cfg.test_fraction > 0}
    empty = [p for p, want in wanted.items() if want and not (split == p).any()]
    if empty:
        raise GeocnnError(f"split: partition(s) {empty} would be empty with {cfg.method} split "
                          f"(val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction}); lower "
                          "split.val_fraction / split.test_fraction or use more groups")


def split_store(store: ChipStore, cfg: SplitConfig, stratify: str | None = None) -> SplitView:
    """Assign (or reload) the split for this store and config, with band stats from the train rows only."""
    spec = json.dumps({"cfg": cfg.model_dump(), "stratify": stratify}, sort_keys=True)
    key = hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()
    folder = store.root / "splits"
    table, stats = folder / f"{key}.parquet", folder / f"{key}.json"
    if table.exists() and stats.exists():
        split = pd.read_parquet(table)["split"].to_numpy().astype(object)
        meta = json.loads(stats.read_text())
        return SplitView(store, split, meta["mean"], meta["std"], key)
    split = assign_splits(store.index, cfg, stratify)
    mean, std = band_stats(store.chips, np.flatnonzero(split == "train"))
    with atomic_path(table) as tmp:
        pd.DataFrame({"id": store.index["id"], "split": split.astype(str)}).to_parquet(tmp, index=False)
    with atomic_path(stats) as tmp:
        Path(tmp).write_text(json.dumps({"mean": mean, "std": std, "spec": json.loads(spec)}, indent=2))
    return SplitView(store, split, mean, std, key)
