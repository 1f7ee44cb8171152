"""Galaxy readers on the real sample data and on tiny generated files, including every bad-input message."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geocnn.config import GalaxyData as DataConfig
from geocnn.data.catalog import Catalog
from geocnn.data.schema import KAGGLE_TREE
from geocnn.data.sources.galaxy_tables import read_csv_catalog, read_folders, read_kaggle, read_zoobot
from geocnn.data.sources.galaxy_tables import read_galaxy_catalog as read_raw
from geocnn.data.sources.images import find_image_files, load_image
from geocnn.errors import GeocnnError
from geocnn.models.tasks import task_spec
from tests.conftest import write_rgb


def read_galaxy_catalog(data: DataConfig, task: str) -> Catalog:
    """A catalog as a run reads it: the reader, then the task spec's target checks and encoding."""
    return task_spec(task).prepare(read_raw(data))


RING_FRACTIONS = ["smooth-or-featured_featured-or-disk_fraction", "disk-edge-on_no_fraction",
                  "has-spiral-arms_no_fraction"]
SMOOTH_COUNTS = ["smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk", "smooth-or-featured_artifact"]


# ---------------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_kaggle_real_rows(shared_data: Path) -> None:
    csv = shared_data / "galaxy/kaggle_sample/training_solutions_rev1.csv"
    cat = read_kaggle(csv, None, None)
    raw = pd.read_csv(csv)
    assert cat.targets == KAGGLE_TREE.columns and len(cat.targets) == 37
    assert cat.frame["id"].tolist() == ["100008", "100023", "100053"]
    np.testing.assert_array_equal(cat.frame[cat.targets].to_numpy(), raw[KAGGLE_TREE.columns].to_numpy(float))
    assert all(cat.frame[t].dtype == np.float64 for t in cat.targets)
    for sample_id, image in zip(cat.frame["id"], cat.frame["image"]):
        path = Path(image)
        assert path.is_absolute() and path.is_file()
        assert path == (shared_data / "galaxy/kaggle_sample/images_training_rev1" / f"{sample_id}.jpg").absolute()

    via_config = read_galaxy_catalog(DataConfig(format="kaggle", catalog=str(csv)), "vote_fractions")
    pd.testing.assert_frame_equal(via_config.frame, cat.frame)
    assert load_image(Path(cat.frame["image"][0])).shape == (3, 424, 424)


@pytest.mark.realdata
def test_decals_rings_classification(shared_data: Path) -> None:
    data = DataConfig(format="zoobot", catalog=str(shared_data / "galaxy/decals_rings/catalog.csv"), targets=["ring"])
    cat = read_galaxy_catalog(data, "classification")
    assert len(cat) == 470 and cat.targets == ["ring"]
    assert cat.classes == ["0", "1"]
    assert cat.frame["ring"].dtype == np.int64
    assert cat.frame["ring"].value_counts().to_dict() == {0: 235, 1: 235}
    assert cat.frame["id"].is_unique and cat.frame["id"].iloc[0] == "J000411.19+020924.0"
    images = [Path(p) for p in cat.frame["image"]]
    assert all(p.is_absolute() and p.is_file() for p in images)
    assert all(p.stem == i for p, i in zip(images, cat.frame["id"]))


@pytest.mark.realdata
@pytest.mark.parametrize("task", ["regression", "vote_fractions"])
def test_decals_rings_fractions(shared_data: Path, task: str) -> None:
    csv = shared_data / "galaxy/decals_rings/catalog.csv"
    cat = read_galaxy_catalog(DataConfig(format="zoobot", catalog=str(csv), targets=RING_FRACTIONS), task)
    raw = pd.read_csv(csv)
    assert len(cat) == 470 and cat.targets == RING_FRACTIONS and cat.classes == []
    assert all(cat.frame[t].dtype == np.float64 for t in RING_FRACTIONS)
    np.testing.assert_array_equal(cat.frame[RING_FRACTIONS].to_numpy(), raw[RING_FRACTIONS].to_numpy())


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "targets", "task"),
    [
        ("gz_decals_volunteers_1_and_2.csv", SMOOTH_COUNTS, "vote_counts"),  # no file column at all
        ("gz_decals_volunteers_5.csv", SMOOTH_COUNTS + ["bar_strong"], "vote_counts"),  # png_loc dr5/J081/...
        ("gz_decals_auto_posteriors.csv", [t + "_fraction" for t in SMOOTH_COUNTS], "vote_fractions"),  # file_loc
    ],
)
def test_decals_votes_sample(shared_data: Path, name: str, targets: list[str], task: str) -> None:
    folder = shared_data / "galaxy/decals_votes_sample"
    cat = read_galaxy_catalog(DataConfig(format="zoobot", catalog=str(folder / name), targets=targets), task)
    raw = pd.read_csv(folder / name)
    assert len(cat) == 6
    assert cat.frame["id"].tolist() == raw["iauname"].tolist()
    np.testing.assert_allclose(cat.frame[targets].to_numpy(), raw[targets].to_numpy(float))
    for sample_id, image in zip(cat.frame["id"], cat.frame["image"]):
        path = Path(image)
        assert path.is_file() and path.name == f"{sample_id}.png"
        assert path.parent.parent.name.startswith("gz_decals_dr5_png_part")  # found by the by-name fallback
    if task == "vote_counts":
        assert (cat.frame[targets].to_numpy() >= 0).all()


@pytest.mark.realdata
def test_decals_fraction_nan_is_an_error(shared_data: Path) -> None:
    csv = shared_data / "galaxy/decals_votes_sample/gz_decals_volunteers_5.csv"
    with pytest.raises(GeocnnError) as err:
        read_galaxy_catalog(DataConfig(format="zoobot", catalog=str(csv), targets=["bar_strong_fraction"]),
                            "vote_fractions")
    msg = str(err.value)
    assert "gz_decals_volunteers_5.csv" in msg and "row 2" in msg and "bar_strong_fraction" in msg
    assert "vote_counts" in msg


@pytest.mark.realdata
def test_find_image_files_real(shared_data: Path) -> None:
    index = find_image_files(shared_data / "galaxy/decals_votes_sample")
    assert len(index) == 18
    assert index["J081412.47+220853.0"].parent.parent.name == "gz_decals_dr5_png_part1"


# ------------------------------------------------------------------------------------------------- generated


def _csv_catalog(tmp_path: Path, rows: list[dict[str, object]], name: str = "cat.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _three_images(tmp_path: Path) -> list[str]:
    for i in range(3):
        write_rgb(tmp_path / "img" / f"g{i}.png", size=16, seed=i)
    return [f"img/g{i}.png" for i in range(3)]


def test_vote_counts_nan_is_zero(tmp_path: Path) -> None:
    files = _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"iauname": f"g{i}", "file_loc": f, "q_a": [3, None, 1][i], "q_b": 2}
                                   for i, f in enumerate(files)])
    cat = read_galaxy_catalog(DataConfig(format="zoobot", catalog=str(path), targets=["q_a", "q_b"]), "vote_counts")
    assert cat.frame["q_a"].tolist() == [3.0, 0.0, 1.0]
    assert cat.frame["q_a"].dtype == np.float64


def test_folders(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    write_rgb(root / "spiral" / "a.png", size=16)
    write_rgb(root / "spiral" / "b.JPG", size=16, seed=1)
    write_rgb(root / "spiral" / "nested" / "c.jpeg", size=16, seed=2)
    write_rgb(root / "elliptical" / "d.png", size=16, seed=3)
    (root / "elliptical" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    cat = read_folders(root)
    assert cat.classes == ["elliptical", "spiral"] and cat.targets == ["label"]
    assert cat.frame["id"].tolist() == ["elliptical/d", "spiral/a", "spiral/b", "spiral/nested/c"]
    assert cat.frame["label"].tolist() == [0, 1, 1, 1] and cat.frame["label"].dtype == np.int64
    assert all(Path(p).is_file() for p in cat.frame["image"])
    via_config = read_galaxy_catalog(DataConfig(format="folders", images=str(root)), "classification")
    pd.testing.assert_frame_equal(via_config.frame, cat.frame)
    assert via_config.classes == cat.classes


def test_folders_numeric_names_sort_numerically(tmp_path: Path) -> None:
    for name in ["10", "2", "1"]:
        write_rgb(tmp_path / name / "x.png", size=8)
    assert read_folders(tmp_path).classes == ["1", "2", "10"]


def test_generic_csv_and_parquet(tmp_path: Path) -> None:
    files = _three_images(tmp_path)
    rows = [{"id": f"00{i}", "file": f, "morph": ["spiral", "elliptical", "spiral"][i], "y": i / 2}
            for i, f in enumerate(files)]
    path = _csv_catalog(tmp_path, rows)
    before = path.read_bytes()
    cat = read_csv_catalog(path, None, targets=["morph", "y"])
    assert cat.frame["id"].tolist() == ["000", "001", "002"]  # leading zeros kept
    assert [Path(p) for p in cat.frame["image"]] == [(tmp_path / f).absolute() for f in files]
    assert path.read_bytes() == before  # input untouched

    data = DataConfig(format="csv", catalog=str(path), targets=["morph"])
    cls = read_galaxy_catalog(data, "classification")
    assert cls.classes == ["elliptical", "spiral"] and cls.frame["morph"].tolist() == [1, 0, 1]
    reg = read_galaxy_catalog(data.model_copy(update={"targets": ["y"]}), "regression")
    assert reg.frame["y"].tolist() == [0.0, 0.5, 1.0]

    pq = tmp_path / "cat.parquet"
    pd.DataFrame(rows).to_parquet(pq, index=False)
    from_pq = read_galaxy_catalog(DataConfig(format="csv", catalog=str(pq), targets=["y"]), "regression")
    pd.testing.assert_frame_equal(from_pq.frame, reg.frame)


def test_csv_without_file_column_finds_images_by_id(tmp_path: Path) -> None:
    _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"id": f"g{i}", "y": i} for i in range(3)])
    cat = read_galaxy_catalog(DataConfig(format="csv", catalog=str(path), targets=["y"],
                                         images=str(tmp_path / "img")), "regression")
    assert [Path(p).name for p in cat.frame["image"]] == ["g0.png", "g1.png", "g2.png"]


def test_group_column_kept(tmp_path: Path) -> None:
    files = _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"id": i, "file": f, "y": i, "field": 7 + i % 2} for i, f in enumerate(files)])
    cat = read_galaxy_catalog(DataConfig(format="csv", catalog=str(path), targets=["y"], group_column="field"),
                              "regression")
    assert cat.frame["group"].tolist() == ["7", "8", "7"]


def test_load_image_shapes_and_dtypes(tmp_path: Path) -> None:
    jpg = write_rgb(tmp_path / "a.jpg", size=20)
    png = write_rgb(tmp_path / "b.png", size=12)
    gray = tmp_path / "g.png"
    Image.fromarray(np.arange(30 * 10, dtype=np.uint8).reshape(10, 30) % 250).save(gray)
    deep = tmp_path / "d16.png"
    Image.fromarray(np.full((4, 5), 65535, dtype=np.uint16)).save(deep)

    assert load_image(jpg).shape == (3, 20, 20) and load_image(jpg).dtype == np.uint8
    rgb = load_image(png)
    assert rgb.shape == (3, 12, 12) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb.transpose(1, 2, 0), np.asarray(Image.open(png)))
    assert load_image(png, "gray").shape == (1, 12, 12)
    g = load_image(gray, "gray")
    assert g.shape == (1, 10, 30) and g.dtype == np.uint8 and g[0, 0, 1] == 1
    assert load_image(gray, "rgb").shape == (3, 10, 30)
    d = load_image(deep)
    assert d.shape == (3, 4, 5) and d.dtype == np.uint8 and d.max() == 255


def test_load_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.fits"
    try:
        from astropy.io import fits
    except ImportError:
        path.write_bytes(b"SIMPLE  =                    T")
    else:
        fits.PrimaryHDU(np.ones((2, 5, 6), dtype=np.float64)).writeto(path)
        arr = load_image(path)
        assert arr.shape == (2, 5, 6) and arr.dtype == np.float32
        assert load_image(path, "gray").shape == (1, 5, 6)
    monkeypatch.setitem(sys.modules, "astropy", None)
    monkeypatch.setitem(sys.modules, "astropy.io", None)
    with pytest.raises(GeocnnError, match=r"pip install 'geocnn\[fits\]'"):
        load_image(path)


# ------------------------------------------------------------------------------------------------- bad inputs


def test_missing_image(tmp_path: Path) -> None:
    files = _three_images(tmp_path)
    files[1] = "img/nope.png"
    path = _csv_catalog(tmp_path, [{"id": f"x{i}", "file": f, "y": 1.0} for i, f in enumerate(files)])
    with pytest.raises(GeocnnError) as err:
        read_csv_catalog(path, None, targets=["y"])
    msg = str(err.value)
    assert "cat.csv" in msg and "row 3" in msg and str(tmp_path / "img" / "nope.png") in msg
    assert "data.images" in msg


def test_duplicate_ids(tmp_path: Path) -> None:
    files = _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"id": ["a", "b", "a"][i], "file": f, "y": 1.0} for i, f in enumerate(files)])
    with pytest.raises(GeocnnError) as err:
        read_csv_catalog(path, None, targets=["y"])
    msg = str(err.value)
    assert "cat.csv" in msg and "duplicate id 'a'" in msg and "[2, 4]" in msg


@pytest.mark.parametrize(
    ("values", "task", "expected"),
    [
        ([0.1, None, 0.3], "regression", ["row 3", "'y'", "NaN"]),
        ([0.1, 0.2, "abc"], "regression", ["row 4", "'y'", "'abc' is not a number"]),
        ([0.1, 1.5, 0.3], "vote_fractions", ["row 3", "'y'", "1.5", "outside [0, 1]"]),
        ([1, -2, 3], "vote_counts", ["row 3", "'y'", "negative"]),
        ([0.1, float("inf"), 0.3], "vote_fractions", ["row 3", "'y'", "infinite"]),
        ([0.5, 0.25, 0.5], "classification", ["row 2", "'y'", "not a class label", "regression"]),
        (["a", "a", "a"], "classification", ["'y'", "single class", "at least 2"]),
        (["a", None, "b"], "classification", ["row 3", "'y'", "label is missing"]),
    ],
)
def test_bad_targets(tmp_path: Path, values: list[object], task: str, expected: list[str]) -> None:
    files = _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"id": f"x{i}", "file": f, "y": v} for i, (f, v) in enumerate(zip(files, values))])
    with pytest.raises(GeocnnError) as err:
        read_galaxy_catalog(DataConfig(format="csv", catalog=str(path), targets=["y"]), task)
    msg = str(err.value)
    assert "cat.csv" in msg
    for part in expected:
        assert part in msg


def test_classification_needs_one_target(tmp_path: Path) -> None:
    files = _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"id": i, "file": f, "a": i % 2, "b": 1} for i, f in enumerate(files)])
    with pytest.raises(GeocnnError, match="data.targets"):
        read_galaxy_catalog(DataConfig(format="csv", catalog=str(path), targets=["a", "b"]), "classification")


def test_corrupt_images(tmp_path: Path, shared_data: Path) -> None:
    fake = tmp_path / "x.jpg"
    fake.write_bytes(b"not a jpeg")
    with pytest.raises(GeocnnError) as err:
        load_image(fake)
    assert "x.jpg" in str(err.value) and "corrupt or not an image" in str(err.value)

    real = next((shared_data / "galaxy/decals_rings/images").glob("*.jpg")).read_bytes()
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(real[: len(real) // 2])
    with pytest.raises(GeocnnError) as err:
        load_image(truncated)
    assert "t.jpg" in str(err.value) and "corrupt" in str(err.value)


def test_empty_catalog(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("id,file,y\n")
    with pytest.raises(GeocnnError, match=r"empty\.csv: the catalog is empty"):
        read_csv_catalog(path, None, targets=["y"])
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(GeocnnError, match=r"blank\.csv: the catalog file is empty"):
        read_galaxy_catalog(DataConfig(format="csv", catalog=str(blank), targets=["y"]), "regression")


@pytest.mark.parametrize(
    ("update", "key", "column"),
    [
        ({"targets": ["yy"]}, "data.targets", "yy"),
        ({"id_column": "objid"}, "data.id_column", "objid"),
        ({"file_column": "png_loc"}, "data.file_column", "png_loc"),
        ({"group_column": "field"}, "data.group_column", "field"),
    ],
)
def test_missing_configured_column(tmp_path: Path, update: dict[str, object], key: str, column: str) -> None:
    files = _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"id": i, "file": f, "y": 1.0} for i, f in enumerate(files)])
    data = DataConfig(format="csv", catalog=str(path), targets=["y"]).model_copy(update=update)
    with pytest.raises(GeocnnError) as err:
        read_galaxy_catalog(data, "regression")
    msg = str(err.value)
    assert "cat.csv" in msg and key in msg and column in msg and "Available columns: id, file, y" in msg


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(GeocnnError, match=r"nope\.csv: catalog file does not exist.*data\.catalog"):
        read_galaxy_catalog(DataConfig(format="zoobot", catalog=str(tmp_path / "nope.csv"), targets=["y"]),
                            "regression")
    with pytest.raises(GeocnnError, match="needs data.catalog"):
        read_galaxy_catalog(DataConfig(format="kaggle"), "vote_fractions")


def test_zoobot_without_id_column(tmp_path: Path) -> None:
    files = _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"name": i, "file": f, "y": 1.0} for i, f in enumerate(files)])
    with pytest.raises(GeocnnError, match=r"no id column found.*id_str.*data\.id_column"):
        read_zoobot(path, None, ["y"])


def test_folders_errors(tmp_path: Path) -> None:
    write_rgb(tmp_path / "one" / "only" / "a.png", size=8)
    with pytest.raises(GeocnnError, match=r"only one class subfolder \(only/\).*at least 2"):
        read_folders(tmp_path / "one")
    (tmp_path / "flat").mkdir()
    write_rgb(tmp_path / "flat" / "a.png", size=8)
    with pytest.raises(GeocnnError, match="no class subfolders"):
        read_folders(tmp_path / "flat")
    write_rgb(tmp_path / "two" / "a" / "x.png", size=8)
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(GeocnnError, match=r"b: class folder contains no images"):
        read_folders(tmp_path / "two")
    with pytest.raises(GeocnnError, match="does not exist"):
        read_folders(tmp_path / "missing")
    write_rgb(tmp_path / "two" / "b" / "y.png", size=8)
    with pytest.raises(GeocnnError, match="model.task=classification"):
        read_galaxy_catalog(DataConfig(format="folders", images=str(tmp_path / "two")), "regression")


def test_synthetic_is_not_read_here() -> None:
    with pytest.raises(GeocnnError, match="synthetic"):
        read_galaxy_catalog(DataConfig(format="synthetic"), "classification")


def test_split_folders_are_the_data_sets_own_split_not_classes(tmp_path: Path) -> None:
    """train/ validation/ test/ folders of class folders: read as classes with a predefined split column."""
    for part, n in (("train", 3), ("validation", 2), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                write_rgb(tmp_path / part / cls / f"{part}{i}.png", size=8, seed=i)
    cat = read_folders(tmp_path)
    assert cat.classes == ["cat", "dog"]  # not ['test', 'train', 'validation']
    assert cat.frame["split"].value_counts().to_dict() == {"train": 6, "val": 4, "test": 4}
    assert set(cat.frame["id"]) >= {"cat/train0", "dog/validation1", "cat/test1"}
    assert (cat.frame.loc[cat.frame["id"] == "dog/test0", "label"] == 1).all()


def test_ambiguous_folder_layouts_are_refused(tmp_path: Path) -> None:
    write_rgb(tmp_path / "a" / "train" / "cat" / "x.png", size=8)
    write_rgb(tmp_path / "a" / "dog" / "y.png", size=8)
    with pytest.raises(GeocnnError, match=r"ambiguous layout: split folders \['train'\] beside other folders "
                                          r"\['dog'\]"):
        read_folders(tmp_path / "a")
    write_rgb(tmp_path / "b" / "train" / "x.png", size=8)
    write_rgb(tmp_path / "b" / "test" / "y.png", size=8)
    with pytest.raises(GeocnnError, match="split folder without class folders"):
        read_folders(tmp_path / "b")


def test_predefined_split_keeps_the_data_sets_split_and_names_bad_rows() -> None:
    from geocnn.config import SplitConfig
    from geocnn.data.splits import assign_splits

    index = pd.DataFrame({"id": list("abcdef"), "split": ["train", "Training", "valid", "dev", "test", "TEST"]})
    got = assign_splits(index, SplitConfig(method="predefined"))
    assert got.tolist() == ["train", "train", "val", "val", "test", "test"]
    other = index.rename(columns={"split": "fold_name"})
    assert assign_splits(other, SplitConfig(method="predefined", split_column="fold_name")).tolist() == got.tolist()
    with pytest.raises(GeocnnError, match="column 'split'.*split.split_column"):
        assign_splits(other, SplitConfig(method="predefined"))
    bad = index.assign(split=["train", "train", "val", "holdout", "test", "test"])
    with pytest.raises(GeocnnError, match=r"row 5, column 'split': 'holdout' is not a split name"):
        assign_splits(bad, SplitConfig(method="predefined"))
    with pytest.raises(GeocnnError, match="no val rows"):
        assign_splits(index.assign(split="train"), SplitConfig(method="predefined"))


def test_class_names_for_integer_labels(tmp_path: Path) -> None:
    from geocnn.data.catalog import name_classes
    from geocnn.data.sources.galaxy_tables import read_class_names

    files = _three_images(tmp_path)
    path = _csv_catalog(tmp_path, [{"id": str(i), "file": f, "y": [0, 1, 2][i]} for i, f in enumerate(files)])
    cat = read_galaxy_catalog(DataConfig(format="csv", catalog=str(path), targets=["y"]), "classification")
    assert cat.classes == ["0", "1", "2"]
    assert name_classes(cat, ["smooth", "featured", "artifact"]).classes == ["smooth", "featured", "artifact"]
    mapping = tmp_path / "names.csv"
    mapping.write_text("code,name\n2,artifact\n0,smooth\n1,featured\n")
    assert name_classes(cat, read_class_names(str(mapping))).classes == ["smooth", "featured", "artifact"]
    (tmp_path / "names.yaml").write_text("0: smooth\n1: featured\n2: artifact\n")
    assert name_classes(cat, read_class_names(str(tmp_path / "names.yaml"))).classes[2] == "artifact"
    with pytest.raises(GeocnnError, match=r"no name for class label\(s\) \['2'\]"):
        name_classes(cat, ["smooth", "featured"])
    with pytest.raises(GeocnnError, match="same name"):
        name_classes(cat, ["a", "a", "b"])
