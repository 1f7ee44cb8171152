"""The Earth domain: survey clusters with scene windows or tiles -> an indicator, night-light baselines, maps.

Its own steps beside the skeleton's: two-stage transfer (Jean et al. 2016: a CNN learns night lights, a ridge maps
its cluster-mean features to the survey target, scored out of fold), the night-light baselines of the same folds
(ridge on mean night light; gradient boosting on night light at several radii), the poorer half of clusters,
a residual map and a wall-to-wall map of the first scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from pydantic import BaseModel

from geocnn import fanout
from geocnn.config import EarthExperiment, MapsConfig, ModelConfig, SplitConfig, derive
from geocnn.data.catalog import ID, IMAGE, LAT, LON, Catalog
from geocnn.data.chips import ChipSpec, sample_points, tile_size_m
from geocnn.data.fingerprint import files_under
from geocnn.data.profile import TrainingProfile, pixel_size_m
from geocnn.data.sources.images import file_root, folder_of, is_folder, location, resolve_files
from geocnn.data.sources.raster import label_statistic, open_scene
from geocnn.data.sources.scenes import resolve_scenes
from geocnn.data.sources.survey import read_survey
from geocnn.data.splits import group_folds, sample_groups
from geocnn.data.store import ChipStore, LabelSpec, build_store
from geocnn.domains.base import (
    CnnPlan,
    Domain,
    Evaluation,
    Trained,
    check_plan,
    held_out_metrics,
    train_cnn,
    training_profile,
)
from geocnn.domains.earth_maps import map_scene, map_scenes, out_of_range
from geocnn.errors import GeocnnError
from geocnn.evaluation.baselines import gbm_baseline
from geocnn.evaluation.plots import plot_residual_map
from geocnn.inference.bundle import Bundle, Preprocessing, Stage2
from geocnn.inference.predict import Forward
from geocnn.models.ridge import Stage2Ridge, fit_ridge, nested_ridge
from geocnn.models.tasks import ScoreInput, Targets, TaskSpec, task_spec
from geocnn.outputs.aggregate import aggregate
from geocnn.outputs.webmap import VECTOR_SUFFIXES, write_webmap
from geocnn.synthetic.earth import make_scene
from geocnn.tracking import runs as tracking
from geocnn.training import hooks

STAGE1_SPLIT = {"method": "random", "val_fraction": 0.15, "test_fraction": 0.15}
"""Stage 1 learns night lights on chips sampled across the scene: any split of them is honest for its own score."""


class EarthDomain(Domain):
    """Survey points (DHS clusters, ...) with scenes or pre-cut tiles -> a continuous indicator per cluster, maps."""

    name = "earth"
    watch_patterns = ("*.tif", "*.tiff")
    maps = True

    def predict_files(self, bundle: Bundle, ids: list[str], files: list[Path], out_dir: Path, batch_size: int = 128,
                      device: str = "auto", stride_px: int | None = None,
                      strict: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
        """Map each new scene (COG + PNG under out_dir/maps/<id>/); a row per scene with map paths and statistics
        (``out_of_range``: its lowest or highest prediction far outside the training target range). A scene unlike
        the training data is logged (``strict``: fails alone)."""
        rows, failures = [], {}
        for sample_id, path in zip(ids, files):
            target = out_dir / "maps" / Path(sample_id).with_suffix("")
            try:
                paths = map_scene(bundle, [str(path)], target, stride_px, batch_size=batch_size, device=device,
                                  strict=strict)
                with rasterio.open(paths["map_tif"]) as src:
                    values = src.read(1, masked=True).astype(np.float64).filled(np.nan)
            except Exception as exc:  # noqa: BLE001 - a corrupt or mismatched scene fails alone
                failures[sample_id] = f"{type(exc).__name__}: {exc}"
                continue
            finite = values[np.isfinite(values)]
            rows.append({"id": sample_id, "file": str(path), "map_tif": str(paths["map_tif"]),
                         "map_png": str(paths["map_png"]), "valid_pixels": int(finite.size),
                         "mean": float(finite.mean()) if finite.size else np.nan,
                         "min": float(finite.min()) if finite.size else np.nan,
                         "max": float(finite.max()) if finite.size else np.nan,
                         "out_of_range": out_of_range(bundle, finite.min(), finite.max()) if finite.size else False})
        return pd.DataFrame(rows), failures

    def prepare(self, cfg: EarthExperiment) -> EarthExperiment:
        """The config ready to run: earth.scenes resolved to concrete files (once; globs, folders, VRTs, STAC kept
        in earth.scene_sources), and for data.format=synthetic_earth the generated scene, night lights and clusters
        (written or reused) pointed at."""
        if cfg.data.format == "synthetic_earth":
            cfg = _synthetic(cfg)
        e = cfg.earth
        if e.scenes and e.scene_sources is None:
            files = resolve_scenes(e.scenes, asset=e.stac_asset, bbox=e.stac_bbox, datetime_range=e.stac_datetime,
                                   collections=e.stac_collections, max_items=e.stac_max_items)
            cfg = derive(cfg, {"earth.scene_sources": list(e.scenes), "earth.scenes": files})
        return cfg

    def catalog(self, cfg: EarthExperiment) -> Catalog:
        """The survey points (validated), with each cluster's tile file when data.tiles is set."""
        cfg = self.prepare(cfg)
        data, earth = cfg.data, cfg.earth
        targets = [t for t in data.targets if t != earth.label_name or not earth.label_raster]
        frame = read_survey(data.catalog, earth.lat_column, earth.lon_column, targets, data.id_column,
                            data.group_column, earth.urban_column, earth.weight_column, earth.urban_unknown)
        source = str(data.catalog)
        if data.tiles:
            path = location(data.catalog)
            column = data.tiles if data.tiles in frame.columns else None
            root = folder_of(path) if column else file_root(path, data.tiles, "data.tiles")
            frame[IMAGE] = resolve_files(frame[ID], frame[column] if column else None, column, root, folder_of(path),
                                         (), source, data.allow_outside_root, key="data.tiles")
        return task_spec(cfg.model.task).prepare(Catalog(frame, targets, source))

    def chip_spec(self, cfg: EarthExperiment) -> ChipSpec:
        """Tiles (crop, resize) or scene windows around each point (n x n per cluster), layers and labels appended."""
        cfg = self.prepare(cfg)
        d, e = cfg.data, cfg.earth
        common = {"out_px": d.chip_size, "bands": e.bands, "nodata": e.nodata, "layers": e.layers,
                  "label_raster": e.label_raster, "label_statistic": e.label_statistic, "chip_m": e.chip_m,
                  "max_nodata_fraction": e.max_nodata_fraction}
        if d.tiles:
            return ChipSpec(files=True, crop=d.crop, **common)
        return ChipSpec(files=False, scenes=e.scenes, chip_px=e.chip_px, per_sample=e.chips_per_cluster,
                        box_m=e.cluster_box_m, **common)

    def labels(self, cfg: EarthExperiment, as_target: bool) -> LabelSpec:
        """The night-light label of the label raster: a per-chip value, and classes for stage 1."""
        e = cfg.earth
        return LabelSpec(name=e.label_name, classes=e.label_classes, n_classes=e.n_label_classes, seed=cfg.seed,
                         as_target=as_target)

    def ingest(self, cfg: EarthExperiment, progress: bool = True) -> ChipStore:
        cfg = self.prepare(cfg)
        return build_store(self.catalog(cfg), self.chip_spec(cfg), cfg.data.store_root, self.labels(cfg, False),
                           progress=progress, shard_size=cfg.orchestration.ingest_shard_size)

    def input_files(self, cfg: EarthExperiment) -> list[Path]:
        cfg = self.prepare(cfg)
        tiles = cfg.data.tiles if cfg.data.tiles and is_folder(cfg.data.tiles) else None
        files = files_under(cfg.data.catalog) + files_under(tiles)
        for path in self.chip_spec(cfg).inputs() + ([cfg.earth.baseline_raster] if cfg.earth.baseline_raster else []):
            files += files_under(path)
        return files

    def ingest_sections(self, cfg: EarthExperiment) -> list[BaseModel]:
        return [*super().ingest_sections(cfg), cfg.earth]

    def split(self, store: ChipStore, cfg: EarthExperiment, progress: bool = True) -> None:
        """Two-stage: stage 1's chips (built now, reused by training) and its split; the clusters' grouped folds.
        Direct: the CNN's splits."""
        cfg = self.prepare(cfg)
        if not cfg.two_stage.enabled:
            return super().split(store, cfg, progress)
        plan1 = stage1_plan(cfg)
        check_plan(stage1_store(self, cfg, progress), plan1)
        groups = sample_groups(store.samples(), cfg.split)
        group_folds(groups, cfg.split.folds or 5, cfg.split.seed)

    def train(self, store: ChipStore, cfg: EarthExperiment, run_id: str | None = None,
              progress: bool = True) -> Trained:
        if cfg.two_stage.enabled:
            return train_two_stage(self, store, self.prepare(cfg), run_id, progress)
        return super().train(store, cfg, run_id, progress)

    def task_tag(self, cfg: EarthExperiment) -> str:
        """Two-stage runs predict the survey target by regression (stage 1's night-light task is its own run's)."""
        return "regression" if cfg.two_stage.enabled else cfg.model.task

    def promotion_metric(self, cfg: EarthExperiment) -> str:
        return "validation/r2"

    def prunable(self, cfg: EarthExperiment) -> bool:
        """Two-stage trials are scored by stage 2's inner grouped folds; the epochs are stage 1's (another task)."""
        return not cfg.two_stage.enabled

    def predict_batch_size(self, cfg: EarthExperiment) -> int:
        return cfg.maps.batch_size

    def map_stride(self, cfg: EarthExperiment) -> int | None:
        return cfg.maps.stride_px

    def baselines(self, store: ChipStore, samples: pd.DataFrame, y: np.ndarray, folds: np.ndarray,
                  groups: np.ndarray | None, cfg: EarthExperiment) -> dict[str, np.ndarray]:
        """Ridge on the mean night light (nested grouped CV) and gradient boosting on night light at several radii."""
        out: dict[str, np.ndarray] = {}
        label = f"{cfg.earth.label_name}_value"
        target = y[:, 0]
        if label in store.index.columns and groups is not None:
            light = store.sample_means(store.index[[label]].to_numpy(float))
            x = np.log1p(np.maximum(light, 0))
            out["baseline_nightlights"] = nested_ridge(x, target, groups, folds, cfg.two_stage.alphas,
                                                       cfg.two_stage.inner_folds).predictions[:, None]
        if cfg.earth.baseline_raster:
            with open_scene(cfg.earth.baseline_raster) as scene:
                feats = np.array([[label_statistic(scene, lon, lat, "mean", size_px=r)
                                   for r in cfg.earth.baseline_radii_px]
                                  for lon, lat in zip(samples[LON], samples[LAT])])
            out["baseline_gbm"] = gbm_baseline(np.nan_to_num(feats), target, folds, cfg.seed)[:, None]
        return out

    def extra_metrics(self, truth: np.ndarray, predictions: dict[str, np.ndarray], spec: TaskSpec,
                      targets: Targets) -> dict[str, float]:
        """The poorer half of clusters (Jean et al.: where night lights are dark and carry no signal)."""
        poor = truth[:, 0] <= np.median(truth[:, 0])
        if poor.sum() < 3:
            return {}
        scores = spec.score(ScoreInput(truth[poor], {n: p[poor] for n, p in predictions.items()}), targets)
        return {f"poorer_half/{k}": v for k, v in scores.items()}

    def plots(self, store: ChipStore, table: pd.DataFrame, y: np.ndarray, pred: np.ndarray, scored: np.ndarray,
              spec: TaskSpec, targets: Targets, cfg: EarthExperiment) -> list[Path]:
        """Residuals of the held-out clusters on a lon/lat map."""
        rows = table[scored]
        return [plot_residual_map(rows[LON].to_numpy(), rows[LAT].to_numpy(), pred[scored, 0] - y[scored, 0],
                                  cfg.out / "plots" / "residual_map.png")]

    def preprocessing(self, store: ChipStore, trained: Trained, cfg: EarthExperiment) -> Preprocessing:
        pre = super().preprocessing(store, trained, cfg)
        footprint = _footprint_m(store, cfg)
        return Preprocessing.model_validate({**pre.model_dump(),
                                             "resolution_m": None if footprint is None else footprint / pre.chip_px})

    def input_profile(self, store: ChipStore, trained: Trained, cfg: EarthExperiment) -> TrainingProfile:
        """The training profile with the imagery's ground pixel size, chip footprint and file data type (scenes:
        the first scene's; tiles: the chip pixel size and the stored chips' type)."""
        footprint = _footprint_m(store, cfg)
        resolution = None if footprint is None else footprint / store.spec.out_px
        dtype = None
        if not cfg.data.tiles and cfg.earth.scenes:
            with open_scene(cfg.earth.scenes[0], cfg.earth.bands, cfg.earth.nodata) as scene:
                resolution, dtype = pixel_size_m(scene.crs, scene.res), str(scene.dtypes[0])
        return training_profile(store, trained, resolution, footprint, dtype)

    def outputs(self, trained: Trained, evaluation: Evaluation, store: ChipStore, cfg: EarthExperiment,
                bundle: Path) -> dict[str, Path]:
        """The map of the first scene (or the part under maps.target_grid) with the run's bundle."""
        cfg = self.prepare(cfg)
        if not cfg.maps_enabled:
            return {}
        target = cfg.data.targets[0]
        scenes = cfg.earth.scenes if cfg.maps.all_scenes else cfg.earth.scenes[:1]
        paths = map_scenes(bundle, scenes, cfg.out / "maps", cfg.maps.stride_px, cfg.maps.target_grid,
                           cfg.maps.batch_size, cfg.train.device, mapper=fanout.current(),
                           title=f"{cfg.name}: predicted {target}", style=map_style(cfg, evaluation.table),
                           points=survey_points(evaluation.table))
        if cfg.maps.aggregate_polygons:  # admin-level means of the map: aggregate_vector, _csv, _parquet
            paths |= aggregate(paths["map_tif"], cfg.maps.aggregate_polygons, cfg.out / "maps",
                               cfg.maps.aggregate_population).paths
        if cfg.maps.html:  # the held-out clusters over the map, areas when the map has aggregates
            table = evaluation.table
            held_out = table[table["split"] == "test"] if "split" in table.columns else table
            held_out = held_out if {LAT, LON} <= set(held_out.columns) else None  # tiles may have no coordinates
            areas = next((p for k, p in paths.items() if k.startswith("aggregate_") and p.suffix in VECTOR_SUFFIXES),
                         None)
            paths["map_html"] = write_webmap(paths["map_tif"], paths["map_tif"].with_suffix(".html"), held_out,
                                             areas, target, cfg.maps.units or "", f"{cfg.name}: predicted {target}")
        return paths

    def report_keys(self, cfg: EarthExperiment) -> list[str]:
        return ["test", "baseline", "baseline_nightlights", "baseline_gbm"]


def map_style(cfg: EarthExperiment, table: pd.DataFrame) -> MapsConfig:
    """maps.* with ``diverging`` decided: as configured, else diverging at 0 when the observed training target
    spans 0 (a centred index such as the DHS asset index), sequential otherwise."""
    target = cfg.data.targets[0] if cfg.data.targets else None
    if cfg.maps.diverging is not None or target not in table.columns:
        return cfg.maps
    observed = pd.to_numeric(table[target], errors="coerce").dropna()
    return cfg.maps.model_copy(update={"diverging": bool(len(observed)) and bool(observed.min() < 0 < observed.max())})


def survey_points(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """The survey clusters' (lon, lat) to draw on maps, when the table has coordinates."""
    if not {LAT, LON} <= set(table.columns):
        return None
    return table[LON].to_numpy(np.float64), table[LAT].to_numpy(np.float64)


def _synthetic(cfg: EarthExperiment) -> EarthExperiment:
    """data.format=synthetic_earth: generate (or reuse) the scene, night lights and clusters; point at them."""
    e = cfg.earth
    folder = Path(cfg.data.store_root).parent / "synthetic_earth" / \
        f"s{e.synthetic_size}_n{e.synthetic_clusters}_seed{e.synthetic_seed}"
    paths = make_scene(folder, size_px=e.synthetic_size, n_clusters=e.synthetic_clusters, seed=e.synthetic_seed)
    return derive(cfg, {"data.format": "survey", "data.catalog": str(paths["clusters"]),
                        "data.id_column": cfg.data.id_column or "cluster_id",
                        "data.targets": cfg.data.targets or ["wealth"],
                        "data.group_column": cfg.data.group_column or "country",
                        "earth.scenes": e.scenes or [str(paths["scene"])],
                        "earth.label_raster": e.label_raster or str(paths["nightlights"]),
                        "earth.urban_column": e.urban_column or "urban",
                        # the generated scene's countries and population: the map aggregated per country
                        "maps.aggregate_polygons": cfg.maps.aggregate_polygons or (
                            None if e.scenes else str(paths["countries"])),
                        "maps.aggregate_population": cfg.maps.aggregate_population or (
                            None if e.scenes else str(paths["population"])),
                        "maps.units": cfg.maps.units or "wealth index (0-1)"})


def _footprint_m(store: ChipStore, cfg: EarthExperiment) -> float | None:
    """Ground side of a chip in metres (None for tiles without a geotransform and no earth.chip_m)."""
    e = cfg.earth
    if e.chip_m is not None:
        return float(e.chip_m)
    if cfg.data.tiles:
        first = store.index.iloc[0]
        return tile_size_m(first[IMAGE], float(first[LAT]))
    with open_scene(e.scenes[0], e.bands, e.nodata) as scene:
        geographic = scene.crs is not None and scene.crs.is_geographic
        return float(e.chip_px) * abs(scene.res[1]) * (110_574.0 if geographic else 1.0)


def stage1_store(domain: EarthDomain, cfg: EarthExperiment, progress: bool = True) -> ChipStore:
    """Chips labelled by the night-light raster: random points of the first scene, or the cluster tiles."""
    spec = domain.chip_spec(cfg)
    labels = domain.labels(cfg, as_target=True)
    if cfg.earth.scenes:
        lon, lat = sample_points(spec, cfg.two_stage.stage1_chips, cfg.seed)
        frame = pd.DataFrame({ID: [f"s{i}" for i in range(len(lon))], LAT: lat, LON: lon})
        spec = ChipSpec.model_validate({**spec.model_dump(), "files": False, "per_sample": 1,
                                        "scenes": cfg.earth.scenes, "chip_px": cfg.earth.chip_px})
        catalog = Catalog(frame, [], "stage-1 chips sampled across " + cfg.earth.scenes[0])
    else:
        survey = domain.catalog(cfg)
        catalog = Catalog(survey.frame.drop(columns=survey.targets), [], survey.source)
    return build_store(catalog, spec, cfg.data.store_root, labels, progress,
                       shard_size=cfg.orchestration.ingest_shard_size)


def stage1_plan(cfg: EarthExperiment) -> CnnPlan:
    """Stage 1's CNN: the experiment's model and training settings on night-light classes (or values)."""
    task = "classification" if cfg.earth.label_classes else "regression"
    model = ModelConfig.model_validate({**cfg.model.model_dump(), "task": task, "sigmoid": False})
    return CnnPlan.of(cfg).stage(model, SplitConfig.model_validate({**STAGE1_SPLIT, "seed": cfg.split.seed}),
                                 cfg.out / "stage1")


def train_two_stage(domain: EarthDomain, store: ChipStore, cfg: EarthExperiment, run_id: str | None = None,
                    progress: bool = True) -> Trained:
    """Stage 1: the CNN learns night lights (classes or values) on chips of its own, in a child MLflow run.
    Stage 2: its encoder features (averaged over the test-time views and each cluster's chips) -> ridge, alpha
    chosen by grouped CV inside the training folds; every cluster scored once, out of fold."""
    store1 = stage1_store(domain, cfg, progress)
    plan = CnnPlan.of(cfg)
    plan1 = stage1_plan(cfg)
    model, task = plan1.fit.model, plan1.fit.model.task
    s1_run = None
    if run_id:
        params = {"stage": "1", "task": task, "chips": len(store1.index), "label": cfg.earth.label_name,
                  "label_classes": cfg.earth.label_classes, "backbone": model.backbone}
        s1_run = tracking.start_run(cfg, run_name=f"{cfg.name}-stage1", params=params, parent=run_id, task=task)
    try:
        stage1 = train_cnn(store1, plan1, s1_run, progress=progress)
        spec1, t1 = task_spec(task), Targets(store1.targets, store1.classes)
        y1 = spec1.target_array(store1.samples(), t1)
        validation_only = hooks.current().validation_only  # a search's trial: stage 1 scored on validation only
        s1_metrics = {} if validation_only else held_out_metrics(stage1, y1, spec1, t1)[0]
        s1_metrics.update(stage1.validation)
        if s1_run and not validation_only:
            scored = stage1.split == "test"
            plot = spec1.plot(y1[scored], stage1.pred[scored], t1, cfg.out / "stage1" / "plots")
            tracking.log_artifacts(s1_run, [plot], "plots")
        if s1_run:
            tracking.log_metrics(s1_run, s1_metrics)
    except BaseException:
        if s1_run:
            tracking.end_run(s1_run, "FAILED")
        raise
    features = Forward(stage1.net, plan.views, plan.device, output="features")
    x = store.sample_means(features(store.chips, batch_size=plan.batch_size, progress=progress,
                                    desc="stage 1 features"))
    stage1.net = features.release()
    samples = store.samples()
    target = cfg.data.targets[0]
    y = samples[target].to_numpy(float)
    groups = sample_groups(samples, cfg.split)
    folds = group_folds(groups, cfg.split.folds or 5, cfg.split.seed)
    nested = nested_ridge(x, y, groups, folds, cfg.two_stage.alphas, cfg.two_stage.inner_folds)
    ridge = Stage2Ridge.from_pipeline(fit_ridge(x, y, groups, cfg.two_stage.alphas, cfg.two_stage.inner_folds))
    extra = {f"stage1/{k}": v for k, v in s1_metrics.items()}
    extra.update({f"stage2/alpha/fold{k}": v for k, v in nested.alphas.items()})
    if not np.isfinite(nested.predictions).all():
        raise GeocnnError("stage 2: some clusters got no out-of-fold prediction; check split.folds")
    return Trained(net=stage1.net, pred=nested.predictions[:, None], split=np.full(len(samples), "test", object),
                   fold=folds, groups=groups,
                   validation={"validation/r2": float(np.mean(list(nested.inner_r2.values())))},
                   extra=extra, stage2=Stage2(target=target, **ridge.to_dict()), fits=stage1.fits,
                   stage1_run_id=s1_run)
