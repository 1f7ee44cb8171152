"""Fan-out on Prefect task runners: scenes mapped as units on a local Dask cluster (2 worker processes) give the
sequential run's maps, a worker killed mid-unit is replaced and the unit run again, folds trained side by side
give the sequential run's metrics, and an unreachable cluster address fails fast with the setting to change."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geocnn import fanout
from geocnn.config import OrchestrationConfig, load_config
from geocnn.data.chips import ChipSpec
from geocnn.domains.earth_maps import map_scenes
from geocnn.errors import GeocnnError
from geocnn.synthetic.earth import make_scene
from pipelines.fanout import mapper_for
from tests.helpers import write_bundle

CHIP = 16
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DASK2 = OrchestrationConfig(task_runner="dask", workers=2, retries=1)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A generated scene cut into 2 x 2 GeoTIFF tiles (each a scene of its own)."""
    folder = tmp_path_factory.mktemp("tiles")
    scene = make_scene(folder / "whole", size_px=256, n_clusters=40, seed=5)["scene"]
    paths = []
    with rasterio.open(scene) as src:
        half = src.width // 2
        for r in range(2):
            for c in range(2):
                win = Window(c * half, r * half, half, half)
                profile = {**src.profile, "width": half, "height": half,
                           "transform": window_transform(win, src.transform)}
                path = folder / f"tile_{r}{c}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(window=win))
                    dst.descriptions = src.descriptions
                paths.append(path)
    return folder, paths


@pytest.fixture(scope="module")
def dask2() -> object:
    """One local Dask cluster of 2 worker processes, behind Prefect's DaskTaskRunner, for the module's tests."""
    with mapper_for(DASK2) as mapper:
        yield mapper


def _bundle(tmp: Path, tiles: list[Path]) -> Path:
    with rasterio.open(tiles[0]) as src:
        bands = list(src.descriptions)
    chips = ChipSpec(out_px=CHIP, files=False, scenes=[str(p) for p in tiles], chip_px=CHIP, max_nodata_fraction=0.5)
    return write_bundle(tmp / "bundle", chips, bands, domain="earth", task="regression", targets=("wealth",),
                        mean=0.1, std=0.1, dtype="float32")


def _unit_kills_its_worker_once(item: tuple[Path, int]) -> int:
    """Squares a number; the first time it sees 1 it kills its own worker process (as an OOM kill would)."""
    mark, x = item
    if x == 1 and not mark.exists():
        mark.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


@pytest.mark.slow
def test_scenes_mapped_on_a_dask_cluster_equal_the_sequential_maps_and_mosaic(tiles: tuple[Path, list[Path]],
                                                                             tmp_path: Path, dask2: object) -> None:
    folder, paths = tiles
    bundle = _bundle(tmp_path, paths)
    scenes = [str(p) for p in paths]
    seq = map_scenes(bundle, scenes, tmp_path / "seq", stride_px=CHIP, device="cpu")
    par = map_scenes(bundle, scenes, tmp_path / "dask", stride_px=CHIP, device="cpu", mapper=dask2)
    for name in [p.stem for p in paths]:
        a = tmp_path / "seq" / "scenes" / name / "prediction.tif"
        b = tmp_path / "dask" / "scenes" / name / "prediction.tif"
        with rasterio.open(a) as x, rasterio.open(b) as y:
            np.testing.assert_allclose(x.read(), y.read(), atol=1e-6, equal_nan=True)
    # the merged mosaic holds every tile's map at that tile's place, on one grid with the tiles' pixel size
    with rasterio.open(seq["map_tif"]) as m, rasterio.open(par["map_tif"]) as n:
        np.testing.assert_allclose(m.read(), n.read(), atol=1e-6, equal_nan=True)
        assert m.block_shapes[0] == (256, 256) and m.compression is not None, "the merged map is a COG"
        mosaic, transform = m.read(1), m.transform
        for p in paths:
            with rasterio.open(tmp_path / "seq" / "scenes" / p.stem / "prediction.tif") as t:
                col, row = ~transform * (t.bounds.left, t.bounds.top)
                part = mosaic[round(row):round(row) + t.height, round(col):round(col) + t.width]
                np.testing.assert_allclose(part, t.read(1), atol=1e-6, equal_nan=True)
    with rasterio.open(seq["map_vrt"]) as v, rasterio.open(seq["map_tif"]) as m:
        assert (v.width, v.height) == (m.width, m.height)
        np.testing.assert_allclose(v.read(1), m.read(1), atol=1e-6, equal_nan=True)
    table = pd.read_parquet(seq["scenes_parquet"])
    assert list(table["scene"]) == scenes and (table["valid_pixels"] > 0).all()
    for _, row in table.iterrows():
        with rasterio.open(row["map_tif"]) as t:
            values = t.read(1)
        assert row["mean"] == pytest.approx(float(np.nanmean(values)), rel=1e-6)


@pytest.mark.slow
def test_a_killed_dask_worker_is_replaced_and_its_unit_run_again(tmp_path: Path, dask2: object) -> None:
    mark = tmp_path / "killed"
    out = dask2.map("square", _unit_kills_its_worker_once, [(mark, x) for x in range(6)])
    assert out == [x * x for x in range(6)]
    assert mark.exists(), "the unit did kill its worker once"


@pytest.mark.slow
def test_folds_trained_side_by_side_give_the_sequential_metrics(tmp_path: Path, dask2: object) -> None:
    from geocnn.domains import domain_for
    from geocnn.domains.base import run_experiment

    def run(runner: str) -> dict:
        cfg = load_config(CONFIGS / "poverty_demo.yaml", [
            f"output_dir={tmp_path / runner}", f"data.store_root={tmp_path / 'stores'}", "earth.synthetic_size=384",
            "earth.synthetic_clusters=120", "model.backbone=test_resnet", "two_stage.enabled=false",
            "earth.chips_per_cluster=1", "train.epochs=2", "maps.enabled=false", "split.folds=2",
            "split.val_fraction=0.2", "train.num_threads=1", "tracking.enabled=false",
            f"orchestration.task_runner={runner}", "orchestration.workers=2"])
        with fanout.using(dask2 if runner == "dask" else fanout.SEQUENTIAL):
            return run_experiment(cfg, domain_for(cfg), progress=False)

    seq, par = run("sequential"), run("dask")
    keys = [k for k in seq["metrics"] if k.startswith(("test/", "validation/"))]
    assert keys
    for k in keys:
        assert par["metrics"][k] == pytest.approx(seq["metrics"][k], abs=1e-6), k
    a = pd.read_parquet(Path(seq["outputs"]["predictions_parquet"]))
    b = pd.read_parquet(Path(par["outputs"]["predictions_parquet"]))
    np.testing.assert_allclose(a["pred_wealth"], b["pred_wealth"], atol=1e-6)
    assert (a["fold"] == b["fold"]).all()


def test_an_unreachable_cluster_address_names_the_setting(tmp_path: Path) -> None:
    bad = OrchestrationConfig(task_runner="dask", address="tcp://127.0.0.1:9")
    with pytest.raises(GeocnnError, match=r"orchestration.address tcp://127.0.0.1:9: no Dask scheduler answers"):
        with mapper_for(bad):
            pass


def test_sequential_mapper_is_the_library_default() -> None:
    assert fanout.current() is fanout.SEQUENTIAL
    assert fanout.current().map("x", lambda v: v + 1, [1, 2]) == [2, 3]
    assert fanout.shards(5, 2) == [(0, 2), (2, 4), (4, 5)]


@pytest.mark.slow
def test_units_on_local_ray_come_back_in_order_and_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    """Ray local mode (the units are plain Python: the map equality above is the Dask test's; Ray's start-up is
    what this pays)."""
    pytest.importorskip("prefect_ray")
    mark = tmp_path / "killed"
    with mapper_for(OrchestrationConfig(task_runner="ray", workers=2, retries=1)) as ray:
        out = ray.map("square", _unit_kills_its_worker_once, [(mark, x) for x in range(5)])
    assert out == [x * x for x in range(5)] and mark.exists()


@pytest.mark.slow
def test_a_catalog_predicted_in_shards_on_dask_is_the_unsharded_table_as_a_parquet_dataset(tmp_path: Path,
                                                                                         dask2: object) -> None:
    from PIL import Image

    from geocnn.data.catalog import Catalog
    from geocnn.domains.base import predict_catalog
    from geocnn.inference.bundle import load_bundle
    from geocnn.serving.shards import SUCCESS, predict_dataset

    rng = np.random.default_rng(0)
    rows = []
    for i in range(23):
        path = tmp_path / "images" / f"g{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
        rows.append({"id": f"g{i:02d}", "image": str(path)})
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    rows.insert(7, {"id": "broken", "image": str(tmp_path / "images" / "broken.png")})
    catalog = Catalog(pd.DataFrame(rows), [], "test catalog")
    bundle = write_bundle(tmp_path / "bundle", ChipSpec(out_px=16), ["red", "green", "blue"], classes=("a", "b"),
                          mean=120.0, std=60.0)
    whole = predict_catalog(load_bundle(bundle), catalog, failures={}, device="cpu")
    seq = predict_dataset(bundle, catalog, tmp_path / "seq", shard_size=5, device="cpu")
    par = predict_dataset(bundle, catalog, tmp_path / "par", shard_size=5, device="cpu", mapper=dask2)
    for done in (seq, par):
        assert [p.name for p in done["parts"]] == [f"part-{k:05d}.parquet" for k in range(5)]
        assert list(done["failures"]) == ["broken"] and done["rows"] == 23
        assert (done["dataset"] / SUCCESS).exists()
        table = pd.read_parquet(done["dataset"])  # the folder reads as one table, in catalog order
        assert list(table["id"]) == list(whole["id"])
        np.testing.assert_allclose(table[["prob_a", "prob_b"]], whole[["prob_a", "prob_b"]], atol=1e-6)
    assert not list(tmp_path.glob(".*.part")), "no staging folder left behind"


@pytest.mark.slow
def test_ingest_in_shards_on_dask_builds_the_same_store_byte_for_byte(tiles: tuple[Path, list[Path]], tmp_path: Path,
                                                                      dask2: object) -> None:
    from geocnn.data.catalog import Catalog
    from geocnn.data.sources.survey import read_survey
    from geocnn.data.store import CHIPS, INDEX, build_store

    folder, paths = tiles
    frame = read_survey(folder / "whole" / "clusters.csv", targets=["wealth"], id_column="cluster_id")
    spec = ChipSpec(out_px=CHIP, files=False, scenes=[str(p) for p in paths], chip_px=CHIP, per_sample=2,
                    box_m=600, max_nodata_fraction=0.5)
    one = build_store(Catalog(frame, ["wealth"], "clusters"), spec, tmp_path / "seq", progress=False)
    with fanout.using(dask2):
        sharded = build_store(Catalog(frame, ["wealth"], "clusters"), spec, tmp_path / "dask", progress=False,
                              shard_size=7)
    assert one.meta["key"] == sharded.meta["key"] and len(one.index) > 40
    assert (one.root / CHIPS).read_bytes() == (sharded.root / CHIPS).read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(one.root / INDEX), pd.read_parquet(sharded.root / INDEX))
    assert not (sharded.root / "shards").exists()


@pytest.mark.slow
def test_a_watch_folder_predicted_in_shards_on_dask_records_every_file_once(tmp_path: Path, dask2: object) -> None:
    from geocnn.serving.batch import predict_new
    from geocnn.serving.watch import BATCHES
    from tests.serving.test_watch import drop, galaxy_bundle

    model = galaxy_bundle(tmp_path / "bundle")
    inbox = tmp_path / "inbox"
    drop(inbox, [f"g{i}.png" for i in range(7)])
    (inbox / "broken.png").write_bytes(b"not an image")
    seq = predict_new(inbox, tmp_path / "seq", str(model), min_age_s=0, log=lambda _: None, warn=lambda _: None)
    par = predict_new(inbox, tmp_path / "par", str(model), min_age_s=0, log=lambda _: None, warn=lambda _: None,
                      mapper=dask2, shard_size=3)
    assert (seq["n_done"], seq["n_failed"]) == (par["n_done"], par["n_failed"]) == (7, 1)
    assert len(list((tmp_path / "par" / BATCHES).glob("*.parquet"))) == 3, "8 files in shards of 3: 3 batch tables"
    a = pd.read_parquet(tmp_path / "seq" / "predictions.parquet").sort_values("id")
    b = pd.read_parquet(tmp_path / "par" / "predictions.parquet").sort_values("id")
    assert list(a["id"]) == list(b["id"])
    probs = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-6)
    again = predict_new(inbox, tmp_path / "par", str(model), min_age_s=0, log=lambda _: None, warn=lambda _: None,
                        mapper=dask2, shard_size=3)
    assert again["n_new"] == 1, "only the broken file is retried: the ledger recorded every shard"
