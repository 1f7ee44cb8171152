"""Resuming an interrupted training: the output folder's state file, the fit key, and the last checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from geocnn.atomic import atomic_path

STATE = "train_state.json"
LAST = "last.ckpt"


def read_state(out: Path) -> dict[str, Any]:
    """The output folder's training state (run id, whether the run and the training finished, their keys)."""
    path = Path(out) / STATE
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(out: Path, **values: object) -> None:
    """Update the state file (atomically)."""
    state = read_state(out) | values
    with atomic_path(Path(out) / STATE) as tmp:
        tmp.write_text(json.dumps(state, indent=2))


def content_key(value: Any) -> str:
    """A short hash of a JSON-able value (a resolved config, a fit's inputs)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_checkpoint(out: Path, key: str, enabled: bool = True) -> Path | None:
    """The last checkpoint of an unfinished training with the same inputs (``key``) in ``out``, when resuming."""
    last = Path(out) / "checkpoints" / LAST
    state = read_state(out)
    if enabled and last.exists() and not state.get("complete", False) and state.get("fit_key") in (None, key):
        return last
    return None


def checkpoint_epoch(path: Path) -> int:
    """The last completed epoch (0-based) stored in a Lightning checkpoint (memory-mapped, weights not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
