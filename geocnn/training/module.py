"""GeoTask: the Lightning module that trains a GeoNet (task loss, batch augmentation, optimiser groups, val metrics)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from geocnn.config import AugmentConfig, ModelConfig, OptimConfig
from geocnn.data.augment import augment_batch
from geocnn.inference.predict import forward_views
from geocnn.models.backbones import encoder_param_groups
from geocnn.models.network import GeoNet
from geocnn.training.optim import build_optimizer, lr_factor


class GeoTask(L.LightningModule):
    """Trains ``net``: augments normalised batches on the device, optimises the task loss, logs val metrics."""

    def __init__(self, net: GeoNet, model: ModelConfig, optim: OptimConfig, augment: AugmentConfig, epochs: int,
                 steps_per_epoch: int, class_weights: torch.Tensor | None = None, seed: int = 0,
                 monitor: str | None = None, val_size: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.model_cfg = model
        self.optim_cfg = optim
        self.augment_cfg = augment
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.loss_name = net.task.resolve_loss(model.loss)
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0),
                             persistent=False)
        self.seed = seed
        self.monitor = monitor
        self._gen: torch.Generator | None = None  # on the batches' device, made at the first step
        self._gen_state: torch.Tensor | None = None  # from a checkpoint being resumed
        self._forward = net.forward_normalised  # torch.compile'd by compile_forward(); weights stay shared
        self._val_out: list[torch.Tensor] = []
        self._val_y: list[torch.Tensor] = []
        self.val_size = val_size
        """Validation rows: under DDP the ranks' padded shares are gathered and cut back to this many."""

    def compile_forward(self) -> None:
        """Compile the training forward with torch.compile (the state dict keeps its plain names)."""
        self._forward = torch.compile(self.net.forward_normalised)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The configured loss of head outputs against targets (the task spec's)."""
        return self.net.loss(self.loss_name, out, y, self.class_weights if self.class_weights.numel() else None)

    def on_train_epoch_start(self) -> None:
        """Frozen parts of the encoder (linear probe, the lower blocks of a partial fine-tune) keep their batch-norm
        statistics: their norm layers run in eval mode, as a frozen pretrained network expects."""
        for module in self.net.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                own = list(module.parameters(recurse=False))
                if own and not any(p.requires_grad for p in own):
                    module.eval()

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        # Dropout draws from the global generator, seeded by (seed, optimiser step); augmentation draws from one
        # stream whose state is saved in every checkpoint. A training resumed from a checkpoint therefore
        # continues exactly as one that never stopped. Under DDP each rank draws its own masks and augmentations
        # (seeded by rank too; the augmentation stream is reseeded every step, since a checkpoint holds rank 0's).
        torch.manual_seed(self.seed * 1_000_003 + self.trainer.global_step + self.trainer.global_rank * 7_919)

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
        gen = self._augment_generator(x.device)
        if self.trainer.world_size > 1:
            gen.manual_seed((self.seed + 17) * 1_000_003 + self.trainer.global_step * 65_537 + self.trainer.global_rank)
        x = augment_batch(self.net.normalise(x), self.augment_cfg, gen)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = self.loss(self._forward(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0], prog_bar=True,
                 sync_dist=True)  # DDP: the mean over ranks (equal slices of the global batch)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        out = forward_views(self.net, x, views=1, output="raw")  # the forward loop prediction uses, one view
        self._val_out.append(out.detach())
        self._val_y.append(y.detach())

    def on_validation_epoch_end(self) -> None:
        """val/loss and the task's val metrics of the WHOLE validation set (under DDP: every rank's share gathered,
        padding dropped), so every rank logs the same values and checkpoints the same best epoch."""
        if not self._val_out:
            return
        out, y = torch.cat(self._val_out), torch.cat(self._val_y)
        self._val_out, self._val_y = [], []
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            out, y = (gather_shares(self.all_gather(t), self.val_size) for t in (out, y))
        self.log("val/loss", self.loss(out, y), prog_bar=True)
        pred = self.net.to_prediction(out)
        for name, value in self.net.task.val_metrics(pred, y, self.net.spec.target_info).items():
            self.log(name, value, prog_bar=name == self.monitor)  # the progress bar shows the monitored metric

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


def gather_shares(gathered: torch.Tensor, n: int | None) -> torch.Tensor:
    """All ranks' strided shares ((world, per rank, ...) from all_gather) back in position order, padding dropped."""
    if n is None:
        raise ValueError("GeoTask.val_size is needed to gather validation shares under DDP")
    world, per = gathered.shape[:2]
    return gathered.transpose(0, 1).reshape(world * per, *gathered.shape[2:])[:n]
