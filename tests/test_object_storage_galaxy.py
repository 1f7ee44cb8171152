"""Galaxy catalogs, image folders and tiles on a real S3-compatible server (moto, started on 127.0.0.1): the chip store
built from an s3:// catalog equals the one built from the local copy byte for byte, `geocnn predict --images s3://...`
gives the local table, the cache keys follow the objects' content, and paths leaving the bucket folder or missing
objects are refused naming the row and the URI."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.config import load_config
from geocnn.data.catalog import IMAGE
from geocnn.data.chips import ChipSource, ChipSpec
from geocnn.data.sources.galaxy_tables import read_csv_catalog, read_folders
from geocnn.data.sources.images import find_image_files, walk_images
from geocnn.data.sources.uris import fingerprint, list_files, read_bytes
from geocnn.domains.earth import EarthDomain
from geocnn.domains.galaxy import GalaxyDomain
from geocnn.errors import GeocnnError
from geocnn.synthetic.galaxies import make_galaxies
from tests.helpers import write_bundle
from tests.test_object_storage import BUCKET, RANGED_HTTP, free_port, s3, serve, upload  # noqa: F401 - s3: fixture

pytestmark = pytest.mark.slow

N = 30
SIZE = 32
CHIP = 16


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 generated 32 px cut-outs and their catalog (images/<id>.png, relative paths in column 'file')."""
    return make_galaxies(tmp_path_factory.mktemp("galaxies"), N, SIZE, seed=7)


def upload_tree(folder: Path, prefix: str) -> str:
    """Every file under ``folder`` to s3://BUCKET/prefix/..., the folder's layout kept; the folder URI."""
    client = boto3.client("s3")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def galaxy_config(catalog: str, store_root: Path, *extra: str):  # noqa: ANN201 - a GalaxyExperiment
    return load_config(overrides=["data.format=csv", f"data.catalog={catalog}", "data.targets=[morphology]",
                                  f"data.chip_size={CHIP}", f"data.crop={SIZE}", f"data.store_root={store_root}",
                                  *extra])


def test_store_from_an_s3_catalog_is_the_store_of_the_local_copy(s3: str, galaxies: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    remote = upload_tree(galaxies.parent, "gal")
    domain = GalaxyDomain()
    cfgs = {"remote": galaxy_config(f"{remote}/catalog.csv", tmp_path / "remote"),
            "local": galaxy_config(str(galaxies), tmp_path / "local")}
    cats = {k: domain.catalog(c) for k, c in cfgs.items()}
    assert cats["remote"].frame[IMAGE].tolist() == [f"{remote}/images/{i}.png" for i in cats["local"].frame["id"]]
    pd.testing.assert_frame_equal(cats["remote"].frame.drop(columns=IMAGE), cats["local"].frame.drop(columns=IMAGE))
    assert cats["remote"].classes == cats["local"].classes and len(cats["local"].classes) == 5
    stores = {k: domain.ingest(c, progress=False) for k, c in cfgs.items()}
    remote_chips, local_chips = np.asarray(stores["remote"].chips), np.asarray(stores["local"].chips)
    assert remote_chips.shape == (N, 3, CHIP, CHIP) and remote_chips.dtype == np.uint8
    assert remote_chips.tobytes() == local_chips.tobytes()
    assert local_chips.std() > 5  # real galaxies, not a blank read
    pd.testing.assert_frame_equal(stores["remote"].index.drop(columns=IMAGE, errors="ignore"),
                                  stores["local"].index.drop(columns=IMAGE, errors="ignore"))


def test_s3_images_key_the_caches_by_their_content(s3: str, galaxies: Path, tmp_path: Path) -> None:  # noqa: F811
    remote = upload_tree(galaxies.parent, "keyed")
    domain = GalaxyDomain()
    cfg = galaxy_config(f"{remote}/catalog.csv", tmp_path / "stores")
    objects = list_files(remote)  # the listing is cached by s3fs; a changed object must still be seen as changed
    assert len(objects) == N + 1
    files = domain.input_files(cfg)
    assert sorted(set(files)) == objects  # the ingest key covers the catalog and every image object
    key, store = domain.ingest_key(cfg), domain.ingest(cfg, progress=False)
    assert domain.ingest_key(cfg) == key and domain.ingest(cfg, progress=False).root == store.root  # reused
    ids = domain.catalog(cfg).frame["id"]
    first = ids.iloc[0]
    changed = f"{remote}/images/{first}.png"
    before = fingerprint(changed)
    assert before.startswith(f"{first}.png:{len(read_bytes(changed))}:")  # name, size, ETag
    other = galaxies.parent / "images" / f"{ids.iloc[1]}.png"
    upload(other, f"keyed/images/{first}.png")  # new content under the same name
    assert fingerprint(changed) != before
    assert domain.ingest_key(cfg) != key
    rebuilt = domain.ingest(cfg, progress=False)
    assert rebuilt.root != store.root
    old, new = np.asarray(store.chips), np.asarray(rebuilt.chips)
    np.testing.assert_array_equal(new[0], old[1])  # the changed object's pixels, read again
    np.testing.assert_array_equal(new[1:], old[1:])


def test_predict_images_from_s3_gives_the_local_table(s3: str, galaxies: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = galaxies.parent / "images"
    remote = upload_tree(folder, "new/batch")
    assert [p.rsplit("/", 1)[1] for p in walk_images(remote + "/")] == [p.name for p in walk_images(folder)]
    assert {k: str(v).rsplit("/", 1)[1] for k, v in find_image_files(remote).items()} == \
        {k: v.name for k, v in find_image_files(folder).items()}
    chips = ChipSpec(out_px=CHIP, files=True, crop=None, channels="rgb")
    bundle = write_bundle(tmp_path / "bundle", chips, ["red", "green", "blue"], classes=("a", "b", "c"),
                          mean=120.0, std=60.0)
    runner = CliRunner()
    for where, images in (("remote", f"{remote}/"), ("local", str(folder))):
        result = runner.invoke(app, ["predict", "--model", str(bundle), "--device", "cpu", "--images", images,
                                     "--out", str(tmp_path / f"{where}.parquet")])
        assert result.exit_code == 0, result.output
        assert f"wrote {N} predictions" in result.output
    remote_table = pd.read_parquet(tmp_path / "remote.parquet")
    local_table = pd.read_parquet(tmp_path / "local.parquet")
    pd.testing.assert_frame_equal(remote_table, local_table)
    assert sorted(local_table["id"]) == sorted(p.stem for p in folder.iterdir())
    assert local_table.filter(like="prob_").std().min() > 0  # real, varying predictions
    # a catalog URI whose relative paths (images/<id>.png) miss: its images are found by name under its folder
    result = runner.invoke(app, ["predict", "--model", str(bundle), "--device", "cpu", "--catalog",
                                 upload(galaxies, "new/catalog.csv"), "--out", str(tmp_path / "cat.parquet")])
    assert result.exit_code == 0, result.output
    by_catalog = pd.read_parquet(tmp_path / "cat.parquet").set_index("id").sort_index()
    pd.testing.assert_frame_equal(by_catalog, local_table.set_index("id").sort_index())
    result = runner.invoke(app, ["predict", "--model", str(bundle), "--images", f"s3://{BUCKET}/nothing-here/",
                                 "--out", str(tmp_path / "none.parquet")])
    assert result.exit_code != 0 and "--images s3://geocnn-test/nothing-here/: not a folder" in result.output


def write_catalog(rows: list[dict[str, str]], key: str, tmp_path: Path) -> str:
    path = tmp_path / Path(key).name
    pd.DataFrame(rows).to_csv(path, index=False)
    return upload(path, key)


@pytest.mark.parametrize(("value", "resolved"), [("../secret/g9.png", "safe/secret/g9.png"),
                                               ("../../../../secret/g9.png", "secret/g9.png"),  # never above the bucket
                                               ("s3://geocnn-test/secret/g9.png", "secret/g9.png"),
                                               ("/etc/hostname", None)])
def test_catalog_rows_cannot_leave_the_bucket_folder(s3: str, galaxies: Path, tmp_path: Path,  # noqa: F811
                                                     value: str, resolved: str | None) -> None:
    image = galaxies.parent / "images" / "syn000000.png"
    for key in ("safe/data/g0.png", "safe/secret/g9.png", "secret/g9.png"):
        upload(image, key)
    rows = [{"id": "g0", "file": "g0.png", "y": "1.0"}, {"id": "g1", "file": value, "y": "2.0"}]
    catalog = write_catalog(rows, "safe/data/catalog.csv", tmp_path)
    with pytest.raises(GeocnnError, match=r"catalog.csv: row 3 \(id 'g1'\): the image path .* resolves to .*, "
                                          r"outside the data root \(s3://geocnn-test/safe/data\).*allow_outside_root"):
        read_csv_catalog(catalog, None, targets=["y"])
    if resolved is None:
        return  # a local file is no object of this bucket: with the rule lifted it is simply read locally
    allowed = read_csv_catalog(catalog, None, targets=["y"], allow_outside_root=True)
    assert allowed.frame[IMAGE].tolist() == ["s3://geocnn-test/safe/data/g0.png", f"s3://geocnn-test/{resolved}"]


def test_a_missing_image_object_names_the_row_and_the_uri(s3: str, galaxies: Path, tmp_path: Path) -> None:  # noqa: F811
    upload(galaxies.parent / "images" / "syn000000.png", "gaps/g0.png")
    rows = [{"id": "g0", "file": "g0.png", "y": "1.0"}, {"id": "g1", "file": "sub/g1.png", "y": "2.0"}]
    catalog = write_catalog(rows, "gaps/catalog.csv", tmp_path)
    with pytest.raises(GeocnnError, match=r"s3://geocnn-test/gaps/catalog.csv: row 3 \(id 'g1'\): image file not "
                                          r"found: tried s3://geocnn-test/gaps/sub/g1.png"):
        read_csv_catalog(catalog, None, targets=["y"])
    with pytest.raises(GeocnnError, match="s3://geocnn-test/gaps/nope.csv: catalog object does not exist"):
        read_csv_catalog(f"s3://{BUCKET}/gaps/nope.csv", None, targets=["y"])
    with pytest.raises(GeocnnError, match="s3://geocnn-test/gaps/no-images: folder \\(data.images\\) does not exist"):
        read_csv_catalog(catalog, f"s3://{BUCKET}/gaps/no-images", targets=["y"])


def test_class_folders_and_parquet_catalogs_from_s3(s3: str, galaxies: Path, tmp_path: Path) -> None:  # noqa: F811
    table = pd.read_csv(galaxies)
    root = tmp_path / "folders"
    for row in table.itertuples():
        for split in ("train",) if row.Index % 3 else ("test",):
            target = root / split / row.morphology / f"{row.id}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((galaxies.parent / row.file).read_bytes())
    remote = upload_tree(root, "folders")
    local, from_s3 = read_folders(root), read_folders(remote + "/")
    assert from_s3.classes == local.classes and len(local.frame) == N
    assert sorted(set(local.frame["split"])) == ["test", "train"]
    pd.testing.assert_frame_equal(from_s3.frame.drop(columns=IMAGE), local.frame.drop(columns=IMAGE))
    assert from_s3.frame[IMAGE].iloc[0].startswith(f"{remote}/test/")
    parquet = galaxies.parent / "catalog.parquet"
    table.to_parquet(parquet)
    upload(parquet, "pq/catalog.parquet")
    upload_tree(galaxies.parent / "images", "pq/images")
    cat = read_csv_catalog(f"s3://{BUCKET}/pq/catalog.parquet", None, targets=["morphology", "axis_ratio"])
    assert cat.frame["id"].tolist() == table["id"].tolist()
    np.testing.assert_array_equal(cat.frame["axis_ratio"].to_numpy(), table["axis_ratio"].to_numpy())
    parquet.unlink()


def test_earth_tiles_from_an_s3_folder(s3: str, tmp_path: Path) -> None:  # noqa: F811
    rng = np.random.default_rng(0)
    points = pd.DataFrame({"cluster_id": [f"c{i}" for i in range(6)], "lat": np.linspace(1, 2, 6),
                           "lon": np.linspace(30, 31, 6), "wealth": rng.normal(size=6)})
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for cid in points["cluster_id"]:
        np.save(tiles / f"{cid}.npy", rng.normal(size=(3, 8, 8)).astype(np.float32))
    points.to_csv(tmp_path / "survey.csv", index=False)
    remote = upload_tree(tiles, "earth/tiles")
    survey = upload(tmp_path / "survey.csv", "earth/survey.csv")
    domain = EarthDomain()
    chips = {}
    for where, catalog, folder in (("remote", survey, remote), ("local", str(tmp_path / "survey.csv"), str(tiles))):
        cfg = load_config(overrides=["data.format=survey", f"data.catalog={catalog}",
                                     f"data.tiles={folder}", "data.targets=[wealth]", "data.id_column=cluster_id",
                                     "data.chip_size=8", f"data.store_root={tmp_path / where}"])
        cat = domain.catalog(cfg)
        assert cat.frame[IMAGE].tolist() == [f"{folder}/c{i}.npy" for i in range(6)]
        assert len(domain.input_files(cfg)) == 7  # the survey and every tile
        chips[where] = np.asarray(domain.ingest(cfg, progress=False).chips)
    assert chips["remote"].shape == (6, 3, 8, 8)
    np.testing.assert_array_equal(chips["remote"], chips["local"])


def test_a_catalog_and_its_images_over_http(galaxies: Path, tmp_path: Path) -> None:
    shutil.copytree(galaxies.parent, tmp_path / "site")
    table = pd.read_csv(galaxies)
    table.loc[4, ["id", "file"]] = ["ghost", "images/gone.png"]  # nothing by that name either
    table.to_csv(tmp_path / "site" / "gaps.csv", index=False)
    port = free_port()
    proc = serve([sys.executable, "-c", RANGED_HTTP, str(port), str(tmp_path / "site")], port)
    try:
        base = f"http://127.0.0.1:{port}"
        remote = read_csv_catalog(f"{base}/catalog.csv", None, targets=["morphology"])
        local = read_csv_catalog(galaxies, None, targets=["morphology"])
        assert remote.frame[IMAGE].tolist() == [f"{base}/images/{i}.png" for i in local.frame["id"]]
        pd.testing.assert_frame_equal(remote.frame.drop(columns=IMAGE), local.frame.drop(columns=IMAGE))
        spec = ChipSpec(out_px=CHIP, files=True, crop=None)
        with ChipSource(spec, "http") as src:
            pixels = [src.make(cat.frame.iloc[i].to_dict())[0].pixels for cat in (remote, local) for i in (0, 29)]
        np.testing.assert_array_equal(np.stack(pixels[:2]), np.stack(pixels[2:]))
        with pytest.raises(GeocnnError, match=f"{base}/gaps.csv: row 6 \\(id 'ghost'\\): image file not found: "
                                              f"tried {base}/images/gone.png"):
            read_csv_catalog(f"{base}/gaps.csv", None, targets=["morphology"])
    finally:
        proc.terminate()
        proc.wait(10)
