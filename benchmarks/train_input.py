"""Training input pipeline: steps/s of the real data path vs the same model on one in-memory batch repeated.

The full path is what `geocnn train` runs: batches read from the memory-mapped chip store (one read per batch),
moved to the device, normalised and augmented as whole tensors (rotation, flips, shift, zoom, brightness), then
forward, backward and the optimiser step. The reference is the same LightningModule fed one batch already on
the device, with augmentation off. Both run under the same Lightning Trainer settings as `fit`.

    python benchmarks/train_input.py                        # resnet18 and convnext_atto at 64 px, CPU
    python benchmarks/train_input.py --device cuda --batch 256
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, row  # noqa: E402
from geocnn.config import AugmentConfig, load_config  # noqa: E402
from geocnn.data.datamodule import ChipDataModule, resolve_workers  # noqa: E402
from geocnn.data.splits import split_store  # noqa: E402
from geocnn.domains import ingest  # noqa: E402
from geocnn.inference.predict import pick_device  # noqa: E402
from geocnn.models.network import GeoNet  # noqa: E402
from geocnn.synthetic.galaxies import make_galaxies  # noqa: E402
from geocnn.training.fit import FitSpec, net_spec  # noqa: E402
from geocnn.training.module import GeoTask  # noqa: E402

OFF = AugmentConfig(rotate=False, flip=False, rot90=False, translate=0.0, zoom=0.0, brightness=0.0,
                    band_brightness=0.0)


class StepClock(L.Callback):
    """Steps per second after ``warmup`` steps (the clock stops after the last step's work has finished)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps, self.seconds = warmup, 0.0, 0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: object, i: int) -> None:
        if i == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.steps = trainer.fit_loop.epoch_loop.batch_progress.current.completed - self.warmup


def trainer(device: torch.device, steps: int, clock: StepClock, precision: str) -> L.Trainer:
    return L.Trainer(max_epochs=1, accelerator=device.type, devices=1, precision=precision, callbacks=[clock],
                     logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                     num_sanity_val_steps=0, limit_train_batches=steps, limit_val_batches=0)


def measure(cfg, view, device: torch.device, steps: int, warmup: int, in_memory: bool) -> float:  # noqa: ANN001
    """Steps per second of one configuration."""
    spec = net_spec(view, FitSpec.of(cfg))
    torch.manual_seed(0)
    net = GeoNet(spec, "random")
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    y = net.task.target_array(view.store.index, spec.target_info)
    dm = ChipDataModule(view, y, cfg.train.batch_size, cfg.train.eval_batch_size,
                        resolve_workers(cfg.train.num_workers, device),
                        seed=0, pin_memory=device.type == "cuda")
    task = GeoTask(net, cfg.model, cfg.train.optimizer, OFF if in_memory else cfg.augment, 1, steps)
    if cfg.train.compile:
        task.compile_forward()
    clock = StepClock(warmup)
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        if in_memory:
            x, y = next(iter(dm.train_dataloader()))
            x, y = x.to(device), y.to(device)
            loader = DataLoader([(x, y)] * steps, batch_size=None)
            trainer(device, steps, clock, precision).fit(task, train_dataloaders=loader)
        else:
            trainer(device, steps, clock, precision).fit(task, datamodule=dm)
    return clock.steps / clock.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["resnet18", "convnext_atto"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="alternating measurements of each; the best counts")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    args = p.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no per-fit banner between the rows
    warnings.filterwarnings("ignore")
    device = pick_device(args.device)
    print(f"machine: {machine(str(device))}")
    with tempfile.TemporaryDirectory() as tmp:
        n = args.batch * (args.steps + 2) * 10 // 6  # 60 % train: enough batches for one epoch of --steps
        catalog = make_galaxies(Path(tmp) / "syn", n, args.size, seed=0)
        print(f"steps/s over {args.steps} steps after {args.warmup} warm-up steps, best of {args.repeats}\n")
        print(row("backbone", "px", "batch", "full pipeline steps/s", "in-memory steps/s", "ratio"))
        print(row("---", "---:", "---:", "---:", "---:", "---:"))
        for backbone in args.backbones:
            overrides = [f"data.catalog={catalog}", "data.format=csv", "data.targets=[morphology]",
                         f"data.crop={args.size}", f"data.chip_size={args.size}", f"data.store_root={tmp}/stores",
                         f"model.backbone={backbone}", f"train.batch_size={args.batch}", f"train.device={device.type}",
                         f"train.compile={str(args.compile).lower()}"]
            if args.workers is not None:
                overrides.append(f"train.num_workers={args.workers}")
            cfg = load_config(overrides=overrides)
            view = split_store(ingest(cfg, progress=False), cfg.split, "morphology")
            fulls, refs = [], []
            for _ in range(args.repeats):  # alternated, the best of each counts (a shared machine varies)
                fulls.append(measure(cfg, view, device, args.steps, args.warmup, in_memory=False))
                refs.append(measure(cfg, view, device, args.steps, args.warmup, in_memory=True))
            full, ref = max(fulls), max(refs)
            print(row(backbone, args.size, args.batch, f"{full:.2f}", f"{ref:.2f}", f"{full / ref:.2f}"), flush=True)
    print("\ntarget: ratio >= 0.9")


if __name__ == "__main__":
    main()
