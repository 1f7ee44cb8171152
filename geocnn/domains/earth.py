"""The Earth experiment: survey chips -> CNN (direct, or two-stage as Jean et al.) -> out-of-fold cluster metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from geocnn.data.catalog import ID
from geocnn.config import ExperimentConfig
from geocnn.errors import GeocnnError
from geocnn.models.network import GeoNet
from geocnn.data.splits import group_folds, n_folds, sample_groups, spatial_blocks, split_store
from geocnn.data.store import ChipStore

PRED = "prediction"
BUNDLE_TAG = "geocnn.bundle_uri"


@dataclass
class EarthResult:
    """Cluster predictions (out of fold), flat metrics, the CNN and the stage-2 model, and what was written."""

    clusters: pd.DataFrame
    metrics: dict[str, float]
    net: GeoNet
    head: Any = None
    plots: list[Path] = field(default_factory=list)
    stage1_run_id: str | None = None
    stage1_metrics: dict[str, float] = field(default_factory=dict)


def resolve_synthetic(cfg: ExperimentConfig) -> ExperimentConfig:
    """data.format=synthetic_earth: generate (or reuse) the scene, night lights and clusters; point the config at them."""
    if cfg.data.format != "synthetic_earth":
        return cfg
    from geocnn.synthetic.earth import make_scene

    e = cfg.earth
    folder = Path(cfg.data.store_root).parent / "synthetic_earth" / \
        f"s{e.synthetic_size}_n{e.synthetic_clusters}_seed{e.synthetic_seed}"
    paths = make_scene(folder, size_px=e.synthetic_size, n_clusters=e.synthetic_clusters, seed=e.synthetic_seed)
    data = cfg.data.model_copy(update={"format": "survey", "catalog": str(paths["clusters"]),
                                       "id_column": cfg.data.id_column or "cluster_id",
                                       "targets": cfg.data.targets or ["wealth"],
                                       "group_column": cfg.data.group_column or "country"})
    earth = e.model_copy(update={"scenes": e.scenes or [str(paths["scene"])],
                                 "label_raster": e.label_raster or str(paths["nightlights"]),
                                 "urban_column": e.urban_column or "urban"})
    split = cfg.split if cfg.split.group_column else cfg.split.model_copy(update={"group_column": "group"})
    return cfg.model_copy(update={"data": data, "earth": earth, "split": split})


def survey_split(cfg: ExperimentConfig) -> ExperimentConfig:
    """Survey clusters are spatially autocorrelated: split by group (data.group_column) or spatial blocks, never
    at random. An explicit split.method=random is refused; the default becomes grouped or blocks."""
    split = cfg.split
    if split.method in ("random", "stratified"):
        if "method" in split.model_fields_set:
            raise GeocnnError(f"split.method={split.method}: survey clusters are spatially autocorrelated, so a "
                              "random split overstates accuracy; use split.method=grouped (with data.group_column, "
                              "e.g. country) or split.method=blocks (split.block_km)")
        split = split.model_copy(update={"method": "grouped" if cfg.data.group_column else "blocks"})
    return cfg.model_copy(update={"split": split})


def chip_px(cfg: ExperimentConfig) -> int:
    """Side in pixels of the stored chips (data.chip_size)."""
    return cfg.data.chip_size


def ingest_survey(cfg: ExperimentConfig, progress: bool = True) -> ChipStore:
    """Survey points -> chips around each (n x n per cluster if configured), with the night-light statistic."""
    from geocnn.domains.earth_store import build_earth_store, read_points

    points = read_points(cfg)
    targets = [t for t in cfg.data.targets]
    if not targets:
        raise GeocnnError("data.targets is empty: name the survey column(s) to predict (e.g. [wealthpooled])")
    return build_earth_store(points, targets, cfg, chip_px(cfg), kind="survey", progress=progress)


def stage1_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """Stage 1 of two-stage transfer: the CNN learns the night-light label (classes or values) on sampled chips."""
    task = "classification" if cfg.earth.label_classes else "regression"
    return cfg.model_copy(update={
        "name": f"{cfg.name}-stage1", "output_dir": str(cfg.out / "stage1"),
        "model": cfg.model.model_copy(update={"task": task, "sigmoid": False}),
        "split": cfg.split.model_copy(update={"method": "random", "folds": None, "val_fraction": 0.15,
                                              "test_fraction": 0.15}),
        "data": cfg.data.model_copy(update={"targets": [cfg.earth.label_name]}),
        "tracking": cfg.tracking.model_copy(update={"register_model": False})})  # registered by track_earth as NAME_cnn


def ingest_stage1(cfg: ExperimentConfig, progress: bool = True) -> ChipStore:
    """Chips at random points of the first scene, labelled by the night-light raster."""
    from geocnn.domains.earth_store import build_earth_store, sample_points

    if not cfg.earth.label_raster:
        raise GeocnnError("two_stage.enabled needs earth.label_raster (the night-light raster stage 1 learns)")
    s1 = stage1_config(cfg)
    s1 = s1.model_copy(update={"earth": s1.earth.model_copy(update={"chips_per_cluster": 1})})
    points = sample_points(cfg, cfg.two_stage.stage1_chips, cfg.seed)
    return build_earth_store(points, [], s1, chip_px(cfg), kind="stage1", progress=progress)


def train_stage1(store1: ChipStore, cfg: ExperimentConfig, run_id: str | None = None,
                 progress: bool = True) -> tuple[GeoNet, dict[str, float]]:
    """Fit the stage-1 CNN on night lights; return it and its held-out night-light metrics."""
    from geocnn.domains.base import evaluate
    from geocnn.training.fit import fit

    s1 = stage1_config(cfg)
    view = split_store(store1, s1.split, store1.targets[0] if s1.model.task == "classification" else None)
    result = fit(view, s1, callbacks=_epoch_logger(run_id, ""), progress=progress)
    evaluation = evaluate(result.net, view, s1, out=s1.out)
    return result.net, {f"stage1/{k}": v for k, v in evaluation.metrics.items()}


def _epoch_logger(run_id: str | None, prefix: str) -> list | None:
    if not run_id:
        return None
    from geocnn.tracking.runs import EpochMetrics

    return [EpochMetrics(run_id, prefix)]


def cluster_table(store: ChipStore, cfg: ExperimentConfig) -> pd.DataFrame:
    """One row per cluster (sorted by id): id, lat, lon, targets, group, urban, night-light mean, spatial block."""
    idx = store.index
    keep = ["cluster", "cluster_lat", "cluster_lon", *cfg.data.targets,
            *[c for c in ("group", "urban", "weight") if c in idx.columns]]
    first = idx.groupby("cluster", sort=True)[keep[1:]].first().reset_index()
    first = first.rename(columns={"cluster": ID, "cluster_lat": "lat", "cluster_lon": "lon"})
    value = f"{cfg.earth.label_name}_value"
    if value in idx.columns:
        first[cfg.earth.label_name] = idx.groupby("cluster", sort=True)[value].mean().to_numpy()
    first["n_chips"] = idx.groupby("cluster", sort=True).size().to_numpy()
    return first


def cluster_folds(clusters: pd.DataFrame, cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Groups (group column, else spatial blocks) and grouped folds of the clusters (default 5 folds)."""
    if "group" in clusters.columns:
        groups = clusters["group"].astype(str).to_numpy()
    else:
        groups = spatial_blocks(clusters["lat"].to_numpy(), clusters["lon"].to_numpy(), cfg.split.block_km)
    return groups, group_folds(groups, cfg.split.folds or 5, cfg.split.seed)


def gbm_features(clusters: pd.DataFrame, cfg: ExperimentConfig) -> np.ndarray | None:
    """Mean night light around each cluster at the configured window sizes (the gradient-boosting baseline)."""
    if not cfg.earth.baseline_raster:
        return None
    from geocnn.data.sources.raster import label_statistic, open_scene

    with open_scene(cfg.earth.baseline_raster) as scene:
        return np.array([[label_statistic(scene, lon, lat, "mean", size_px=r) for r in cfg.earth.baseline_radii_px]
                         for lon, lat in zip(clusters["lon"], clusters["lat"])])


def add_baselines(clusters: pd.DataFrame, y: np.ndarray, groups: np.ndarray, folds: np.ndarray,
                  cfg: ExperimentConfig) -> dict[str, str]:
    """Baseline prediction columns on the same folds: train mean, night-lights ridge, gradient boosting."""
    from geocnn.models.ridge import gbm_baseline, nested_ridge, train_mean_baseline

    cols = {"baseline": "baseline_train_mean"}
    clusters["baseline_train_mean"] = train_mean_baseline(y, folds)
    nl = cfg.earth.label_name
    if nl in clusters.columns:
        x = np.log1p(np.maximum(clusters[[nl]].to_numpy(float), 0))
        clusters["baseline_nightlights"] = nested_ridge(x, y, groups, folds, cfg.two_stage.alphas,
                                                        cfg.two_stage.inner_folds).predictions
        cols["baseline_nightlights"] = "baseline_nightlights"
    feats = gbm_features(clusters, cfg)
    if feats is not None:
        clusters["baseline_gbm"] = gbm_baseline(np.nan_to_num(feats), y, folds, cfg.seed)
        cols["baseline_gbm"] = "baseline_gbm"
    return cols


def score_clusters(clusters: pd.DataFrame, target: str, columns: dict[str, str], cfg: ExperimentConfig,
                   rows: np.ndarray | None = None) -> dict[str, float]:
    """Flat metrics of every prediction column, plus the same on the poorer half of clusters (Jean et al.)."""
    from geocnn.models.ridge import scored

    frame = clusters if rows is None else clusters.iloc[rows]
    group = "group" if "group" in frame.columns else None
    urban = "urban" if "urban" in frame.columns and frame["urban"].nunique() > 1 else None
    metrics = scored(frame, target, columns, group, urban)
    poor = frame[frame[target] <= frame[target].median()]
    metrics.update({f"poorer_half/{k}": v for k, v in scored(poor, target, columns, None, None).items()})
    metrics["test/n"] = float(len(frame))
    return metrics


def run_two_stage(store: ChipStore, cfg: ExperimentConfig, run_id: str | None = None,
                  progress: bool = True) -> EarthResult:
    """Stage 1 on night lights, stage 2 ridge on cluster-mean features, scored out of fold beside the baselines."""
    from geocnn.models.ridge import chip_features, cluster_means, fit_ridge, nested_ridge

    store1 = ingest_stage1(cfg, progress)
    s1_run = None
    if run_id:  # stage 1 is its own MLflow run (a child of the experiment's run), holding the CNN
        from mlflow import MlflowClient

        from geocnn.tracking import runs as tracking

        s1_run = tracking.start_run(stage1_config(cfg))
        MlflowClient(tracking.mlflow.get_tracking_uri()).set_tag(s1_run, "mlflow.parentRunId", run_id)
    try:
        net, s1_metrics = train_stage1(store1, cfg, s1_run, progress)
    except BaseException:
        if s1_run:
            tracking.end_run(s1_run, "FAILED")
        raise
    feats = chip_features(net, store.chips, cfg.train.eval_batch_size, cfg.augment.tta_views)
    ids, x = cluster_means(feats, store.index["cluster"].to_numpy())
    clusters = cluster_table(store, cfg)
    assert (clusters[ID].astype(str).to_numpy() == ids).all()
    target = cfg.data.targets[0]
    y = clusters[target].to_numpy(float)
    groups, folds = cluster_folds(clusters, cfg)
    clusters["fold"] = folds
    clusters["split"] = "test"  # every cluster is scored once, by the fold that held it out
    nested = nested_ridge(x, y, groups, folds, cfg.two_stage.alphas, cfg.two_stage.inner_folds)
    clusters[PRED] = nested.predictions
    cols = {"test": PRED, **add_baselines(clusters, y, groups, folds, cfg)}
    metrics = score_clusters(clusters, target, cols, cfg)
    metrics.update({f"stage2/alpha/fold{k}": v for k, v in nested.alphas.items()})
    metrics["validation/r2"] = float(np.mean(list(nested.inner_r2.values())))  # inner CV, outer folds unseen
    head = fit_ridge(x, y, groups, cfg.two_stage.alphas, cfg.two_stage.inner_folds)
    return EarthResult(clusters, metrics, net, head, stage1_run_id=s1_run, stage1_metrics=s1_metrics)


def run_direct(store: ChipStore, cfg: ExperimentConfig, run_id: str | None = None,
               progress: bool = True) -> EarthResult:
    """The CNN regresses the survey target from chips; grouped folds (out of group) or one grouped split."""
    from geocnn.inference.predict import predict_chips
    from geocnn.training.fit import fit

    if cfg.model.task != "regression":
        raise GeocnnError(f"model.task={cfg.model.task!r}: survey targets are continuous; use model.task=regression")
    k = n_folds(store.index, cfg.split)
    chip_pred = np.full((len(store.index), len(cfg.data.targets)), np.nan)
    chip_fold = np.full(len(store.index), -1)
    chip_split = np.full(len(store.index), "test", dtype=object)
    net = None
    val_r2: list[float] = []
    for f in (range(k) if k else [None]):
        view = split_store(store, cfg.split, fold=f)
        fcfg = cfg if f is None else cfg.model_copy(update={"output_dir": str(cfg.out / f"fold{f}")})
        result = fit(view, fcfg, callbacks=_epoch_logger(run_id, "" if f is None else f"fold{f}/"), progress=progress)
        rows = view.rows("test") if f is not None else np.arange(len(store.index))
        chip_pred[rows] = predict_chips(result.net, store.chips, rows, cfg.train.eval_batch_size,
                                        cfg.augment.tta_views, cfg.train.device)
        chip_fold[rows] = -1 if f is None else f
        val_r2.append(val_cluster_r2(result.net, store, view, cfg))
        if f is None:
            chip_split = view.split.copy()
        net = result.net if net is None else net
    clusters = cluster_table(store, cfg)
    by_cluster = pd.DataFrame(chip_pred, columns=cfg.data.targets).groupby(store.index["cluster"].to_numpy()).mean()
    target = cfg.data.targets[0]
    clusters[PRED] = by_cluster.loc[clusters[ID], target].to_numpy()
    clusters["split"] = pd.Series(chip_split).groupby(store.index["cluster"].to_numpy()).first().loc[
        clusters[ID]].to_numpy()
    y = clusters[target].to_numpy(float)
    if k:
        groups = sample_groups(store.index, cfg.split)
        clusters["fold"] = pd.Series(chip_fold).groupby(store.index["cluster"].to_numpy()).first().loc[
            clusters[ID]].to_numpy()
        folds = clusters["fold"].to_numpy()
        groups = pd.Series(groups).groupby(store.index["cluster"].to_numpy()).first().loc[clusters[ID]].to_numpy()
        cols = {"test": PRED, **add_baselines(clusters, y, groups, folds, cfg)}
        metrics = score_clusters(clusters, target, cols, cfg)
    else:
        test = np.flatnonzero(clusters["split"].to_numpy() == "test")
        train = clusters["split"].to_numpy() == "train"
        clusters["baseline_train_mean"] = y[train].mean()
        metrics = score_clusters(clusters, target, {"test": PRED, "baseline": "baseline_train_mean"}, cfg, test)
    metrics["validation/r2"] = float(np.mean(val_r2))
    return EarthResult(clusters, metrics, net)


def val_cluster_r2(net: GeoNet, store: ChipStore, view: Any, cfg: ExperimentConfig) -> float:
    """R2 of cluster-mean predictions on a fold's validation clusters (the model's promotion score; never test)."""
    from sklearn.metrics import r2_score

    from geocnn.inference.predict import predict_chips

    rows = view.rows("val")
    if len(rows) == 0:
        return float("nan")
    pred = predict_chips(net, store.chips, rows, cfg.train.eval_batch_size, cfg.augment.tta_views, cfg.train.device)
    target = cfg.data.targets[0]
    frame = pd.DataFrame({"cluster": store.index["cluster"].to_numpy()[rows], "p": pred[:, 0],
                          "y": store.index[target].to_numpy(float)[rows]}).groupby("cluster").mean()
    return float(r2_score(frame["y"], frame["p"])) if len(frame) > 1 else float("nan")


def map_reader(scenes: list, layers: list) -> Callable:
    """read(window, out_shape) over the first scene, with the extra layers read over the same ground box."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import bounds as window_bounds
    from rasterio.windows import from_bounds

    scene = scenes[0]

    def read(window, out_shape):  # noqa: ANN001, ANN202
        parts = [scene.read(window, out_shape)]
        if layers:
            b = window_bounds(window, scene.transform)
            for layer in layers:
                lb = transform_bounds(scene.crs, layer.crs, *b) if layer.crs != scene.crs else b
                parts.append(layer.read(from_bounds(*lb, transform=layer.transform), out_shape))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    read.exact_strips = not layers  # one scene's pixels: a strip reads the same values as its windows
    return read


def scene_predictor(net: GeoNet, head: Any = None, device: str = "auto",
                    compile_model: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Batch of raw chips (NaN nodata) -> one value per chip: stage-2 ridge on encoder features, or the CNN.

    On CUDA the network runs channels-last under bf16 autocast and batches go over non-blocking copies; the one
    synchronisation per batch is the copy of its predictions back to the host.
    """
    import torch

    from geocnn.inference.predict import pick_device

    dev = pick_device(device)
    net = net.to(dev).eval()
    cuda = dev.type == "cuda"
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if compile_model else net
    features = torch.compile(net.features) if compile_model and head is not None else net.features

    @torch.no_grad()
    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(batch)
        if cuda:
            x = x.pin_memory().to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if head is not None:
                return np.asarray(head.predict(features(x).float().cpu().numpy()), float)
            return net.to_prediction(forward(x).float()).cpu().numpy()[:, 0]

    return predict


def map_scene(net: GeoNet, head: Any, earth: Any, in_px: int, band_name: str, out_dir: Path,
              stride_px: int | None = None, target_grid: str | None = None, batch_size: int = 128,
              title: str = "") -> dict[str, Path]:
    """Sliding-window prediction over the first scene of ``earth`` -> GeoTIFF (COG layout) + PNG quicklook."""
    from contextlib import ExitStack

    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds
    from rasterio.windows import transform as window_transform

    from geocnn.domains.earth_store import M_PER_DEG, footprint_m
    from geocnn.inference.sliding import Grid, predict_map, write_quicklook
    from geocnn.data.sources.raster import open_scene

    with ExitStack() as stack:
        scenes = [stack.enter_context(open_scene(s, earth.bands, earth.nodata)) for s in earth.scenes]
        layers = [stack.enter_context(open_scene(p)) for p in earth.layers]
        scene = scenes[0]
        geographic = scene.crs is not None and scene.crs.is_geographic
        res = abs(scene.res[1]) * (M_PER_DEG if geographic else 1.0)
        chip_native = max(1, int(round(footprint_m(scene, earth, 0.0) / res)))
        stride = stride_px or max(1, chip_native // 2)
        grid = Grid(scene.crs, scene.transform, scene.width, scene.height)
        read = map_reader(scenes, layers)
        target = None
        if target_grid:
            target = Grid.from_raster(target_grid)
            lb = transform_bounds(target.crs, scene.crs, *_grid_bounds(target))
            win = from_bounds(*lb, transform=scene.transform).round_offsets().round_lengths()
            try:
                win = win.intersection(Window(0, 0, scene.width, scene.height))
            except Exception:  # rasterio raises WindowError when they do not overlap
                raise GeocnnError(f"maps.target_grid {target_grid} does not overlap the scene {earth.scenes[0]}") \
                    from None
            grid = Grid(scene.crs, window_transform(win, scene.transform), int(win.width), int(win.height))
            read = offset_reader(read, int(win.col_off), int(win.row_off))
        tif = predict_map(read, grid, scene_predictor(net, head), out_dir / "prediction.tif", chip_px=chip_native,
                          stride_px=min(stride, chip_native), in_px=in_px, batch_size=batch_size,
                          max_nodata_fraction=earth.max_nodata_fraction, band_names=[band_name], target_grid=target)
        net.cpu()  # the predictor may have moved it to the GPU; callers keep using it on the host
    png = write_quicklook(tif, out_dir / "prediction.png", title=title or f"predicted {band_name}")
    return {"map_tif": tif, "map_png": png}


def offset_reader(read: Callable, col_off: int, row_off: int) -> Callable:
    """A reader of a sub-window of the scene, in that sub-window's pixel coordinates."""
    from rasterio.windows import Window

    def shifted(window, out_shape):  # noqa: ANN001, ANN202
        return read(Window(window.col_off + col_off, window.row_off + row_off, window.width, window.height), out_shape)

    shifted.exact_strips = getattr(read, "exact_strips", False)
    return shifted


def write_map(result: EarthResult, cfg: ExperimentConfig, out: Path) -> dict[str, Path]:
    """The experiment's map: its model over the first scene (or the part under maps.target_grid)."""
    target = cfg.data.targets[0]
    return map_scene(result.net, result.head, cfg.earth, chip_px(cfg), target, out / "maps", cfg.maps.stride_px,
                     cfg.maps.target_grid, cfg.maps.batch_size, f"{cfg.name}: predicted {target}")


class Stage2Ridge:
    """The stage-2 model read back from its JSON (standardise, then linear): no pickle involved."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.mean = np.asarray(spec["mean"])
        self.scale = np.asarray(spec["scale"])
        self.coef = np.asarray(spec["coef"])
        self.intercept = float(spec["intercept"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Ridge predictions from encoder features."""
        return ((np.asarray(x, float) - self.mean) / self.scale) @ self.coef + self.intercept


def map_from_bundle(model: str, out_dir: Path, scenes: list[str] | None = None, stride_px: int | None = None,
                    target_grid: str | None = None, batch_size: int = 128) -> dict[str, Path]:
    """Predict a map of new scenes with a saved Earth bundle (its stage-2 ridge too, when it has one)."""
    import json

    from geocnn.inference.bundle import load_bundle, resolve_model
    from geocnn.config import EarthConfig

    bundle = load_bundle(resolve_model(model))
    pre = bundle.meta.get("preprocessing", {})
    if pre.get("kind") != "earth":
        raise GeocnnError(f"{model}: not an Earth model (bundle kind {pre.get('kind')!r}); maps need a bundle from an "
                          "Earth experiment (data.format survey or synthetic_earth)")
    earth = EarthConfig.model_validate(pre["earth"])
    if scenes:
        earth = earth.model_copy(update={"scenes": list(scenes)})
    ridge_path = bundle.root / "stage2_ridge.json"
    head = Stage2Ridge(json.loads(ridge_path.read_text())) if ridge_path.exists() else None
    target = bundle.net.spec.targets[0] if head is None else bundle.meta.get("target", "prediction")
    n_bands = bundle.net.spec.in_chans
    from geocnn.data.sources.raster import open_scene

    with open_scene(earth.scenes[0], earth.bands, earth.nodata) as probe:
        extra = 0
        for p in earth.layers:
            with open_scene(p) as layer:
                extra += layer.count
        if probe.count + extra != n_bands:
            raise GeocnnError(f"{earth.scenes[0]}: {probe.count} band(s) + {extra} from layers, but the model expects "
                              f"{n_bands} ({', '.join(pre.get('bands', []))}); give scenes with the same bands")
        window_px = earth.chip_px or (earth.chip_m / abs(probe.res[0]) if earth.chip_m else int(pre["chip_size"]))
        if min(probe.width, probe.height) < window_px:
            raise GeocnnError(f"{earth.scenes[0]}: the scene is {probe.width}x{probe.height} px, smaller than the "
                              f"model's {window_px:g} px window; map a larger scene (or mosaic several).")
    return map_scene(bundle.net, head, earth, int(pre["chip_size"]), target, out_dir, stride_px, target_grid,
                     batch_size)


def _grid_bounds(grid: Any) -> tuple[float, float, float, float]:
    from rasterio.transform import array_bounds

    return tuple(array_bounds(grid.height, grid.width, grid.transform))  # (west, south, east, north)


def save_ridge(head: Any, path: Path) -> Path:
    """The stage-2 model as plain JSON (scaler mean/scale, ridge coef/intercept/alpha): no pickle to load."""
    import json

    from geocnn.atomic import atomic_path

    scaler, ridge = head.named_steps["standardscaler"], head.named_steps["ridge"]
    spec = {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(), "coef": np.ravel(ridge.coef_).tolist(),
            "intercept": float(np.ravel(ridge.intercept_)[0]), "alpha": float(ridge.alpha)}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(spec))
    return path


def export_earth(result: EarthResult, cfg: ExperimentConfig, store: ChipStore) -> dict[str, Path]:
    """metrics.json, cluster predictions (CSV, Parquet, GeoJSON), plots, bundle, stage-2 model and the map."""
    import json

    from geocnn.inference.bundle import save_bundle
    from geocnn.outputs.tables import write_tables
    from geocnn.atomic import atomic_path
    from geocnn.inference.sliding import write_geojson_points
    from geocnn.evaluation.plots import plot_pred_vs_true, plot_residual_map

    out = cfg.out
    paths: dict[str, Path] = {}
    metrics = {**result.metrics, **result.stage1_metrics}
    with atomic_path(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    paths["metrics"] = out / "metrics.json"
    frame = result.clusters
    for p in write_tables(frame, out):
        paths[f"predictions_{p.suffix[1:]}"] = p
    paths["predictions_geojson"] = write_geojson_points(frame, out / "predictions.geojson")
    target = cfg.data.targets[0]
    scored_rows = frame if "split" not in frame.columns else frame[frame["split"] == "test"]
    groups = scored_rows["group"].to_numpy() if "group" in scored_rows.columns else None
    result.plots = [
        plot_pred_vs_true(scored_rows[[target]].to_numpy(float), scored_rows[[PRED]].to_numpy(float), [target],
                          out / "plots" / "pred_vs_observed.png", groups=groups),
        plot_residual_map(scored_rows["lon"].to_numpy(), scored_rows["lat"].to_numpy(),
                          (scored_rows[PRED] - scored_rows[target]).to_numpy(float), out / "plots" / "residual_map.png"),
    ]
    pre = {"kind": "earth", "chip_size": chip_px(cfg), "bands": store.meta["bands"], "dtype": "float32",
           "earth": cfg.earth.model_dump()}
    paths["bundle"] = save_bundle(result.net, out / "bundle", pre, cfg.augment.tta_views,
                                  extra={"experiment": cfg.name, "store_key": store.meta["key"],
                                         "target": cfg.data.targets[0],
                                         "role": "stage1 night lights" if result.head is not None else "direct"})
    if result.head is not None:
        paths["stage2"] = save_ridge(result.head, out / "bundle" / "stage2_ridge.json")
    if cfg.maps.enabled:
        paths.update(write_map(result, cfg, out))
    return paths


def track_earth(run_id: str, cfg: ExperimentConfig, result: EarthResult, paths: dict[str, Path],
                store: ChipStore) -> dict[str, str]:
    """Log metrics, plots, tables, maps and models; the stage-2 ridge is its own model, linked to stage 1."""
    import mlflow

    from geocnn.tracking import registry, runs as tracking

    name = cfg.tracking.model_name(cfg.name)
    if name:
        registry.check_metric(cfg, result.metrics)
    tracking.log_metrics(run_id, {**result.metrics, **result.stage1_metrics})
    tracking.log_artifacts(run_id, result.plots, "plots")
    tracking.log_artifacts(run_id, [paths[k] for k in ("metrics", "predictions_csv", "predictions_parquet",
                                                       "predictions_geojson")], "predictions")
    tracking.log_artifacts(run_id, [paths[k] for k in ("map_tif", "map_png") if k in paths], "maps")
    clusters = result.clusters
    labels = clusters["fold"] if "fold" in clusters.columns else clusters["split"]
    signature = registry.split_signature(clusters[ID].to_numpy(), labels.astype(str).to_numpy())
    tracking.set_tags(run_id, {registry.SPLIT_TAG: signature})
    example = np.nan_to_num(np.asarray(store.chips[:2]))
    if result.head is None:
        info = tracking.log_bundle_model(run_id, paths["bundle"], example, name)
        out = {"model_uri": info.model_uri}
        version = getattr(info, "registered_model_version", None)
    else:
        # stage 1: the CNN (and its night-light metrics) in its own run; stage 2: the ridge here, linked to it
        s1 = result.stage1_run_id or run_id
        tracking.log_metrics(s1, {k.removeprefix("stage1/"): v for k, v in result.stage1_metrics.items()})
        info = tracking.log_bundle_model(s1, paths["bundle"], example, f"{name}_cnn" if name else None)
        if s1 != run_id:
            tracking.end_run(s1)
        x = result.net.features(__import__("torch").as_tensor(example)).detach().numpy()
        with mlflow.start_run(run_id=run_id):
            # the bundle (CNN + stage2_ridge.json) that `geocnn map --model models:/NAME@champion` fetches
            mlflow.set_tags({"geocnn.stage1_run_id": s1, "geocnn.stage1_model_uri": info.model_uri,
                             BUNDLE_TAG: info.model_uri})
            stage2 = mlflow.sklearn.log_model(
                result.head, name="stage2_ridge", input_example=x, registered_model_name=name,
                serialization_format="skops", skops_trusted_types=[
                    "sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler",
                    "sklearn.linear_model._ridge.Ridge"])
        out = {"model_uri": stage2.model_uri, "stage1_model_uri": info.model_uri, "stage1_run_id": s1}
        version = getattr(stage2, "registered_model_version", None)
    if name and version is not None:
        out["registered_version"] = str(version)
        decision = registry.promote(tracking.client(), cfg, name, str(version), run_id, result.metrics, signature)
        out["promotion"] = decision.reason
        out["promoted"] = str(decision.promoted).lower()
    tracking.end_run(run_id)
    from geocnn.domains.base import finish_run

    finish_run(cfg)
    return out


def run_poverty(cfg: ExperimentConfig, progress: bool = True) -> dict[str, object]:
    """The whole Earth experiment without Prefect: ingest -> (stage 1 ->) train/score -> export -> track."""
    from geocnn.domains.base import fail_run, open_run

    cfg = survey_split(resolve_synthetic(cfg))
    store = ingest_survey(cfg, progress)
    run_id = open_run(cfg)
    try:
        result = (run_two_stage if cfg.two_stage.enabled else run_direct)(store, cfg, run_id, progress)
        paths = export_earth(result, cfg, store)
        tracked = track_earth(run_id, cfg, result, paths, store) if run_id else {}
    except BaseException:
        fail_run(run_id)
        raise
    return {"metrics": {**result.metrics, **result.stage1_metrics}, "outputs": {k: str(v) for k, v in paths.items()},
            "run_id": run_id, **tracked}
