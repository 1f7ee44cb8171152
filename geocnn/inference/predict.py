"""Prediction: batched, device-aware, with test-time augmentation, over arrays, store rows or image files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from geocnn.data.augment import tta_views as make_views
from geocnn.data.sources.images import crop_resize
from geocnn.errors import GeocnnError
from geocnn.models.network import GeoNet


def pick_device(device: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise GeocnnError("train.device=cuda but no CUDA GPU is visible; use auto or cpu")
    return torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def predict_batch(net: GeoNet, chips: torch.Tensor, tta: int) -> torch.Tensor:
    """User-facing predictions of one batch, averaged over ``tta`` views in prediction space."""
    x = net.normalise(chips)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if x.is_cuda else torch.autocast("cpu", enabled=False)
    total = None
    with autocast:
        views = make_views(x, tta)
        for v in views:
            p = net.to_prediction(net.forward_normalised(v))
            total = p if total is None else total + p
    assert total is not None
    return total / len(views)


def predict_chips(net: GeoNet, chips: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 128,
                  tta: int = 1, device: str = "auto", progress: bool = False) -> np.ndarray:
    """Predict ``chips[rows]`` (a memmap is read batch by batch) -> (N, outputs) float32."""
    dev = pick_device(device)
    net = net.to(dev).eval()
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    rows = np.arange(len(chips)) if rows is None else np.asarray(rows)
    cuda = dev.type == "cuda"
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc="predict", disable=not progress):
        batch = torch.from_numpy(np.ascontiguousarray(chips[rows[start:start + batch_size]]))
        if cuda:  # pinned, so the copy is asynchronous; predictions stay on the device until the end (one sync)
            batch = batch.pin_memory().to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        out.append(predict_batch(net, batch, tta).float())
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, net.spec.n_outputs), np.float32)


def check_chips(bundle: "Bundle", chips: np.ndarray, source: str = "input") -> None:  # noqa: F821
    """Refuse chips whose band count or size differs from what the bundle was trained on."""
    pre = bundle.preprocessing
    want = (bundle.spec.in_chans, pre["chip_size"], pre["chip_size"])
    if chips.ndim != 4 or tuple(chips.shape[1:]) != want:
        raise GeocnnError(f"{source}: chips of shape {tuple(chips.shape[1:])} (bands, height, width) do not fit the "
                          f"model, which expects {want} (bands {pre.get('bands')}). Preprocess with the bundle's "
                          f"settings (crop {pre.get('crop')}, chip_size {pre['chip_size']}).")


def predict_array(bundle: "Bundle", chips: np.ndarray, tta: int | None = None, batch_size: int = 128,  # noqa: F821
                  device: str = "auto") -> np.ndarray:
    """Predict an in-memory (N, C, H, W) array of raw chips with a bundle."""
    check_chips(bundle, chips)
    return predict_chips(bundle.net, chips, None, batch_size, bundle.tta_views if tta is None else tta, device)


def load_chips(paths: Sequence[Path], crop: int, chip_size: int, channels: str) -> np.ndarray:
    """Read and preprocess image files exactly as the store does (centre crop, resize)."""
    from geocnn.data.sources.galaxy_tables import load_image

    chips = [crop_resize(load_image(Path(p), channels), crop, chip_size, source=str(p)) for p in paths]
    if not chips:
        raise GeocnnError("no images to predict")
    return np.stack(chips)
