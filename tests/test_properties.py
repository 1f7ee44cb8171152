"""Property-based tests (hypothesis): tree-head constraints, split invariants, chip-window reprojection round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from geocnn.config import SplitConfig
from geocnn.data.schema import KAGGLE_TREE
from geocnn.data.splits import assign_fold, assign_splits
from geocnn.errors import GeocnnError
from geocnn.models.heads import DecisionTreeHead

FINITE = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.just(37)), elements=FINITE))
def test_tree_head_obeys_the_decision_tree_for_any_input(raw: np.ndarray) -> None:
    head = DecisionTreeHead(4, KAGGLE_TREE)
    out = head.constrain(torch.from_numpy(raw).double()).numpy()
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1 + 1e-9).all()
    for start, stop, parent in KAGGLE_TREE.slices():
        total = out[:, start:stop].sum(1)
        expected = np.ones(len(out)) if parent is None else out[:, parent]
        np.testing.assert_allclose(total, expected, rtol=1e-9, atol=1e-12)


def refusal_due(index: pd.DataFrame, cfg: SplitConfig) -> str | None:
    """The message a split must refuse with, from the counts alone (None: it must not refuse, except that a grouped
    split may find a partition empty when whole groups cannot fill it)."""
    n = len(index)
    n_val, n_test = int(round(n * cfg.val_fraction)), int(round(n * cfg.test_fraction))
    if (cfg.val_fraction > 0 and n_val == 0) or (cfg.test_fraction > 0 and n_test == 0) or n - n_val - n_test < 1:
        return "are too few for val_fraction"
    if cfg.method == "grouped" and index["group"].nunique() < 3:
        return "needs at least 3 groups"
    if cfg.method == "stratified":
        counts = index["label"].value_counts()
        if counts.min() < 3:
            return "too few to stratify"
        if any(0 < size < len(counts) for size in (n_val, n_test)):
            return "cannot be stratified"
    return None


def index_frame(n: int, n_groups: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"s{i}" for i in range(n)], "group": rng.integers(0, n_groups, n).astype(str),
                         "label": rng.integers(0, 3, n).astype(str)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(10, 400), n_groups=st.integers(1, 40), seed=st.integers(0, 10_000),
       method=st.sampled_from(["random", "stratified", "grouped"]),
       val=st.sampled_from([0.0, 0.1, 0.2, 0.3]), test=st.sampled_from([0.1, 0.2, 0.4]))
def test_splits_are_complete_disjoint_deterministic_and_keep_groups_whole(n: int, n_groups: int, seed: int,
                                                                          method: str, val: float,
                                                                          test: float) -> None:
    index = index_frame(n, n_groups, seed)
    cfg = SplitConfig(method=method, val_fraction=val, test_fraction=test, seed=seed,
                      group_column="group" if method == "grouped" else None, stratify_column="label")
    due = refusal_due(index, cfg)
    try:
        split = assign_splits(index, cfg)
    except GeocnnError as exc:
        # refused exactly when the counts make a partition impossible, with the message for that reason
        assert due is not None or method == "grouped", exc
        assert any(m in str(exc) for m in ([due] if due else ["would be empty"])), (due, exc)
        return
    assert due is None, f"expected a refusal ({due})"
    assert split.shape == (n,) and set(split) <= {"train", "val", "test"}  # complete: one label per row
    assert (split == "train").any() and ((split == "test").any()) and ((split == "val").any() == (val > 0))
    np.testing.assert_array_equal(split, assign_splits(index, cfg))  # deterministic
    if method == "grouped":
        per_group = pd.Series(split).groupby(index["group"].to_numpy()).nunique()
        assert (per_group == 1).all()  # no group straddles two partitions


@settings(max_examples=60, deadline=None)
@given(n=st.integers(20, 300), n_groups=st.integers(2, 25), k=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_folds_test_every_sample_once_and_never_split_a_group(n: int, n_groups: int, k: int, seed: int) -> None:
    index = index_frame(n, n_groups, seed)
    cfg = SplitConfig(method="grouped", group_column="group", folds=k, val_fraction=0.15, seed=seed)
    tested = np.zeros(n, int)
    few_groups = index["group"].nunique() < k
    try:
        for f in range(k):
            split, folds = assign_fold(index, cfg, f)
            tested += split == "test"
            groups = index["group"].to_numpy()
            assert (pd.Series(split).groupby(groups).nunique() == 1).all()
            assert (pd.Series(folds).groupby(groups).nunique() == 1).all()
    except GeocnnError as exc:
        # fewer groups than folds: refused naming the folds; else only when no group is left for train or val
        expected = "fewer than the folds" if few_groups else "would be empty"
        assert expected in str(exc), exc
        return
    assert not few_groups
    assert (tested == 1).all()  # the union of test folds is every sample, once


@pytest.fixture(scope="module")
def utm_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300 x 200 px, 30 m GeoTIFF in UTM zone 33N."""
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path_factory.mktemp("utm") / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=300, height=200, count=1, dtype="float32", crs="EPSG:32633",
                       transform=from_origin(500_000, 4_700_000, 30, 30)) as dst:
        dst.write(np.zeros((1, 200, 300), np.float32))
    return path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(col=st.floats(0, 300), row=st.floats(0, 200), size=st.integers(4, 64))
def test_chip_window_survives_a_reprojection_round_trip(utm_scene: Path, col: float, row: float, size: int) -> None:
    from rasterio.warp import transform

    from geocnn.data.sources.raster import chip_window, open_scene

    with open_scene(utm_scene) as scene:
        x, y = scene.transform * (col, row)
        (lon,), (lat,) = transform("EPSG:32633", "EPSG:4326", [x], [y])
        window = chip_window(scene, lon, lat, size_px=size)
        assert abs(window.col_off + window.width / 2 - col) < 0.5
        assert abs(window.row_off + window.height / 2 - row) < 0.5
        assert window.width == window.height == size
        metres = chip_window(scene, lon, lat, size_m=30.0 * size)
        assert abs(metres.width - size) < 0.5 and abs(metres.col_off + metres.width / 2 - col) < 0.5
