"""Spatial splits: blocks of k km, grouped folds (out of group), leave-one-group-out; persisted and deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geocnn.config import SplitConfig
from geocnn.data.splits import assign_fold, assign_splits, group_folds, n_folds, spatial_blocks
from geocnn.errors import GeocnnError


def points(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "lat": rng.uniform(-5, 5, n), "lon": rng.uniform(30, 40, n),
                         "group": rng.choice(list("ABCDEFG"), n)})


def test_blocks_are_about_k_km_on_the_ground() -> None:
    # 0.5 degree of latitude is 55.7 km: with 50 km blocks two points 0.5 deg apart north-south never share a block.
    lat = np.array([0.0, 0.5, 60.01, 60.01])
    lon = np.array([10.0, 10.0, 9.2, 9.9])  # at 60 N, 0.7 deg of longitude is only 39 km (x 512 and 551 km)
    b = spatial_blocks(lat, lon, 50.0)
    assert b[0] != b[1]
    assert spatial_blocks(lat, lon, 100.0)[2] == spatial_blocks(lat, lon, 100.0)[3]
    assert spatial_blocks(lat, lon, 20.0)[2] != spatial_blocks(lat, lon, 20.0)[3]


def test_group_folds_keep_groups_whole_and_balance_sizes() -> None:
    groups = np.repeat(list("ABCDEFGHIJ"), [50, 40, 30, 30, 20, 20, 10, 10, 5, 5])
    folds = group_folds(groups, 5, seed=0)
    for g in np.unique(groups):
        assert len(np.unique(folds[groups == g])) == 1
    sizes = np.bincount(folds)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 20, sizes
    assert (group_folds(groups, 5, seed=0) == folds).all()
    logo = group_folds(groups, "groups", seed=0)
    assert len(np.unique(logo)) == 10


@pytest.mark.parametrize("method", ["grouped", "blocks"])
def test_fold_split_puts_each_group_in_one_partition_and_test_is_the_fold(method: str) -> None:
    idx = points()
    cfg = SplitConfig(method=method, folds=5, val_fraction=0.15, block_km=200, group_column="group"
                      if method == "grouped" else None)
    groups = idx["group"].to_numpy() if method == "grouped" else spatial_blocks(idx["lat"], idx["lon"], 200)
    seen_test = np.zeros(len(idx), int)
    for f in range(n_folds(idx, cfg)):
        split, folds = assign_fold(idx, cfg, f)
        assert set(split) == {"train", "val", "test"}
        assert (split[folds == f] == "test").all() and (split[folds != f] != "test").all()
        for g in np.unique(groups):
            assert len(set(split[groups == g])) == 1, g
        seen_test += split == "test"
        again, _ = assign_fold(idx, cfg, f)
        assert (again == split).all()
    assert (seen_test == 1).all()  # every sample is tested exactly once over the folds


def test_blocks_method_without_coordinates_names_the_fix() -> None:
    with pytest.raises(GeocnnError, match="lat.*lon|coordinates"):
        assign_splits(pd.DataFrame({"id": [str(i) for i in range(50)]}), SplitConfig(method="blocks"))


def test_too_many_folds_for_the_groups_is_an_error() -> None:
    with pytest.raises(GeocnnError, match="split.folds"):
        assign_fold(points(), SplitConfig(method="grouped", group_column="group", folds=9), 0)
