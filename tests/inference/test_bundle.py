"""Bundles: typed, versioned Preprocessing; format-1 bundles (before it) load, or are refused saying how to re-export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from geocnn.data.chips import ChipSpec
from geocnn.errors import GeocnnError
from geocnn.inference.bundle import FORMAT, Preprocessing, Stage2, load_bundle, save_bundle
from geocnn.inference.predict import Forward
from geocnn.models.network import GeoNet, NetSpec


def net(task: str = "classification", bands: int = 3) -> GeoNet:
    torch.manual_seed(1)
    classes = ["a", "b"] if task == "classification" else []
    return GeoNet(NetSpec("test_resnet", bands, task, ["k"] if classes else ["nightlights"], classes,
                          mean=[10.0] * bands, std=[4.0] * bands)).eval()


def write_v1(path: Path, model: GeoNet, preprocessing: dict, extra: dict | None = None) -> Path:
    """A bundle exactly as geocnn 0.1 wrote it before the typed Preprocessing (format 1)."""
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "weights.safetensors"))
    meta = {"geocnn_version": "0.1.0", "spec": model.spec.to_dict(), "preprocessing": preprocessing,
            "tta_views": 4, "weights": "weights.safetensors", **(extra or {})}
    (path / "bundle.json").write_text(json.dumps(meta))
    return path


def test_a_saved_bundle_carries_typed_preprocessing_and_predicts_the_same(tmp_path: Path) -> None:
    model = net()
    pre = Preprocessing(domain="galaxy", chips=ChipSpec(out_px=16, crop=48), bands=["red", "green", "blue"],
                        dtype="uint8", mean=model.spec.mean, std=model.spec.std, tta_views=2,
                        task="classification", targets=["k"], classes=["a", "b"])
    bundle = load_bundle(save_bundle(model, tmp_path / "b", pre, extra={"experiment": "x"}))
    assert bundle.preprocessing == pre and bundle.meta["format"] == FORMAT and bundle.meta["experiment"] == "x"
    assert bundle.preprocessing.output_names == ["k"] and bundle.stage2 is None
    x = np.random.default_rng(0).integers(0, 255, (4, 3, 16, 16)).astype(np.uint8)
    np.testing.assert_allclose(Forward(bundle.net, 2, "cpu")(x), Forward(model, 2, "cpu")(x), rtol=1e-6)


def test_a_format_1_galaxy_bundle_loads_with_its_preprocessing(tmp_path: Path) -> None:
    model = net()
    old = {"kind": "galaxy", "crop": 48, "chip_size": 16, "channels": "gray", "bands": ["band1"], "dtype": "uint8"}
    bundle = load_bundle(write_v1(tmp_path / "old", net(bands=1), old))
    pre = bundle.preprocessing
    assert pre.domain == "galaxy" and pre.chips.files and pre.chips.crop == 48 and pre.chip_px == 16
    assert pre.chips.channels == "gray" and pre.tta_views == 4 and pre.classes == ["a", "b"]
    assert bundle.meta["upgraded_from"] == 1
    del model


def test_a_format_1_two_stage_earth_bundle_loads_with_its_ridge(tmp_path: Path) -> None:
    model = net("classification", bands=4)
    earth = {"scenes": ["scene.tif"], "bands": None, "nodata": None, "layers": [], "chip_m": None, "chip_px": 32,
             "max_nodata_fraction": 0.5, "chips_per_cluster": 3, "cluster_box_m": 1500.0}
    old = {"kind": "earth", "chip_size": 32, "bands": ["b1", "b2", "b3", "b4"], "dtype": "float32", "earth": earth}
    path = write_v1(tmp_path / "old", model, old, {"target": "wealth", "role": "stage1 night lights"})
    width = model.encoder.num_features
    ridge = {"mean": [0.0] * width, "scale": [1.0] * width, "coef": [0.5] * width, "intercept": 1.0, "alpha": 10.0}
    (path / "stage2_ridge.json").write_text(json.dumps(ridge))
    bundle = load_bundle(path)
    pre = bundle.preprocessing
    assert pre.domain == "earth" and not pre.chips.files and pre.chips.scenes == ["scene.tif"]
    assert pre.chips.per_sample == 3 and pre.chips.box_m == 1500.0 and pre.chips.chip_px == 32
    assert pre.stage2 == Stage2(target="wealth", **ridge) and pre.output_names == ["wealth"]
    x = np.random.default_rng(0).random((3, 4, 32, 32)).astype(np.float32)
    feats = Forward(bundle.net, 4, "cpu", output="features")(x)
    np.testing.assert_allclose(Forward(bundle.net, 4, "cpu", head=bundle.stage2)(x)[:, 0],
                               feats.sum(1) * 0.5 + 1.0, rtol=1e-5)


def test_unreadable_old_and_newer_bundles_are_refused_with_the_way_out(tmp_path: Path) -> None:
    broken = write_v1(tmp_path / "broken", net(), {"kind": "galaxy"})  # no chip size: cannot be rebuilt
    with pytest.raises(GeocnnError, match=r"older geocnn.*Re-export it: rerun its experiment"):
        load_bundle(broken)
    model = net()
    pre = Preprocessing(domain="galaxy", chips=ChipSpec(out_px=16), bands=["a", "b", "c"], dtype="uint8",
                        mean=model.spec.mean, std=model.spec.std, task="classification", targets=["k"],
                        classes=["a", "b"])
    newer = save_bundle(model, tmp_path / "newer", pre)
    meta = json.loads((newer / "bundle.json").read_text())
    (newer / "bundle.json").write_text(json.dumps({**meta, "format": FORMAT + 1}))
    with pytest.raises(GeocnnError, match="written by a newer geocnn"):
        load_bundle(newer)
    (newer / "bundle.json").write_text("{not json")
    with pytest.raises(GeocnnError, match="not valid JSON"):
        load_bundle(newer)
