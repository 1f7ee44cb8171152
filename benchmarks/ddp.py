"""Data-parallel training (DDP): images/s with 1 process vs N on the same work, scaling efficiency, metric agreement.

Each configuration is one `fit` in a child process (Lightning starts the other ranks by re-running that child's
command, as `geocnn train --set train.devices=N` does). Images/s are timed from the second epoch to the end of
training on global rank 0 (every step waits for the gradient all-reduce, so rank 0's clock is the run's).

CPU (gloo): strong scaling, the SAME global batch split over the processes, so the runs take the same optimisation
steps and their validation metrics must agree; the cores are shared (threads per process = --threads / N), so
correctness is the point and the speed-up is reported anyway. CUDA (NCCL): weak scaling, --batch per GPU, as
multi-GPU throughput is usually quoted; reports images/s per GPU and efficiency = (images/s per GPU) / 1-GPU's.

    python benchmarks/ddp.py                                      # 1 vs 2 CPU processes, test_convnext at 32 px
    python benchmarks/ddp.py --device cuda --backbone resnet18 --size 64 --batch 256 --procs 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, row  # noqa: E402
from geocnn.config import load_config  # noqa: E402
from geocnn.data.splits import split_store  # noqa: E402
from geocnn.domains import ingest  # noqa: E402
from geocnn.synthetic.galaxies import make_galaxies  # noqa: E402
from geocnn.training.fit import FitSpec, fit  # noqa: E402
from geocnn.training.ranks import is_global_zero  # noqa: E402


class EpochClock(L.Callback):
    """Seconds and optimiser steps from the start of the second epoch to the end of training."""

    def __init__(self) -> None:
        self.start, self.seconds, self.steps = 0.0, 0.0, 0

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self._sync(trainer)
            self.start, self.steps = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._sync(trainer)
        self.seconds, self.steps = time.perf_counter() - self.start, trainer.global_step - self.steps


def child(args: argparse.Namespace) -> None:
    """One fit with ``--procs`` processes; global rank 0 prints a JSON line (images/s, validation metrics)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    world = args.procs[0]
    batch = args.batch * world if args.device == "cuda" else args.batch  # weak scaling on GPUs, strong on CPU
    cfg = load_config(overrides=[
        f"data.catalog={args.catalog}", "data.format=csv", "data.targets=[morphology]", f"data.crop={args.size}",
        f"data.chip_size={args.size}", f"data.store_root={args.out}/stores", f"output_dir={args.out}/run{world}",
        f"model.backbone={args.backbone}", "model.dropout=0", f"train.epochs={args.epochs}",
        f"train.batch_size={batch}", f"train.device={args.device}", f"train.devices={world}",
        f"train.strategy={'ddp' if world > 1 else 'auto'}", "train.resume=false",
        f"train.num_threads={max(args.threads // world, 1)}" if args.device == "cpu" else "train.num_threads=null",
        "augment.rotate=false", "augment.flip=false", "augment.translate=0", "augment.zoom=0", "augment.brightness=0"])
    view = split_store(ingest(cfg, progress=False), cfg.split, "morphology")
    clock = EpochClock()
    result = fit(view, FitSpec.of(cfg), [clock], progress=False)
    if is_global_zero():
        images = clock.steps * batch
        print(json.dumps({"procs": world, "batch": batch, "images_per_s": images / clock.seconds,
                          "seconds": clock.seconds, "steps": clock.steps, "best_val_loss": result.best_score}))


def run(args: argparse.Namespace, procs: int) -> dict:
    """One child configuration (its ranks started by Lightning); its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--procs", str(procs), "--catalog",
           str(args.catalog), "--out", str(args.out), "--device", args.device, "--backbone", args.backbone,
           "--size", str(args.size), "--batch", str(args.batch), "--epochs", str(args.epochs), "--threads",
           str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{procs} processes failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--procs", type=int, nargs="+", default=None, help="process counts (default: 1 2; cuda: 1 and "
                   "every power of two up to the GPUs present)")
    p.add_argument("--backbone", default="test_convnext", help="test_convnext has no batch norm: CPU runs must "
                   "agree to float rounding")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="global batch on CPU; per GPU on CUDA")
    p.add_argument("--epochs", type=int, default=3, help="the first is warm-up, not timed")
    p.add_argument("--samples", type=int, default=600)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads shared by the processes")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--catalog", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.procs is None:
        gpus = torch.cuda.device_count() if args.device == "cuda" else 0
        args.procs = [1, 2] if args.device == "cpu" else [n for n in (1, 2, 4, 8, 16) if n <= max(gpus, 1)]
    print(f"machine: {machine(args.device)}")
    with tempfile.TemporaryDirectory() as tmp:
        args.out = Path(tmp)
        args.catalog = make_galaxies(Path(tmp) / "syn", args.samples, max(args.size, 48), seed=0)
        ingest(load_config(overrides=[  # the chip store, built once outside the timed runs
            f"data.catalog={args.catalog}", "data.format=csv", "data.targets=[morphology]", f"data.crop={args.size}",
            f"data.chip_size={args.size}", f"data.store_root={args.out}/stores"]), progress=False)
        results = [run(args, n) for n in args.procs]
    base = results[0]
    scaling = "strong: same global batch" if args.device == "cpu" else "weak: --batch per GPU"
    print(f"\n{args.backbone} at {args.size} px, {args.samples} samples, {args.epochs} epochs (first untimed), "
          f"{scaling}; {args.device}\n")
    print(row("processes", "global batch", "images/s", "images/s per process", "speed-up", "efficiency",
              "best val/loss", "|diff| vs 1 process"))
    print(row("---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"))
    for r in results:
        speed = r["images_per_s"] / base["images_per_s"]
        print(row(r["procs"], r["batch"], f"{r['images_per_s']:.1f}", f"{r['images_per_s'] / r['procs']:.1f}",
                  f"{speed:.2f}", f"{speed / r['procs']:.2f}", f"{r['best_val_loss']:.6f}",
                  f"{abs(r['best_val_loss'] - base['best_val_loss']):.1e}"))
    if args.device == "cpu":
        print("\ntarget: |diff| <= 1e-5 (same optimisation steps); CPU speed-up is bounded by the shared cores")
    else:
        print("\ntarget: efficiency >= 0.9 (weak scaling, NCCL)")


if __name__ == "__main__":
    main()
