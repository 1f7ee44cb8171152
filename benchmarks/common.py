"""Shared helpers of the benchmarks: machine description, timing, child processes, peak memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
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


def device_sync(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device (no-op on CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def run_child(argv: list[str]) -> dict:
    """Run ``python argv`` and return the JSON object on its last line of output."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {argv} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM: of this address space only, not inherited at fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def row(*cells: object) -> str:
    """A markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"
