"""Train/val/test assignment of samples (random, stratified, grouped, spatial blocks, folds), seeded and cached."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from geocnn.atomic import atomic_path
from geocnn.config import SplitConfig
from geocnn.data.catalog import SPLIT_NAMES
from geocnn.data.store import ChipStore, band_stats
from geocnn.errors import GeocnnError

SPLITS = ("train", "val", "test")


@dataclass
class SplitView:
    """A store plus one split assignment (per chip, from its sample's) and the train-only band statistics."""

    store: ChipStore
    split: np.ndarray
    """'train'/'val'/'test' of every chip (store row)."""
    mean: list[float]
    std: list[float]
    key: str
    fold: int | None = None
    folds: np.ndarray | None = None
    """Cross-validation fold of every chip (None without split.folds)."""

    def rows(self, name: str) -> np.ndarray:
        """Store rows (chips) of one partition (train, val or test)."""
        return np.flatnonzero(self.split == name)

    def sample_split(self) -> np.ndarray:
        """'train'/'val'/'test' of every sample, in the store's samples() order."""
        out = np.empty(int(self.store.sample_of_rows().max()) + 1, dtype=object)
        out[self.store.sample_of_rows()] = self.split
        return out


def _counts(n: int, cfg: SplitConfig) -> tuple[int, int]:
    n_test = int(round(n * cfg.test_fraction))
    n_val = int(round(n * cfg.val_fraction))
    return n_val, n_test


KM_PER_DEG = 111.32


def spatial_blocks(lat: np.ndarray, lon: np.ndarray, block_km: float) -> np.ndarray:
    """Square blocks of about block_km on the ground: an equal-area (sinusoidal) grid of lat/lon points."""
    y = np.asarray(lat, float) * KM_PER_DEG
    x = np.asarray(lon, float) * KM_PER_DEG * np.cos(np.radians(lat))
    return np.char.add(np.char.add(np.floor(y / block_km).astype(int).astype(str), "_"),
                       np.floor(x / block_km).astype(int).astype(str))


def sample_groups(index: pd.DataFrame, cfg: SplitConfig) -> np.ndarray:
    """The group of every sample: spatial block (method 'blocks') or the group column."""
    if cfg.method == "blocks":
        missing = [c for c in ("lat", "lon") if c not in index.columns]
        if missing:
            raise GeocnnError(f"split.method=blocks needs point coordinates; the catalog has no {missing} column(s). "
                              "Name the coordinate columns lat and lon (Earth: earth.lat_column/lon_column), or use "
                              "split.method=grouped")
        lat, lon = index["lat"].to_numpy(float), index["lon"].to_numpy(float)
        bad = ~(np.isfinite(lat) & np.isfinite(lon))
        if bad.any():
            raise GeocnnError(f"split.method=blocks: sample {index['id'].iloc[int(np.flatnonzero(bad)[0])]!r} has no "
                              f"lat/lon ({int(bad.sum())} such rows); fill the coordinates or use split.method=grouped")
        return spatial_blocks(lat, lon, cfg.block_km)
    col = cfg.group_column or ("group" if "group" in index.columns else None)
    if not col or col not in index.columns:
        raise GeocnnError(f"split.method={cfg.method} needs split.group_column naming a catalog column; got {col!r}. "
                          f"Columns: {list(index.columns)}")
    return index[col].astype(str).to_numpy()


def group_folds(groups: np.ndarray, k: int | str, seed: int) -> np.ndarray:
    """Fold number per sample; whole groups per fold, fold sizes balanced (largest groups placed first)."""
    uniq, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    n_folds = len(uniq) if k == "groups" else int(k)
    if len(uniq) < n_folds:
        raise GeocnnError(f"split.folds={k}: only {len(uniq)} groups, fewer than the folds; lower split.folds")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(n_folds)
    fold_of_group = np.empty(len(uniq), int)
    for g in order:
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += sizes[g]
    return fold_of_group[inverse]


def assign_fold(index: pd.DataFrame, cfg: SplitConfig, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validation split: fold 'fold' is test, val is carved from the other groups; returns (split, folds)."""
    groups = sample_groups(index, cfg)
    folds = group_folds(groups, cfg.folds, cfg.seed)
    n_folds = int(folds.max()) + 1
    if not 0 <= fold < n_folds:
        raise GeocnnError(f"fold {fold} does not exist: split.folds gives {n_folds} folds (0..{n_folds - 1})")
    out = np.full(len(index), "train", dtype=object)
    out[folds == fold] = "test"
    rest = np.unique(groups[folds != fold])
    target = int(round(len(index) * cfg.val_fraction))
    filled = 0
    for g in np.random.default_rng(cfg.seed + 1 + fold).permutation(rest):
        if filled >= target:
            break
        members = groups == g
        if (out == "train").sum() - members.sum() < 1:
            continue
        out[members] = "val"
        filled += int(members.sum())
    _check_partitions(out, cfg, need_test=True)
    return out, folds


def n_folds(index: pd.DataFrame, cfg: SplitConfig) -> int:
    """How many cross-validation folds the config gives on this index (0 when split.folds is unset)."""
    if cfg.folds is None:
        return 0
    return int(group_folds(sample_groups(index, cfg), cfg.folds, cfg.seed).max()) + 1


def predefined_splits(index: pd.DataFrame, cfg: SplitConfig) -> np.ndarray:
    """The data set's own partition of every sample (split.method=predefined), from split.split_column."""
    col = cfg.split_column
    if col not in index.columns:
        raise GeocnnError(f"split.method=predefined reads the data set's own split from column '{col}' "
                          f"(split.split_column), which the catalog does not have; add it (train/val/test per row), "
                          "lay the images out as train/ validation/ test/ folders of class folders, or choose "
                          "another split.method")
    raw = index[col].astype(str).str.strip().str.lower()
    known = raw.isin(list(SPLIT_NAMES))
    if not known.all():
        i = int(np.flatnonzero(~known.to_numpy())[0])
        raise GeocnnError(f"catalog row {i + 2}, column '{col}': {index[col].iloc[i]!r} is not a split name; use "
                          f"train, val or test (or one of {sorted(SPLIT_NAMES)})")
    out = raw.map(SPLIT_NAMES).to_numpy(dtype=object)
    if not (out == "train").any():
        raise GeocnnError(f"split.method=predefined: no row of column '{col}' is train; the data set must hold "
                          "training samples")
    if not (out == "val").any() and cfg.val_fraction > 0:
        raise GeocnnError(f"split.method=predefined: column '{col}' has no val rows, and model selection needs a "
                          "validation partition; add validation samples (a validation/ folder or val rows)")
    return out


def assign_splits(index: pd.DataFrame, cfg: SplitConfig, stratify: str | None = None) -> np.ndarray:
    """Return 'train'/'val'/'test' per row; the same inputs and seed give the same answer.

    Errors name the config key to change when a partition would be empty.
    """
    if cfg.method == "predefined":
        return predefined_splits(index, cfg)
    n = len(index)
    n_val, n_test = _counts(n, cfg)
    if cfg.val_fraction > 0 and n_val == 0 or cfg.test_fraction > 0 and n_test == 0 or n - n_val - n_test < 1:
        raise GeocnnError(f"split: {n} samples are too few for val_fraction={cfg.val_fraction} and "
                          f"test_fraction={cfg.test_fraction} (a partition would be empty); add samples or change "
                          "split.val_fraction / split.test_fraction")
    out = np.full(n, "train", dtype=object)
    if cfg.method in ("grouped", "blocks"):
        groups = sample_groups(index, cfg)
        uniq = np.unique(groups)
        if len(uniq) < 3:
            raise GeocnnError(f"split: {cfg.method} split needs at least 3 groups, found {len(uniq)}")
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
    rest, test = (train_test_split(rows, test_size=n_test, random_state=cfg.seed, stratify=strat) if n_test
                  else (rows, []))
    if n_val:
        train, val = train_test_split(rest, test_size=n_val, random_state=cfg.seed + 1,
                                      stratify=None if strat is None else strat[rest])
        out[val] = "val"
    out[test] = "test"
    return out


def _check_partitions(split: np.ndarray, cfg: SplitConfig, need_test: bool = False) -> None:
    """Fail when train, or a requested val/test partition, came out empty (e.g. too few, too large groups)."""
    wanted = {"train": True, "val": cfg.val_fraction > 0, "test": need_test or cfg.test_fraction > 0}
    empty = [p for p, want in wanted.items() if want and not (split == p).any()]
    if empty:
        raise GeocnnError(f"split: partition(s) {empty} would be empty with {cfg.method} split "
                          f"(val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction}); lower "
                          "split.val_fraction / split.test_fraction or use more groups")


def keep_labels(split: np.ndarray, fraction: float, seed: int, classes: np.ndarray | None = None) -> np.ndarray:
    """Mark all but ``fraction`` of the 'train' samples 'unlabeled' (at least one per class): per class, the
    first samples of one seeded permutation, so smaller fractions are nested in larger ones."""
    out = split.copy()
    train = np.flatnonzero(split == "train")
    order = np.random.default_rng([seed, 7919]).permutation(train)
    labels = np.zeros(len(order), dtype=int) if classes is None else pd.factorize(classes[order])[0]
    keep = np.zeros(len(order), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep[members[:max(1, int(np.ceil(fraction * len(members))))]] = True
    out[order[~keep]] = "unlabeled"
    return out


def split_store(store: ChipStore, cfg: SplitConfig, stratify: str | None = None, fold: int | None = None) -> SplitView:
    """Assign (or reload) the split of this store's samples, and per-band statistics from the train chips only.

    Samples are split (a sample's chips share its partition); with ``split.folds`` set, ``fold`` picks the test
    fold (default 0).
    """
    if cfg.folds is not None and fold is None:
        fold = 0
    spec = json.dumps({"cfg": cfg.model_dump(), "stratify": stratify, "fold": fold}, sort_keys=True)
    key = hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()
    folder = store.root / "splits"
    table, stats = folder / f"{key}.parquet", folder / f"{key}.json"
    if table.exists() and stats.exists():
        saved = pd.read_parquet(table)
        meta = json.loads(stats.read_text())
        folds = saved["fold"].to_numpy() if "fold" in saved.columns else None
        return SplitView(store, saved["split"].to_numpy().astype(object), meta["mean"], meta["std"], key, fold, folds)
    samples = store.samples()
    sample_folds = None
    if fold is not None:
        sample_split, sample_folds = assign_fold(samples, cfg, fold)
    else:
        sample_split = assign_splits(samples, cfg, stratify)
    if cfg.label_fraction < 1:
        sample_split = keep_labels(np.asarray(sample_split, dtype=object), cfg.label_fraction, cfg.seed,
                                   samples[stratify].to_numpy() if stratify in samples.columns else None)
    codes = store.sample_of_rows()
    split = np.asarray(sample_split, dtype=object)[codes]
    folds = None if sample_folds is None else np.asarray(sample_folds)[codes]
    mean, std = band_stats(store.chips, np.flatnonzero(split == "train"))
    with atomic_path(table) as tmp:
        frame = pd.DataFrame({"id": store.index["id"], "split": split.astype(str)})
        if folds is not None:
            frame["fold"] = folds
        frame.to_parquet(tmp, index=False)
    with atomic_path(stats) as tmp:
        Path(tmp).write_text(json.dumps({"mean": mean, "std": std, "spec": json.loads(spec)}, indent=2))
    return SplitView(store, split, mean, std, key, fold, folds)
