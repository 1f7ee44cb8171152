"""Fitting: build the network for a split store and train it with Lightning (checkpoints, resume, best epoch)."""

from __future__ import annotations

import logging
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from geocnn.config import AnyExperiment, AugmentConfig, ModelConfig, TrainConfig
from geocnn.data.datamodule import ChipDataModule, resolve_workers
from geocnn.data.splits import SplitView
from geocnn.errors import GeocnnError, Interrupted
from geocnn.inference.predict import pick_device
from geocnn.models.backbones import apply_transfer
from geocnn.models.network import GeoNet, NetSpec
from geocnn.models.start import resolve_start
from geocnn.models.weights import LoadReport, load_weights, weights_normalisation
from geocnn.training import hooks
from geocnn.training.module import GeoTask
from geocnn.training.progress import EpochLines, bars_show
from geocnn.training.ranks import is_global_zero
from geocnn.training.resume import checkpoint_epoch, content_key, resume_checkpoint, write_state


@dataclass(frozen=True)
class FitSpec:
    """What one training needs: the model, training and augmentation settings, the seed, and where it writes."""

    model: ModelConfig
    train: TrainConfig
    augment: AugmentConfig
    seed: int
    out: Path
    """Checkpoints (``out/checkpoints``) and the resume state file go here."""

    @classmethod
    def of(cls, cfg: AnyExperiment, out: Path | None = None) -> "FitSpec":
        """The fit of an experiment (into its output_dir, or ``out``: a fold's or a stage's subfolder)."""
        return cls(cfg.model, cfg.train, cfg.augment, cfg.seed, Path(out or cfg.out))

    def key(self, view: SplitView) -> str:
        """Hash of the fit's inputs: only the same settings on the same chips and split resume a checkpoint."""
        return content_key({"model": self.model.model_dump(), "train": self.train.model_dump(),
                            "augment": self.augment.model_dump(), "seed": self.seed, "split": view.key,
                            "store": view.store.meta["key"]})


@dataclass
class FitResult:
    """The trained network (best validation checkpoint) and where its checkpoints are."""

    net: GeoNet
    best_checkpoint: Path
    epochs_run: int
    best_score: float | None
    resumed: bool
    resumed_at_epoch: int | None = None  # the first epoch trained after resuming (0-based)
    weights: LoadReport | None = None
    """How the encoder started (source, checksum, tensor counts, band matching, normalisation)."""


def net_spec(view: SplitView, fs: FitSpec, backbone: str | None = None) -> NetSpec:
    """The network spec for a split store: bands from the store, normalisation and target scale from its train split."""
    store = view.store
    spec = NetSpec(backbone=backbone or fs.model.backbone, in_chans=int(store.meta["shape"][1]), task=fs.model.task,
                   targets=store.targets, classes=store.classes, mean=view.mean, std=view.std,
                   dropout=fs.model.dropout, sigmoid=fs.model.sigmoid, tree=fs.model.tree)
    task, targets = spec.task_spec, spec.target_info
    if task.standardises(targets):  # the head learns standardised targets
        y = task.target_array(store.index, targets)[view.rows("train")].astype(np.float64)
        spec.target_mean = y.mean(0).tolist()
        spec.target_std = np.where(y.std(0) > 1e-12, y.std(0), 1.0).tolist()
    return spec


def fit(view: SplitView, fs: FitSpec, callbacks: list[L.Callback] | None = None,
        progress: bool = True) -> FitResult:
    """Train on the train split, choose the best epoch on validation, never touch test.

    Resumes from ``fs.out/checkpoints/last.ckpt`` when an earlier training with the same inputs did not complete
    (batches are seeded by epoch, dropout by step, and the augmentation stream's state is in the checkpoint, so
    the resumed training ends where an uninterrupted one would).

    Data-parallel with ``train.devices``/``strategy``/``num_nodes`` (see :func:`trainer_for`): every rank calls
    this with the same arguments; only global rank 0 writes the state file and checkpoints, and every rank returns
    the same best network.
    """
    zero = is_global_zero()
    L.seed_everything(fs.seed, workers=True, verbose=False)
    if fs.train.num_threads:
        torch.set_num_threads(fs.train.num_threads)
    if len(view.rows("val")) == 0:
        raise GeocnnError("split: the validation partition is empty; set split.val_fraction > 0 (model selection "
                          "uses validation, never test)")
    net, report = start_network(view, fs)
    spec = net.spec
    apply_transfer(net.encoder, fs.model.transfer, fs.model.n_blocks)
    device = pick_device(fs.train.device)
    y = net.task.target_array(view.store.index, spec.target_info)
    dm = ChipDataModule(view, y, fs.train.batch_size, fs.train.eval_batch_size,
                        resolve_workers(fs.train.num_workers, device), seed=fs.seed,
                        pin_memory=device.type == "cuda")
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)  # batches are made channels-last in the training step
    weights_per_class = net.task.class_weights(fs.model.class_weights, y[view.rows("train")], spec.target_info)
    monitor, mode = fs.train.monitor_metric, fs.train.monitor_direction
    task = GeoTask(net, fs.model, fs.train.optimizer, fs.augment, fs.train.epochs, dm.steps_per_epoch(),
                   weights_per_class, seed=fs.seed, monitor=monitor, val_size=dm.val_size)
    if fs.train.compile:
        task.compile_forward()
    ckpt_dir = fs.out / "checkpoints"
    # Saved at the end of the training epoch, after the epoch's metrics reached MLflow (Lightning runs
    # checkpoint callbacks last), so a resumed run never misses an epoch in its metric history.
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_last=True,
                           save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)
    cbs: list[L.Callback] = [best, *(callbacks or []), *hooks.current().next_callbacks()]
    bars = progress and bars_show()
    if progress and not bars and zero:  # a log file or a pipe: one line per epoch instead of bars
        cbs.append(EpochLines(monitor))
    if fs.train.early_stopping_patience:
        cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=fs.train.early_stopping_patience))
    key = fs.key(view)
    resume = resume_checkpoint(fs.out, key, fs.train.resume)
    resumed_at = checkpoint_epoch(resume) + 1 if resume else None
    if resume is None and ckpt_dir.exists() and zero:
        for old in ckpt_dir.glob("*.ckpt"):
            old.unlink(missing_ok=True)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trainer = trainer_for(fs.train, device, cbs, bars, fs.out)
    check_global_batch(fs.train.batch_size, trainer.world_size)
    if zero:
        write_state(fs.out, complete=False, fit_key=key)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # val metrics are computed from every rank's gathered outputs: the same value on each, nothing to reduce
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        # Lightning's all_gather calls a torch API torch deprecated; a 1-channel stem's weight has a stride DDP's
        # bucket reports (a size-1 dimension: the same memory order, nothing to fix)
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
        warnings.filterwarnings("ignore", message=".*Grad strides do not match bucket view strides.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        # Lightning's own use of a torch pytree API torch deprecated: not ours to fix, nothing for a user to do
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        try:
            trainer.fit(task, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
        except SystemExit:  # Lightning turns Ctrl-C into a graceful shutdown and sys.exit(1)
            if not trainer.interrupted:
                raise
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C
            raise Interrupted(trainer.current_epoch) from None
    best_path = Path(best.best_model_path or ckpt_dir / "last.ckpt")
    if zero or best_path.exists():  # other ranks without the shared folder keep the (DDP-identical) last weights
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    net.eval()
    score = float(best.best_model_score) if best.best_model_score is not None else None
    if zero:
        write_state(fs.out, complete=True, best_epoch_score=score)
    return FitResult(net=net.cpu(), best_checkpoint=best_path, epochs_run=trainer.current_epoch, best_score=score,
                     resumed=resume is not None, resumed_at_epoch=resumed_at, weights=report)


def start_network(view: SplitView, fs: FitSpec) -> tuple[GeoNet, LoadReport]:
    """The network before training: its encoder started from model.weights (bands matched by name, strict counts),
    normalised with the weights' own statistics when they define them for these chips, else the train split's."""
    arch, found = resolve_start(fs.model)
    spec = net_spec(view, fs, arch)
    net = GeoNet(spec)
    store = view.store
    report = load_weights(net.encoder, found, store.bands, fs.model.weights_partial, fs.model.band_match)
    norm = weights_normalisation(found, store.bands, str(store.meta["dtype"]), report, fs.model.normalise)
    if norm is not None:
        net.set_normalisation(*norm)
    return net, report


def trainer_for(train: TrainConfig, device: torch.device, callbacks: list[L.Callback], bars: bool,
                root: Path) -> L.Trainer:
    """The Lightning Trainer of ``train``: devices, strategy and nodes as configured (DDP over gloo on CPU, NCCL
    with synchronised batch norm on CUDA); our samplers shard the batches by rank (no DistributedSampler)."""
    if train.devices == "auto":
        per_node = torch.cuda.device_count() if device.type == "cuda" else 1
    else:
        per_node = len(train.devices) if isinstance(train.devices, list) else train.devices
    parallel = per_node * train.num_nodes > 1
    try:
        return L.Trainer(
            max_epochs=train.epochs, accelerator=device.type, devices=train.devices, strategy=train.strategy,
            num_nodes=train.num_nodes, use_distributed_sampler=False,
            sync_batchnorm=parallel and device.type == "cuda" and train.strategy != "fsdp",
            precision="bf16-mixed" if device.type == "cuda" else "32-true", gradient_clip_val=train.grad_clip,
            callbacks=callbacks, logger=False, enable_model_summary=False, enable_progress_bar=bars,
            num_sanity_val_steps=0, default_root_dir=str(root), deterministic=False,
            limit_train_batches=train.limit_train_batches, log_every_n_steps=1)
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        raise GeocnnError(f"train.devices={train.devices!r}, train.strategy={train.strategy!r}, train.num_nodes="
                          f"{train.num_nodes} on {device.type}: {exc}") from None


def check_global_batch(batch_size: int, world: int) -> None:
    """``train.batch_size`` is the global batch: it must split evenly over the data-parallel processes."""
    if batch_size % world:
        raise GeocnnError(f"train.batch_size={batch_size} is the global batch, split over {world} processes "
                          f"(train.devices x train.num_nodes); set it to a multiple of {world}")
