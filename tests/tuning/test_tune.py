"""`geocnn tune`: a search on synthetic galaxies beats a deliberately bad default on validation, touches test once,
and leaves a parent MLflow run with one child run per trial and the study's plots; killed studies resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.config import load_config
from geocnn.domains import base
from geocnn.errors import GeocnnError
from geocnn.tuning.search import tune
from geocnn.tuning.study import study_lock

BAD_DEFAULT = {"name": "sgd", "lr": 1e-5, "momentum": 0.0, "schedule": "constant", "warmup_epochs": 0}
"""A learning rate far too small for 4 epochs: the network stays at chance."""


def galaxy_base(tmp: Path, stores: Path, **tune_section: object) -> dict:
    """Synthetic galaxies (5 balanced classes) on a tiny timm ResNet, with the bad default optimiser."""
    return {
        "name": "tune_galaxies", "seed": 0, "output_dir": str(tmp / "run"),
        "data": {"format": "synthetic", "synthetic_count": 300, "synthetic_size": 48, "crop": 40, "chip_size": 24,
                 "store_root": str(stores)},
        "split": {"method": "stratified", "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"backbone": "test_resnet", "task": "classification", "transfer": "from_scratch"},
        "train": {"epochs": 4, "batch_size": 32, "optimizer": dict(BAD_DEFAULT)},
        "augment": {"tta_views": 1},
        "uncertainty": {"bootstrap": 50},
        "tracking": {"experiment": "tune-test", "registered_model": "tune_test"},
        "tune": {"n_trials": 6, "n_startup": 3,
                 "space": {"train.optimizer.lr": "loguniform(1e-5, 1e-1)", "train.optimizer.name": ["sgd", "adamw"]},
                 **tune_section},
    }


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tune_stores")


def _spy_forward(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Record the chip rows every held-out prediction of the run skeleton asks for."""
    asked: list[np.ndarray] = []
    original = base.Forward.__call__

    def spy(self, chips, rows=None, *args, **kwargs):  # noqa: ANN001, ANN202
        asked.append(np.asarray(rows if rows is not None else np.arange(len(chips))))
        return original(self, chips, rows, *args, **kwargs)

    monkeypatch.setattr(base.Forward, "__call__", spy)
    return asked


@pytest.mark.slow
def test_search_beats_a_bad_default_on_validation_and_scores_test_once(
        tmp_path: Path, stores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, base=galaxy_base(tmp_path, stores))
    asked = _spy_forward(monkeypatch)
    summary = tune(cfg, progress=False)

    # trial 0 is the config's own (bad) values; the search found something much better on validation
    study = optuna.load_study(study_name="tune_galaxies", storage=summary["storage"])
    first = study.trials[0]
    assert first.user_attrs["geocnn.config_trial"] and first.params == {"train.optimizer.lr": 1e-5,
                                                                       "train.optimizer.name": "sgd"}
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 6
    assert summary["config_value"] <= 0.3  # chance is 0.2 on 5 balanced classes
    assert summary["best_value"] >= summary["config_value"] + 0.25, summary
    assert summary["metric"] == "validation/accuracy" and summary["direction"] == "maximize"

    # test rows were predicted by exactly one forward pass: the final run of the best configuration
    store = base.ChipStore.open(Path(summary["final"]["store"]))
    test_rows = set(np.flatnonzero(np.isin(
        base.split_store(store, cfg.split, store.targets[0]).split, ["test"])).tolist())
    touching = [rows for rows in asked if test_rows & set(rows.tolist())]
    assert len(touching) == 1 and test_rows <= set(touching[0].tolist())
    final_metrics = summary["final"]["metrics"]
    assert final_metrics["test/accuracy"] > final_metrics["baseline/accuracy"]

    # MLflow: a parent run, a child per trial (params, per-epoch curves, validation metrics, no test metrics),
    # the final run as a child too; the study's plots and the chosen config on the parent
    client = MlflowClient()
    parent = client.get_run(summary["parent_run"])
    assert parent.data.tags["geocnn.kind"] == "tune" and parent.info.status == "FINISHED"
    assert parent.data.metrics["tune/best_value"] == pytest.approx(summary["best_value"])
    assert parent.data.params["best.train.optimizer.name"] == summary["best_params"]["train.optimizer.name"]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = [r for r in children if r.data.tags.get("geocnn.kind") == "tune-trial"]
    finals = [r for r in children if r.data.tags.get("geocnn.kind") == "tune-final"]
    assert len(trials) == 6 and len(finals) == 1
    for r in trials:
        assert not any(k.startswith("test/") for k in r.data.metrics), r.data.metrics
        assert "train.optimizer.lr" in r.data.params
        if r.data.tags.get("geocnn.tune.state") != "pruned":
            assert len(client.get_metric_history(r.info.run_id, "val/accuracy")) == 4
            assert "validation/accuracy" in r.data.metrics
    assert "test/accuracy" in finals[0].data.metrics
    art = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "learning_curves"):
        assert f"plots/{name}.png" in art, art
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tune")} >= {"tune/best_config.yaml",
                                                                                   "tune/trials.csv"}

    # the chosen config loads and holds the best values
    chosen = load_config(summary["best_config"])
    best = summary["best_params"]
    assert chosen.train.optimizer.name == best["train.optimizer.name"]
    assert chosen.train.optimizer.lr == pytest.approx(best["train.optimizer.lr"])
    assert "Chosen on validation" in Path(summary["best_config"]).read_text().splitlines()[0]


@pytest.mark.slow
def test_a_killed_study_resumes_and_retries_its_running_trial(tmp_path: Path, stores: Path) -> None:
    section = {"n_trials": 2, "refit": False, "pruner": "none"}
    cfg = load_config(None, base=galaxy_base(tmp_path, stores, **section))
    first = tune(cfg, progress=False)
    assert first["trials"]["complete"] == 2 and first["final"] is None

    # what SIGKILL leaves behind: a trial RUNNING in the storage and the dead process's lock file
    study = optuna.load_study(study_name="tune_galaxies", storage=first["storage"])
    orphan = study.ask({"train.optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
                        "train.optimizer.name": optuna.distributions.CategoricalDistribution(["sgd", "adamw"])})
    (Path(cfg.out) / "tune" / "tune.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": 2 ** 22 + 7}))

    again = tune(load_config(None, base=galaxy_base(tmp_path, stores, **{**section, "n_trials": 3})), progress=False)
    study = optuna.load_study(study_name="tune_galaxies", storage=first["storage"])
    states = [t.state for t in study.trials]
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    retry = [t for t in study.trials if t.user_attrs.get("geocnn.retry_of") == orphan.number]
    assert len(retry) == 1 and retry[0].params == orphan.params
    assert retry[0].state == optuna.trial.TrialState.COMPLETE
    assert again["trials"]["complete"] == 3 and again["parent_run"] == first["parent_run"]


def test_a_study_for_another_config_or_a_live_lock_is_refused(tmp_path: Path) -> None:
    lock_dir = tmp_path / "tune"
    lock_dir.mkdir()
    (lock_dir / "tune.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid()}))
    with pytest.raises(GeocnnError, match="another `geocnn tune`"):
        with study_lock(lock_dir):
            pass


def test_test_metrics_splits_and_bad_ranges_are_refused_when_the_config_loads() -> None:
    cases = {
        "tune.metric=test/accuracy": "chosen on validation, never on test",
        "tune.space={split.seed: [0, 1]}": "validation rows must be the same for every trial",
        "tune.space={train.optimizer.lr: 'loguniform(0, 1)'}": "log scale needs low > 0",
        "tune.space={train.epochs: 'int(1, 10, 4)'}": "step must be a positive whole number",
        "tune.space={train.optimizer.lr: 'normal(1, 2)'}": "write a list of choices",
    }
    for override, message in cases.items():
        with pytest.raises(GeocnnError, match=message):
            load_config(None, [override])
    with pytest.raises(GeocnnError, match="grid needs choices"):
        load_config(None, ["tune.sampler=grid", "tune.space={train.optimizer.lr: 'uniform(0.1, 0.2)'}"])
    with pytest.raises(GeocnnError, match="which the space also searches"):
        load_config(None, ["tune.space={train.optimizer: [{name: sgd, lr: 0.1}], train.optimizer.lr: [0.1]}"])


def test_mapping_choices_set_several_keys_and_the_config_is_trial_zero() -> None:
    cfg = load_config(None, ["train.optimizer={name: sgd, momentum: 0.9, nesterov: true, lr: 0.01}",
                             "tune.space={train.optimizer: [{name: sgd, momentum: 0.0}, {name: sgd, momentum: 0.9, "
                             "nesterov: true}, {name: adagrad}], train.optimizer.lr: 'loguniform(1e-3, 1e-1)'}"])
    dims = cfg.tune.dimensions
    assert dims[0].labels == ["{name: sgd, momentum: 0.0}", "{name: sgd, momentum: 0.9, nesterov: true}",
                              "{name: adagrad}"]
    assert dims[0].changes(dims[0].labels[1]) == {"train.optimizer.name": "sgd", "train.optimizer.momentum": 0.9,
                                                  "train.optimizer.nesterov": True}
    from geocnn.tuning.search import config_trial

    assert config_trial(cfg) == {"train.optimizer": "{name: sgd, momentum: 0.9, nesterov: true}",
                                 "train.optimizer.lr": 0.01}
    outside = load_config(None, ["train.optimizer.lr=0.5", "tune.space={train.optimizer.lr: 'loguniform(1e-3, 1e-1)'}"])
    assert config_trial(outside) == {}


def test_the_chosen_config_keeps_the_files_comments_and_env_references(tmp_path: Path) -> None:
    from geocnn.tuning.config_file import write_tuned_config

    source = tmp_path / "x.yaml"
    source.write_text("# why these settings\nname: x\ndata:\n  catalog: ${GEOCNN_SHARED_DATA}/a.csv  # real data\n"
                      "train:\n  optimizer: {name: adamw, lr: 0.001}\n")
    cfg = load_config(source)
    out = write_tuned_config(tmp_path / "best.yaml", cfg, {"train.optimizer.name": "sgd", "train.optimizer.lr": 0.05,
                                                           "model.dropout": 0.3}, ["Chosen on validation by `geocnn "
                                                                                   "tune` (today)", "Best: 0.9"],
                             source, ["train.epochs=3"])
    text = out.read_text()
    assert text.startswith("# Chosen on validation by `geocnn tune` (today)\n# Best: 0.9\n# why these settings")
    assert "${GEOCNN_SHARED_DATA}/a.csv  # real data" in text
    tree = yaml.safe_load(text)
    assert tree["train"] == {"optimizer": {"name": "sgd", "lr": 0.05}, "epochs": 3}
    assert tree["model"] == {"dropout": 0.3}


def test_cli_tune_refuses_a_test_metric_and_an_empty_space(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: c\ntune:\n  metric: test/r2\n")
    result = CliRunner().invoke(app, ["tune", str(cfg), "--no-prefect"])
    assert result.exit_code != 0 and "never on test" in result.output
    cfg.write_text("name: c\n")
    result = CliRunner().invoke(app, ["tune", str(cfg), "--no-prefect"])
    assert result.exit_code != 0 and "tune.space is empty" in result.output


def _overlap(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether two trials ran at the same time."""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


@pytest.mark.slow
def test_trials_run_side_by_side_on_local_processes_with_one_shared_storage(tmp_path: Path, stores: Path) -> None:
    """tune.parallel workers on a local Dask cluster (processes) share the SQLite study: no trial is lost or run
    twice, and trials overlap in time."""
    pytest.importorskip("prefect_dask")
    from geocnn import fanout
    from pipelines.fanout import mapper_for

    section = {"n_trials": 4, "parallel": 2, "refit": False, "pruner": "none"}
    tree = galaxy_base(tmp_path, stores, **section)
    tree["orchestration"] = {"task_runner": "dask", "workers": 2}
    tree["train"]["epochs"] = 2
    cfg = load_config(None, base=tree)
    with mapper_for(cfg.orchestration) as mapper, fanout.using(mapper):
        summary = tune(cfg, progress=False)
    study = optuna.load_study(study_name="tune_galaxies", storage=summary["storage"])
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == summary["trials"]["complete"] >= 4 and summary["trials"]["fail"] == 0
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)
    assert _overlap(done)
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("tune-test").experiment_id],
                                      "tags.`geocnn.kind` = 'tune-trial'")
    assert len(runs) == len(done)


def test_parallel_trials_need_a_parallel_task_runner(tmp_path: Path, stores: Path) -> None:
    cfg = load_config(None, base=galaxy_base(tmp_path, stores, parallel=2))
    with pytest.raises(GeocnnError, match="tune.parallel=2 runs trials side by side"):
        tune(cfg, progress=False)


@pytest.mark.slow
def test_earth_trials_are_scored_on_the_inner_validation_of_each_outer_fold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Country folds: every trial trains each outer fold on its training countries, predicts only that fold's
    validation countries (never its test countries), and scores the mean over folds."""
    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_config(configs / "poverty_demo.yaml", [
        f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}", "earth.synthetic_size=384",
        "earth.synthetic_clusters=160", "earth.chips_per_cluster=1", "two_stage.enabled=false",
        "model.backbone=test_resnet", "train.epochs=2", "maps.enabled=false", "split.folds=2",
        "split.val_fraction=0.25", "augment.tta_views=1", "tracking.experiment=tune-earth",
        "tune.n_trials=2", "tune.refit=false", "tune.pruner=none",
        "tune.space={train.optimizer.lr: [0.001, 0.003]}"])
    asked = _spy_forward(monkeypatch)
    summary = tune(cfg, progress=False)
    assert summary["metric"] == "validation/r2" and summary["trials"]["complete"] == 2

    store = base.ChipStore.open(next((tmp_path / "stores").iterdir()))
    views = [base.split_store(store, cfg.split, None, fold=f) for f in range(2)]
    for rows in asked:
        fold = [v for v in views if set(rows.tolist()) <= set(np.flatnonzero(v.split == "val").tolist())]
        assert fold, "a trial predicted rows outside one fold's validation countries"
        assert not set(rows.tolist()) & set(np.flatnonzero(fold[0].split == "test").tolist())
    assert len(asked) == 4  # 2 trials x 2 folds, validation rows only
    client = MlflowClient()
    trials = client.search_runs([client.get_experiment_by_name("tune-earth").experiment_id],
                                "tags.`geocnn.kind` = 'tune-trial'")
    for run in trials:
        assert run.data.metrics["validation/r2"] == pytest.approx(run.data.metrics["tune/value"])
        assert not any(k.startswith("test/") for k in run.data.metrics)
        assert {"fold0/val/loss", "fold1/val/loss"} <= set(run.data.metrics)


@pytest.mark.slow
def test_cli_tune_through_the_prefect_flow_writes_the_chosen_config(tmp_path: Path, stores: Path) -> None:
    tree = galaxy_base(tmp_path, stores, n_trials=2, pruner="none")
    tree["train"]["epochs"] = 2
    source = tmp_path / "tune.yaml"
    source.write_text("# my notes on this config\n" + yaml.safe_dump(tree, sort_keys=False))
    target = tmp_path / "chosen.yaml"
    result = CliRunner().invoke(app, ["tune", str(source), "--write-config", str(target)])
    assert result.exit_code == 0, result.output
    assert "final run of the best configuration (test scored once)" in result.output
    assert "best trial" in result.output and "test/accuracy" in result.output
    text = target.read_text()
    assert text.startswith("# Chosen on validation by `geocnn tune`") and "# my notes on this config" in text
    chosen = load_config(target)
    assert chosen.train.optimizer.name in ("sgd", "adamw") and chosen.tune.n_trials == 2


class _Trainer:
    """What the pruning callback reads from Lightning's trainer."""

    sanity_checking = False

    def __init__(self, epoch: int, **metrics: float) -> None:
        import torch

        self.current_epoch = epoch
        self.callback_metrics = {k.replace("__", "/"): torch.tensor(v) for k, v in metrics.items()}


def test_pruning_stops_a_trial_below_the_median_at_the_same_epoch_of_the_same_fold() -> None:
    from geocnn.tuning.trial import Pruning

    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for good in (0.8, 0.7):  # two finished trials that reached 0.5 then `good` in each of 2 folds
        t = study.ask()
        for fold in range(2):
            cb = Pruning(t, "validation/accuracy", "maximize", "val/loss", offset=fold * 3)
            for epoch, value in enumerate((0.3, 0.5, good)):
                cb.on_validation_end(_Trainer(epoch, val__accuracy=value, val__loss=1.0), None)
        study.tell(t, good)
    t = study.ask()
    fold0 = Pruning(t, "validation/accuracy", "maximize", "val/loss", offset=0)
    fold0.on_validation_end(_Trainer(0, val__accuracy=0.1), None)  # warm-up epoch: never pruned
    fold0.on_validation_end(_Trainer(1, val__accuracy=0.6), None)  # above the median (0.5) at step 1
    with pytest.raises(optuna.TrialPruned, match="at epoch 3"):
        fold0.on_validation_end(_Trainer(2, val__accuracy=0.4), None)  # below the median (0.75) at step 2
    assert t.storage.get_trial(t._trial_id).intermediate_values == pytest.approx({0: 0.1, 1: 0.6, 2: 0.4})


def test_pruning_on_a_metric_that_improves_the_other_way_reports_it_negated() -> None:
    from geocnn.tuning.trial import Pruning

    study = optuna.create_study(direction="maximize")
    t = study.ask()
    cb = Pruning(t, "validation/r2", "maximize", "val/loss", offset=4)  # regression logs val/rmse and val/loss
    cb.on_validation_end(_Trainer(1, val__rmse=0.5, val__loss=0.25), None)
    assert t.storage.get_trial(t._trial_id).intermediate_values == pytest.approx({5: -0.25})
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        cb.on_validation_end(_Trainer(2, val__loss=float("nan")), None)


def test_a_space_value_that_makes_an_invalid_config_is_named_before_anything_runs(tmp_path: Path) -> None:
    from geocnn.tuning.search import check_space

    cfg = load_config(None, [f"output_dir={tmp_path}", "tune.space={model.dropout: [0.0, 1.5]}"])
    with pytest.raises(GeocnnError, match=r"tune.space.model.dropout: the value 1.5 .*less than 1"):
        check_space(cfg)
    assert not any(tmp_path.iterdir())
