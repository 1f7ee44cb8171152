"""Lightning DataModule over a ChipStore split: whole batches read from the memory-mapped chips."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from geocnn.data.splits import SplitView
from geocnn.data.store import CHIPS


class ChipBatches(Dataset):
    """Indexed by a list of positions; returns one batch (chips uint8/float, targets) in a single memmap read."""

    def __init__(self, chips_path: Path, rows: np.ndarray, targets: np.ndarray) -> None:
        self.chips_path = chips_path
        self.rows = rows
        self.targets = targets
        self._chips: np.ndarray | None = None  # opened lazily: memmaps must not be pickled into workers

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._chips is None:
            self._chips = np.load(self.chips_path, mmap_mode="r")
        rows = np.sort(self.rows[np.asarray(positions)])
        x = torch.from_numpy(np.ascontiguousarray(self._chips[rows]))
        return x, torch.from_numpy(self.targets[rows])


class EpochShuffledBatches(Sampler[list[int]]):
    """Shuffled batches whose order depends only on (seed, epoch), so a training resumed at epoch e sees the same
    batches as one that never stopped. Lightning calls ``set_epoch`` before every epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool) -> None:
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):  # noqa: ANN204 - a generator of position lists
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start:start + self.batch_size].tolist()


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """DataLoader workers for ``train.num_workers``: ``auto`` is 0 on CPU and min(4, cores - 1) on CUDA."""
    if setting != "auto":
        return int(setting)
    return min(4, max((os.cpu_count() or 1) - 1, 0)) if device.type == "cuda" else 0


class ChipDataModule(L.LightningDataModule):
    """Train/val loaders over one split of a store (test is read only by evaluation, once)."""

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

    def _loader(self, rows: np.ndarray, batch_size: int, shuffle: bool) -> DataLoader:
        ds = ChipBatches(self.view.store.root / CHIPS, rows, self.targets)
        sampler: Sampler[list[int]]
        if shuffle:
            sampler = EpochShuffledBatches(len(rows), batch_size, self.seed, drop_last=len(rows) > batch_size)
        else:
            sampler = BatchSampler(SequentialSampler(range(len(rows))), batch_size, drop_last=False)
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one training epoch."""
        n = len(self.view.rows("train"))
        return max(n // self.batch_size, 1) if n > self.batch_size else 1

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.view.rows("train"), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.view.rows("val"), self.eval_batch_size, shuffle=False)
