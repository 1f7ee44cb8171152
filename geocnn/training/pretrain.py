"""Self-supervised pretraining of a timm encoder with lightly (MoCo v2, SimCLR, BYOL) on unlabeled chips."""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import timm
import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import CosineWarmupScheduler, cosine_schedule
from torch import nn
from torch.utils.data import DataLoader

from geocnn.config import PretrainConfig, TrainConfig
from geocnn.data.datamodule import ChipBatches, EpochShuffledBatches, resolve_workers
from geocnn.data.ssl_views import ViewPlan, random_view, two_views
from geocnn.errors import GeocnnError
from geocnn.inference.predict import pick_device
from geocnn.training.fit import trainer_for
from geocnn.training.progress import bars_show


def bank_size(configured: int, n_images: int, batch_size: int) -> int:
    """MoCo's memory bank: as configured, at most half the images (an image's own older key rarely becomes its
    negative), at least one batch; 0 stays 0 (in-batch negatives)."""
    if configured == 0:
        return 0
    return max(batch_size, min(configured, n_images // 2))


class SelfSupervised(L.LightningModule):
    """A timm encoder (``num_classes=0``: pooled features) with a lightly projection head and the method's loss."""

    def __init__(self, arch: str, in_chans: int, mean: list[float], std: list[float], cfg: PretrainConfig,
                 views: ViewPlan, steps_per_epoch: int, n_images: int, seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.views, self.seed = cfg, views, seed
        self.steps_per_epoch = steps_per_epoch
        self.encoder = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        dim, hidden, out = int(self.encoder.num_features), cfg.hidden_dim, cfg.proj_dim
        self.predictor: nn.Module | None = None
        self.bank = 0
        if cfg.method == "moco":
            self.projection: nn.Module = MoCoProjectionHead(dim, hidden, out)
            self.bank = bank_size(cfg.memory_bank_size, n_images, cfg.batch_size)
            self.criterion: nn.Module = NTXentLoss(temperature=cfg.temperature, memory_bank_size=(self.bank, out)
                                                   if self.bank else 0)
        elif cfg.method == "simclr":
            self.projection = SimCLRProjectionHead(dim, hidden, out)
            self.criterion = NTXentLoss(temperature=cfg.temperature)
        else:  # byol
            self.projection = BYOLProjectionHead(dim, hidden, out)
            self.predictor = BYOLPredictionHead(out, hidden, out)
            self.criterion = NegativeCosineSimilarity()
        self.encoder_m: nn.Module | None = None
        self.projection_m: nn.Module | None = None
        if cfg.method in ("moco", "byol"):  # the momentum (key / target) branch: an EMA of the online one
            self.encoder_m = copy.deepcopy(self.encoder)
            self.projection_m = copy.deepcopy(self.projection)
            deactivate_requires_grad(self.encoder_m)
            deactivate_requires_grad(self.projection_m)
        self.losses: list[float] = []
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._generator: torch.Generator | None = None

    def normalise(self, chips: torch.Tensor) -> torch.Tensor:
        """Raw chips to float standardised with the unlabeled data's band statistics; nodata (NaN) -> the mean."""
        return torch.nan_to_num((chips.float() - self.mean) / self.std, nan=0.0, posinf=0.0, neginf=0.0)

    def _momentum(self) -> float:
        total = max(self.trainer.estimated_stepping_batches, 1) if self._trainer is not None else 1
        return float(cosine_schedule(int(self.global_step), int(total), self.cfg.momentum, 1.0))

    def on_fit_start(self) -> None:
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed + 7919)

    def on_train_start(self) -> None:
        """MoCo: fill the memory bank with real keys before the first step (lightly starts it with random unit
        vectors, easy negatives that make the first epoch's loss look low and the curve rise)."""
        if not self.bank or self.encoder_m is None or self.projection_m is None:
            return
        bank = self.criterion.memory_bank
        filled = 0
        with torch.no_grad():
            for chips, _ in self.trainer.train_dataloader:
                x = random_view(self.normalise(chips.to(self.device)), self.views, self._generator)
                keys = nn.functional.normalize(self.projection_m(self.encoder_m(x)).float(), dim=1)
                bank(keys, update=True)
                filled += len(keys)
                if filled >= self.bank:
                    break

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = self.normalise(batch[0])
        x0, x1 = two_views(x, self.views, self._generator)
        if self.cfg.method == "simclr":
            loss = self.criterion(self.projection(self.encoder(x0)), self.projection(self.encoder(x1)))
        else:
            assert self.encoder_m is not None and self.projection_m is not None
            m = self._momentum()
            update_momentum(self.encoder, self.encoder_m, m)
            update_momentum(self.projection, self.projection_m, m)
            if self.cfg.method == "moco":
                query = self.projection(self.encoder(x0))
                with torch.no_grad():
                    key = self.projection_m(self.encoder_m(x1))
                loss = self.criterion(query, key.detach())
            else:  # byol, symmetric
                assert self.predictor is not None
                p0 = self.predictor(self.projection(self.encoder(x0)))
                p1 = self.predictor(self.projection(self.encoder(x1)))
                with torch.no_grad():
                    z0 = self.projection_m(self.encoder_m(x0))
                    z1 = self.projection_m(self.encoder_m(x1))
                loss = 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        if not torch.isfinite(loss):
            raise GeocnnError(f"pretrain: the {self.cfg.method} loss became {float(loss)} at step "
                              f"{self.global_step}; lower pretrain.lr or raise pretrain.temperature")
        detached = loss.detach().float()
        self._sum = detached if self._sum is None else self._sum + detached
        self._count += 1
        self.log("pretrain/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        if self._count:
            assert self._sum is not None
            self.losses.append(float(self._sum) / self._count)
        self._sum, self._count = None, 0

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's optimiser/scheduler dict
        params = [p for p in self.parameters() if p.requires_grad]
        if self.cfg.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9,
                                                         weight_decay=self.cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        total = self.steps_per_epoch * self.cfg.epochs
        warmup = min(self.steps_per_epoch, max(total // 10, 1))
        sched = CosineWarmupScheduler(opt, warmup_epochs=warmup, max_epochs=total, end_value=0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class PretrainFit:
    """The trained encoder (plain timm module on the CPU), its per-epoch mean loss and the memory bank used."""

    encoder: nn.Module
    loss_curve: list[float]
    bank: int
    device: str


def pretrain_encoder(chips_path: Path, rows: np.ndarray, arch: str, mean: list[float], std: list[float],
                     cfg: PretrainConfig, train: TrainConfig, views: ViewPlan, seed: int = 0,
                     callbacks: list[L.Callback] | None = None, progress: bool = True) -> PretrainFit:
    """Train ``arch`` self-supervised on the chips ``rows`` of a memory-mapped chip array; return the encoder.

    Batches are shuffled by (seed, epoch) and incomplete last batches dropped (batch norm and the memory bank want
    full batches); the Trainer is the project's (CUDA with bf16 when present, else CPU; ``train.devices``).
    """
    n = len(rows)
    if n < 2:
        raise GeocnnError(f"{chips_path.parent}: {n} unlabeled image(s); self-supervised pretraining needs at least "
                          "2 (and hundreds to learn anything useful)")
    L.seed_everything(seed, workers=True, verbose=False)
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    batch = min(cfg.batch_size, n)
    steps = n // batch
    device = pick_device(train.device)
    chip_shape = np.load(chips_path, mmap_mode="r").shape
    module = SelfSupervised(arch, int(chip_shape[1]), mean, std, cfg.model_copy(update={"batch_size": batch}),
                            views, steps, n, seed)
    loader = DataLoader(ChipBatches(chips_path, rows, np.zeros(int(rows.max()) + 1, np.float32)),
                        sampler=EpochShuffledBatches(n, batch, seed, drop_last=True), batch_size=None,
                        num_workers=resolve_workers(train.num_workers, device), pin_memory=device.type == "cuda")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = train.model_copy(update={"epochs": cfg.epochs})
    # Lightning's default checkpoint goes to a scratch folder: the encoder bundle is the output, not checkpoints
    with tempfile.TemporaryDirectory(prefix="geocnn-pretrain-") as scratch, warnings.catch_warnings():
        trainer = trainer_for(settings, device, list(callbacks or []), progress and bars_show(), Path(scratch))
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        trainer.fit(module, train_dataloaders=loader)
    if not module.losses or not all(math.isfinite(v) for v in module.losses):
        raise GeocnnError(f"pretrain: no finite loss recorded ({module.losses}); check the chips in {chips_path}")
    encoder = module.encoder.float().cpu().eval()
    return PretrainFit(encoder=encoder, loss_curve=module.losses, bank=module.bank, device=device.type)
