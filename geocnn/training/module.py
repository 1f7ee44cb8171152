"""GeoTask: the Lightning module that trains a GeoNet (loss, augmentation, optimiser, schedule, val metrics)."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from geocnn.data.augment import augment_batch
from geocnn.config import AugmentConfig, ModelConfig, OptimConfig
from geocnn.models.backbones import encoder_param_groups
from geocnn.models.losses import dirichlet_multinomial_nll
from geocnn.models.network import GeoNet

LOSS_BY_TASK = {"classification": "cross_entropy", "regression": "mse", "vote_fractions": "mse",
                "vote_counts": "dirichlet_multinomial"}


def resolve_loss(task: str, loss: str) -> str:
    """The loss for a task: 'auto' picks cross-entropy, MSE or Dirichlet-multinomial."""
    chosen = LOSS_BY_TASK[task] if loss == "auto" else loss
    allowed = {"classification": {"cross_entropy"}, "regression": {"mse", "huber"},
               "vote_fractions": {"mse", "huber"}, "vote_counts": {"dirichlet_multinomial"}}[task]
    if chosen not in allowed:
        from geocnn.errors import GeocnnError

        raise GeocnnError(f"model.loss={loss!r} does not fit model.task={task!r}; use one of {sorted(allowed)} or auto")
    return chosen


def build_optimizer(params: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named in the config over the given parameter groups."""
    wd = cfg.weight_decay
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=wd)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at an optimiser step: linear warm-up, then cosine, step or constant."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    total = max(epochs * steps_per_epoch - warm, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warm, total) / total))


class GeoTask(L.LightningModule):
    """Trains ``net``: augments normalised batches on the device, optimises the task loss, logs val metrics."""

    def __init__(self, net: GeoNet, model: ModelConfig, optim: OptimConfig, augment: AugmentConfig, epochs: int,
                 steps_per_epoch: int, class_weights: torch.Tensor | None = None, seed: int = 0) -> None:
        super().__init__()
        self.net = net
        self.model_cfg = model
        self.optim_cfg = optim
        self.augment_cfg = augment
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.loss_name = resolve_loss(net.spec.task, model.loss)
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0),
                             persistent=False)
        self.tree = net.spec.decision_tree() if net.spec.task in ("vote_fractions", "vote_counts") else None
        self.seed = seed
        self._gen: torch.Generator | None = None  # on the batches' device, made at the first step
        self._gen_state: torch.Tensor | None = None  # from a checkpoint being resumed
        self._forward = net.forward_normalised  # torch.compile'd by compile_forward(); weights stay shared
        self._val_out: list[torch.Tensor] = []
        self._val_y: list[torch.Tensor] = []

    def compile_forward(self) -> None:
        """Compile the training forward with torch.compile (the state dict keeps its plain names)."""
        self._forward = torch.compile(self.net.forward_normalised)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The configured loss of head outputs against targets."""
        out = out.float()
        if self.loss_name == "cross_entropy":
            w = self.class_weights if self.class_weights.numel() else None
            return F.cross_entropy(out, y, weight=w)
        if self.loss_name == "dirichlet_multinomial":
            assert self.tree is not None
            return dirichlet_multinomial_nll(y, out, self.tree)
        y = self.net.standardise_target(y)
        if self.loss_name == "huber":
            return F.huber_loss(out, y)
        return F.mse_loss(out, y)

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        # Dropout draws from the global generator, seeded by (seed, optimiser step); augmentation draws from one
        # stream whose state is saved in every checkpoint. A training resumed from a checkpoint therefore
        # continues exactly as one that never stopped.
        torch.manual_seed(self.seed * 1_000_003 + self.trainer.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._gen is not None:
            checkpoint["geocnn_augment_rng"] = self._gen.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._gen_state = checkpoint.get("geocnn_augment_rng")

    def _augment_generator(self, device: torch.device) -> torch.Generator:
        """The augmentation stream on the batches' device: seeded once, or restored from the checkpoint."""
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed + 17)
            if self._gen_state is not None:
                try:
                    self._gen.set_state(self._gen_state)
                except RuntimeError:  # saved on another kind of device: continue from the seed
                    pass
                self._gen_state = None
        return self._gen

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = augment_batch(self.net.normalise(x), self.augment_cfg, self._augment_generator(x.device))
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = self.loss(self._forward(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        out = self.net(x)
        self.log("val/loss", self.loss(out, y), on_step=False, on_epoch=True, batch_size=x.shape[0])
        self._val_out.append(self.net.to_prediction(out).detach())
        self._val_y.append(y.detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val_out:
            return
        pred, y = torch.cat(self._val_out), torch.cat(self._val_y)
        self._val_out, self._val_y = [], []
        if self.net.spec.task == "classification":
            self.log("val/accuracy", (pred.argmax(1) == y).float().mean())
        else:
            if self.net.spec.task == "vote_counts":
                from geocnn.models.losses import expected_fractions

                y = expected_fractions(y.float() + 1e-9, self.net.spec.decision_tree())
            self.log("val/rmse", torch.sqrt(F.mse_loss(pred.float(), y.float())))

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's union type
        cfg = self.optim_cfg
        decay = 1.0 if self.model_cfg.transfer == "from_scratch" else self.model_cfg.layer_decay
        groups = encoder_param_groups(self.net.encoder, cfg.lr, cfg.weight_decay, decay)
        head = [p for n, p in self.net.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
        groups.append({"params": head, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "head"})
        for g in groups:
            g["initial_lr"] = g["lr"]
        opt = build_optimizer(groups, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, self.steps_per_epoch, self.epochs, cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
