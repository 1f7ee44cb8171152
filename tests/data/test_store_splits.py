"""Chip stores (content-addressed, atomic, exact chips), train/val/test splits and train-only band statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geocnn.config import SplitConfig
from geocnn.data.catalog import Catalog
from geocnn.data.chips import ChipSpec
from geocnn.data.sources.images import crop_resize
from geocnn.data.splits import assign_splits, split_store
from geocnn.data.store import CHIPS, META, ChipStore, band_stats, build_store
from geocnn.errors import GeocnnError
from tests.conftest import write_rgb


def build_galaxy_store(catalog: Catalog, root: Path, crop: int, chip_size: int, channels: str = "rgb",
                       progress: bool = False) -> ChipStore:
    """A store of image files, centre-cropped then resized (the galaxy domain's chip spec)."""
    return build_store(catalog, ChipSpec(out_px=chip_size, crop=crop, channels=channels), root, progress=progress)

N = 30
SIZE = 32
CLASSES = ["elliptical", "spiral", "ring"]


def _catalog(tmp_path: Path, n: int = N, size: int = SIZE, writer=None) -> Catalog:
    """n small PNGs of varying content plus a catalog frame (id, image, target class code, group)."""
    paths = []
    for i in range(n):
        path = tmp_path / "img" / f"g{i:02d}.png"
        if writer is None:
            write_rgb(path, size=size, seed=i)
        else:
            writer(path, i)
        paths.append(str(path.resolve()))
    frame = pd.DataFrame({"id": [f"g{i:02d}" for i in range(n)], "image": paths,
                          "target": np.arange(n, dtype=np.int64) % 3, "group": [f"s{i // 3}" for i in range(n)]})
    return Catalog(frame=frame, targets=["target"], source=str(tmp_path / "catalog.csv"), classes=CLASSES)


def _pixels(path: str, mode: str = "RGB") -> np.ndarray:
    """(C, H, W) uint8 pixels read directly with PIL."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert(mode))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture()
def catalog(tmp_path: Path) -> Catalog:
    return _catalog(tmp_path)


# ----------------------------------------------------------------------------------------------- store contents


def test_store_chips_equal_crop_resize(tmp_path: Path, catalog: Catalog) -> None:
    store = build_galaxy_store(catalog, tmp_path / "stores", crop=24, chip_size=16, progress=False)
    chips = store.chips
    assert chips.shape == (N, 3, 16, 16)
    assert chips.dtype == np.uint8
    for i, path in enumerate(catalog.frame["image"]):
        np.testing.assert_array_equal(chips[i], crop_resize(_pixels(path), 24, 16), err_msg=f"row {i}")
    # chips of different images differ (no row mix-up / no constant fill)
    assert len({chips[i].tobytes() for i in range(N)}) == N
    assert store.meta["shape"] == [N, 3, 16, 16]
    assert store.targets == ["target"] and store.classes == CLASSES
    assert store.index["id"].tolist() == catalog.frame["id"].tolist()
    assert store.index["row"].tolist() == list(range(N))
    np.testing.assert_array_equal(store.index["target"].to_numpy(), catalog.frame["target"].to_numpy())


def test_store_without_resize_is_the_exact_centre_crop(tmp_path: Path, catalog: Catalog) -> None:
    store = build_galaxy_store(catalog, tmp_path / "stores", crop=20, chip_size=20, progress=False)
    for i, path in enumerate(catalog.frame["image"]):
        np.testing.assert_array_equal(store.chips[i], _pixels(path)[:, 6:26, 6:26])


def test_store_gray_has_one_band(tmp_path: Path, catalog: Catalog) -> None:
    store = build_galaxy_store(catalog, tmp_path / "stores", crop=24, chip_size=12, channels="gray", progress=False)
    assert store.chips.shape == (N, 1, 12, 12)
    np.testing.assert_array_equal(store.chips[5], crop_resize(_pixels(catalog.frame["image"][5], "L"), 24, 12))


def test_store_is_reused_without_rewriting(tmp_path: Path, catalog: Catalog) -> None:
    first = build_galaxy_store(catalog, tmp_path / "stores", crop=24, chip_size=16, progress=False)
    stamp = (first.root / CHIPS).stat().st_mtime_ns
    meta_stamp = (first.root / META).stat().st_mtime_ns
    again = build_galaxy_store(catalog, tmp_path / "stores", crop=24, chip_size=16, progress=False)
    assert again.root == first.root
    assert (again.root / CHIPS).stat().st_mtime_ns == stamp
    assert (again.root / META).stat().st_mtime_ns == meta_stamp
    assert _leftovers(tmp_path / "stores") == [first.root.name]
    # a fresh Catalog object with equal content maps to the same store too
    same = Catalog(frame=catalog.frame.copy(), targets=["target"], source=catalog.source, classes=list(CLASSES))
    assert build_galaxy_store(same, tmp_path / "stores", 24, 16, progress=False).root == first.root


def test_changed_image_bytes_give_a_new_store(tmp_path: Path, catalog: Catalog) -> None:
    stores = tmp_path / "stores"
    first = build_galaxy_store(catalog, stores, crop=24, chip_size=16, progress=False)
    old = np.array(first.chips)
    write_rgb(Path(catalog.frame["image"][3]), size=SIZE, seed=1000)  # same path, new pixels
    second = build_galaxy_store(catalog, stores, crop=24, chip_size=16, progress=False)
    assert second.root != first.root
    new = np.array(second.chips)
    assert not np.array_equal(new[3], old[3])
    np.testing.assert_array_equal(np.delete(new, 3, axis=0), np.delete(old, 3, axis=0))


@pytest.mark.parametrize("change", [{"chip_size": 8}, {"crop": 28}, {"channels": "gray"}])
def test_changed_chip_parameters_give_a_new_store(tmp_path: Path, catalog: Catalog, change: dict) -> None:
    base = {"crop": 24, "chip_size": 16, "channels": "rgb"}
    first = build_galaxy_store(catalog, tmp_path / "stores", **base, progress=False)
    second = build_galaxy_store(catalog, tmp_path / "stores", **(base | change), progress=False)
    assert second.root != first.root
    assert second.spec.out_px == (base | change)["chip_size"] and second.spec.crop == (base | change)["crop"]


def test_changed_targets_give_a_new_store(tmp_path: Path, catalog: Catalog) -> None:
    first = build_galaxy_store(catalog, tmp_path / "stores", 24, 16, progress=False)
    frame = catalog.frame.copy()
    frame.loc[0, "target"] = 2
    other = Catalog(frame=frame, targets=["target"], source=catalog.source, classes=CLASSES)
    second = build_galaxy_store(other, tmp_path / "stores", 24, 16, progress=False)
    assert second.root != first.root
    assert second.index["target"].iloc[0] == 2


@pytest.mark.parametrize("bad", [0, 7])
def test_corrupt_image_names_row_and_file_and_leaves_nothing(tmp_path: Path, catalog: Catalog, bad: int) -> None:
    path = Path(catalog.frame["image"][bad])
    path.write_bytes(b"garbage")
    stores = tmp_path / "stores"
    with pytest.raises(GeocnnError) as exc:
        build_galaxy_store(catalog, stores, crop=24, chip_size=16, progress=False)
    msg = str(exc.value)
    assert f"row {bad + 2} " in msg  # 1-based, header = row 1
    assert f"g{bad:02d}" in msg
    assert str(path) in msg
    assert catalog.source in msg
    assert _leftovers(stores) == []  # no store folder and no .part folder


def test_image_smaller_than_crop_names_data_crop(tmp_path: Path, catalog: Catalog) -> None:
    with pytest.raises(GeocnnError) as exc:
        build_galaxy_store(catalog, tmp_path / "stores", crop=40, chip_size=16, progress=False)
    msg = str(exc.value)
    assert "data.crop=40" in msg and "row 2" in msg
    assert _leftovers(tmp_path / "stores") == []


def test_one_small_image_among_many_names_its_row(tmp_path: Path, catalog: Catalog) -> None:
    write_rgb(Path(catalog.frame["image"][11]), size=16, seed=11)
    with pytest.raises(GeocnnError, match=r"row 13 .*data\.crop"):
        build_galaxy_store(catalog, tmp_path / "stores", crop=24, chip_size=16, progress=False)
    assert _leftovers(tmp_path / "stores") == []


def test_open_incomplete_store_errors(tmp_path: Path, catalog: Catalog) -> None:
    store = build_galaxy_store(catalog, tmp_path / "stores", 24, 16, progress=False)
    (store.root / META).unlink()
    with pytest.raises(GeocnnError, match="meta.json missing"):
        ChipStore.open(store.root)


# ----------------------------------------------------------------------------------------------- splits


def _frame(n: int = 100, n_groups: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"s{i}" for i in range(n)], "label": rng.choice(3, n, p=[0.5, 0.3, 0.2]),
                         "group": [f"grp{i % n_groups}" for i in range(n)]})


def _check_partition(split: np.ndarray, n: int) -> dict[str, np.ndarray]:
    assert split.shape == (n,)
    assert set(split.tolist()) <= {"train", "val", "test"}
    rows = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    allrows = np.concatenate(list(rows.values()))
    assert sorted(allrows.tolist()) == list(range(n))  # disjoint and complete
    return rows


@pytest.mark.parametrize("method", ["random", "stratified", "grouped"])
@pytest.mark.parametrize(("val", "test"), [(0.15, 0.2), (0.3, 0.1)])
def test_split_sizes_disjoint_complete_and_seeded(method: str, val: float, test: float) -> None:
    frame = _frame()
    n = len(frame)
    cfg = SplitConfig(method=method, val_fraction=val, test_fraction=test, seed=3, group_column="group",
                      stratify_column="label")
    split = assign_splits(frame, cfg)
    rows = _check_partition(split, n)
    assert abs(len(rows["val"]) - val * n) <= 1
    assert abs(len(rows["test"]) - test * n) <= 1
    assert abs(len(rows["train"]) - (1 - val - test) * n) <= 2
    np.testing.assert_array_equal(assign_splits(frame, cfg), split)
    other = assign_splits(frame, cfg.model_copy(update={"seed": 4}))
    assert not np.array_equal(other, split)
    _check_partition(other, n)


@pytest.mark.parametrize("seed", range(4))
def test_stratified_keeps_class_proportions(seed: int) -> None:
    frame = _frame(n=101, seed=seed)
    cfg = SplitConfig(method="stratified", val_fraction=0.15, test_fraction=0.2, seed=seed)
    split = assign_splits(frame, cfg, stratify="label")
    rows = _check_partition(split, len(frame))
    labels = frame["label"].to_numpy()
    for part, rs in rows.items():
        share = len(rs) / len(frame)
        for c in np.unique(labels):
            expected = share * (labels == c).sum()
            assert abs((labels[rs] == c).sum() - expected) <= 1, (part, c)


def test_grouped_never_splits_a_group() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 5, 40)
    frame = pd.DataFrame({"id": range(sizes.sum()), "group": np.repeat([f"g{i}" for i in range(40)], sizes)})
    for seed in range(5):
        cfg = SplitConfig(method="grouped", group_column="group", seed=seed)
        split = assign_splits(frame, cfg)
        rows = _check_partition(split, len(frame))
        per_group = pd.DataFrame({"g": frame["group"], "s": split}).groupby("g")["s"].nunique()
        assert (per_group == 1).all()
        assert all(len(r) > 0 for r in rows.values())
        n = len(frame)
        assert abs(len(rows["test"]) - 0.2 * n) <= sizes.max()
        assert abs(len(rows["val"]) - 0.15 * n) <= sizes.max()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_too_small_dataset_names_val_fraction(n: int) -> None:
    with pytest.raises(GeocnnError, match=r"split\.val_fraction"):
        assign_splits(_frame(n=n, n_groups=n), SplitConfig(val_fraction=0.15, test_fraction=0.2))


def test_zero_val_fraction_gives_no_val_rows() -> None:
    split = assign_splits(_frame(), SplitConfig(val_fraction=0.0, test_fraction=0.2))
    assert (split == "val").sum() == 0 and (split == "test").sum() == 20 and (split == "train").sum() == 80


def test_stratified_with_tiny_class_errors() -> None:
    frame = _frame()
    frame.loc[:1, "label"] = 9  # class 9 has 2 samples
    with pytest.raises(GeocnnError, match="fewer than 3"):
        assign_splits(frame, SplitConfig(method="stratified", stratify_column="label"))


@pytest.mark.parametrize(("val", "test"), [(0.15, 0.15), (0.1, 0.3)])
def test_stratified_partition_smaller_than_class_count_names_fraction(val: float, test: float) -> None:
    frame = pd.DataFrame({"id": range(12), "label": np.arange(12) % 3})  # 3 classes of 4 (enough to stratify)
    with pytest.raises(GeocnnError, match=r"split\.(val|test)_fraction"):
        assign_splits(frame, SplitConfig(method="stratified", stratify_column="label", val_fraction=val,
                                         test_fraction=test))


def test_grouped_without_group_column_errors() -> None:
    with pytest.raises(GeocnnError, match="split.group_column"):
        assign_splits(_frame().drop(columns=["group"], errors="ignore"), SplitConfig(method="grouped"))


def test_grouped_defaults_to_the_catalog_group_column() -> None:
    frame = _frame()
    if "group" not in frame.columns:
        pytest.skip("fixture frame has no group column")
    split = assign_splits(frame, SplitConfig(method="grouped", val_fraction=0.2, test_fraction=0.2))
    for g in frame["group"].unique():
        assert len(set(split[frame["group"].to_numpy() == g])) == 1


def test_grouped_with_train_left_empty_errors_in_split_store(tmp_path: Path, catalog: Catalog) -> None:
    # 3 groups of 10: test (12 wanted) takes two whole groups, val the third -> nothing left to train on
    frame = catalog.frame.copy()
    frame["group"] = [f"s{i // 10}" for i in range(N)]
    store = build_galaxy_store(Catalog(frame, ["target"], catalog.source, CLASSES), tmp_path / "stores", 24, 16,
                               progress=False)
    cfg = SplitConfig(method="grouped", group_column="group", val_fraction=0.4, test_fraction=0.4)
    with pytest.raises(GeocnnError, match=r"split\.val_fraction"):
        split_store(store, cfg)


def test_grouped_assign_splits_rejects_empty_train() -> None:
    frame = pd.DataFrame({"id": range(30), "group": [f"s{i // 10}" for i in range(30)]})
    cfg = SplitConfig(method="grouped", group_column="group", val_fraction=0.4, test_fraction=0.4)
    with pytest.raises(GeocnnError, match=r"split\.val_fraction"):
        assign_splits(frame, cfg)


def test_split_store_reloads_same_split_from_disk(tmp_path: Path, catalog: Catalog) -> None:
    store = build_galaxy_store(catalog, tmp_path / "stores", 24, 16, progress=False)
    cfg = SplitConfig(method="stratified", val_fraction=0.2, test_fraction=0.2, seed=5)
    first = split_store(store, cfg, stratify="target")
    saved = sorted(p.name for p in (store.root / "splits").iterdir())
    assert saved == [f"{first.key}.json", f"{first.key}.parquet"]
    reloaded = split_store(ChipStore.open(store.root), cfg, stratify="target")
    assert reloaded.key == first.key
    np.testing.assert_array_equal(reloaded.split, first.split)
    assert reloaded.mean == first.mean and reloaded.std == first.std
    np.testing.assert_array_equal(first.split, assign_splits(store.index, cfg, stratify="target"))
    rows = _check_partition(first.split, N)
    assert [len(rows[p]) for p in ("train", "val", "test")] == [18, 6, 6]
    np.testing.assert_array_equal(first.rows("val"), rows["val"])
    # each class (10 samples) is spread 6/2/2
    labels = store.index["target"].to_numpy()
    for part, expected in (("train", 6), ("val", 2), ("test", 2)):
        assert np.bincount(labels[rows[part]], minlength=3).tolist() == [expected] * 3
    other = split_store(store, cfg.model_copy(update={"seed": 6}), stratify="target")
    assert other.key != first.key
    assert not np.array_equal(other.split, first.split)


# ----------------------------------------------------------------------------------------------- band stats


def _graded_writer(path: Path, i: int) -> None:
    """Image i: noise plus a per-band offset growing with i, so that every subset of rows has its own mean."""
    rng = np.random.default_rng(i)
    arr = rng.integers(0, 60, (SIZE, SIZE, 3)) + np.array([3, 5, 7]) * i
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path)


def test_band_stats_use_train_rows_only(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, writer=_graded_writer)
    store = build_galaxy_store(catalog, tmp_path / "stores", 24, 16, progress=False)
    view = split_store(store, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1))
    chips = np.asarray(store.chips, dtype=np.float64)
    train = view.rows("train")
    assert 0 < len(train) < N
    np.testing.assert_allclose(view.mean, chips[train].mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(view.std, chips[train].std(axis=(0, 2, 3)), rtol=1e-7)
    # the data make train-only and all-row statistics differ clearly, per band
    all_mean = chips.mean(axis=(0, 2, 3))
    all_std = chips.std(axis=(0, 2, 3))
    assert (np.abs(np.array(view.mean) - all_mean) > 0.5).all()
    assert (np.abs(np.array(view.std) - all_std) > 0.5).all()
    assert view.mean[0] < view.mean[1] < view.mean[2]


def test_band_stats_batches_and_constant_bands() -> None:
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, (11, 2, 4, 4)).astype(np.uint8)
    chips[:, 1] = 42  # a constant band gets std 1 (no division by zero later)
    rows = np.array([9, 2, 7, 0, 5])
    mean, std = band_stats(chips, rows, batch=2)
    sub = chips[rows].astype(np.float64)
    assert mean[0] == pytest.approx(sub[:, 0].mean(), rel=1e-12)
    assert std[0] == pytest.approx(sub[:, 0].std(), rel=1e-9)
    assert mean[1] == pytest.approx(42.0) and std[1] == 1.0


def test_band_stats_of_empty_train_names_val_fraction() -> None:
    with pytest.raises(GeocnnError, match=r"split\.val_fraction"):
        band_stats(np.zeros((3, 1, 2, 2), np.uint8), np.array([], dtype=int))


def test_chips_of_a_sample_are_averaged_and_split_together(tmp_path: Path) -> None:
    """A store with several chips per sample (an n x n grid per survey cluster): samples() keeps catalog order,
    sample_means() averages each sample's chips, and a split never separates a sample's chips."""
    root = tmp_path / "store"
    root.mkdir()
    samples = ["b", "b", "a", "a", "a", "c"] + [f"s{i}" for i in range(30) for _ in range(2)]
    np.save(root / CHIPS, np.random.default_rng(0).random((len(samples), 1, 4, 4)).astype(np.float32))
    index = pd.DataFrame({"id": [f"{s}#{k}" for k, s in enumerate(samples)], "row": np.arange(len(samples)),
                          "sample": samples, "y": [float(ord(s[0])) for s in samples]})
    index.to_parquet(root / "index.parquet")
    (root / META).write_text('{"key": "k", "targets": ["y"], "classes": [], "shape": [1, 1, 4, 4]}')
    store = ChipStore.open(root)
    assert store.samples()["id"].tolist()[:3] == ["b", "a", "c"]
    values = np.array([[1.0], [3.0], [10.0], [20.0], [30.0], [7.0]] + [[0.0]] * 60)
    np.testing.assert_allclose(store.sample_means(values)[:3, 0], [2.0, 20.0, 7.0])
    view = split_store(store, SplitConfig(method="random", val_fraction=0.2, test_fraction=0.2, seed=1))
    per_sample = pd.Series(view.split).groupby(index["sample"].to_numpy()).nunique()
    assert (per_sample == 1).all() and set(view.split) == {"train", "val", "test"}
    assert view.sample_split().tolist()[:3] == [view.split[0], view.split[2], view.split[5]]


def test_label_fraction_keeps_nested_stratified_train_labels_and_leaves_val_test(tmp_path: Path,
                                                                                  catalog: Catalog) -> None:
    store = build_galaxy_store(catalog, tmp_path / "stores", 24, 16, progress=False)
    cfg = SplitConfig(method="stratified", val_fraction=0.2, test_fraction=0.2, seed=5)
    full = split_store(store, cfg, stratify="target")
    labels = store.index["target"].to_numpy()
    kept = {}
    for fraction in (0.34, 0.67):
        view = split_store(store, cfg.model_copy(update={"label_fraction": fraction}), stratify="target")
        np.testing.assert_array_equal(view.split == "val", full.split == "val")
        np.testing.assert_array_equal(view.split == "test", full.split == "test")
        kept[fraction] = set(view.rows("train"))
        assert kept[fraction] < set(full.rows("train"))
        assert set(view.rows("unlabeled")) == set(full.rows("train")) - kept[fraction]
        # 6 training samples per class: ceil(0.34 * 6) = 3 and ceil(0.67 * 6) = 5 of each class keep their labels
        assert np.bincount(labels[view.rows("train")], minlength=3).tolist() == [3 if fraction < 0.5 else 5] * 3
        # band statistics come from the labelled training chips only
        assert view.mean == band_stats(store.chips, view.rows("train"))[0]
    assert kept[0.34] < kept[0.67]
