"""Lightning DataModule over a ChipStore split: whole batches read from the memory-mapped chips."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from geocnn.data.splits import SplitView
from geocnn.data.store import CHIPS


class ChipBatches(Dataset):
    """Indexed by a list of positions; returns one batch (chips uint8/float, targets) in a single memmap read."""

    def __init__(self, chips_path: Path, rows: np.ndarray, targets: np.ndarray, keep_order: bool = False) -> None:
        self.chips_path = chips_path
        self.rows = rows
        self.targets = targets
        self.keep_order = keep_order
        """Return a batch in the order of its positions (validation shards are gathered back by position)."""
        self._chips: np.ndarray | None = None  # opened lazily (read-only): memmaps must not be pickled into workers

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._chips is None:
            self._chips = np.load(self.chips_path, mmap_mode="r")
        wanted = self.rows[np.asarray(positions)]
        order = np.argsort(wanted, kind="stable")
        rows = wanted[order]  # one ascending read of the memory map
        x, y = np.ascontiguousarray(self._chips[rows]), self.targets[rows]
        if self.keep_order:
            back = np.empty_like(order)
            back[order] = np.arange(len(order))
            x, y = x[back], y[back]
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(y))


class EpochShuffledBatches(Sampler[list[int]]):
    """Shuffled batches whose order depends only on (seed, epoch), so a training resumed at epoch e sees the same
    batches as one that never stopped. Lightning calls ``set_epoch`` before every epoch.

    Data-parallel (``world`` > 1): ``batch_size`` is the global batch. Every rank draws the same permutation and
    cuts the same global batches; rank r takes the r-th of ``world`` equal slices of each (a batch whose size does
    not divide by ``world`` is padded by repeating its first samples, as DistributedSampler pads). The ranks'
    step-k slices together are exactly the single-process step-k batch, so DDP takes the same optimisation steps.
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):  # noqa: ANN204 - a generator of position lists
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start:start + self.batch_size].tolist()
            yield batch if self.world == 1 else rank_slice(batch, self.rank, self.world)


def rank_slice(batch: list[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s contiguous slice of a global batch padded (wrapping) to a multiple of ``world``."""
    per = -(-len(batch) // world)
    padded = (batch * (-(-per * world // len(batch))))[:per * world]
    return padded[rank * per:(rank + 1) * per]


def rank_share(n: int, rank: int, world: int) -> list[int]:
    """Positions 0..n-1 padded (wrapping) to a multiple of ``world``; rank r takes every world-th from r (as
    DistributedSampler without shuffling). Gathering the shares and reading them position-major restores 0..n-1."""
    total = -(-n // world) * world
    return [i % n for i in range(rank, total, world)]


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """DataLoader workers for ``train.num_workers``: ``auto`` is 0 on CPU and min(4, cores - 1) on CUDA."""
    if setting != "auto":
        return int(setting)
    return min(4, max((os.cpu_count() or 1) - 1, 0)) if device.type == "cuda" else 0


class ChipDataModule(L.LightningDataModule):
    """Train/val loaders over one split of a store (test is read only by evaluation, once).

    Under DDP (the attached Trainer's world size > 1) each rank gets its own share: its slice of every global
    training batch (``batch_size`` is global) and a padded, strided share of the validation rows (``eval_batch_size``
    is per rank), gathered back by the LightningModule. Every rank opens the chip store read-only.
    """

    def __init__(self, view: SplitView, targets: np.ndarray, batch_size: int, eval_batch_size: int,
                 num_workers: int = 0, seed: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        self.view = view
        self.targets = targets
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory

    def _ranks(self) -> tuple[int, int]:
        """(global rank, world size) of the attached Trainer; (0, 1) without one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, ds: ChipBatches, sampler: Sampler[list[int]] | BatchSampler) -> DataLoader:
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one training epoch (the same on every rank: one per global batch)."""
        n = len(self.view.rows("train"))
        return max(n // self.batch_size, 1) if n > self.batch_size else 1

    @property
    def val_size(self) -> int:
        """Validation rows (the gathered validation outputs are cut back to this many)."""
        return len(self.view.rows("val"))

    def train_dataloader(self) -> DataLoader:
        rows = self.view.rows("train")
        rank, world = self._ranks()
        ds = ChipBatches(self.view.store.root / CHIPS, rows, self.targets)
        return self._loader(ds, EpochShuffledBatches(len(rows), self.batch_size, self.seed,
                                                     drop_last=len(rows) > self.batch_size, rank=rank, world=world))

    def val_dataloader(self) -> DataLoader:
        rows = self.view.rows("val")
        rank, world = self._ranks()
        ds = ChipBatches(self.view.store.root / CHIPS, rows, self.targets, keep_order=True)
        share = list(range(len(rows))) if world == 1 else rank_share(len(rows), rank, world)
        return self._loader(ds, BatchSampler(share, self.eval_batch_size, drop_last=False))
