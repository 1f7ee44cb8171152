"""`geocnn describe`: stage shapes, strides, parameters under transfer modes, multiply-adds and receptive fields
measured on real networks, checked against hand counts, timm's feature_info and the receptive-field recursion."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import timm
import torch
from mlflow import MlflowClient
from torch import nn
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.config import load_config
from geocnn.domains import run_experiment
from geocnn.domains.anatomy import describe_config
from geocnn.errors import GeocnnError
from geocnn.models.anatomy import Anatomy, describe
from geocnn.models.network import GeoNet, NetSpec
from geocnn.models.receptive_field import Tap, measure
from geocnn.synthetic.galaxies import make_galaxies
from tests.domains.test_galaxy import small_config

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def rf_recursion(layers: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The textbook receptive field and jump after each (kernel, stride) layer: r += (k - 1) * j; j *= s."""
    r, j, out = 1, 1, []
    for k, s in layers:
        r, j = r + (k - 1) * j, j * s
        out.append((r, j))
    return out


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=0)


@pytest.fixture(scope="module")
def resnet18_64(resnet18: nn.Module) -> Anatomy:
    # probes 64, 128, 256 and 512 px: layer4's 435 px field fits inside 512 px, not inside 256
    return describe(resnet18, 3, 64, max_probe=512)


def test_resnet18_stages_at_64px(resnet18: nn.Module, resnet18_64: Anatomy) -> None:
    a = resnet18_64
    assert [r.name for r in a.stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [r.shape for r in a.stages] == [(64, 16, 16), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2),
                                          (512,)]
    assert [r.stride for r in a.stages[:5]] == [4, 4, 8, 16, 32]
    # the stages' strides are timm's own reductions; the stem ends where layer1 starts (after the max-pool)
    reductions = [d["reduction"] for d in resnet18.feature_info]
    assert [r.stride for r in a.stages[1:5]] == reductions[1:] and a.stage("stem").stride == reductions[1]
    assert a.stage("stem").modules == "conv1 .. maxpool"
    # every parameter is counted once, in the row where its module runs
    total = sum(p.numel() for p in resnet18.parameters())
    assert a.params == total == 11_176_512 and sum(r.params for r in a.stages) == total
    assert a.stage("layer4").params == sum(p.numel() for p in resnet18.layer4.parameters())
    assert a.stage("stem").params == 64 * 3 * 7 * 7 + 2 * 64
    # conv1 by hand: 64 maps of 32 x 32, each output 3 x 7 x 7 multiply-adds
    assert a.stage("stem").macs == 64 * 32 * 32 * 3 * 7 * 7
    assert sum(r.macs for r in a.stages) == a.macs == 148_045_824
    assert a.warnings == []


def test_resnet18_receptive_fields_are_the_textbook_ones(resnet18_64: Anatomy) -> None:
    # The recursion over conv1 7/2, max-pool 3/2, then 2 BasicBlocks (two 3x3 convs each) per stage, the first
    # conv of layers 2-4 with stride 2: 11, 43, 99, 211, 435 px. The gradient measures exactly these because the
    # probe redraws every weight: on timm's own initialisation each block's last BatchNorm starts at zero
    # (zero_init_last), the residual branches pass no gradient, and layer4 would measure 11 px (the shortcuts).
    layers = [(7, 2), (3, 2)] + [(3, 1)] * 4 + [(3, 2), (3, 1), (3, 1), (3, 1)] * 3
    textbook = [r for r, _ in rf_recursion(layers)]
    assert textbook[1] == 11 and textbook[5] == 43 and textbook[-1] == 435
    fields = [r.field for r in resnet18_64.stages[:5]]
    assert all(f is not None and f.exact for f in fields)
    assert [f.side for f in fields] == [11, 43, 99, 211, 435]
    assert fields[-1].probe == 512 and resnet18_64.stage("head").field_text() == "global"


def test_hand_built_conv_nets_measure_the_formula() -> None:
    def net(*layers: tuple[int, int]) -> nn.Sequential:
        return nn.Sequential(*[nn.Conv2d(2, 2, k, stride=s, padding=k // 2) for k, s in layers])

    two = describe(net((3, 1), (3, 2)), 2, 32)
    assert [r.field.side for r in two.stages[:2]] == [3, 5] == [r for r, _ in rf_recursion([(3, 1), (3, 2)])]
    assert [r.stride for r in two.stages[:2]] == [1, 2]
    three = describe(net((3, 1), (3, 2), (3, 1)), 2, 32)
    assert [r.field.side for r in three.stages] == [3, 5, 9]
    assert [r.shape for r in three.stages] == [(2, 32, 32), (2, 16, 16), (2, 16, 16)]
    # a 9 px field on a 64 px chip is under a quarter of it: the warning names what to change
    wide = describe(net((3, 1), (3, 2), (3, 1)), 2, 64)
    assert any("sees 9 px of a 64 px chip" in w and "model.backbone" in w for w in wide.warnings)
    # a field wider than every probe is a lower bound, not a number
    deep = describe(net(*[(3, 2)] * 3, *[(7, 1)] * 4), 2, 16, max_probe=32)
    last = deep.stages[-1].field
    assert last is not None and not last.exact and deep.stages[-1].field_text().startswith(">=")


def test_single_conv_macs_equal_the_hand_count() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True))
    a = describe(conv, 3, 32)
    assert a.macs == a.stages[0].macs == 8 * 32 * 32 * 3 * 3 * 3 == 221_184
    assert a.params == 8 * 3 * 3 * 3 + 8


def test_transfer_modes_count_trainable_parameters_without_changing_the_model(resnet18: nn.Module) -> None:
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    resnet18.train()
    probe = describe(resnet18, 3, 64, "linear_probe", max_probe=64)
    assert probe.trainable == 0 and probe.frozen == probe.params
    partial = describe(resnet18, 3, 64, "partial", n_blocks=1, max_probe=64)
    layer4 = sum(p.numel() for p in resnet18.layer4.parameters())
    assert partial.trainable == layer4 == partial.stage("layer4").trainable
    assert [r.trainable for r in partial.stages if r.name != "layer4"] == [0] * 5
    full = describe(resnet18, 3, 64, "full", max_probe=64)
    assert full.trainable == full.params
    # the caller's model: still all trainable, still in training mode, same weights
    assert all(p.requires_grad for p in resnet18.parameters()) and resnet18.training
    assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())
    with pytest.raises(GeocnnError, match="model.transfer"):
        describe(resnet18, 3, 64, "freeze_all", max_probe=64)


def test_geonet_head_trains_under_linear_probe() -> None:
    net = GeoNet(NetSpec(backbone="test_resnet", in_chans=4, task="classification", targets=["y"],
                         classes=["a", "b", "c"]))
    a = describe(net, 4, 32, "linear_probe", max_probe=32)
    head = sum(p.numel() for p in net.head.parameters())
    assert a.trainable == head == a.stage("head").trainable == 96 * 3 + 3
    assert a.params == sum(p.numel() for p in net.parameters()) and a.stage("head").shape == (3,)


def test_chip_size_warnings_for_resnet18(resnet18: nn.Module, resnet18_64: Anatomy) -> None:
    small = describe(resnet18, 3, 32, max_probe=32)
    assert small.stage("layer4").shape == (512, 1, 1)
    assert any(w.startswith("a 32 px chip through a network that downsamples 32x leaves 1x1 of feature map")
               and "data.chip_size >= 64" in w for w in small.warnings)
    tiny = describe(resnet18, 3, 16, max_probe=16)
    assert any(w.startswith("layer4 runs on a 1x1 map") for w in tiny.warnings)
    big = describe(resnet18, 3, 128, max_probe=128)
    assert big.stage("layer4").shape == (512, 4, 4) and big.warnings == []
    assert big.stage("layer4").field_text() == ">=128"  # a lower bound, already over a quarter of the chip


def test_efficientnet_and_convnext_fields_follow_their_kernels() -> None:
    # EfficientNet: squeeze-excitation's spatial mean would make every position see the whole chip; it is held
    # fixed, and the stages measure the recursion of their 3x3 depthwise convolutions (stride 2 in blocks 1-4).
    eff = describe(timm.create_model("test_efficientnet", num_classes=0), 3, 64, max_probe=128)
    steps = [(3, 2), (3, 1), (3, 2), (3, 2), (3, 2), (3, 2)]
    assert [r.field.side for r in eff.stages[:6]] == [r for r, _ in rf_recursion(steps)] == [3, 7, 11, 19, 35, 67]
    assert any("held fixed" in n for n in eff.notes)
    # ConvNeXt: 4x4/4 patch stem, one 7x7 block, then a 2x2/2 downsample and two 7x7 blocks
    cnx = describe(timm.create_model("test_convnext", num_classes=0), 3, 64, max_probe=256)
    steps = [(4, 4), (7, 1), (2, 2), (7, 1), (7, 1)]
    rec = [r for r, _ in rf_recursion(steps)]
    assert [r.field.side for r in cnx.stages[:3]] == [rec[0], rec[1], rec[4]] == [4, 28, 128]
    assert not cnx.stage("stages.3").field.exact


def test_measure_reads_inputs_and_outputs_of_modules() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 5, padding=2), nn.Conv2d(1, 1, 3, padding=1))
    fields, held = measure(net, lambda m, x: m(x), [Tap("in", "1", "in"), Tap("out", "1")], 1, 24)
    assert fields["in"].side == 5 and fields["out"].side == 7 and not held


def test_describe_cli_on_a_backbone_and_on_the_demo_config(tmp_path: Path) -> None:
    csv = tmp_path / "anatomy.csv"
    res = runner.invoke(app, ["describe", "resnet18", "--chip-size", "64", "--max-probe", "128", "--csv", str(csv)])
    assert res.exit_code == 0, res.output
    assert "resnet18 encoder (timm, num_classes=0) on 3-band 64 x 64 px chips" in res.output
    assert "Params: 11,176,512 total, 11,176,512 trainable, 0 frozen" in res.output
    table = pd.read_csv(csv)
    assert table.loc[table["kind"] == "stage", "name"].tolist() == ["stem", "layer1", "layer2", "layer3", "layer4",
                                                                     "head"]
    stages = table.set_index("name")
    assert stages.loc["layer2", ["output", "stride", "rf"]].tolist() == ["128 x 8 x 8", 4 * 2, "99"]
    assert stages.loc["layer4", ["output", "stride", "rf"]].tolist() == ["512 x 2 x 2", 32, ">=128"]  # probed <= 128

    demo = str(ROOT / "configs" / "galaxy_demo.yaml")
    res = runner.invoke(app, ["describe", demo, "--max-probe", "96", "--transfer", "partial", "--n-blocks", "1",
                              "--csv", str(csv), "--set", "data.class_names=[elliptical,spiral,barred,ring,edge_on]"])
    assert res.exit_code == 0, res.output
    assert "galaxy_demo: resnet18 + classification head (5 classes: data.class_names) on 3-band 48 x 48 px chips " \
           "(data.channels=rgb; data.chip_size=48); model.transfer=partial, model.n_blocks=1" in res.output
    stages = pd.read_csv(csv).set_index("name")
    assert stages.loc["layer4", "output"] == "512 x 2 x 2" and stages.loc["layer4", "stride"] == 24  # 48 px / 2
    assert str(stages.loc["head", "output"]) == "5" and stages.loc["head", "params"] == 512 * 5 + 5
    # partial with n_blocks=1: layer4 and the head train, nothing else
    assert stages["trainable"].sum() == stages.loc["layer4", "params"] + 2_565
    assert "Params: 11,179,077 total, 8,396,293 trainable, 2,782,784 frozen (transfer partial)" in res.output
    # without data.class_names only the data knows the classes: the title says the head's width is a placeholder
    res = runner.invoke(app, ["describe", demo, "--max-probe", "48"])
    assert res.exit_code == 0 and "classification head (2 classes: a placeholder, the data decides)" in res.output

    res = runner.invoke(app, ["describe", "resnet18", "--chip-size", "32", "--max-probe", "32"])
    assert res.exit_code == 0 and "data.chip_size >= 64" in res.output
    res = runner.invoke(app, ["describe", "resnt18"])
    assert res.exit_code == 2 and "Did you mean resnet18" in res.output


def test_describe_config_counts_bands_and_head(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "galaxy_demo.yaml", ["data.channels=gray", "model.backbone=test_resnet",
                                                               "model.task=regression", "data.targets=[a,b,c]"])
    a = describe_config(cfg, max_probe=48)
    assert a.in_chans == 1 and a.chip == 48 and a.stage("head").shape == (3,)
    assert "regression head (3 outputs)" in a.title
    encoder = timm.create_model("test_resnet", num_classes=0, in_chans=1)
    assert a.params == sum(p.numel() for p in encoder.parameters()) + 96 * 3 + 3
    # Earth: the generated scene's 4 bands; two-stage transfer trains stage 1 on night-light classes
    earth = describe_config(load_config(ROOT / "configs" / "poverty_demo.yaml"), max_probe=32)
    assert earth.in_chans == 4 and earth.stage("head").shape == (3,) and "stage 1: classification" in earth.title
    assert earth.stage("layer4").shape == (512, 1, 1) and any("data.chip_size >= 64" in w for w in earth.warnings)


def test_every_run_logs_its_anatomy(tmp_path: Path) -> None:
    catalog = make_galaxies(tmp_path / "syn", 100, 48, seed=1)
    cfg = load_config(overrides=small_config(tmp_path, catalog, "train.epochs=1", "augment.tta_views=1",
                                             "model.transfer=linear_probe"))
    summary = run_experiment(cfg, progress=False)
    client = MlflowClient(mlflow.get_tracking_uri())
    arts = {a.path for a in client.list_artifacts(summary["run_id"], "model")}
    assert {"model/anatomy.txt", "model/anatomy.csv"} <= arts
    text = mlflow.artifacts.load_text(f"runs:/{summary['run_id']}/model/anatomy.txt")
    # the run's chips are 32 px (data.chip_size): test_resnet's last stage is 1x1, and the run says so
    assert "test_resnet + classification head trained on 3-band 32 x 32 px chips" in text
    assert "data.chip_size >= 64" in text
    bundle = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert bundle["net"]["backbone"] == "test_resnet"
    frame = pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{summary['run_id']}/model/anatomy.csv"))
    head = frame.set_index("name").loc["head"]
    assert head["output"] == "5" and head["trainable"] == head["params"] == 96 * 5 + 5  # linear probe: head only
    assert frame["trainable"].sum() == head["trainable"]
    # the exported bundle describes the same network on the chips it was trained on
    res = runner.invoke(app, ["describe", str(tmp_path / "run" / "bundle"), "--max-probe", "64"])
    assert res.exit_code == 0, res.output
    assert "test_resnet + classification head on 3-band (red, green, blue) 32 x 32 px chips" in res.output
    assert f"Params: {frame['params'].sum():,} total" in res.output and "96 x 1 x 1" in res.output
