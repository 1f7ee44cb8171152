"""The steps of one experiment as plain functions: ingest, split, train, evaluate, export, track."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.inference.bundle import save_bundle
from geocnn.data.catalog import Catalog
from geocnn.config import ExperimentConfig
from geocnn.errors import GeocnnError
from geocnn.data.datamodule import target_array
from geocnn.evaluation.metrics import (classification_metrics, confusion, prefix_test, regression_metrics,
                             vote_fraction_metrics)
from geocnn.outputs.tables import predictions_frame, write_tables
from geocnn.atomic import atomic_path
from geocnn.models.network import GeoNet
from geocnn.inference.predict import predict_chips
from geocnn.data.splits import SplitView, split_store
from geocnn.data.store import ChipStore, build_galaxy_store
from geocnn.training.fit import FitResult, fit


@dataclass
class Evaluation:
    """Test metrics (``test/*`` and ``baseline/*``), predictions of every sample, and plot files."""

    metrics: dict[str, float]
    predictions: pd.DataFrame
    plots: list[Path] = field(default_factory=list)
    pred: np.ndarray | None = None
    """Raw predictions of every store row (N, outputs), in store order."""


def read_catalog(cfg: ExperimentConfig) -> Catalog:
    """The catalog named by ``cfg.data`` (generating the synthetic set first when format is 'synthetic')."""
    from geocnn.data.sources.galaxy_tables import read_galaxy_catalog

    data = cfg.data
    if data.format == "synthetic":
        from geocnn.synthetic.galaxies import make_galaxies

        folder = Path(data.store_root).parent / "synthetic" / f"n{data.synthetic_count}_s{data.synthetic_size}_seed{data.synthetic_seed}"
        csv = folder / "catalog.csv"
        if not csv.exists():
            make_galaxies(folder, data.synthetic_count, data.synthetic_size, seed=data.synthetic_seed)
        data = data.model_copy(update={"format": "csv", "catalog": str(csv), "images": str(folder),
                                       "targets": data.targets or ["morphology"]})
    return read_galaxy_catalog(data, cfg.model.task)


def ingest(cfg: ExperimentConfig, progress: bool = True) -> ChipStore:
    """Read and validate the catalog, then build (or reuse) its chip store."""
    catalog = read_catalog(cfg)
    return build_galaxy_store(catalog, cfg.data.store_root, cfg.data.crop, cfg.data.chip_size, cfg.data.channels,
                              progress=progress)


def split(store: ChipStore, cfg: ExperimentConfig) -> SplitView:
    """Assign train/val/test (stratified on the class target by default for classification)."""
    stratify = store.targets[0] if cfg.model.task == "classification" else None
    view = split_store(store, cfg.split, stratify)
    if len(view.rows("val")) == 0:  # found before any run or output is opened
        raise GeocnnError("split: the validation partition is empty; set split.val_fraction > 0 (model selection "
                          "uses validation, never test)")
    return view


def train(view: SplitView, cfg: ExperimentConfig, run_id: str | None = None, progress: bool = True) -> FitResult:
    """Fit the model; per-epoch metrics go to the MLflow run when one is given."""
    from geocnn.tracking.runs import EpochMetrics

    return fit(view, cfg, callbacks=[EpochMetrics(run_id)] if run_id else None, progress=progress)


def observed_fractions(counts: np.ndarray, net: GeoNet) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts to fractions per question, and a mask of questions that got votes."""
    frac = np.zeros_like(counts, dtype=np.float64)
    mask = np.zeros_like(counts, dtype=bool)
    for s, e, _ in net.spec.decision_tree().slices():
        total = counts[:, s:e].sum(1, keepdims=True)
        frac[:, s:e] = counts[:, s:e] / np.maximum(total, 1)
        mask[:, s:e] = total > 0
    return frac, mask


def truth_and_mask(view: SplitView, net: GeoNet) -> tuple[np.ndarray, np.ndarray]:
    """Targets of every store row as scored (vote counts become fractions) and a mask of rows/outputs scored."""
    y = target_array(view, net.spec.task)
    if net.spec.task == "classification":
        return y, np.ones(len(y), dtype=bool)
    if net.spec.task == "vote_counts":
        return observed_fractions(y, net)
    return y.astype(np.float64), np.ones_like(y, dtype=bool)


def score_rows(net: GeoNet, view: SplitView, pred: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """The task's metrics of ``pred`` on store ``rows`` (plus the train-derived baseline), unprefixed."""
    spec = net.spec
    truth, mask = truth_and_mask(view, net)
    tr = view.rows("train")
    if spec.task == "classification":
        return classification_metrics(truth[rows], pred[rows], spec.classes, truth[tr])
    shown = np.where(mask, pred, 0.0)
    if spec.task == "regression":
        return regression_metrics(truth[rows], shown[rows], spec.targets, truth[tr].mean(0))
    return vote_fraction_metrics(truth[rows], shown[rows], spec.targets, truth[tr].mean(0), spec.decision_tree())


def validation_metrics(net: GeoNet, view: SplitView, pred: np.ndarray) -> dict[str, float]:
    """``validation/*``: the chosen model scored on the validation split (what promotion compares; never test)."""
    val = view.rows("val")
    if len(val) == 0:
        return {}
    return {f"validation/{k}": v for k, v in score_rows(net, view, pred, val).items()
            if not k.startswith("baseline/")}


def evaluate(net: GeoNet, view: SplitView, cfg: ExperimentConfig, out: Path | None = None) -> Evaluation:
    """Predict every sample (with TTA), score the test split once against train-derived baselines, score the
    validation split for promotion, draw plots."""
    from geocnn.evaluation.plots import plot_confusion, plot_montage, plot_pred_vs_true

    out = out or cfg.out
    spec = net.spec
    store = view.store
    pred = predict_chips(net, store.chips, None, cfg.train.eval_batch_size, cfg.augment.tta_views, cfg.train.device)
    truth, mask = truth_and_mask(view, net)
    test = view.rows("test")
    plots: list[Path] = []
    m = score_rows(net, view, pred, test)
    if spec.task == "classification":
        cm = confusion(truth[test], pred[test].argmax(1), len(spec.classes))
        plots.append(plot_confusion(cm, spec.classes, out / "plots" / "confusion_matrix.png"))
        titles = [f"true: {spec.classes[a]}\npred: {spec.classes[b]} ({p:.2f})"
                  for a, b, p in zip(truth[test], pred[test].argmax(1), pred[test].max(1))]
    else:
        shown = np.where(mask, pred, 0.0)
        plots.append(plot_pred_vs_true(truth[test], shown[test], spec.targets, out / "plots" / "pred_vs_true.png"))
        names = spec.targets[:2]
        titles = ["\n".join(f"{n[:14]} {truth[i, j]:.2f}/{shown[i, j]:.2f}" for j, n in enumerate(names)) for i in test]
    k = min(len(test), 32)
    plots.append(plot_montage(np.asarray(store.chips[np.sort(test)[:k]]), titles[:k], out / "plots" / "test_montage.png"))
    truth_frame = store.index[spec.targets]
    frame = predictions_frame(store.index["id"].to_numpy(), pred, spec, view.split, truth_frame)
    metrics = prefix_test(m)
    metrics["test/n"] = float(len(test))
    metrics.update(validation_metrics(net, view, pred))
    return Evaluation(metrics=metrics, predictions=frame, plots=plots, pred=pred)


def export(evaluation: Evaluation, net: GeoNet, cfg: ExperimentConfig, store: ChipStore) -> dict[str, Path]:
    """Write metrics.json, the prediction tables and the bundle into output_dir (each write atomic)."""
    out = cfg.out
    paths: dict[str, Path] = {}
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(evaluation.metrics, indent=2, sort_keys=True))
    paths["metrics"] = out / "metrics.json"
    for p in write_tables(evaluation.predictions, out):
        paths[f"predictions_{p.suffix[1:]}"] = p
    pre = {"kind": "galaxy", **store.meta["params"], "bands": store.meta["bands"], "dtype": store.meta["dtype"]}
    paths["bundle"] = save_bundle(net, out / "bundle", pre, cfg.augment.tta_views,
                                  extra={"experiment": cfg.name, "store_key": store.meta["key"]})
    return paths


def track(run_id: str, cfg: ExperimentConfig, evaluation: Evaluation, paths: dict[str, Path],
          view: SplitView) -> dict[str, str]:
    """Log test and validation metrics, plots, tables and the bundle model to the run; register a version and
    promote it to the champion alias only if it beats the current one on validation."""
    from geocnn.tracking import registry, runs as tracking

    name = cfg.tracking.model_name(cfg.name)
    if name:
        registry.check_metric(cfg, evaluation.metrics)
    tracking.log_metrics(run_id, evaluation.metrics)
    tracking.log_artifacts(run_id, evaluation.plots, "plots")
    tracking.log_artifacts(run_id, [paths["metrics"], paths["predictions_csv"], paths["predictions_parquet"]],
                           "predictions")
    frame = evaluation.predictions
    signature = registry.split_signature(frame["id"].to_numpy(), frame["split"].to_numpy())
    tracking.set_tags(run_id, {registry.SPLIT_TAG: signature})
    example = np.asarray(view.store.chips[:2])
    info = tracking.log_bundle_model(run_id, paths["bundle"], example, name)
    result = {"model_uri": info.model_uri}
    version = getattr(info, "registered_model_version", None)
    if name and version is not None:
        result["registered_version"] = str(version)
        decision = registry.promote(tracking.client(), cfg, name, str(version), run_id, evaluation.metrics, signature,
                                    champion_rescore(cfg, name, view, evaluation, paths["bundle"]))
        result["promotion"] = decision.reason
        result["promoted"] = str(decision.promoted).lower()
    tracking.end_run(run_id)
    finish_run(cfg)
    return result


def champion_rescore(cfg: ExperimentConfig, name: str, view: SplitView, evaluation: Evaluation,
                     bundle_dir: Path) -> "registry.Rescore":  # noqa: F821
    """When the data changed since the champion was trained: score both models on this run's validation rows that
    the champion never trained on (its split is read from its logged predictions table)."""

    def rescore(version: str) -> object:
        import mlflow

        from geocnn.tracking import registry, runs as tracking
        from geocnn.inference.bundle import load_bundle, resolve_model

        client = tracking.client()
        try:
            mv = client.get_model_version(name, version)
            table = mlflow.artifacts.download_artifacts(run_id=mv.run_id,
                                                        artifact_path="predictions/predictions.parquet")
            champion = load_bundle(resolve_model(f"models:/{name}/{version}"))
        except Exception:  # noqa: BLE001 - an old or foreign champion: not comparable
            return None
        candidate = load_bundle(bundle_dir)
        store = view.store
        same_input = all(champion.preprocessing.get(k) == v for k, v in store.meta["params"].items())
        same_output = (champion.spec.targets == candidate.spec.targets and champion.spec.classes ==
                       candidate.spec.classes and champion.spec.task == candidate.spec.task)
        if not (same_input and same_output and champion.preprocessing.get("bands") == store.meta["bands"]):
            return None
        seen = pd.read_parquet(table, columns=["id", "split"])
        trained = set(seen.loc[seen["split"] == "train", "id"].astype(str))
        ids = store.index["id"].astype(str).to_numpy()
        rows = np.array([r for r in view.rows("val") if ids[r] not in trained], dtype=int)
        if len(rows) < cfg.tracking.min_common_rows:
            return None
        pred = np.zeros_like(evaluation.pred)
        pred[rows] = predict_chips(champion.net, store.chips, rows, cfg.train.eval_batch_size, champion.tta_views,
                                   cfg.train.device)
        key = registry.promotion_metric(cfg).removeprefix("validation/")
        ours = score_rows(candidate.net, view, evaluation.pred, rows).get(key)
        theirs = score_rows(candidate.net, view, pred, rows).get(key)
        if ours is None or theirs is None:
            return None
        return registry.Comparison(ours, theirs, len(rows), f"{len(rows)} validation rows the champion never "
                                                             "trained on (the data changed since it was trained)")

    return rescore


def open_run(cfg: ExperimentConfig) -> str | None:
    """Start the MLflow run, or reopen the one an interrupted run of the same command left unfinished.

    A run killed or failed before it finished is continued by the next run of the same config in the same
    output_dir: training resumes from its last checkpoint and the run is tagged ``geocnn.resumed``,
    ``geocnn.resume_count`` and ``geocnn.resumed_at_epoch``.
    """
    if not cfg.tracking.enabled:
        return None
    from geocnn.tracking import runs as tracking
    from geocnn.training.fit import checkpoint_epoch, config_key, read_state, resume_checkpoint, same_command, write_state

    state = read_state(cfg.out)
    previous = None
    if cfg.train.resume and state.get("run_id") and not state.get("run_finished", False) and same_command(cfg):
        previous = state["run_id"]
    ckpt = resume_checkpoint(cfg)
    run_id = tracking.start_run(cfg, resume_run_id=previous,
                                resumed_at_epoch=checkpoint_epoch(ckpt) + 1 if ckpt else None)
    write_state(cfg.out, run_id=run_id, run_finished=False, config=config_key(cfg))
    return run_id


def finish_run(cfg: ExperimentConfig) -> None:
    """Record that output_dir's run finished: the next run of the command starts a new one."""
    from geocnn.training.fit import write_state

    write_state(cfg.out, run_finished=True)


def fail_run(run_id: str | None) -> None:
    """Mark the run FAILED (the next run of the same command resumes it)."""
    if run_id:
        from geocnn.tracking import runs as tracking

        tracking.end_run(run_id, "FAILED")


def summary(cfg: ExperimentConfig, evaluation: Evaluation, paths: dict[str, Path], run_id: str | None,
            tracked: dict[str, str], fitted: FitResult | None = None) -> dict[str, object]:
    """What a finished experiment reports: metrics, output paths, run id, model URI, whether it resumed."""
    out = {"metrics": evaluation.metrics, "outputs": {k: str(v) for k, v in paths.items()}, "run_id": run_id,
           **tracked}
    if fitted is not None and fitted.resumed:
        out["resumed_at_epoch"] = fitted.resumed_at_epoch
    return out


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> dict[str, object]:
    """The whole experiment without Prefect: ingest -> split -> train -> evaluate -> export -> track."""
    store = ingest(cfg, progress)
    view = split(store, cfg)
    run_id = open_run(cfg)
    try:
        result = train(view, cfg, run_id, progress)
        evaluation = evaluate(result.net, view, cfg)
        paths = export(evaluation, result.net, cfg, store)
        tracked = track(run_id, cfg, evaluation, paths, view) if run_id else {}
    except BaseException:
        fail_run(run_id)
        raise
    return summary(cfg, evaluation, paths, run_id, tracked, result)
