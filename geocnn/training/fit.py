"""Training: build the network for a split store, fit with Lightning (checkpoints, resume), keep the best weights."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from geocnn.config import ExperimentConfig
from geocnn.data.datamodule import ChipDataModule, resolve_workers, target_array
from geocnn.errors import GeocnnError
from geocnn.models.backbones import apply_transfer
from geocnn.models.network import GeoNet, NetSpec
from geocnn.training.module import GeoTask
from geocnn.inference.predict import pick_device
from geocnn.data.splits import SplitView

STATE = "train_state.json"


@dataclass
class FitResult:
    """The trained network (best validation checkpoint) and where its checkpoints are."""

    net: GeoNet
    best_checkpoint: Path
    epochs_run: int
    best_score: float | None
    resumed: bool
    resumed_at_epoch: int | None = None  # the first epoch trained after resuming (0-based)


def net_spec(view: SplitView, cfg: ExperimentConfig) -> NetSpec:
    """The network spec for a split store: bands from the store, normalisation from its train split."""
    store = view.store
    t_mean: list[float] = []
    t_std: list[float] = []
    if cfg.model.task == "regression" and not cfg.model.sigmoid:  # the head learns standardised targets
        y = target_array(view, "regression")[view.rows("train")].astype(np.float64)
        t_mean = y.mean(0).tolist()
        t_std = np.where(y.std(0) > 1e-12, y.std(0), 1.0).tolist()
    return NetSpec(backbone=cfg.model.backbone, in_chans=int(store.meta["shape"][1]), task=cfg.model.task,
                   targets=store.targets, classes=store.classes, mean=view.mean, std=view.std,
                   dropout=cfg.model.dropout, sigmoid=cfg.model.sigmoid, tree=cfg.model.tree,
                   target_mean=t_mean, target_std=t_std)


def class_weights(view: SplitView, cfg: ExperimentConfig) -> torch.Tensor | None:
    """Per-class loss weights: as configured, or 'balanced' from train frequencies."""
    cw = cfg.model.class_weights
    if cw is None or cfg.model.task != "classification":
        return None
    k = len(view.store.classes)
    if cw == "balanced":
        counts = np.bincount(target_array(view, "classification")[view.rows("train")], minlength=k)
        return torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32)
    if len(cw) != k:
        raise GeocnnError(f"model.class_weights has {len(cw)} values but there are {k} classes "
                          f"{view.store.classes}; give one weight per class or 'balanced'")
    return torch.tensor(cw, dtype=torch.float32)


def read_state(out: Path) -> dict:
    """The output folder's training state (run id, whether training completed)."""
    path = out / STATE
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(out: Path, **values: object) -> None:
    """Update the training state file."""
    state = read_state(out) | values
    out.mkdir(parents=True, exist_ok=True)
    (out / STATE).write_text(json.dumps(state, indent=2))


def config_key(cfg: ExperimentConfig) -> str:
    """A hash of the resolved config: only a rerun of the same command resumes an interrupted training."""
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def same_command(cfg: ExperimentConfig) -> bool:
    """Whether output_dir's state was written by this config (or predates config keys)."""
    return read_state(cfg.out).get("config") in (None, config_key(cfg))


def resume_checkpoint(cfg: ExperimentConfig) -> Path | None:
    """The last checkpoint of an unfinished training of this config in output_dir, when resuming is on."""
    last = cfg.out / "checkpoints" / "last.ckpt"
    if cfg.train.resume and last.exists() and not read_state(cfg.out).get("complete", False) and same_command(cfg):
        return last
    return None


def checkpoint_epoch(path: Path) -> int:
    """The last completed epoch (0-based) stored in a Lightning checkpoint (memory-mapped, weights not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def fit(view: SplitView, cfg: ExperimentConfig, callbacks: list[L.Callback] | None = None,
        progress: bool = True) -> FitResult:
    """Train on the train split, choose the best epoch on validation, never touch test.

    Resumes from ``output_dir/checkpoints/last.ckpt`` when an earlier training there did not complete.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if len(view.rows("val")) == 0:
        raise GeocnnError("split: the validation partition is empty; set split.val_fraction > 0 (model selection "
                          "uses validation, never test)")
    spec = net_spec(view, cfg)
    weights = "random" if cfg.model.transfer == "from_scratch" else cfg.model.weights
    net = GeoNet(spec, weights)
    apply_transfer(net.encoder, cfg.model.transfer, cfg.model.n_blocks)
    device = pick_device(cfg.train.device)
    dm = ChipDataModule(view, spec.task, cfg.train.batch_size, cfg.train.eval_batch_size,
                        resolve_workers(cfg.train.num_workers, device),
                        seed=cfg.seed, pin_memory=device.type == "cuda")
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)  # batches are made channels-last in the training step
    task = GeoTask(net, cfg.model, cfg.train.optimizer, cfg.augment, cfg.train.epochs, dm.steps_per_epoch(),
                   class_weights(view, cfg), seed=cfg.seed)
    if cfg.train.compile:
        task.compile_forward()
    monitor, mode = cfg.train.monitor_metric, cfg.train.monitor_direction
    ckpt_dir = cfg.out / "checkpoints"
    # Saved at the end of the training epoch, after the epoch's metrics reached MLflow (Lightning runs
    # checkpoint callbacks last), so a resumed run never misses an epoch in its metric history.
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_last=True,
                           save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)
    cbs: list[L.Callback] = [best, *(callbacks or [])]
    if cfg.train.early_stopping_patience:
        cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.train.early_stopping_patience))
    resume = resume_checkpoint(cfg)
    resumed_at = checkpoint_epoch(resume) + 1 if resume else None
    if resume is None and ckpt_dir.exists():
        for old in ckpt_dir.glob("*.ckpt"):
            old.unlink()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs, accelerator=device.type, devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true", gradient_clip_val=cfg.train.grad_clip,
        callbacks=cbs, logger=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, default_root_dir=str(cfg.out), deterministic=False,
        limit_train_batches=cfg.train.limit_train_batches, log_every_n_steps=1)
    write_state(cfg.out, complete=False, config=config_key(cfg))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        trainer.fit(task, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
    best_path = Path(best.best_model_path or ckpt_dir / "last.ckpt")
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    net.eval()
    score = float(best.best_model_score) if best.best_model_score is not None else None
    write_state(cfg.out, complete=True, best_epoch_score=score)
    return FitResult(net=net.cpu(), best_checkpoint=best_path, epochs_run=trainer.current_epoch, best_score=score,
                     resumed=resume is not None, resumed_at_epoch=resumed_at)
