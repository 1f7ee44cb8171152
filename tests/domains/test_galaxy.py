"""The galaxy domain end to end on generated galaxies with a tiny timm model: baselines beaten, MLflow, bundle,
predict in another process, resume, regression, vote counts and the Galaxy Zoo decision tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from geocnn.config import load_config
from geocnn.data.splits import split_store
from geocnn.domains import domain_for, ingest, run_experiment
from geocnn.domains.base import epoch_logger, fail_run, open_run
from geocnn.errors import GeocnnError
from geocnn.evaluation.calibration import temper
from geocnn.inference.bundle import check_chips, load_bundle
from geocnn.inference.predict import Forward
from geocnn.synthetic.galaxies import make_galaxies
from geocnn.training.fit import FitSpec, fit
from geocnn.training.resume import read_state

GEOCNN = [sys.executable, "-m", "geocnn.cli"]


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """250 synthetic galaxies (5 classes, 64 px) with a catalog.csv."""
    return make_galaxies(tmp_path_factory.mktemp("syn"), 250, 64, seed=3)


def small_config(tmp_path: Path, catalog: Path, *extra: str) -> list[str]:
    """Overrides for a fast CPU experiment on the synthetic catalog."""
    return [
        "name=test_galaxies", f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}",
        "data.format=csv", f"data.catalog={catalog}", "data.targets=[morphology]", "data.crop=48",
        "data.chip_size=32", "split.method=stratified", "split.val_fraction=0.2", "split.test_fraction=0.2",
        "model.backbone=test_resnet", "model.task=classification", "train.epochs=6", "train.batch_size=32",
        "train.optimizer.lr=0.003", "augment.tta_views=4", "tracking.registered_model=test_galaxies",
        "tracking.alias=champion", *extra,
    ]


def test_classifier_beats_majority_baseline_and_is_tracked(tmp_path: Path, galaxies: Path) -> None:
    cfg = load_config(overrides=small_config(tmp_path, galaxies))
    summary = run_experiment(cfg, progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == pytest.approx(summary["metrics"])
    assert all(isinstance(v, float) for v in metrics.values())
    # 5 balanced classes: the majority baseline is 0.2; the CNN must be far above it on held-out galaxies.
    assert metrics["baseline/accuracy"] == pytest.approx(0.2, abs=0.02)
    assert metrics["test/accuracy"] > 0.5, metrics
    assert metrics["test/roc_auc"] > 0.8
    # error bars: a bootstrap interval around the accuracy, McNemar against the majority class, 90 % sets with
    # their measured coverage, and calibration error before/after the temperature fitted on validation
    assert metrics["test/accuracy_ci_low"] <= metrics["test/accuracy"] <= metrics["test/accuracy_ci_high"]
    assert metrics["test/accuracy_ci_high"] - metrics["test/accuracy_ci_low"] < 0.4
    lo, hi = metrics["test/balanced_accuracy_ci_low"], metrics["test/balanced_accuracy_ci_high"]
    assert lo <= metrics["test/balanced_accuracy"] <= hi
    assert summary["headline"] == (f"accuracy {metrics['test/accuracy']:.4f} [{metrics['test/accuracy_ci_low']:.4f}, "
                                   f"{metrics['test/accuracy_ci_high']:.4f}]")
    assert metrics["compare/baseline/p_value"] < 0.05 and metrics["compare/baseline/difference"] > 0.2
    assert metrics["uncertainty/level"] == 0.9 and 0.6 <= metrics["uncertainty/coverage"] <= 1.0
    assert 0.5 <= metrics["uncertainty/mean_set_size"] <= 5.0 and metrics["uncertainty/temperature"] > 0
    assert 0 <= metrics["test/ece"] < 0.5 and 0 <= metrics["test/ece_uncalibrated"] < 0.5

    # Tables: csv and parquet hold the same values; probabilities sum to 1; every split is present.
    csv = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"id": str})
    pq = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    pd.testing.assert_frame_equal(csv, pq, check_dtype=False)
    probs = pq.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert set(pq["split"]) == {"train", "val", "test"}
    test_rows = pq[pq["split"] == "test"]
    assert (test_rows["pred_morphology"] == test_rows["morphology"]).mean() == pytest.approx(metrics["test/accuracy"])
    in_set = [t in (s or "").split("|") for t, s in zip(test_rows["morphology"], test_rows["prediction_set"])]
    assert np.mean(in_set) == pytest.approx(metrics["uncertainty/coverage"])
    assert list(test_rows["set_size"]) == [len(s.split("|")) if s else 0 for s in test_rows["prediction_set"]]

    # MLflow: resolved config as params, per-epoch metrics, test metrics, plots, tables, registered model + alias.
    client = MlflowClient(mlflow.get_tracking_uri())
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "6" and run.data.params["model.backbone"] == "test_resnet"
    assert not [k for k in run.data.params if k.startswith(("earth.", "two_stage.", "maps."))]
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert [m.step for m in history] == list(range(6))
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/test_montage.png"} <= arts
    version = client.get_model_version_by_alias("test_galaxies", "champion")
    assert str(version.version) == summary["registered_version"] == "1"

    # The registered pyfunc model predicts chips the same way as the bundle.
    store = ingest(cfg, progress=False)
    held = np.flatnonzero(pq["split"].to_numpy() != "train")[:5]  # held-out rows carry the bundle's views
    pyfunc = mlflow.pyfunc.load_model("models:/test_galaxies@champion")
    np.testing.assert_allclose(pyfunc.predict(np.asarray(store.chips[held])), probs[held], atol=1e-5)


@pytest.mark.slow
def test_predict_cli_reproduces_test_predictions_in_another_process(tmp_path: Path, galaxies: Path) -> None:
    cfg = load_config(overrides=small_config(tmp_path, galaxies, "train.epochs=2", "tracking.enabled=false"))
    run_experiment(cfg, progress=False)
    table = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    test = table[table["split"] == "test"].reset_index(drop=True)
    catalog = pd.read_csv(galaxies, dtype={"id": str})
    new = catalog[catalog["id"].isin(test["id"])][["id", "file"]]
    new["file"] = [str(galaxies.parent / f) for f in new["file"]]
    new.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred.parquet"
    # the catalog lists absolute paths outside its own folder: refused unless asked for
    from typer.testing import CliRunner

    from geocnn.cli import app

    refused = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "run" / "bundle"), "--catalog",
                                       str(tmp_path / "new.csv"), "--out", str(out)])
    assert refused.exit_code == 2 and "outside the data root" in refused.output and not out.exists()
    proc = subprocess.run([*GEOCNN, "predict", "--model", str(tmp_path / "run" / "bundle"), "--catalog",
                           str(tmp_path / "new.csv"), "--out", str(out), "--device", "cpu", "--allow-outside-root"],
                          capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    got = pd.read_parquet(out).set_index("id").loc[test["id"]]
    np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), test.filter(like="prob_").to_numpy(), atol=1e-6)
    assert (got["pred_morphology"].to_numpy() == test["pred_morphology"].to_numpy()).all()


def test_bundle_roundtrip_gives_identical_outputs(tmp_path: Path, galaxies: Path) -> None:
    cfg = load_config(overrides=small_config(tmp_path, galaxies, "train.epochs=1", "tracking.enabled=false"))
    run_experiment(cfg, progress=False)
    bundle = load_bundle(tmp_path / "run" / "bundle")
    meta = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert meta["format"] == 2 and meta["net"]["backbone"] == "test_resnet" and meta["net"]["in_chans"] == 3
    pre = meta["preprocessing"]
    assert pre["chips"]["crop"] == 48 and pre["chips"]["out_px"] == 32 and pre["chips"]["files"] is True
    assert pre["bands"] == ["red", "green", "blue"] and pre["tta_views"] == 4 and pre["domain"] == "galaxy"
    assert pre["classes"] == sorted(["elliptical", "spiral", "barred", "ring", "edge_on"])
    assert len(pre["mean"]) == 3 and pre["mean"] == meta["net"]["mean"] and meta["geocnn_version"]
    store = ingest(cfg, progress=False)
    table = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    held = np.flatnonzero(table["split"].to_numpy() != "train")[:8]  # one chip per galaxy: rows = chips
    # the table's probabilities are the network's, tempered by the temperature fitted on validation (bundled)
    temperature = bundle.preprocessing.calibration.temperature
    assert 0.05 < temperature < 20 and pre["calibration"]["calibrated_on"].startswith("the validation split")
    got = temper(Forward(bundle.net, bundle.tta_views, "cpu")(np.asarray(store.chips[held])), temperature)
    np.testing.assert_allclose(got, table.filter(like="prob_").to_numpy()[held], atol=1e-6)
    # the training rows (never scored) get one view unless augment.tta_train
    train = np.flatnonzero(table["split"].to_numpy() == "train")[:8]
    one_view = temper(Forward(bundle.net, 1, "cpu")(np.asarray(store.chips[train])), temperature)
    np.testing.assert_allclose(one_view, table.filter(like="prob_").to_numpy()[train], atol=1e-6)
    with pytest.raises(GeocnnError, match="expects"):
        check_chips(bundle.preprocessing, np.asarray(store.chips[:8])[:, :2].shape)  # wrong band count


class Interrupt(L.Callback):
    """Simulates a crash at the start of a given epoch (after earlier epochs were checkpointed)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_interrupted_training_resumes_from_last_checkpoint_in_same_mlflow_run(tmp_path: Path,
                                                                              galaxies: Path) -> None:
    cfg = load_config(overrides=small_config(tmp_path, galaxies, "train.epochs=3"))
    view = split_store(ingest(cfg, progress=False), cfg.split, "morphology")
    run_id = open_run(cfg, domain_for(cfg))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(view, FitSpec.of(cfg), callbacks=[Interrupt(2)], progress=False)
    fail_run(run_id)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert read_state(cfg.out)["complete"] is False
    client = MlflowClient(mlflow.get_tracking_uri())
    assert client.get_run(run_id).info.status == "FAILED"

    resumed_id = open_run(cfg, domain_for(cfg))
    assert resumed_id == run_id
    result = fit(view, FitSpec.of(cfg), epoch_logger(resumed_id), progress=False)
    assert result.resumed and result.epochs_run == 3
    assert read_state(cfg.out)["complete"] is True
    steps = [m.step for m in client.get_metric_history(run_id, "val/loss")]
    assert steps[-1] == 2 and 2 not in steps[:-1]  # epoch 2 was trained once, after the resume

    # A completed training is not resumed: the same command trains afresh.
    again = fit(view, FitSpec.of(cfg), progress=False)
    assert not again.resumed


def test_regression_with_sigmoid_beats_train_mean(tmp_path: Path, galaxies: Path) -> None:
    """axis_ratio (b/a in (0, 1]) is visible in the images: the CNN must beat predicting the train mean."""
    cfg = load_config(overrides=small_config(
        tmp_path, galaxies, "data.targets=[axis_ratio]", "model.task=regression", "model.sigmoid=true",
        "split.method=random", "train.epochs=8", "tracking.enabled=false"))
    summary = run_experiment(cfg, progress=False)
    m = summary["metrics"]
    assert m["test/rmse"] < 0.85 * m["baseline/rmse"], m
    assert m["test/r2"] > 0.2 and "test/pearson_r2" in m and "test/mae" in m


def test_vote_counts_with_dirichlet_multinomial_trains(tmp_path: Path, galaxies: Path) -> None:
    """Zoobot-style vote counts: smooth/featured votes drawn from the known morphology."""
    cat = pd.read_csv(galaxies, dtype={"id": str})
    rng = np.random.default_rng(0)
    p_smooth = np.where(cat["morphology"] == "elliptical", 0.85, 0.15)
    total = rng.integers(5, 40, len(cat))
    smooth = rng.binomial(total, p_smooth)
    cat["smooth-or-featured_smooth"], cat["smooth-or-featured_featured"] = smooth, total - smooth
    path = galaxies.parent / "counts.csv"
    cat.to_csv(path, index=False)
    cfg = load_config(overrides=small_config(
        tmp_path, path, "data.targets=[smooth-or-featured_smooth,smooth-or-featured_featured]",
        "model.task=vote_counts", "split.method=random", "train.epochs=12", "train.batch_size=16", "tracking.enabled=false"))
    m = run_experiment(cfg, progress=False)["metrics"]
    assert m["test/rmse"] < m["baseline/rmse"], m
    assert "test/rmse/smooth-or-featured" in m


def test_prefect_flow_runs_without_server_and_writes_artifact(tmp_path: Path, galaxies: Path) -> None:
    from pipelines.experiment import experiment_flow

    summary = experiment_flow(None, small_config(tmp_path, galaxies, "train.epochs=1"), progress=False)
    assert (tmp_path / "run" / "metrics.json").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/n"] == 50
    assert MlflowClient(mlflow.get_tracking_uri()).get_run(summary["run_id"]).info.status == "FINISHED"

    from tests.pipelines.test_flows import read_artifacts

    text = read_artifacts("galaxy-experiment")[0]["data"]
    table = read_artifacts("galaxy-experiment-table")[0]
    assert summary["run_id"] in text and "| accuracy |" in text
    assert "250 samples from chip store" in text  # what was processed
    assert "registered version" in text and "promot" in text
    assert table["type"] == "table" and "test/accuracy" in str(table["data"])


def write_kaggle_format(galaxies: Path, out: Path) -> Path:
    """The synthetic galaxies in the Kaggle Galaxy Zoo format, with 37 tree-consistent vote fractions.

    Answer weights depend on the known morphology (ellipticals answer 'smooth', edge-on discs 'edge-on', spirals
    'spiral arms', rings 'odd feature: ring') plus noise; the decision-tree constraint is applied with the head's
    own rectify-normalise-scale rule, so the labels obey the tree exactly as the real ones do.
    """
    import shutil

    import torch
    from PIL import Image

    from geocnn.data.schema import KAGGLE_TREE
    from geocnn.models.heads import DecisionTreeHead

    cat = pd.read_csv(galaxies, dtype={"id": str})
    cols = KAGGLE_TREE.columns
    base = {c: 0.2 for c in cols}
    cues = {"elliptical": {"Class1.1": 3.0, "Class6.2": 2.0},
            "edge_on": {"Class1.2": 3.0, "Class2.1": 3.0, "Class9.2": 2.0},
            "spiral": {"Class1.2": 3.0, "Class2.2": 3.0, "Class4.1": 3.0, "Class3.2": 2.0},
            "barred": {"Class1.2": 3.0, "Class2.2": 3.0, "Class3.1": 3.0, "Class4.1": 2.0},
            "ring": {"Class1.2": 2.0, "Class2.2": 2.0, "Class6.1": 3.0, "Class8.1": 3.0}}
    rng = np.random.default_rng(0)
    raw = np.array([[base[c] + cues[m].get(c, 0.0) for c in cols] for m in cat["morphology"]])
    raw = raw * rng.uniform(0.6, 1.4, raw.shape)
    head = DecisionTreeHead(4, KAGGLE_TREE)
    fractions = head.constrain(torch.tensor(raw, dtype=torch.float32)).numpy().round(6)
    images = out / "images_training_rev1"
    images.mkdir(parents=True)
    ids = [str(100000 + i) for i in range(len(cat))]
    for gid, f in zip(ids, cat["file"]):
        Image.open(galaxies.parent / f).convert("RGB").save(images / f"{gid}.jpg", quality=95)
    frame = pd.DataFrame(fractions, columns=cols)
    frame.insert(0, "GalaxyID", ids)
    frame.to_csv(out / "training_solutions_rev1.csv", index=False)
    shutil.copy(galaxies, out / "morphology.csv")
    return out / "training_solutions_rev1.csv"


def test_decision_tree_head_learns_kaggle_vote_fractions(tmp_path: Path, galaxies: Path) -> None:
    solutions = write_kaggle_format(galaxies, tmp_path / "kaggle")
    cfg = load_config(overrides=small_config(
        tmp_path, solutions, "data.format=kaggle", "data.targets=[]", "model.task=vote_fractions",
        "split.method=random", "train.epochs=8", "train.batch_size=16", "tracking.enabled=false"))
    summary = run_experiment(cfg, progress=False)
    m = summary["metrics"]
    assert m["test/rmse"] < 0.8 * m["baseline/rmse"], m
    assert {"test/rmse/Class1", "test/rmse/Class11", "baseline/rmse/Class1"} <= set(m)
    pred = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    q1 = pred[["pred_Class1.1", "pred_Class1.2", "pred_Class1.3"]].sum(1)
    q2 = pred[["pred_Class2.1", "pred_Class2.2"]].sum(1)
    np.testing.assert_allclose(q1, 1, atol=1e-4)
    np.testing.assert_allclose(q2, pred["pred_Class1.2"], atol=1e-4)  # child sums to its parent answer


def test_a_data_sets_own_split_folders_are_kept(tmp_path: Path, galaxies: Path) -> None:
    """train/ validation/ test/ folders of class folders with split.method=predefined: trained and scored on
    exactly those partitions, the classes being the inner folders."""
    import shutil

    cat = pd.read_csv(galaxies, dtype={"id": str})
    parts = np.random.default_rng(0).choice(["train", "validation", "test"], len(cat), p=[0.6, 0.2, 0.2])
    want = {}
    for (_, row), part in zip(cat.iterrows(), parts):
        dest = tmp_path / "set" / part / row["morphology"] / Path(row["file"]).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(galaxies.parent / row["file"], dest)
        want[f"{row['morphology']}/{Path(row['file']).stem}"] = {"validation": "val"}.get(part, part)
    cfg = load_config(overrides=[
        "name=own_split", f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}",
        "data.format=folders", f"data.images={tmp_path / 'set'}", "data.crop=48", "data.chip_size=32",
        "split.method=predefined", "model.backbone=test_resnet", "model.task=classification", "train.epochs=1",
        "augment.tta_views=none", "tracking.enabled=false"])
    summary = run_experiment(cfg, progress=False)
    table = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert dict(zip(table["id"], table["split"])) == want
    assert summary["metrics"]["test/n"] == sum(v == "test" for v in want.values())
    assert set(table["label"]) == set(cat["morphology"])  # classes are the inner folders, not train/validation
