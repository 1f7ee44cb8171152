"""The generic CSV route takes the one path: a group column named in split.group_column, every fold of
split.folds scored, spatial blocks from the catalog's lat/lon, multi-band GeoTIFFs, and a predictions table that
keeps group and coordinates for `geocnn score --group`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.config import load_config
from geocnn.domains import ingest, run_experiment

N, SIZE = 72, 24


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 four-band GeoTIFF cut-outs whose target is their mean brightness, in 6 fields with lat/lon."""
    root = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        level = rng.uniform(0.1, 0.9)
        pixels = (level + 0.05 * rng.normal(size=(4, SIZE, SIZE))).astype(np.float32)
        with rasterio.open(root / f"t{i}.tif", "w", driver="GTiff", width=SIZE, height=SIZE, count=4,
                           dtype="float32") as dst:
            dst.write(pixels)
            dst.descriptions = ("blue", "green", "red", "nir")
        rows.append({"id": f"t{i}", "file": f"t{i}.tif", "brightness": level, "field": f"f{i % 6}",
                     "lat": 10 + (i % 6) * 2.0 + rng.uniform(0, 0.01), "lon": 20 + (i % 6) * 2.0})
    pd.DataFrame(rows).to_csv(root / "catalog.csv", index=False)
    return root / "catalog.csv"


def config(catalog: Path, tmp: Path, *extra: str):  # noqa: ANN201
    return load_config(None, [
        "name=csv", f"output_dir={tmp / 'run'}", f"data.catalog={catalog}", "data.targets=[brightness]",
        "data.crop=24", "data.chip_size=16", f"data.store_root={tmp / 'stores'}", "model.backbone=test_resnet",
        "model.task=regression", "train.epochs=2", "train.batch_size=16", "augment.tta_views=1",
        "tracking.enabled=false", *extra])


def test_multiband_geotiffs_in_a_csv_catalog_keep_their_band_names(catalog: Path, tmp_path: Path) -> None:
    store = ingest(config(catalog, tmp_path, "data.bands=[nir, red]"), progress=False)
    assert store.bands == ["nir", "red"] and store.chips.shape == (N, 2, 16, 16) and store.meta["dtype"] == "float32"
    with rasterio.open(catalog.parent / "t0.tif") as src:
        assert np.nanmean(store.chips[0, 0]) == pytest.approx(float(src.read(4).mean()), rel=1e-4)


def test_split_group_column_may_name_the_catalog_column_and_every_fold_is_scored(catalog: Path,
                                                                                tmp_path: Path) -> None:
    cfg = config(catalog, tmp_path, "data.group_column=field", "split.method=grouped", "split.group_column=field",
                 "split.folds=groups", "split.val_fraction=0.2")
    m = run_experiment(cfg, progress=False)["metrics"]
    assert m["test/n"] == N  # all 6 leave-one-field-out folds, not the first one only
    table = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert set(table["fold"]) == set(range(6)) and (table["split"] == "test").all()
    assert table.groupby("field")["fold"].nunique().max() == 1
    assert {"group", "field", "lat", "lon", "pred_brightness", "baseline_brightness"} <= set(table.columns)
    assert "test/group_mean/r2" in m and "baseline/r2" in m
    # the table scores per group through the CLI, as a user would
    res = CliRunner().invoke(app, ["score", str(tmp_path / "run" / "predictions.parquet"), "--target", "brightness",
                                   "--prediction", "pred_brightness", "--group", "field"])
    assert res.exit_code == 0, res.output
    scored = json.loads(res.output)
    assert len(scored["groups"]) == 6 and scored["pooled"]["r2"] == pytest.approx(m["test/r2"])


def test_spatial_blocks_come_from_the_catalogs_lat_lon(catalog: Path, tmp_path: Path) -> None:
    m = run_experiment(config(catalog, tmp_path, "data.group_column=field", "split.method=blocks",
                              "split.block_km=50"), progress=False)["metrics"]
    table = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    test_fields = set(table.loc[table["split"] == "test", "field"])
    train_fields = set(table.loc[table["split"] == "train", "field"])
    assert test_fields and not test_fields & train_fields  # a field (one block) is never on both sides
    assert m["test/n"] == (table["split"] == "test").sum()
