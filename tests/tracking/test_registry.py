"""Registry: tracking.register decides which trainings become versions; the champion alias moves only to a model
better on validation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient

from geocnn.config import TrackingConfig, load_config
from geocnn.domains import run_experiment
from geocnn.errors import GeocnnError
from geocnn.synthetic.galaxies import make_galaxies
from geocnn.tracking.registry import (
    SPLIT_TAG,
    Comparison,
    better,
    check_metric,
    decide,
    promotion_direction,
    split_signature,
)
from geocnn.tracking.runs import tracking_uri

NAME = "reg_galaxies"


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 synthetic galaxies (5 classes, 64 px)."""
    return make_galaxies(tmp_path_factory.mktemp("syn"), 200, 64, seed=5)


def train(tmp_path: Path, catalog: Path, tag: str, *extra: str) -> dict:
    cfg = load_config(overrides=[
        f"name={NAME}", f"output_dir={tmp_path / tag}", f"data.store_root={tmp_path / 'stores'}", "data.format=csv",
        f"data.catalog={catalog}", "data.targets=[morphology]", "data.crop=48", "data.chip_size=32",
        "split.method=stratified", "split.val_fraction=0.25", "split.test_fraction=0.2", "model.backbone=test_resnet",
        "model.task=classification", "train.batch_size=32", "augment.tta_views=1", *extra])
    return run_experiment(cfg, progress=False)


def version_tags(client: MlflowClient, version: str) -> dict[str, str]:
    return client.get_model_version(NAME, version).tags


def test_better_model_is_promoted_worse_is_not(tmp_path: Path, galaxies: Path) -> None:
    client = MlflowClient(tracking_uri())
    weak = train(tmp_path, galaxies, "weak", "train.epochs=1", "train.optimizer.lr=1e-5")
    assert weak["registered_version"] == "1" and weak["promoted"] == "true"  # no champion yet
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    strong = train(tmp_path, galaxies, "strong", "train.epochs=10", "train.optimizer.lr=3e-3")
    assert strong["registered_version"] == "2"
    s_val, w_val = strong["metrics"]["validation/accuracy"], weak["metrics"]["validation/accuracy"]
    assert s_val > w_val + 0.2, (s_val, w_val)
    assert strong["promoted"] == "true", strong["promotion"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    tags = version_tags(client, "2")
    assert tags["geocnn.promotion.metric"] == "validation/accuracy" and tags["geocnn.promotion.direction"] == "max"
    assert float(tags["geocnn.promotion.candidate"]) == pytest.approx(s_val)
    assert float(tags["geocnn.promotion.champion"]) == pytest.approx(w_val)
    assert tags["geocnn.promotion.champion_version"] == "1"
    assert tags["geocnn.promotion.compared_on"].startswith("same split definition")
    run_tags = client.get_run(client.get_model_version(NAME, "2").run_id).data.tags
    assert run_tags["geocnn.promotion.promoted"] == "True"

    # tracking.register=if_promoted (the default): a worse model stays a run with a logged model, no version
    worse = train(tmp_path, galaxies, "worse", "train.epochs=1", "train.optimizer.lr=1e-5", "seed=1")
    assert "registered_version" not in worse and worse["promoted"] == "false"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"  # the champion stays
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2
    run_tags = client.get_run(worse["run_id"]).data.tags
    assert run_tags["geocnn.promotion.promoted"] == "False" and "does not beat" in run_tags["geocnn.promotion.reason"]
    # tracking.register=always: every training is a version; the worse one is registered but not promoted
    kept = train(tmp_path, galaxies, "kept", "train.epochs=1", "train.optimizer.lr=1e-5", "seed=1",
                 "tracking.register=always")
    assert kept["registered_version"] == "3" and kept["promoted"] == "false"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    tags = version_tags(client, "3")
    assert tags["geocnn.promotion.promoted"] == "False"
    assert "does not beat" in tags["geocnn.promotion.reason"]
    assert client.get_model_version(NAME, "3").description.startswith("test_resnet (classification) trained on")
    # tracking.register=never: no registry at all
    never = train(tmp_path, galaxies, "never", "train.epochs=1", "tracking.register=never")
    assert "registered_version" not in never and "promotion" not in never

    # The data grew: the split definition differs, so both models are scored on this run's validation rows that
    # the champion never trained on, and the decision follows those scores.
    more = make_galaxies(tmp_path / "more", 260, 64, seed=5)
    grown = train(tmp_path, more, "grown", "train.epochs=10", "train.optimizer.lr=3e-3", "tracking.register=always")
    tags = version_tags(client, grown["registered_version"])
    assert "never trained on" in tags["geocnn.promotion.compared_on"], tags
    n_common = int(tags["geocnn.promotion.compared_on"].split()[0])
    assert 20 <= n_common < 0.25 * 260 + 1
    cand, champ = float(tags["geocnn.promotion.candidate"]), float(tags["geocnn.promotion.champion"])
    assert (tags["geocnn.promotion.promoted"] == "True") == (cand > champ)
    # both models predicted those rows: McNemar's p-value is recorded beside the decision (it does not decide)
    assert tags["geocnn.promotion.paired_test"] == "McNemar" and 0 < float(tags["geocnn.promotion.p_value"]) <= 1
    assert "significant, p = " in tags["geocnn.promotion.reason"], tags["geocnn.promotion.reason"]
    alias = str(client.get_model_version_by_alias(NAME, "champion").version)
    assert alias == (grown["registered_version"] if cand > champ else "2")


def test_champion_predicts_through_the_registry(tmp_path: Path, galaxies: Path) -> None:
    from typer.testing import CliRunner

    from geocnn.cli import app

    train(tmp_path, galaxies, "one", "train.epochs=1", f"tracking.registered_model={NAME}_cli")
    images = Path(galaxies).parent
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(app, ["predict", "--model", f"models:/{NAME}_cli@champion", "--images", str(images),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"model models:/{NAME}_cli@champion (v1)" in res.output  # which version the alias resolved to
    assert "Downloading" not in res.output
    table = pd.read_csv(out)
    assert len(table) == 200 and table.filter(like="prob_").sum(axis=1).round(4).eq(1).all()


def test_promotion_refuses_test_metrics_and_unknown_metrics() -> None:
    cfg = load_config(overrides=["tracking.promotion_metric=test/accuracy"])
    with pytest.raises(GeocnnError, match="must not look at test metrics"):
        check_metric(cfg.tracking, "validation/accuracy", {"test/accuracy": 0.9})
    cfg = load_config(overrides=["tracking.promotion_metric=validation/f1"])
    with pytest.raises(GeocnnError, match=r"validation/accuracy"):
        check_metric(cfg.tracking, "validation/accuracy", {"validation/accuracy": 0.9})
    assert check_metric(load_config().tracking, "validation/rmse", {"validation/rmse": 0.1}) == "validation/rmse"
    assert promotion_direction(load_config().tracking, "validation/rmse") == "min"
    assert promotion_direction(load_config().tracking, "validation/r2") == "max"
    assert better(0.1, 0.2, "min") and not better(0.2, 0.2, "max")


def test_split_signature_depends_on_assignment_not_order() -> None:
    a = split_signature(pd.Series(["x", "y", "z"]).to_numpy(), pd.Series(["train", "val", "test"]).to_numpy())
    b = split_signature(pd.Series(["z", "x", "y"]).to_numpy(), pd.Series(["test", "train", "val"]).to_numpy())
    c = split_signature(pd.Series(["x", "y", "z"]).to_numpy(), pd.Series(["val", "train", "test"]).to_numpy())
    assert a == b != c


def test_rescored_champion_comparison_records_the_paired_test_without_changing_the_rule() -> None:
    """The issue's example: 68 vs 66 of 94 right on the same rows is a win on the metric, but not significant."""
    champion = SimpleNamespace(version="3", run_id="r3", tags={})
    client = SimpleNamespace(get_model_version_by_alias=lambda name, alias: champion,
                             get_run=lambda run_id: SimpleNamespace(data=SimpleNamespace(
                                 tags={SPLIT_TAG: "older data"}, metrics={"validation/accuracy": 0.9})))
    rescore = lambda version: Comparison(68 / 94, 66 / 94, 94, "94 validation rows", 0.6875, "McNemar")  # noqa: E731
    decision = decide(client, TrackingConfig(), "validation/accuracy", NAME, {"validation/accuracy": 0.8}, "new",
                      rescore)
    assert decision.promoted and decision.p_value == 0.6875 and decision.paired_test == "McNemar"
    assert "beats" in decision.reason and "not significant, p = 0.69 (McNemar" in decision.reason, decision.reason
    worse = lambda version: Comparison(0.5, 0.8, 94, "94 validation rows", 0.001, "McNemar")  # noqa: E731
    decision = decide(client, TrackingConfig(), "validation/accuracy", NAME, {}, "new", worse)
    assert not decision.promoted and "does not beat" in decision.reason
    assert "; significant, p = 0.001" in decision.reason
