"""Experiment configuration: pydantic models (typos are errors), YAML loading, dotted-key overrides."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from geocnn.errors import GeocnnError

DATA_ENV = "GEOCNN_SHARED_DATA"
"""Environment variable pointing at the real sample data; defaults to ../shared/data beside the project."""


class Strict(BaseModel):
    """Base model: unknown keys are errors, not silent defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _null_sections(cls, data: Any) -> Any:
        """A section left empty in YAML (all keys commented out) means 'all defaults'."""
        if isinstance(data, dict):
            return {k: ({} if v is None and k in cls.model_fields and _is_section(cls, k) else v)
                    for k, v in data.items()}
        return data


class DataConfig(Strict):
    """Where the images and labels come from, and how they are cut into chips."""

    format: Literal["kaggle", "zoobot", "folders", "csv", "synthetic", "survey", "synthetic_earth"] = Field(
        "csv", description="Reader: kaggle (GalaxyID + Class1.1..Class11.6), zoobot (GZ DECaLS id_str/iauname + "
        "vote columns), folders (one subfolder per class), csv (any id/file/target columns), synthetic (generated "
        "galaxies); Earth: survey (points from CSV/Parquet/GeoJSON + the rasters of the 'earth' section), "
        "synthetic_earth (a generated scene, night lights and survey clusters).")
    catalog: str | None = Field(None, description="Catalog file (CSV/Parquet); not used by 'folders'/'synthetic'.")
    images: str | None = Field(None, description="Image folder; relative file paths in the catalog resolve "
                               "against it (default: the catalog's folder).")
    id_column: str | None = Field(None, description="Id column (default per format: GalaxyID, id_str/iauname, id).")
    file_column: str | None = Field(None, description="Image path column; if absent, images are found by id "
                                    "(<id>.jpg/.png/.fits anywhere under 'images').")
    targets: list[str] = Field(default_factory=list, description="Target columns, in output order "
                               "(kaggle: all 37 by default; folders: the class label).")
    group_column: str | None = Field(None, description="Optional group column (kept for grouped splits).")
    crop: int = Field(207, gt=0, description="Centre crop in pixels before resizing (Dieleman et al.: 207 of 424).")
    chip_size: int = Field(64, gt=0, description="Side of the stored chip in pixels after resizing.")
    channels: Literal["rgb", "gray"] = Field("rgb", description="Read images as 3-band RGB or 1-band grayscale.")
    synthetic_count: int = Field(1000, gt=0, description="Number of generated galaxies (format 'synthetic').")
    synthetic_size: int = Field(128, gt=0, description="Side in pixels of generated galaxies (format 'synthetic').")
    synthetic_seed: int = Field(0, description="Seed of the generated galaxies (format 'synthetic'); independent of "
                                "the model seed, so model seeds can vary on the same data.")
    store_root: str = Field("data/stores", description="Folder holding chip stores (reused across runs).")
    allow_outside_root: bool = Field(False, description="Let catalog image paths point outside data.images and "
                                     "the catalog's folder (off: a path like ../../x or an absolute path elsewhere "
                                     "is refused).")


class EarthConfig(Strict):
    """Earth imagery: scenes, extra raster layers, chips around survey points, night-light label rasters."""

    scenes: list[str] = Field(default_factory=list, description="GeoTIFF scenes (several = one mosaic); a path "
                              "containing '{band}' stacks one file per band in the order of 'bands'.")
    bands: list[str] | None = Field(None, description="Bands to read: names (descriptions or the {band} tokens) or "
                                    "1-based indices; default all.")
    nodata: float | None = Field(None, description="Nodata value of the scenes (default: from the files).")
    layers: list[str] = Field(default_factory=list, description="Extra single- or multi-band rasters (any grid/CRS) "
                              "appended as bands, read over the same ground box as the scene chip (e.g. WorldClim).")
    lat_column: str = Field("lat", description="Latitude column (EPSG:4326) of the survey points.")
    lon_column: str = Field("lon", description="Longitude column (EPSG:4326) of the survey points.")
    urban_column: str | None = Field(None, description="Urban/rural column, for the worse-of-urban/rural metric.")
    weight_column: str | None = Field(None, description="Survey weight column (kept in the index).")
    chip_m: float | None = Field(None, gt=0, description="Chip footprint in metres (else chip_px).")
    chip_px: int | None = Field(None, gt=0, description="Chip footprint in native pixels of the first scene.")
    max_nodata_fraction: float = Field(0.5, ge=0, le=1, description="Drop chips with more nodata than this "
                                       "(counted in the ingest report).")
    chips_per_cluster: int = Field(1, gt=0, description="n: an n x n grid of chips over 'cluster_box_m' around each "
                                   "point (Jean et al.); features/predictions are averaged per cluster.")
    cluster_box_m: float = Field(10000.0, gt=0, description="Side in metres of the box the chip grid covers.")
    label_raster: str | None = Field(None, description="Label raster (night lights): a per-chip statistic becomes "
                                     "the target 'label_name'.")
    label_name: str = Field("nightlights", description="Name of the target computed from label_raster.")
    label_statistic: Literal["mean", "median", "max"] = Field("mean", description="Statistic of the label raster "
                                                               "over the chip footprint.")
    label_classes: Literal["quantiles", "gmm"] | None = Field(None, description="Turn the label statistic into "
                                                               "classes (Jean et al.: 3 night-light classes by GMM).")
    n_label_classes: int = Field(3, ge=2, description="Number of label classes.")
    baseline_raster: str | None = Field(None, description="Night-light raster for the gradient-boosting baseline "
                                        "(mean night light around each cluster at baseline_radii_px).")
    baseline_radii_px: list[int] = Field(default_factory=lambda: [1, 3, 7, 15], description="Window sides in "
                                         "native pixels of baseline_raster for the baseline's features.")
    synthetic_size: int = Field(1024, gt=0, description="synthetic_earth: scene side in pixels.")
    synthetic_clusters: int = Field(300, gt=0, description="synthetic_earth: number of survey clusters.")
    synthetic_seed: int = Field(0, description="synthetic_earth: generator seed.")

    @model_validator(mode="after")
    def _footprint(self) -> "EarthConfig":
        if self.chip_m is not None and self.chip_px is not None:
            raise ValueError("set only one of chip_m (metres) and chip_px (native pixels)")
        return self


class MapsConfig(Strict):
    """Wall-to-wall prediction maps over the first scene (sliding windows, streamed)."""

    enabled: bool = Field(True, description="Write a prediction map (GeoTIFF + PNG) of the first scene.")
    stride_px: int | None = Field(None, gt=0, description="Window stride in native scene pixels (default: half "
                                  "the chip footprint; overlaps are averaged).")
    target_grid: str | None = Field(None, description="Write on the grid (CRS, transform, shape) of this raster, "
                                    "e.g. a published map, and predict only the scene area it covers.")
    batch_size: int = Field(128, gt=0, description="Windows per model batch.")


class TwoStageConfig(Strict):
    """Jean et al. 2016: CNN on night lights over many chips, then ridge on cluster-averaged features."""

    enabled: bool = Field(False, description="Run the two-stage model (else the CNN regresses the targets directly).")
    stage1_chips: int = Field(3000, gt=0, description="Chips sampled across the scenes to train stage 1 on the "
                              "label raster (night lights).")
    alphas: list[float] = Field(default_factory=lambda: [10.0 ** k for k in range(-3, 5)],
                                description="Ridge alphas searched inside the training folds.")
    inner_folds: int = Field(4, ge=2, description="Inner grouped CV folds choosing alpha.")


class SplitConfig(Strict):
    """Train/val/test assignment, deterministic for a seed."""

    method: Literal["random", "stratified", "grouped", "blocks"] = Field(
        "random", description="random; stratified on 'stratify_column'; grouped keeps each group in one split; "
        "blocks groups points into square spatial blocks of block_km.")
    block_km: float = Field(50.0, gt=0, description="blocks: block side in km.")
    folds: int | Literal["groups"] | None = Field(
        None, description="Grouped cross-validation: k folds of groups (or blocks), each the test set once, the "
        "union of out-of-fold predictions scored; 'groups' = leave one group out (e.g. out of country).")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="Fraction of samples in validation.")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of samples in test.")
    stratify_column: str | None = Field(None, description="Class column for stratified splits (default: the "
                                        "classification target).")
    group_column: str | None = Field(None, description="Group column for grouped splits.")
    seed: int = Field(0, description="Seed of the split; the same seed gives the same split.")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1 so that some samples remain for training")
        if isinstance(self.folds, int) and self.folds < 2:
            raise ValueError("folds must be at least 2 (or 'groups' for leave-one-group-out, or null for one split)")
        return self


class ModelConfig(Strict):
    """The network: a timm encoder, a head, and how its weights start and which of them train."""

    backbone: str = Field("resnet18", description="Any timm model name (timm.list_models()).")
    task: Literal["classification", "regression", "vote_fractions", "vote_counts"] = Field(
        "classification", description="classification (cross-entropy), regression (MSE/Huber), vote_fractions "
        "(Galaxy Zoo decision-tree head, Dieleman et al. 2015), vote_counts (Dirichlet-multinomial, Zoobot).")
    weights: str = Field("random", description="'random', 'timm' (timm pretrained: needs a network), or a path "
                         "to a local .safetensors/.pth state dict.")
    transfer: Literal["from_scratch", "linear_probe", "partial", "full"] = Field(
        "full", description="from_scratch (random init, all trained), linear_probe (encoder frozen), partial "
        "(last n_blocks unfrozen, layer-wise lr decay), full (all trained).")
    n_blocks: int = Field(2, ge=0, description="partial: number of last encoder blocks to unfreeze.")
    layer_decay: float = Field(0.75, gt=0, le=1, description="partial/full: lr multiplier per block going down "
                               "(1 = no decay).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the head.")
    loss: Literal["auto", "mse", "huber", "cross_entropy", "dirichlet_multinomial"] = Field(
        "auto", description="auto picks per task: cross_entropy, mse, mse (fractions), dirichlet_multinomial.")
    sigmoid: bool = Field(False, description="regression: squash outputs to [0, 1] (vote fractions).")
    class_weights: list[float] | Literal["balanced"] | None = Field(
        None, description="classification: per-class loss weights, or 'balanced' (inverse train frequency).")
    tree: Literal["kaggle"] = Field("kaggle", description="vote_fractions: the decision tree of the targets.")


class OptimConfig(Strict):
    """Optimiser and learning-rate schedule."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = Field("adamw", description="Optimiser.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay (L2 for sgd/adam/rmsprop/adagrad).")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd/rmsprop momentum.")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum.")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="LR schedule after warm-up.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length in epochs.")
    step_size: int = Field(10, gt=0, description="step schedule: epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: decay factor.")


class AugmentConfig(Strict):
    """Batch augmentation on tensors (train) and test-time augmentation (evaluation/prediction)."""

    rotate: bool = Field(True, description="Random rotation 0-360 degrees.")
    flip: bool = Field(True, description="Random horizontal/vertical flips.")
    rot90: bool = Field(False, description="Random multiples of 90 degrees (exact, no resampling); with flip this "
                        "gives the 8 dihedral views used for overhead imagery (set rotate: false).")
    band_brightness: float = Field(0.0, ge=0, lt=1, description="Max relative brightness change per band "
                                   "(overhead imagery).")
    translate: float = Field(0.05, ge=0, le=0.5, description="Max shift as a fraction of the chip side.")
    zoom: float = Field(0.1, ge=0, lt=1, description="Max zoom in/out as a fraction (log-uniform scale).")
    brightness: float = Field(0.1, ge=0, lt=1, description="Max relative brightness change.")
    tta_views: int = Field(8, ge=1, description="Test-time views averaged: 1, 2, 4, 8 = dihedral flips/rot90; "
                           "other n = n rotations by 360/n degrees.")


class TrainConfig(Strict):
    """Training loop settings."""

    epochs: int = Field(20, gt=0, description="Maximum epochs.")
    batch_size: int = Field(64, gt=0, description="Training batch size.")
    eval_batch_size: int = Field(128, gt=0, description="Batch size for validation, test and prediction.")
    optimizer: OptimConfig = Field(default_factory=OptimConfig)
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    early_stopping_patience: int | None = Field(None, gt=0, description="Stop after this many epochs without "
                                                "validation improvement.")
    monitor: str | None = Field(None, description="Validation metric for checkpoint choice and early stopping "
                                "(default: val/loss).")
    monitor_mode: Literal["auto", "min", "max"] = Field(
        "auto", description="Whether the monitored metric improves down or up; auto: max for accuracy, "
        "balanced_accuracy, auc, r2 and pearson metrics, min otherwise.")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes. auto = none on CPU (a batch is one memory-mapped read, "
        "far cheaper than a step, and workers would take the model's cores), up to 4 on CUDA (reads overlap the GPU).")
    num_threads: int | None = Field(None, gt=0, description="CPU threads for torch (default: torch's choice).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present, else CPU.")
    resume: bool = Field(True, description="Resume from the last checkpoint in output_dir if one exists.")
    compile: bool = Field(False, description="torch.compile the network's training forward (worth it on a GPU "
                          "for long runs; the first steps pay the compilation).")
    limit_train_batches: float | int | None = Field(None, description="Debug: cap on batches per epoch.")


    @property
    def monitor_metric(self) -> str:
        """The monitored validation metric (default val/loss)."""
        return self.monitor or "val/loss"

    @property
    def monitor_direction(self) -> Literal["min", "max"]:
        """min or max for the monitored metric, inferring 'auto' from its name."""
        if self.monitor_mode != "auto":
            return self.monitor_mode
        leaf = self.monitor_metric.rsplit("/", 1)[-1]
        return "max" if any(k in leaf for k in ("accuracy", "auc", "r2", "pearson")) else "min"


class TrackingConfig(Strict):
    """MLflow tracking, the model registry, and champion promotion."""

    enabled: bool = Field(True, description="Log the run to MLflow.")
    tracking_uri: str | None = Field(None, description="MLflow URI (default: $MLFLOW_TRACKING_URI, else SQLite "
                                     "at data/mlflow/mlflow.db).")
    experiment: str = Field("geocnn", description="MLflow experiment name.")
    register_model: bool = Field(True, description="Register every trained model as a new version.")
    registered_model: str | None = Field(None, description="Registered model name (default: the experiment name).")
    alias: str = Field("champion", description="The alias promotion manages; predictions use models:/NAME@alias.")
    promotion: Literal["if_better", "always", "never"] = Field(
        "if_better", description="if_better: move the alias to the new version only if it beats the current one on "
        "promotion_metric over the same split definition; always; never (register only).")
    promotion_metric: str | None = Field(None, description="Validation metric deciding promotion (default: "
                                         "validation/accuracy for classification, validation/rmse for regression "
                                         "and vote fractions, validation/r2 for Earth runs). Never a test metric.")
    promotion_mode: Literal["auto", "min", "max"] = Field("auto", description="Whether promotion_metric improves "
                                                          "down or up (auto: from its name, as train.monitor_mode).")
    min_common_rows: int = Field(20, gt=0, description="When the split definitions differ (data grew), compare the "
                                 "champion and the new model on the validation rows neither trained on; promote "
                                 "only if there are at least this many.")

    def model_name(self, experiment_name: str) -> str | None:
        """The registered model name, or None when registration is off."""
        return (self.registered_model or experiment_name) if self.register_model else None


class ScheduleConfig(Strict):
    """Unattended runs: `geocnn serve` schedules retraining and watch-folder prediction."""

    retrain_cron: str | None = Field(None, description="Cron schedule of retraining (e.g. '0 3 * * 0'); none: "
                                     "no retraining deployment.")
    predict_cron: str | None = Field(None, description="Cron schedule of watch-folder prediction (e.g. '*/15 * * * "
                                     "*'); none: no prediction deployment.")
    timezone: str = Field("UTC", description="Time zone of the cron schedules.")
    input_dir: str = Field("data/inbox/{name}", description="Watch folder: new images (galaxy) or scenes (Earth) "
                           "arrive here. '{name}' expands to the experiment name.")
    output_dir: str = Field("data/predictions/{name}", description="Where batch predictions, maps and the ledger "
                            "of processed files go.")
    model: str | None = Field(None, description="Model to predict with (default: models:/NAME@champion of this "
                              "experiment; a bundle folder works too).")
    patterns: list[str] = Field(default_factory=list, description="File patterns picked up (default: images "
                                "*.jpg *.jpeg *.png *.fits for galaxies, *.tif *.tiff for Earth).")
    min_age_s: float = Field(2.0, ge=0, description="Skip files modified in the last seconds (still being copied).")
    max_attempts: int = Field(3, gt=0, description="A failing file is retried on later runs up to this many times.")

class ExperimentConfig(Strict):
    """One experiment: data -> split -> model -> training -> evaluation -> exports."""

    name: str = Field("experiment", description="Experiment/run name.")
    seed: int = Field(0, description="Seed for weights init, augmentation and data order.")
    output_dir: str = Field("data/runs/{name}", description="Outputs: checkpoints, bundle, metrics.json, "
                            "predictions, plots. '{name}' expands to the experiment name.")
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    earth: EarthConfig = Field(default_factory=EarthConfig)
    two_stage: TwoStageConfig = Field(default_factory=TwoStageConfig)
    maps: MapsConfig = Field(default_factory=MapsConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @property
    def out(self) -> Path:
        """The resolved output directory."""
        return Path(self.output_dir.format(name=self.name))


def _is_section(model: type[BaseModel], key: str) -> bool:
    annotation = model.model_fields[key].annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_ENV = re.compile(r"\$\{(\w+)(?::-([^${}]*))?\}")


def shared_data_default() -> str:
    """Default of ${GEOCNN_SHARED_DATA}: ../shared/data beside the project root."""
    return str((Path(__file__).resolve().parents[3] / "shared" / "data"))


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (defaults may nest); GEOCNN_SHARED_DATA defaults to ../shared/data."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name == DATA_ENV and default is None:
            default = shared_data_default()
        value = os.environ.get(name, default)
        if value is None:
            raise GeocnnError(f"environment variable ${{{name}}} used in the config is not set; set it or write "
                              f"${{{name}:-default}}")
        return value

    while True:  # innermost first, so ${A:-${B}} works
        expanded = _ENV.sub(sub, text)
        if expanded == text:
            return expanded
        text = expanded


def expand_tree(node: Any) -> Any:
    """Expand ``${VAR}`` in every string of a parsed YAML tree (after parsing, so values cannot break YAML)."""
    if isinstance(node, dict):
        return {k: expand_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_tree(v) for v in node]
    return expand_env(node) if isinstance(node, str) else node


def _parse_value(raw: str) -> Any:
    return expand_tree(yaml.safe_load(raw)) if raw != "" else ""


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise GeocnnError(f"override {item!r} must look like key.sub=value (e.g. train.epochs=5)")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            nxt = node[p]
            if not isinstance(nxt, dict):
                raise GeocnnError(f"override {item!r}: '{p}' is a value, not a section")
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return tree


def _format_validation(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}' (a typo? see the config reference in README.md)")
        else:
            lines.append(f"key '{key}': {e['msg']}")
    return f"{source}: invalid config:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load a YAML config (or ``base``), expand ``${ENV}``, apply dotted overrides, validate."""
    tree: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.exists():
            raise GeocnnError(f"config file {p} does not exist; see configs/ for examples")
        try:
            loaded = expand_tree(yaml.safe_load(p.read_text()))
        except yaml.YAMLError as exc:
            raise GeocnnError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise GeocnnError(f"{p}: the top level must be a mapping of keys (name:, data:, model:, ...)")
        tree.update(loaded)
    tree = apply_overrides(tree, overrides or [])
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise GeocnnError(_format_validation(err, source)) from None


def flatten(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a config into ``a.b.c -> value`` pairs (for MLflow params)."""
    tree = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
