"""The Domain base and the one run skeleton: ingest -> split and fit -> evaluate -> export -> track -> promote.

A domain supplies only what is really its own (readers, extra baselines and metrics, plots, maps, the bundle's
preprocessing); every run of every domain takes the steps below, so the galaxy and Earth sides cannot drift.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from pydantic import BaseModel

from geocnn import fanout
from geocnn.atomic import atomic_path
from geocnn.config import AnyExperiment, AugmentConfig, ModelConfig, SplitConfig, TrainConfig
from geocnn.data.catalog import GROUP, IMAGE, LAT, LON, SPLIT, URBAN, Catalog
from geocnn.data.chips import ChipSource, ChipSpec
from geocnn.data.fingerprint import ingest_key
from geocnn.data.profile import (
    TrainingProfile,
    check_inputs,
    enforce,
    file_dtype,
    flag_targets,
    flags_outputs,
    pixel_size_m,
    profile_store,
)
from geocnn.data.splits import n_folds, sample_groups, split_store
from geocnn.data.store import ChipStore
from geocnn.domains.anatomy import log_run_anatomy
from geocnn.domains.calibrate import (
    calibrate,
    calibrated_columns,
    champion_test,
    check_calibration_rows,
    coverage_text,
    metric_intervals,
)
from geocnn.errors import GeocnnError
from geocnn.evaluation.baselines import out_of_fold
from geocnn.evaluation.conformal import Calibration
from geocnn.inference.bundle import Bundle, Preprocessing, Stage2, check_chips, load_bundle, save_bundle
from geocnn.inference.predict import Forward
from geocnn.models.network import GeoNet
from geocnn.models.start import check_bands, check_model
from geocnn.models.tasks import ScoreInput, Targets, TaskSpec, task_spec
from geocnn.models.weights import LoadReport
from geocnn.outputs.geojson import write_geojson_points
from geocnn.outputs.tables import predictions_frame, write_table, write_tables
from geocnn.tracking import registry
from geocnn.tracking import runs as tracking
from geocnn.tracking.model_uri import download_artifact, resolve_model
from geocnn.tracking.pyfunc import log_bundle_model, logged_model_name
from geocnn.training import hooks
from geocnn.training.fit import FitResult, FitSpec, fit
from geocnn.training.ranks import global_rank, is_global_zero
from geocnn.training.resume import checkpoint_epoch, content_key, read_state, resume_checkpoint, write_state

LOG = logging.getLogger("geocnn")
CONTEXT = ("split", "fold", GROUP, LAT, LON, URBAN, "weight", "n_chips")
"""Per-sample columns the predictions table carries beside the predictions (when the run has them)."""


# ------------------------------------------------------------------------------------------------- results
@dataclass
class Trained:
    """What fitting produced: the deployable network (and stage-2 head), and every sample's held-out prediction."""

    net: GeoNet
    pred: np.ndarray
    """(samples, outputs) predictions: out of fold with split.folds, else of the one split's model for all."""
    split: np.ndarray
    """'train'/'val'/'test' of every sample (out-of-fold runs: all 'test')."""
    fold: np.ndarray | None = None
    """Test fold of every sample (cross-validation), else None."""
    groups: np.ndarray | None = None
    """Group (or spatial block) of every sample when the split is grouped."""
    validation: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    """Further metrics (stage 1 of two-stage transfer, chosen ridge alphas)."""
    stage2: Stage2 | None = None
    fits: list[FitResult] = field(default_factory=list)
    stage1_run_id: str | None = None

    @property
    def weights(self) -> LoadReport | None:
        """How the (first) network's encoder started: source, checksum, tensor counts, bands, normalisation."""
        return next((f.weights for f in self.fits if f.weights is not None), None)

    @property
    def resumed_at_epoch(self) -> int | None:
        """The epoch a resumed training continued from (first fit that resumed), else None."""
        return next((f.resumed_at_epoch for f in self.fits if f.resumed), None)


@dataclass
class Evaluation:
    """Test metrics beside baselines, the per-sample predictions table, and plot files."""

    metrics: dict[str, float]
    table: pd.DataFrame
    plots: list[Path] = field(default_factory=list)
    calibration: Calibration | None = None
    """The uncertainty the bundle carries (conformal quantiles, temperature), None when off."""
    coverage: pd.DataFrame | None = None
    """Coverage per held-out group or fold (runs with folds)."""


@dataclass(frozen=True)
class CnnPlan:
    """How to fit and score a CNN on a store: fit settings, split, test-time views, device and batch size."""

    fit: FitSpec
    split: SplitConfig
    views: int
    device: str
    batch_size: int
    train_views: int = 1
    """Views of the training rows' predictions (never scored): 1 unless augment.tta_train."""

    @classmethod
    def of(cls, cfg: AnyExperiment) -> "CnnPlan":
        """The plan of an experiment's own CNN."""
        return cls(FitSpec.of(cfg), cfg.split, cfg.augment.tta_views, cfg.train.device, cfg.train.eval_batch_size,
                   cfg.augment.tta_views if cfg.augment.tta_train else 1)

    def stage(self, model: ModelConfig, split: SplitConfig, out: Path, train: TrainConfig | None = None,
              augment: AugmentConfig | None = None) -> "CnnPlan":
        """Another CNN of the same run (stage 1 of two-stage transfer): other model/split, its own folder."""
        fs = FitSpec(model, train or self.fit.train, augment or self.fit.augment, self.fit.seed, out)
        return CnnPlan(fs, split, self.views, self.device, self.batch_size, self.train_views)


# -------------------------------------------------------------------------------------------------- domain
class Domain:
    """What a domain supplies to the one run skeleton; the defaults fit any domain without extras."""

    name = "base"

    def prepare(self, cfg: AnyExperiment) -> AnyExperiment:
        """The config ready to run (e.g. generated inputs written and pointed at); validated, never rewritten."""
        return cfg

    def catalog(self, cfg: AnyExperiment) -> Catalog:
        """The experiment's catalog, targets prepared by the task spec."""
        raise NotImplementedError

    def ingest(self, cfg: AnyExperiment, progress: bool = True) -> ChipStore:
        """Read and validate the inputs and build (or reuse) the chip store."""
        raise NotImplementedError

    def input_files(self, cfg: AnyExperiment) -> list[Path]:
        """Every file ingest reads (the ingest cache key hashes their content)."""
        raise NotImplementedError

    def ingest_sections(self, cfg: AnyExperiment) -> list[BaseModel]:
        """The config sections that shape the chip store (and so the ingest cache key)."""
        return [cfg.data, cfg.split, cfg.model]

    def ingest_key(self, cfg: AnyExperiment) -> str:
        """Cache key of ingest: the sections that shape the store and the content of every input file."""
        return ingest_key(self.ingest_sections(cfg), self.input_files(cfg))

    def split(self, store: ChipStore, cfg: AnyExperiment, progress: bool = True) -> None:
        """Check everything fitting needs before a run or an output exists: the task's settings and every split
        (assigned now and cached in the store, so fitting reuses them)."""
        if SPLIT in store.index.columns and cfg.split.method != "predefined":
            LOG.warning("%s has its own split (train/validation/test folders or a '%s' column); split.method=%s "
                        "ignores it. Set split.method: predefined to keep it.", store.meta["source"], SPLIT,
                        cfg.split.method)
        check_plan(store, CnnPlan.of(cfg))
        check_uncertainty(store, cfg)

    def train(self, store: ChipStore, cfg: AnyExperiment, run_id: str | None = None,
              progress: bool = True) -> Trained:
        """Fit the model(s) and predict every sample held out: the CNN on folds or one split."""
        return train_cnn(store, CnnPlan.of(cfg), run_id, progress=progress)

    def task_tag(self, cfg: AnyExperiment) -> str:
        """What the run predicts, as tagged in MLflow (``geocnn.task``)."""
        return cfg.model.task

    def promotion_metric(self, cfg: AnyExperiment) -> str:
        """The default validation metric deciding promotion."""
        return task_spec(cfg.model.task).promotion_metric

    def prunable(self, cfg: AnyExperiment) -> bool:
        """Whether a search may stop this config's trials early on their per-epoch validation metrics (they must
        be the metrics of the model the trial is scored on)."""
        return True

    def baselines(self, store: ChipStore, samples: pd.DataFrame, y: np.ndarray, folds: np.ndarray,
                  groups: np.ndarray | None, cfg: AnyExperiment) -> dict[str, np.ndarray]:
        """Domain baselines (name -> (samples, outputs) predictions) on the same folds as the model."""
        return {}

    def extra_metrics(self, truth: np.ndarray, predictions: dict[str, np.ndarray], spec: TaskSpec,
                      targets: Targets) -> dict[str, float]:
        """Further metrics of the scored samples (e.g. the poorer half of survey clusters)."""
        return {}

    def plots(self, store: ChipStore, table: pd.DataFrame, y: np.ndarray, pred: np.ndarray, scored: np.ndarray,
              spec: TaskSpec, targets: Targets, cfg: AnyExperiment) -> list[Path]:
        """Domain plots beside the task's own (``y``, ``pred`` and ``scored`` are per sample)."""
        return []

    def preprocessing(self, store: ChipStore, trained: Trained, cfg: AnyExperiment) -> Preprocessing:
        """What the bundle records about inputs and outputs."""
        net = trained.net.spec
        return Preprocessing(domain=cfg.domain, chips=store.spec, bands=store.bands, dtype=store.meta["dtype"],
                             mean=list(net.mean), std=list(net.std), tta_views=cfg.augment.tta_views,
                             task=net.task, targets=list(net.targets), classes=list(net.classes),
                             stage2=trained.stage2, start=trained.weights.to_dict() if trained.weights else None,
                             profile=self.input_profile(store, trained, cfg))

    def input_profile(self, store: ChipStore, trained: Trained, cfg: AnyExperiment) -> TrainingProfile:
        """What the model was trained on, for the out-of-distribution checks of predict, map and watch."""
        return training_profile(store, trained)

    def outputs(self, trained: Trained, evaluation: Evaluation, store: ChipStore, cfg: AnyExperiment,
                bundle: Path) -> dict[str, Path]:
        """Domain outputs beside tables and bundle (maps)."""
        return {}

    def report_keys(self, cfg: AnyExperiment) -> list[str]:
        """Predictors shown side by side in run summaries (model first)."""
        return ["test", "baseline"]

    watch_patterns: tuple[str, ...] = ()
    """File patterns a watch folder picks up for this domain's models."""
    maps = False
    """Whether the domain's models map scenes (geocnn map)."""

    def predict_batch_size(self, cfg: AnyExperiment) -> int:
        """Batch size of scheduled prediction runs."""
        return cfg.train.eval_batch_size

    def map_stride(self, cfg: AnyExperiment) -> int | None:
        """Window stride of maps made by scheduled prediction runs (None: half a window)."""
        return None
    """File patterns a watch folder picks up for this domain's models."""

    def predict_files(self, bundle: Bundle, ids: list[str], files: list[Path], out_dir: Path, batch_size: int = 64,
                      device: str = "auto", stride_px: int | None = None,
                      strict: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
        """Predict new files with a bundle: a table row per file (id = ``ids``), and the failures (id -> error).

        Default: each file is one sample cut into chips as in training; an unreadable file fails alone. Files unlike
        the training data are logged (``strict``: the batch is refused before anything is predicted); rows
        predicted far outside the training target range get ``out_of_range`` True.
        """
        pre = bundle.preprocessing
        rows: list[np.ndarray] = []
        ok: list[int] = []
        failures: dict[str, str] = {}
        with ChipSource(pre.chips, "watch folder") as src:
            for i, path in enumerate(files):
                try:
                    chips = np.stack([c.pixels for c in src.make({"id": ids[i], "image": str(path)})])
                    check_chips(pre, chips.shape, str(path))
                except Exception as exc:  # noqa: BLE001 - any unreadable file is that file's failure, not the batch's
                    failures[ids[i]] = f"{type(exc).__name__}: {exc}"
                    continue
                rows.append(chips)
                ok.append(i)
        if not ok:
            return pd.DataFrame(), failures
        with ChipSource(pre.chips, "watch folder") as src:
            guard_chips(pre, src, {"id": ids[ok[0]], "image": str(files[ok[0]])}, np.concatenate(rows),
                        f"watch folder ({len(ok)} files from {files[ok[0]]})", strict)
        pred = bundle_forward(bundle, device)(np.concatenate(rows), batch_size=batch_size)
        spec, targets = output_task(bundle)
        frame = predictions_frame(np.array([ids[i] for i in ok]), pred, spec, targets)
        for column, values in calibrated_columns(pre.calibration, pred, targets).items():
            frame[column] = values
        add_out_of_range(frame, pre, pred, targets)
        frame.insert(1, "file", [str(files[i]) for i in ok])
        return frame, failures


def training_profile(store: ChipStore, trained: Trained, resolution_m: float | None = None,
                     chip_m: float | None = None, dtype: str | None = None) -> TrainingProfile:
    """The profile of the train split's chips and targets (out-of-fold runs, which have no train split: every
    sample, each of which trained some fold's model), targets in the units the model predicts."""
    samples = store.samples()
    train = np.asarray(trained.split) == "train"
    if not train.any():
        train = np.ones(len(samples), bool)
    rows = np.flatnonzero(train[store.sample_of_rows()])
    return profile_store(store, rows, training_targets(samples, trained).loc[train], resolution_m, chip_m, dtype)


def training_targets(samples: pd.DataFrame, trained: Trained) -> pd.DataFrame:
    """Every sample's observed value of each continuous model output (prediction units; NaN where not scored);
    no columns for class outputs."""
    if trained.stage2 is not None:
        name = trained.stage2.target
        values = pd.to_numeric(samples[name], errors="coerce") if name in samples.columns else np.nan
        return pd.DataFrame({name: values}, index=samples.index)
    net = trained.net.spec
    if net.classes:
        return pd.DataFrame(index=samples.index)
    spec, targets = task_spec(net.task), net.target_info
    truth, mask = spec.truth(spec.target_array(samples, targets), targets)
    return pd.DataFrame(np.where(mask, truth, np.nan), columns=targets.names, index=samples.index)


def output_task(bundle: Bundle) -> tuple[TaskSpec, Targets]:
    """What a bundle's predictions are: its network's task, or the stage-2 regression of a two-stage model."""
    pre = bundle.preprocessing
    if pre.stage2 is not None:
        return task_spec("regression"), Targets([pre.stage2.target], [])
    return task_spec(pre.task), bundle.net.spec.target_info


def bundle_forward(bundle: Bundle, device: str = "auto", views: int | None = None) -> Forward:
    """The forward loop of a bundle: its views (or ``views``) and its stage-2 head."""
    return Forward(bundle.net, bundle.tta_views if views is None else views, device, head=bundle.stage2)


def predict_catalog(bundle: Bundle, catalog: Catalog, batch_size: int = 64, device: str = "auto",
                    views: int | None = None, scenes: list[str] | None = None, progress: bool = False,
                    chunk: int = 1024, failures: dict[str, str] | None = None, strict: bool = False) -> pd.DataFrame:
    """Predict every catalog row with a bundle: chips cut as in training (files, or windows of the bundle's scenes
    or ``scenes`` around each point), through the bundle's forward loop, averaged over each sample's chips.

    Chips with more nodata than the bundle allows are left out; a sample with none left gets NaN. With
    ``failures`` (id -> error), a row whose file cannot be read is recorded there and left out of the table
    instead of stopping the batch.

    The first chunk's chips (and the scenes' pixel size and band type) are checked against the bundle's training
    profile: differences are logged, and with ``strict`` refused before anything is predicted. Rows predicted far
    outside the training target range get ``out_of_range`` True (continuous outputs of bundles with a profile).
    """
    pre = bundle.preprocessing
    spec = pre.chips if not scenes else ChipSpec.model_validate({**pre.chips.model_dump(), "scenes": list(scenes)})
    forward = bundle_forward(bundle, device, views)
    rows = catalog.frame.to_dict("records")
    pred = np.full((len(rows), forward.width), np.nan)
    guarded = False
    with ChipSource(spec, catalog.source) as src:
        for start in range(0, len(rows), chunk):
            chips, owner = [], []
            for i in range(start, min(start + chunk, len(rows))):
                try:
                    made = src.make(rows[i])
                    if failures is not None and made:
                        check_chips(pre, (len(made), *made[0].pixels.shape), str(rows[i].get(IMAGE, rows[i]["id"])))
                except Exception as exc:  # noqa: BLE001 - with ``failures``, an unreadable file fails alone
                    if failures is None:
                        raise
                    failures[str(rows[i]["id"])] = f"{type(exc).__name__}: {exc}"
                    continue
                for chip in made:
                    if spec.max_nodata_fraction is None or chip.nodata <= spec.max_nodata_fraction:
                        chips.append(chip.pixels)
                        owner.append(i)
            if not chips:
                continue
            stacked = np.stack(chips)
            check_chips(pre, stacked.shape, catalog.source)
            if not guarded:
                guard_chips(pre, src, rows[owner[0]], stacked, catalog.source, strict)
                guarded = True
            values = forward(stacked, batch_size=batch_size, progress=progress)
            owner_arr = np.asarray(owner)
            for i in np.unique(owner_arr):
                pred[i] = values[owner_arr == i].mean(0)
    forward.release()
    task, targets = output_task(bundle)
    context = catalog.frame[[c for c in (LAT, LON, GROUP) if c in catalog.frame.columns]]
    frame = predictions_frame(catalog.frame["id"].to_numpy(), pred, task, targets, context)
    for column, values in calibrated_columns(pre.calibration, pred, targets, catalog.frame).items():
        frame[column] = values
    add_out_of_range(frame, pre, pred, targets)
    return frame[~frame["id"].isin(list(failures or {}))].reset_index(drop=True)


def guard_chips(pre: Preprocessing, src: ChipSource, row: dict[str, Any], chips: np.ndarray, source: str,
                strict: bool = False) -> list[str]:
    """Check chips cut by ``src`` (``row``: one of theirs, for the band names) against the bundle's training profile:
    the scenes' pixel size and band type (else the chips' type), band names and values. Logged; ``strict``: refused.
    """
    if pre.profile is None:
        return []
    scene = src.scenes[0] if src.scenes else None
    dtype = file_dtype(scene.paths[0]) if scene is not None else str(chips.dtype)
    resolution = pixel_size_m(scene.crs, scene.res) if scene is not None else None
    warnings = check_inputs(pre.profile, chips, src.band_names(row), dtype, resolution)
    enforce(warnings, source, strict)
    return warnings


def add_out_of_range(frame: pd.DataFrame, pre: Preprocessing, pred: np.ndarray, targets: Targets) -> None:
    """Add ``out_of_range`` (bool): a prediction far outside the training target range (flag_targets), for
    continuous outputs of a bundle whose profile records their ranges."""
    if not targets.classes and flags_outputs(pre.profile, targets.names, pred.shape[1]):
        frame["out_of_range"] = flag_targets(pre.profile, pred, targets.names)


# ------------------------------------------------------------------------------------------------- fitting
def epoch_logger(run_id: str | None, prefix: str = "") -> list[L.Callback] | None:
    """The MLflow per-epoch metric logger of a run (keys prefixed, e.g. 'fold2/')."""
    return [tracking.EpochMetrics(run_id, prefix)] if run_id else None


def targets_of(store: ChipStore, model: ModelConfig) -> tuple[TaskSpec, Targets]:
    """The task spec and target description of a store trained under ``model``."""
    return task_spec(model.task), Targets(store.targets, store.classes, model.sigmoid)


def check_uncertainty(store: ChipStore, cfg: AnyExperiment) -> None:
    """Enough calibration rows for uncertainty.level (the validation split, or every sample out of fold), checked
    with the splits before anything is trained or written."""
    samples = store.samples()
    folded = bool(n_folds(samples, cfg.split))
    split = None
    if not folded:
        spec, _ = targets_of(store, cfg.model)
        split = split_store(store, cfg.split, store.targets[0] if spec.stratify else None).sample_split()
    check_calibration_rows(samples, split, folded, cfg)


def check_plan(store: ChipStore, plan: CnnPlan) -> None:
    """The plan's task settings and splits, checked (and the splits cached in the store) before any fit."""
    spec, targets = targets_of(store, plan.fit.model)
    spec.check_targets(targets)
    spec.resolve_loss(plan.fit.model.loss)
    y = spec.target_array(store.index, targets)
    stratify = store.targets[0] if spec.stratify else None
    k = n_folds(store.samples(), plan.split)
    for f in range(k) if k else [None]:
        view = split_store(store, plan.split, stratify, fold=f)
        if len(view.rows("val")) == 0:
            raise GeocnnError("split: the validation partition is empty; set split.val_fraction > 0 (model selection "
                              "uses validation, never test)")
        spec.class_weights(plan.fit.model.class_weights, y[view.rows("train")], targets)


@dataclass(frozen=True)
class FoldJob:
    """One fit of :func:`train_cnn` as a unit of work: everything it needs travels by value or by path."""

    store: ChipStore
    plan: CnnPlan
    fold: int | None
    run_id: str | None
    prefix: str
    tracking_uri: str | None
    progress: bool


@dataclass
class FoldOutput:
    """What one fit returns: the fit (network on the host), per-sample predictions, split, validation scores."""

    result: FitResult
    by_sample: np.ndarray
    part: np.ndarray
    validation: dict[str, float]


def fit_fold(job: FoldJob) -> FoldOutput:
    """Fit one split (or one fold) and predict its held-out samples (a unit: may run in another process)."""
    store, plan, f = job.store, job.plan, job.fold
    if job.run_id and job.tracking_uri:
        tracking.use_uri(job.tracking_uri)
    spec, targets = targets_of(store, plan.fit.model)
    samples = store.samples()
    codes = store.sample_of_rows()
    y = spec.target_array(samples, targets)
    stratify = store.targets[0] if spec.stratify else None
    view = split_store(store, plan.split, stratify, fold=f)
    out = plan.fit.out if f is None else plan.fit.out / f"fold{f}"
    fs = FitSpec(plan.fit.model, plan.fit.train, plan.fit.augment, plan.fit.seed, out)
    result = fit(view, fs, epoch_logger(job.run_id, job.prefix + ("" if f is None else f"fold{f}/")), job.progress)
    if not is_global_zero():  # a data-parallel worker rank: rank 0 predicts, scores and writes
        empty = np.full((len(samples), spec.n_outputs(targets)), np.nan)
        return FoldOutput(result, empty, view.sample_split(), {})
    validation_only = hooks.current().validation_only  # a search's trial: never the test rows
    held = np.flatnonzero(np.isin(view.split, ["val"] if validation_only else ["test", "val"]))
    forward = Forward(result.net, plan.views, plan.device)
    chip_pred = np.full((len(codes), spec.n_outputs(targets)), np.nan)
    chip_pred[held] = forward(store.chips, held, plan.batch_size, job.progress,
                              "evaluate validation" if validation_only else "evaluate held-out")
    if f is None and not validation_only:  # one split: the training rows are in the table too (not scored)
        train_rows = np.flatnonzero(~np.isin(view.split, ["test", "val"]))
        forward.views = plan.train_views
        chip_pred[train_rows] = forward(store.chips, train_rows, plan.batch_size, job.progress, "predict train")
    result.net = forward.release()
    by_sample = _sample_means(chip_pred, codes, len(samples))
    part = view.sample_split()
    val = part == "val"
    validation: dict[str, float] = {}
    if val.any():
        scores = spec.score(ScoreInput(y[val], {"validation": by_sample[val]}), targets)
        validation = {k: v for k, v in scores.items() if np.isfinite(v)}
    return FoldOutput(result, by_sample, part, validation)


def train_cnn(store: ChipStore, plan: CnnPlan, run_id: str | None = None, prefix: str = "",
              progress: bool = True) -> Trained:
    """Fit the CNN on the split (or on each fold of split.folds) and predict the held-out samples.

    One split: the model predicts every sample (train, val and test rows are all in the table; test is scored).
    Folds: each fold's model predicts its test fold, so every sample is predicted once out of fold. Validation
    metrics (promotion) are the task's metrics on each split's validation samples, averaged over folds. The folds
    are independent units: with a parallel task runner (orchestration.task_runner) they train side by side, with
    the same seeds and so the same results as one after another.
    """
    spec, targets = targets_of(store, plan.fit.model)
    samples = store.samples()
    k = n_folds(samples, plan.split)
    mapper = fanout.current()
    parallel = mapper.parallel and k is not None and k > 1
    uri = tracking.current_uri() if run_id else None
    jobs = [FoldJob(store, plan, f, run_id, prefix, uri, progress and not parallel)
            for f in (range(k) if k else [None])]
    outputs = mapper.map("fold", fit_fold, jobs) if parallel else [fit_fold(job) for job in jobs]
    pred = np.full((len(samples), spec.n_outputs(targets)), np.nan)
    split = np.full(len(samples), "test", dtype=object)
    fold = np.full(len(samples), -1) if k else None
    for job, done in zip(jobs, outputs):
        if job.fold is None:
            pred, split = done.by_sample, done.part
        else:
            pred[done.part == "test"] = done.by_sample[done.part == "test"]
            fold[done.part == "test"] = job.fold
    validation = [o.validation for o in outputs if o.validation]
    keys = set().union(*validation) if validation else set()
    mean_val = {key: float(np.mean([v[key] for v in validation if key in v])) for key in sorted(keys)}
    groups = sample_groups(samples, plan.split) if plan.split.method in ("grouped", "blocks") else None
    return Trained(net=outputs[0].result.net, pred=pred, split=split, fold=fold, groups=groups, validation=mean_val,
                   fits=[o.result for o in outputs])


def _sample_means(chip_values: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    """Chip values averaged per sample (NaN where a sample's chips were not predicted)."""
    sums = np.zeros((n, chip_values.shape[1]))
    counts = np.zeros(n)
    ok = np.isfinite(chip_values).all(axis=1)
    np.add.at(sums, codes[ok], chip_values[ok])
    np.add.at(counts, codes[ok], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts[:, None]
    out[counts == 0] = np.nan
    return out


# ---------------------------------------------------------------------------------------------- evaluation
def held_out_metrics(trained: Trained, y: np.ndarray, spec: TaskSpec, targets: Targets,
                     extra: dict[str, np.ndarray] | None = None, groups: np.ndarray | None = None,
                     by: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of the held-out samples (test split, or every sample out of fold) for the model and its baselines.

    The train-derived baseline (majority class, train mean) is fitted per fold on the samples outside it (a single
    split: its train and val samples), exactly as the model; domain baselines in ``extra`` are scored beside it.

    Returns:
        The flat metrics (``test/...``, ``baseline/...``, ``test/n``) and every predictor's per-sample predictions.
    """
    scored = trained.split == "test"
    folds = trained.fold if trained.fold is not None else np.where(scored, 0, -1)
    predictions = {"test": trained.pred,
                   "baseline": out_of_fold(lambda tr, te: spec.baseline(y[tr], int(te.sum()), targets), folds),
                   **(extra or {})}
    held_out = {name: p[scored] for name, p in predictions.items()}
    metrics = spec.score(ScoreInput(y[scored], held_out, None if groups is None else groups[scored],
                                    None if by is None else by[scored], URBAN), targets)
    metrics["test/n"] = float(scored.sum())
    return metrics, predictions


def evaluate(trained: Trained, store: ChipStore, cfg: AnyExperiment, domain: Domain) -> Evaluation:
    """Score the held-out samples once beside the baselines (same folds), build the table, draw the plots."""
    spec, targets = targets_of(store, cfg.model)
    samples = store.samples()
    samples["n_chips"] = np.bincount(store.sample_of_rows(), minlength=len(samples))
    y = spec.target_array(samples, targets)
    scored = trained.split == "test"
    folds = trained.fold if trained.fold is not None else np.where(scored, 0, -1)
    groups = samples[GROUP].astype(str).to_numpy() if GROUP in samples.columns else None
    by = samples[URBAN].to_numpy() if URBAN in samples.columns else None
    extra = domain.baselines(store, samples, y, folds, trained.groups, cfg)
    metrics, predictions = held_out_metrics(trained, y, spec, targets, extra, groups, by)
    metrics.update(domain.extra_metrics(y[scored], {n: p[scored] for n, p in predictions.items()}, spec, targets))
    metrics.update(trained.validation)
    metrics.update(trained.extra)
    context = samples.assign(split=trained.split)
    if trained.fold is not None:
        context["fold"] = trained.fold
    named_group = [cfg.data.group_column] if cfg.data.group_column not in (None, *CONTEXT) else []
    context = context[[c for c in (*CONTEXT, *named_group) if c in context.columns]]
    table = predictions_frame(samples["id"].to_numpy(), trained.pred, spec, targets, context, y,
                              {n: p for n, p in predictions.items() if n != "test"})
    metrics.update(metric_intervals(predictions, y, scored, spec, targets, trained.groups, metrics, cfg))
    unc = calibrate(trained.pred, y, samples, trained.split, trained.fold, trained.groups, spec, targets, cfg)
    metrics.update(unc.metrics)
    for column, values in unc.columns.items():
        table[column] = values
    plots = [spec.plot(y[scored], trained.pred[scored], targets, cfg.out / "plots",
                       groups=None if groups is None else groups[scored])]
    plots += domain.plots(store, table, y, trained.pred, scored, spec, targets, cfg)
    return Evaluation(metrics=metrics, table=table, plots=plots + unc.plots, calibration=unc.calibration,
                      coverage=unc.coverage)


# -------------------------------------------------------------------------------------------------- export
def export(trained: Trained, evaluation: Evaluation, store: ChipStore, cfg: AnyExperiment,
           domain: Domain) -> dict[str, Path]:
    """Write metrics.json, the prediction tables (+ GeoJSON with coordinates), the bundle and the domain's outputs."""
    out = cfg.out
    paths: dict[str, Path] = {}
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(evaluation.metrics, indent=2, sort_keys=True))
    paths["metrics"] = out / "metrics.json"
    for p in write_tables(evaluation.table, out):
        paths[f"predictions_{p.suffix[1:]}"] = p
    if {LAT, LON} <= set(evaluation.table.columns) and evaluation.table[LAT].notna().any():
        paths["predictions_geojson"] = write_geojson_points(evaluation.table, out / "predictions.geojson")
    if evaluation.coverage is not None:
        paths["coverage"] = write_table(evaluation.coverage, out / "coverage.csv")
    pre = domain.preprocessing(store, trained, cfg).model_copy(update={"calibration": evaluation.calibration})
    run_id = read_state(out).get("run_id") if cfg.tracking.enabled else None  # the run open_run started
    paths["bundle"] = save_bundle(trained.net, out / "bundle", pre,
                                  extra={"experiment": cfg.name, "store_key": store.meta["key"], "run_id": run_id})
    paths.update(domain.outputs(trained, evaluation, store, cfg, paths["bundle"]))
    if evaluation.plots:
        paths["plots"] = evaluation.plots[0].parent
    return paths


# ------------------------------------------------------------------------------------------------ tracking
def track(run_id: str, trained: Trained, evaluation: Evaluation, paths: dict[str, Path], store: ChipStore,
          cfg: AnyExperiment, domain: Domain) -> dict[str, str]:
    """Log metrics, plots, tables, maps and the bundle model to the run; register a version and promote it to the
    champion alias only if it beats the current one on validation (same split definition, or rescored)."""
    name = cfg.tracking.model_name(cfg.name)
    default = domain.promotion_metric(cfg)
    if name:
        registry.check_metric(cfg.tracking, default, evaluation.metrics)
    tracking.log_metrics(run_id, evaluation.metrics)
    if trained.weights is not None:
        tracking.log_start(run_id, trained.weights.params(), trained.weights.to_dict())
    tracking.log_artifacts(run_id, evaluation.plots, "plots")
    tracking.log_artifacts(run_id, [paths[k] for k in ("metrics", "predictions_csv", "predictions_parquet",
                                                       "predictions_geojson", "coverage") if k in paths],
                           "predictions")
    maps = [p for k, p in paths.items() if k.startswith("map_")]
    if maps:
        tracking.log_artifacts(run_id, maps, "maps")
    aggregates = [p for k, p in paths.items() if k.startswith("aggregate_")]
    if aggregates:
        tracking.log_artifacts(run_id, aggregates, "aggregates")
    review = [p for k, p in paths.items() if k.startswith("review")]  # what to look at next (galaxies)
    if review:
        tracking.log_artifacts(run_id, review, "review")
    log_run_anatomy(run_id, trained.net, store, cfg)  # model/anatomy.txt and .csv: shapes, strides, RF, params, MACs
    table = evaluation.table
    labels = table["fold"] if "fold" in table.columns else table["split"]
    signature = registry.split_signature(table["id"].to_numpy(), labels.astype(str).to_numpy())
    tracking.set_tags(run_id, {registry.SPLIT_TAG: signature})
    example = np.nan_to_num(np.asarray(store.chips[:2]))
    if trained.stage1_run_id:
        tracking.set_tags(run_id, {"geocnn.stage1_run_id": trained.stage1_run_id})
        tracking.end_run(trained.stage1_run_id)
    source = str(store.meta["source"])
    source = str(Path(source).resolve()) if Path(source).exists() else source
    tracking.log_dataset(run_id, store.samples(), f"{cfg.name}-data", source, store.meta["key"],
                         targets=store.targets[0] if len(store.targets) == 1 else None)
    headline = headline_metric(evaluation.metrics)
    description = run_description(cfg, domain, trained, store, evaluation.metrics, headline)
    tracking.describe(run_id, description)
    width = 1 if trained.stage2 is not None else trained.net.spec.n_outputs
    info = log_bundle_model(run_id, paths["bundle"], example, logged_model_name(cfg.tracking.experiment, cfg.name),
                            width)
    result = {"model_uri": info.model_uri, "experiment_id": tracking.client().get_run(run_id).info.experiment_id}
    if name:
        rescore = champion_rescore(cfg, name, store, trained, evaluation, paths["bundle"], default)
        client = tracking.client()
        decision = registry.decide(client, cfg.tracking, default, name, evaluation.metrics, signature, rescore)
        version = None
        if registry.should_register(cfg.tracking, decision):
            version = registry.register(client, info.model_uri, info.model_id, run_id, name, signature, description)
            result["registered_version"] = version
            result["registered_model"] = name
        registry.record(client, cfg.tracking, name, run_id, decision, version)
        result["promotion"] = decision.reason
        result["promoted"] = str(decision.promoted and version is not None).lower()
    tracking.end_run(run_id)
    finish_run(cfg)
    return result


def headline_metric(metrics: dict[str, float]) -> str | None:
    """The run's headline held-out metric: r2, accuracy or rmse, the first the run has beside a baseline."""
    for key in ("r2", "accuracy", "rmse"):
        if f"test/{key}" in metrics:
            return key
    return None


def headline_text(metrics: dict[str, float]) -> str | None:
    """The headline held-out metric with its bootstrap interval, e.g. ``r2 0.5800 [0.5600, 0.6000]``."""
    headline = headline_metric(metrics)
    if headline is None:
        return None
    text = f"{headline} {metrics[f'test/{headline}']:.4f}"
    low, high = metrics.get(f"test/{headline}_ci_low"), metrics.get(f"test/{headline}_ci_high")
    return text if low is None or high is None else f"{text} [{low:.4f}, {high:.4f}]"


def run_description(cfg: AnyExperiment, domain: Domain, trained: Trained, store: ChipStore,
                    metrics: dict[str, float], headline: str | None) -> str:
    """What was trained on what, and the headline held-out metric beside its baseline (the run's description)."""
    how = "out of fold" if trained.fold is not None else "test split"
    text = (f"{cfg.model.backbone} ({domain.task_tag(cfg)}) trained on {len(store.samples())} samples of "
            f"{store.meta['source']} (targets: {', '.join(store.targets)}; store {store.meta['key'][:12]}).")
    if trained.weights is not None:
        text += f" Started from {trained.weights.sentence().removeprefix('weights: ')}."
    if headline:
        n = int(metrics.get("test/n", 0))
        text += f" Held-out ({how}, {n} samples): {headline} {metrics[f'test/{headline}']:.4f}"
        if f"test/{headline}_ci_low" in metrics:
            level = cfg.uncertainty.bootstrap_level
            text += (f" [{level:.0%} bootstrap interval {metrics[f'test/{headline}_ci_low']:.4f}, "
                     f"{metrics[f'test/{headline}_ci_high']:.4f}]")
        base = metrics.get(f"baseline/{headline}")
        text += f" vs baseline {base:.4f}" if base is not None else ""
        p = metrics.get("compare/baseline/p_value")
        text += f" (paired test p = {p:.3g})" if p is not None else ""
        others = [f"{k.split('/')[0]} {v:.4f}" for k, v in sorted(metrics.items())
                  if k.startswith("baseline_") and k.endswith(f"/{headline}") and k.count("/") == 1]
        text += f" (other baselines: {', '.join(others)})." if others else "."
    covered = coverage_text(metrics)
    return f"{text} {covered}" if covered else text


def champion_rescore(cfg: AnyExperiment, name: str, store: ChipStore, trained: Trained, evaluation: Evaluation,
                     bundle_dir: Path, default_metric: str) -> registry.Rescore | None:
    """When the data changed since the champion was trained: score both models on this run's validation samples
    the champion never trained on (its split is read from its logged predictions table). One-split runs only."""
    if trained.fold is not None or trained.stage2 is not None:
        return None
    def rescore(version: str) -> registry.Comparison | None:
        try:
            table = download_artifact(name, version, "predictions/predictions.parquet")
            champion = load_bundle(resolve_model(f"models:/{name}/{version}"))
        except Exception:  # noqa: BLE001 - an old or foreign champion: not comparable
            return None
        candidate = load_bundle(bundle_dir)
        same = (champion.preprocessing.chips == candidate.preprocessing.chips
                and champion.preprocessing.bands == candidate.preprocessing.bands
                and champion.preprocessing.output_names == candidate.preprocessing.output_names
                and champion.preprocessing.classes == candidate.preprocessing.classes
                and champion.preprocessing.task == candidate.preprocessing.task)
        if not same:
            return None
        seen = pd.read_parquet(table, columns=["id", "split"])
        trained_on = set(seen.loc[seen["split"] == "train", "id"].astype(str))
        ids = evaluation.table["id"].astype(str).to_numpy()
        rows = np.flatnonzero((trained.split == "val") & ~np.isin(ids, list(trained_on)))
        if len(rows) < cfg.tracking.min_common_rows:
            return None
        spec, targets = targets_of(store, cfg.model)
        codes = store.sample_of_rows()
        chip_rows = np.flatnonzero(np.isin(codes, rows))
        theirs_chips = np.full((len(codes), trained.pred.shape[1]), np.nan)
        theirs_chips[chip_rows] = Forward(champion.net, champion.tta_views, cfg.train.device)(
            store.chips, chip_rows, cfg.train.eval_batch_size)
        theirs = _sample_means(theirs_chips, codes, len(ids))
        y = spec.target_array(store.samples(), targets)
        scores = spec.score(ScoreInput(y[rows], {"validation": trained.pred[rows], "champion": theirs[rows]}), targets)
        metric = registry.promotion_metric(cfg.tracking, default_metric)
        key = metric.removeprefix("validation/")
        ours, other = scores.get(f"validation/{key}"), scores.get(f"champion/{key}")
        if ours is None or other is None:
            return None
        test, p_value = champion_test(y[rows], trained.pred[rows], theirs[rows], spec, targets,
                                      None if trained.groups is None else trained.groups[rows], cfg, key) or ("", None)
        return registry.Comparison(ours, other, len(rows), f"{len(rows)} validation rows the champion never "
                                                           "trained on (the data changed since it was trained)",
                                   p_value, test)

    return rescore


# ----------------------------------------------------------------------------------------------- run state
def open_run(cfg: AnyExperiment, domain: Domain, parent: str | None = None) -> str | None:
    """Start the MLflow run, or reopen the one an interrupted run of the same command left unfinished.

    A run killed or failed before it finished is continued by the next run of the same config in the same
    output_dir: training resumes from its last checkpoint and the run is tagged ``geocnn.resumed``,
    ``geocnn.resume_count`` and ``geocnn.resumed_at_epoch``.
    """
    if not cfg.tracking.enabled:
        return None
    state = read_state(cfg.out)
    key = config_key(cfg)
    previous = None
    if cfg.train.resume and state.get("run_id") and not state.get("run_finished", False) \
            and state.get("config") in (None, key):
        previous = state["run_id"]
    last = resume_checkpoint(cfg.out, state.get("fit_key", ""), cfg.train.resume) if previous else None
    # the unfinished run is reopened either way; it is tagged resumed only when training continues a checkpoint
    run_id = tracking.start_run(cfg, resume_run_id=previous,
                                resumed_at_epoch=checkpoint_epoch(last) + 1 if last else None,
                                task=domain.task_tag(cfg), parent=parent)
    write_state(cfg.out, run_id=run_id, run_finished=False, config=key)
    return run_id


def config_key(cfg: AnyExperiment) -> str:
    """A hash of the resolved config: only a rerun of the same command reopens an unfinished MLflow run."""
    return content_key(cfg.model_dump(mode="json"))


def finish_run(cfg: AnyExperiment) -> None:
    """Record that output_dir's run finished: the next run of the command starts a new one."""
    write_state(cfg.out, run_finished=True)


def fail_run(run_id: str | None, interrupted: bool = False) -> None:
    """Mark the run FAILED, or KILLED when the user interrupted it (the next run of the same command resumes it)."""
    if run_id:
        tracking.end_run(run_id, "KILLED" if interrupted else "FAILED")


def compact_checkpoints(cfg: AnyExperiment) -> int:
    """After a completed run, delete its training checkpoints (the bundle holds the weights; resume needs them only
    while a run is unfinished) unless train.keep_checkpoints; return the bytes freed."""
    if cfg.train.keep_checkpoints:
        return 0
    freed = 0
    for ckpt in cfg.out.rglob("checkpoints/*.ckpt"):
        freed += ckpt.stat().st_size
        ckpt.unlink()
    return freed


def summary(evaluation: Evaluation, paths: dict[str, Path], run_id: str | None, tracked: dict[str, str],
            trained: Trained, store: ChipStore) -> dict[str, Any]:
    """What a finished experiment reports: metrics, output paths, run id, model URI, whether it resumed."""
    out: dict[str, Any] = {"metrics": evaluation.metrics, "outputs": {k: str(v) for k, v in paths.items()},
                           "run_id": run_id, "samples": len(evaluation.table), "store": str(store.root),
                           "store_key": store.meta["key"], **tracked}
    if headline_text(evaluation.metrics):
        out["headline"] = headline_text(evaluation.metrics)
    if coverage_text(evaluation.metrics):
        out["uncertainty"] = coverage_text(evaluation.metrics)
    if trained.resumed_at_epoch is not None:
        out["resumed_at_epoch"] = trained.resumed_at_epoch
    if trained.weights is not None:
        out["weights"] = trained.weights.sentence()
    return out


@dataclass
class Steps:
    """The skeleton's steps (plain functions here; the Prefect flow passes tasks wrapping the same functions)."""

    ingest: Callable[..., ChipStore]
    split: Callable[..., None]
    train: Callable[..., Trained]
    evaluate: Callable[..., Evaluation] = evaluate
    export: Callable[..., dict[str, Path]] = export
    track: Callable[..., dict[str, str]] = track


def run_experiment(cfg: AnyExperiment, domain: Domain, progress: bool = True,
                   steps: Steps | None = None, parent_run: str | None = None) -> dict[str, Any]:
    """The whole experiment of any domain: ingest -> split and fit -> evaluate -> export -> track and promote.

    The MLflow run is opened after ingest and the split checks (bad input fails before any run or output exists)
    and marked FAILED when a later step fails; rerunning the same command resumes it. ``parent_run``: the run is
    a child of that MLflow run (a search's final scoring of its best configuration).
    """
    cfg = check_model(cfg)  # a typo or weights not on this machine fail before any data is read
    zero = is_global_zero()  # data-parallel: only global rank 0 writes outputs, state files and tracking
    progress = progress and zero
    cfg = domain.prepare(cfg)
    steps = steps or Steps(domain.ingest, domain.split, domain.train)
    store = steps.ingest(cfg, progress=progress)
    check_bands(cfg.model, store.bands)  # bands the weights cannot take fail before a run is opened
    steps.split(store, cfg, progress=progress)
    if not zero:  # another DDP rank: the same fits as rank 0 (their collectives need every rank), then nothing
        steps.train(store, cfg, None, progress=False)
        return {"rank": global_rank()}
    run_id = open_run(cfg, domain, parent_run)
    try:
        trained = steps.train(store, cfg, run_id, progress=progress)
        evaluation = steps.evaluate(trained, store, cfg, domain)
        paths = steps.export(trained, evaluation, store, cfg, domain)
        tracked = steps.track(run_id, trained, evaluation, paths, store, cfg, domain) if run_id else {}
    except BaseException as exc:
        fail_run(run_id, interrupted=isinstance(exc, KeyboardInterrupt))
        raise
    if not run_id:
        finish_run(cfg)
    done = summary(evaluation, paths, run_id, tracked, trained, store)
    done["checkpoints_freed_bytes"] = compact_checkpoints(cfg)
    return done
