"""Shared helpers of the benchmarks: machine description, timing, peak memory of a child process."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date

import torch


def machine(device: str) -> str:
    """One line naming the CPU/GPU, core count, torch version and date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") and torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{date.today().isoformat()}")


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    """Wall seconds of ``fn()`` (``sync`` waits for queued GPU work before the clock stops)."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def device_sync(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device (no-op on CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def child_peak_rss(argv: list[str]) -> tuple[dict, float]:
    """Run ``python argv`` and return (its JSON stdout, its peak resident memory in MiB)."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {argv} failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far (KiB -> MiB)
    return json.loads(proc.stdout.strip().splitlines()[-1]), peak


def row(*cells: object) -> str:
    """A markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"
