"""Self-supervised views: two random, domain-appropriate transforms of a normalised chip batch (tensors only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geocnn.config import AugmentConfig, ViewsConfig
from geocnn.data.augment import augment_batch

DOMAIN_VIEWS: dict[str, dict[str, float | bool]] = {
    "galaxy": {"rotate": True, "flip": True, "rot90": False, "zoom": 0.15, "translate": 0.05, "brightness": 0.2,
               "band_brightness": 0.0, "noise": 0.1},
    "earth": {"rotate": False, "flip": True, "rot90": True, "zoom": 0.1, "translate": 0.1, "brightness": 0.1,
              "band_brightness": 0.2, "noise": 0.05},
}
"""Defaults per domain: galaxies have no preferred orientation and their colour is physics (no band jitter);
overhead chips keep north-up pixels exact (dihedral turns) and vary band by band with sensor and season."""


@dataclass(frozen=True)
class ViewPlan:
    """How one view is drawn: the batch augmentation, then Gaussian noise of std ``noise`` (normalised units)."""

    augment: AugmentConfig
    noise: float

    def to_dict(self) -> dict[str, float | bool]:
        """The resolved knobs (for the encoder card)."""
        keys = ("rotate", "flip", "rot90", "zoom", "translate", "brightness", "band_brightness")
        return {**{k: getattr(self.augment, k) for k in keys}, "noise": self.noise}


def view_plan(domain: str, views: ViewsConfig) -> ViewPlan:
    """The views of a domain, with every knob set in ``pretrain.views`` overriding the domain default."""
    knobs = {**DOMAIN_VIEWS.get(domain, DOMAIN_VIEWS["galaxy"]),
             **{k: v for k, v in views.model_dump().items() if v is not None}}
    noise = float(knobs.pop("noise"))
    return ViewPlan(AugmentConfig.model_validate(knobs), noise)


def random_view(x: torch.Tensor, plan: ViewPlan, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of a normalised batch (B, C, H, W): :func:`augment_batch` plus Gaussian noise."""
    out = augment_batch(x, plan.augment, generator)
    if plan.noise > 0:
        if generator is None or generator.device == out.device:
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        else:
            noise = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
        out = out + plan.noise * noise
    return out


def two_views(x: torch.Tensor, plan: ViewPlan, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views of the same batch: the positive pairs of contrastive and BYOL losses."""
    return random_view(x, plan, generator), random_view(x, plan, generator)
