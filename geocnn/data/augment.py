"""Batch augmentation on tensors (rotation, flips, shift, zoom, brightness) and test-time views."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from geocnn.config import AugmentConfig


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly transform a normalised batch (B, C, H, W) on its own device, one affine warp per batch.

    Flips and quarter turns are exact (each image its own, chosen with ``torch.where``, no host loop); rotation
    0-360 degrees, translation and log-uniform zoom are folded into one affine grid so the image is resampled
    once (reflection padding keeps the sky texture at the borders); brightness scales each image by a factor in
    [1 - b, 1 + b].
    """
    b = x.shape[0]
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:  # drawn where the generator lives: no host round trip on a GPU
        if generator is None or generator.device == dev:
            return torch.rand(*shape, generator=generator, device=dev)
        return torch.rand(*shape, generator=generator).to(dev, non_blocking=True)

    need_warp = cfg.rotate or cfg.translate > 0 or cfg.zoom > 0
    if cfg.flip:
        flip_h = rand(b) < 0.5
        x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
        flip_v = rand(b) < 0.5
        x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
    if cfg.rot90:
        if x.shape[-1] == x.shape[-2]:  # all four turns, each image keeps its own (no per-image host loop)
            k = (rand(b) * 4).long().clamp(max=3)[:, None, None, None]
            turned = x
            out = x
            for r in range(1, 4):
                turned = torch.rot90(turned, 1, dims=(-2, -1))
                out = torch.where(k == r, turned, out)
            x = out
    if need_warp:
        angle = rand(b) * 2 * math.pi if cfg.rotate else torch.zeros(b, device=dev)
        scale = torch.exp((rand(b) * 2 - 1) * math.log1p(cfg.zoom)) if cfg.zoom > 0 else torch.ones(b, device=dev)
        shift = (rand(b, 2) * 2 - 1) * cfg.translate * 2  # grid coordinates span [-1, 1]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.brightness > 0:
        factor = 1 + (rand(b) * 2 - 1) * cfg.brightness
        x = x * factor[:, None, None, None].to(x.dtype)
    if cfg.band_brightness > 0:
        factor = 1 + (rand(b, x.shape[1]) * 2 - 1) * cfg.band_brightness
        x = x * factor[:, :, None, None].to(x.dtype)
    return x


def tta_views(x: torch.Tensor, n_views: int) -> list[torch.Tensor]:
    """Views of a batch for test-time averaging.

    n in {1, 2, 4, 8}: the exact dihedral views (rot90 x flips, no resampling); any other n: n rotations by
    360/n degrees.
    """
    if n_views in (1, 2, 4, 8):
        views = []
        for k in range(4 if n_views >= 4 else 1):
            r = torch.rot90(x, k, dims=(-2, -1))
            views.append(r)
            if n_views in (2, 8):
                views.append(r.flip(-1))
        return views[:n_views]
    out = []
    for i in range(n_views):
        a = torch.full((x.shape[0],), 2 * math.pi * i / n_views, device=x.device, dtype=x.dtype)
        theta = torch.stack([torch.stack([a.cos(), -a.sin(), torch.zeros_like(a)], 1),
                             torch.stack([a.sin(), a.cos(), torch.zeros_like(a)], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False))
    return out
