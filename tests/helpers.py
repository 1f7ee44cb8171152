"""Test helpers: small bundles written through the library's own save path."""

from __future__ import annotations

from pathlib import Path

from geocnn.data.chips import ChipSpec
from geocnn.inference.bundle import Preprocessing, Stage2, save_bundle
from geocnn.models.network import GeoNet, NetSpec


def write_bundle(path: Path, chips: ChipSpec, bands: list[str], *, domain: str = "galaxy", task: str = "classification",
                 targets: tuple[str, ...] = ("morphology",), classes: tuple[str, ...] = (), backbone: str = "test_resnet",
                 tta_views: int = 1, mean: float | list[float] = 0.0, std: float | list[float] = 1.0,
                 dtype: str = "uint8", resolution_m: float | None = None, stage2: Stage2 | None = None) -> Path:
    """An untrained bundle (tests compare its predictions with direct prediction, not with truth)."""
    means = list(mean) if isinstance(mean, list) else [mean] * len(bands)
    stds = list(std) if isinstance(std, list) else [std] * len(bands)
    spec = NetSpec(backbone=backbone, in_chans=len(bands), task=task, targets=list(targets), classes=list(classes),
                   mean=means, std=stds)
    pre = Preprocessing(domain=domain, chips=chips, bands=bands, dtype=dtype, mean=spec.mean, std=spec.std,
                        tta_views=tta_views, task=task, targets=list(targets), classes=list(classes),
                        resolution_m=resolution_m, stage2=stage2)
    return save_bundle(GeoNet(spec), path, pre)
