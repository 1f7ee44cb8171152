"""The one forward loop: device, autocast, channels-last, test-time views, predictions or encoder features, batched.

Validation, evaluation, batch and watch-folder prediction, two-stage features and maps all go through
:class:`Forward` (or its per-batch core :func:`forward_views`), so a map pixel and a table row computed from the
same pixels with the same model and views are the same number.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from geocnn.data.augment import tta_views
from geocnn.errors import GeocnnError
from geocnn.models.network import GeoNet

Output = Literal["prediction", "features", "raw"]
"""What the loop returns: user-facing predictions, encoder features (before dropout and head), or head outputs."""


class FeatureHead(Protocol):
    """A model on encoder features (stage 2 of two-stage transfer)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N,) predictions from (N, F) features."""


def pick_device(device: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise GeocnnError("train.device=cuda but no CUDA GPU is visible; use auto or cpu")
    return torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def forward_views(net: GeoNet, chips: torch.Tensor, views: int = 1, output: Output = "prediction") -> torch.Tensor:
    """One batch of raw chips through ``net``, averaged over ``views`` test-time views (in output space).

    Chips are normalised with the network's train-split band statistics (NaN nodata becomes the band mean), turned
    into the exact dihedral views (1, 2, 4, 8) or n rotations, and the chosen output of every view is averaged.
    """
    x = net.normalise(chips)
    total = None
    batch_views = tta_views(x, views)
    for v in batch_views:
        if output == "features":
            y = net.encoder(v)
        elif output == "raw":
            y = net.forward_normalised(v)
        else:
            y = net.to_prediction(net.forward_normalised(v))
        total = y if total is None else total + y
    assert total is not None
    return total if len(batch_views) == 1 else total / len(batch_views)


class Forward:
    """A network ready to run: on its device (channels-last, bf16 autocast on CUDA), with views and an output.

    Args:
        net: the network (moved to the device; callers keep using it).
        views: test-time views averaged (1 = none; a bundle's own: ``bundle.preprocessing.tta_views``).
        device: auto, cpu or cuda.
        output: predictions, encoder features or raw head outputs.
        head: a model on features (stage-2 ridge): the loop returns ``head.predict(features)`` as (N, 1).
        compile: ``torch.compile`` the network's forward (long map runs on a GPU).
    """

    def __init__(self, net: GeoNet, views: int = 1, device: str = "auto", output: Output = "prediction",
                 head: FeatureHead | None = None, compile: bool = False) -> None:
        self.device = pick_device(device)
        self.cuda = self.device.type == "cuda"
        self.net = net.to(self.device).eval()
        if self.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.views = views
        self.head = head
        self.output: Output = "features" if head is not None else output
        self._run = torch.compile(forward_views, dynamic=False) if compile else forward_views

    @property
    def width(self) -> int:
        """Values per sample this loop returns."""
        if self.head is not None:
            return 1
        return self.net.encoder.num_features if self.output == "features" else self.net.spec.n_outputs

    @torch.inference_mode()
    def tensor(self, chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One batch (B, C, H, W) -> (B, width) on the device (no host synchronisation)."""
        if isinstance(chips, np.ndarray) and not chips.flags.writeable:
            chips = np.array(chips)  # a read-only memory map: torch would warn (and must not write into it)
        x = torch.as_tensor(chips)
        if self.cuda:  # pinned, so the copy is asynchronous
            x = x.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            return self._run(self.net, x, self.views, self.output).float()

    def batch(self, chips: np.ndarray | torch.Tensor) -> np.ndarray:
        """One batch -> (B, width) float32 on the host (stage-2 head applied)."""
        out = self.tensor(chips).cpu().numpy()
        return self._finish(out)

    def __call__(self, chips: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 128,
                 progress: bool = False, desc: str = "predict") -> np.ndarray:
        """``chips[rows]`` (a memmap is read batch by batch) -> (N, width) float32, in ``rows`` order."""
        rows = np.arange(len(chips)) if rows is None else np.asarray(rows)
        out = []
        # bars only on a terminal (None: tqdm's own check), never as carriage-return noise in a log file
        for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=None if progress else True,
                          leave=False):
            batch = np.ascontiguousarray(chips[rows[start:start + batch_size]])
            out.append(self.tensor(batch))  # stays on the device: one synchronisation at the end
        if not out:
            return np.zeros((0, self.width), np.float32)
        return self._finish(torch.cat(out).cpu().numpy())

    def _finish(self, values: np.ndarray) -> np.ndarray:
        if self.head is None:
            return values
        return np.asarray(self.head.predict(values), np.float32).reshape(-1, 1)

    def release(self) -> GeoNet:
        """The network back on the host (callers that keep training or saving it)."""
        return self.net.cpu()
