"""The out-of-distribution guard: the training profile in the bundle, its rules, and predict/map/watch using it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import Affine
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.config import load_config
from geocnn.data.catalog import Catalog
from geocnn.data.chips import ChipSpec
from geocnn.data.profile import (
    BandRange,
    TargetRange,
    TrainingProfile,
    check_inputs,
    enforce,
    flag_targets,
    profile_store,
)
from geocnn.data.store import ChipStore
from geocnn.domains import DOMAINS, run_experiment
from geocnn.domains.base import predict_catalog
from geocnn.domains.earth_maps import map_scene
from geocnn.errors import GeocnnError
from geocnn.inference.bundle import load_bundle
from tests.helpers import write_bundle

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# ------------------------------------------------------------------------------------------------------ rules
def profile(dtype: str = "float32", resolution_m: float | None = 30.0) -> TrainingProfile:
    """Two bands whose training values are uniform on [0, 1] and [10, 20]; wealth spans -1.4 to 2.3."""
    bands = [BandRange(name="red", q001=0.001, q01=0.01, q50=0.5, q99=0.99, q999=0.999, min=0.0, max=1.0),
             BandRange(name="nir", q001=10.01, q01=10.1, q50=15.0, q99=19.9, q999=19.99, min=10.0, max=20.0)]
    return TrainingProfile(dtype=dtype, bands=bands, n_chips=100, resolution_m=resolution_m, chip_m=480.0,
                           targets={"wealth": TargetRange(min=-1.4, q01=-1.2, q99=2.1, max=2.3)})


def chips_like(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0, 1, (n, 8, 8)), rng.uniform(10, 20, (n, 8, 8))], axis=1).astype(np.float32)


def test_inputs_like_the_training_data_give_no_warning() -> None:
    chips = chips_like()
    chips[:, :, 0, 0] = np.nan  # nodata is ignored
    assert check_inputs(profile(), chips, ["red", "nir"], "float32", resolution_m=45.0) == []
    # files without band descriptions (band1, band2) match any name
    assert check_inputs(profile(), chips, ["band1", "band2"], "float32") == []


def test_resolution_beyond_the_factor_is_named_with_both_numbers() -> None:
    (text,) = check_inputs(profile(), chips_like(), ["red", "nir"], "float32", resolution_m=75.0)
    assert "75 m" in text and "30 m" in text and "2.5x" in text and "more than the 2x allowed" in text
    assert check_inputs(profile(), chips_like(), ["red", "nir"], "float32", resolution_m=12.0, factor=3.0) == []
    assert "0.1x" in check_inputs(profile(), chips_like(), ["red", "nir"], "float32", resolution_m=3.0)[0]


def test_dtype_and_band_names_that_differ_are_named() -> None:
    texts = check_inputs(profile(), chips_like(), ["B04", "nir"], "uint8")
    assert len(texts) == 2
    assert "data type uint8" in texts[0] and "float32" in texts[0]
    assert "['B04', 'nir']" in texts[1] and "['red', 'nir']" in texts[1]
    assert "band names" in check_inputs(profile(), chips_like()[:, :1], ["red"], "float32")[0]  # a band missing


def test_band_values_rule_share_outside_and_median() -> None:
    # allowed for red: [0.001 - 0.499, 0.999 + 0.499] = [-0.498, 1.498]
    chips = chips_like(n=100)
    chips[:3, 0] = 5.0  # 3 % of red's values far outside: below the 5 % share, median unchanged
    assert check_inputs(profile(), chips, ["red", "nir"], "float32") == []
    chips[:8, 0] = 5.0  # 8 %: flagged, naming the band and the share
    (text,) = check_inputs(profile(), chips, ["red", "nir"], "float32")
    assert text.startswith("band 'red'") and "8% outside" in text
    shifted = chips_like()
    shifted[:, 1] = 19.95  # inside the allowed range, but the median lies above the training 99 %
    (text,) = check_inputs(profile(), shifted, ["red", "nir"], "float32")
    assert text.startswith("band 'nir'") and "median 19.95" in text
    scaled = chips_like() * 255  # 0-255 display values of a model trained on reflectance
    assert len(check_inputs(profile(), scaled, ["red", "nir"], "float32")) == 2


def test_enforce_logs_or_refuses(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="geocnn"):
        enforce(["data type uint8, ..."], "scene.tif")
    assert "scene.tif: data type uint8" in caplog.text
    with pytest.raises(GeocnnError, match=r"scene\.tif: unlike the data .*--strict.*data type uint8"):
        enforce(["data type uint8, ..."], "scene.tif", strict=True)
    enforce([], "scene.tif", strict=True)


def test_flag_targets_outside_half_a_range_beyond_the_training_values() -> None:
    # wealth -1.4 to 2.3: flagged outside [-1.4 - 1.85, 2.3 + 1.85] = [-3.25, 4.15]
    pred = np.array([[0.0], [4.1], [4.2], [-3.2], [-3.3], [np.nan], [565.0]])
    assert flag_targets(profile(), pred, ["wealth"]).tolist() == [False, False, True, False, True, False, True]
    assert not flag_targets(profile(), pred, ["other"]).any()  # no recorded range: never flagged
    assert not flag_targets(None, pred, ["wealth"]).any()


def test_profile_store_samples_train_chips_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    chips = np.concatenate([rng.uniform(0, 1, (300, 1, 4, 4)), rng.uniform(50, 60, (300, 1, 4, 4))])
    np.save(tmp_path / "chips.npy", chips.astype(np.float32))
    store = ChipStore(tmp_path, {"dtype": "float32", "bands": ["b"]}, pd.DataFrame())
    train = np.arange(300)  # the first 300 chips only: the others (50-60) must not count
    targets = pd.DataFrame({"y": np.linspace(-1, 3, 300), "label": ["a"] * 300})
    a = profile_store(store, train, targets, max_chips=100)
    assert a == profile_store(store, train, targets, max_chips=100)  # seeded
    assert a.n_chips == 100 and a.bands[0].max < 1.0
    assert a.bands[0].q50 == pytest.approx(0.5, abs=0.05) and a.bands[0].q001 == pytest.approx(0.0, abs=0.01)
    assert list(a.targets) == ["y"] and (a.targets["y"].min, a.targets["y"].max) == (-1.0, 3.0)
    with pytest.raises(GeocnnError, match="no train chips"):
        profile_store(store, np.array([], int))


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny direct CNN on the synthetic scene (uint16 Landsat-like digital numbers, 30 m pixels)."""
    tmp = tmp_path_factory.mktemp("ood")
    cfg = load_config(CONFIGS / "poverty_demo.yaml", [
        f"output_dir={tmp / 'run'}", f"data.store_root={tmp / 'stores'}", "earth.synthetic_size=256",
        "earth.synthetic_clusters=60", "data.chip_size=16", "earth.chip_px=16", "earth.chips_per_cluster=1",
        "two_stage.enabled=false", "model.task=regression", "model.backbone=test_resnet", "train.epochs=1",
        "maps.enabled=false", "tracking.enabled=false", "split.folds=null", "augment.tta_views=1",
        "uncertainty.enabled=false"])
    run_experiment(cfg, progress=False)
    return tmp / "run" / "bundle"


def display_scene(source: str, out: Path, factor: int = 10) -> Path:
    """The scene as an 8-bit display image (0-255) at ``factor`` times the pixel size, same bands and CRS."""
    with rasterio.open(source) as src:
        meta, data, desc = src.profile, src.read()[:, ::factor, ::factor].astype(float), src.descriptions
    u8 = np.clip((data - 7000) / 13000 * 255, 0, 255).astype(np.uint8)
    meta.update(dtype="uint8", nodata=None, width=u8.shape[2], height=u8.shape[1], tiled=False,
                transform=meta["transform"] * Affine.scale(factor))
    for key in ("blockxsize", "blockysize"):
        meta.pop(key, None)
    with rasterio.open(out, "w", **meta) as dst:
        dst.write(u8)
        dst.descriptions = desc
    return out


def test_the_bundle_records_the_training_data(trained: Path) -> None:
    pre = load_bundle(trained).preprocessing
    p = pre.profile
    assert p is not None and p.dtype == "uint16" and p.resolution_m == 30.0 and p.chip_m == 480.0
    assert p.band_names == ["blue", "green", "red", "nir"] == pre.bands
    train = pd.read_parquet(trained.parent / "predictions.parquet").query("split == 'train'")
    assert p.n_chips == len(train)  # one chip per cluster, all train chips (< 2000)
    assert (p.targets["wealth"].min, p.targets["wealth"].max) == pytest.approx((train["wealth"].min(),
                                                                                train["wealth"].max()))
    assert all(8000 < b.q50 < 20000 for b in p.bands)  # digital numbers, not 0-255 or reflectance


def test_a_display_scene_at_ten_times_the_pixel_size_is_named_and_refused_with_strict(
        trained: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The issue's example: a model of uint16 digital numbers at 30 m run on a uint8 0-255 scene at 300 m."""
    bundle = load_bundle(trained)
    scene = bundle.preprocessing.chips.scenes[0]
    with caplog.at_level(logging.WARNING, logger="geocnn"):
        map_scene(bundle, [scene], tmp_path / "same", device="cpu")
    assert caplog.text == ""  # the training scene itself: no warning
    bad = display_scene(scene, tmp_path / "display.tif")
    with caplog.at_level(logging.WARNING, logger="geocnn"):
        paths = map_scene(bundle, [str(bad)], tmp_path / "bad", device="cpu")
    assert paths["map_tif"].exists()  # warned, not refused
    assert "ground resolution 300 m per pixel, the model was trained on 30 m (10x" in caplog.text
    assert "data type uint8, the model was trained on uint16" in caplog.text
    for band in ("blue", "green", "red", "nir"):
        assert f"band '{band}': values 0 to" in caplog.text and "100% outside" in caplog.text
    with pytest.raises(GeocnnError, match=r"display\.tif: unlike the data.*10x.*uint8.*band 'blue'"):
        map_scene(bundle, [str(bad)], tmp_path / "strict", device="cpu", strict=True)
    assert not (tmp_path / "strict").exists()  # nothing written
    res = CliRunner().invoke(app, ["map", "--model", str(trained), "--scene", str(bad), "--out",
                                   str(tmp_path / "cli"), "--strict", "--device", "cpu"])
    assert res.exit_code == 2 and "unlike the data" in res.output, res.output
    assert not (tmp_path / "cli").exists() or not any((tmp_path / "cli").iterdir())


def test_predictions_far_outside_the_target_range_are_flagged(trained: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(trained)
    points = pd.read_parquet(trained.parent / "predictions.parquet")[["id", "lat", "lon"]]
    with caplog.at_level(logging.WARNING, logger="geocnn"):
        table = predict_catalog(bundle, Catalog(points, [], "points.csv"), device="cpu")
    assert caplog.text == ""
    assert table["out_of_range"].dtype == bool and not table["out_of_range"].any()
    # the same network predicting 100 target ranges higher (as a model fed the wrong scaling may): all flagged
    r = bundle.preprocessing.profile.targets["wealth"]
    with torch.no_grad():
        bundle.net.y_mean += 100 * (r.max - r.min)
    table = predict_catalog(bundle, Catalog(points, [], "points.csv"), device="cpu")
    assert table["out_of_range"].all() and (table["pred_wealth"] > r.max + 50 * (r.max - r.min)).all()
    # the watch folder's Earth rows flag a scene whose map lies far outside
    frame, failures = DOMAINS["earth"].predict_files(bundle, ["s"], [Path(bundle.preprocessing.chips.scenes[0])],
                                                     tmp_path / "watch", device="cpu")
    assert failures == {} and frame["out_of_range"].tolist() == [True]


def test_predict_strict_refuses_a_display_scene_before_writing(trained: Path, tmp_path: Path) -> None:
    scene = display_scene(load_bundle(trained).preprocessing.chips.scenes[0], tmp_path / "display.tif", factor=2)
    points = pd.read_parquet(trained.parent / "predictions.parquet")[["id", "lat", "lon"]].head(5)
    points.to_csv(tmp_path / "points.csv", index=False)
    res = CliRunner().invoke(app, ["predict", "--model", str(trained), "--catalog", str(tmp_path / "points.csv"),
                                   "--scene", str(scene), "--out", str(tmp_path / "out.csv"), "--strict",
                                   "--device", "cpu"])
    assert res.exit_code == 2 and "uint8" in res.output and "band 'blue'" in res.output, res.output
    assert "ground resolution" not in res.output  # 2x is within the allowed factor
    assert not (tmp_path / "out.csv").exists()


def test_bundles_without_a_profile_load_and_predict_without_warnings(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    chips = ChipSpec(out_px=8, files=True, channels="rgb")
    bundle = load_bundle(write_bundle(tmp_path / "old", chips, ["r", "g", "b"], task="regression",
                                      targets=("y",)))
    assert bundle.preprocessing.profile is None
    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(images / f"g{i}.png")
    frame = pd.DataFrame({"id": [f"g{i}" for i in range(3)], "image": [str(images / f"g{i}.png") for i in range(3)]})
    with caplog.at_level(logging.WARNING, logger="geocnn"):
        table = predict_catalog(bundle, Catalog(frame, [], "images"), device="cpu")
    assert caplog.text == "" and len(table) == 3 and "out_of_range" not in table.columns
    assert table["pred_y"].notna().all()
