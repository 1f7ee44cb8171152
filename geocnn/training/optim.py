"""Optimisers (SGD with momentum/Nesterov, Adam, AdamW, RMSprop, Adagrad) and the warm-up + decay schedule."""

from __future__ import annotations

import math

import torch

from geocnn.config import OptimConfig


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


