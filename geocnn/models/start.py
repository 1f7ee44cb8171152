"""A run's starting point checked before any data is read: the backbone named or taken from the weights, and the
weights present in the local cache (else the command that fetches them)."""

from __future__ import annotations

from typing import TypeVar

import timm

from geocnn.config.common import ModelConfig
from geocnn.config.load import derive
from geocnn.errors import GeocnnError
from geocnn.models.backbones import check_backbone
from geocnn.models.weight_sources import Located, locate
from geocnn.models.weights import LoadReport, load_weights, match_bands

C = TypeVar("C")


def resolve_start(model: ModelConfig) -> tuple[str, Located]:
    """The timm architecture and the located weights of a model section; refuses weights made for another
    architecture and weights that are not on this machine (naming the cache folder and `geocnn weights fetch`)."""
    check_backbone(model.backbone)
    spec = model.weights_spec
    if model.transfer == "from_scratch" or not spec.pretrained:
        if model.backbone == "auto":
            raise GeocnnError("model.backbone 'auto' needs model.weights other than random and a transfer mode other "
                              "than from_scratch; name the timm model")
        return model.backbone, locate("random", model.backbone)
    found = locate(spec, model.backbone)
    found.require_cached()
    if found.kind == "hf_hub" and found.arch is None:  # config.json cached but no architecture read
        raise GeocnnError(f"model.weights={model.weights!r}: its config.json names no timm architecture")
    arch = found.arch
    if model.backbone == "auto":
        if not arch:
            raise GeocnnError(f"model.weights={model.weights!r} does not say which architecture it is for; set "
                              "model.backbone to the timm model it was saved from")
        check_backbone(arch, "the architecture of model.weights")
        return arch, found
    if arch and arch.split(".")[0] != model.backbone.split(".")[0]:
        raise GeocnnError(f"model.weights={model.weights!r} was made for {arch!r}, but model.backbone is "
                          f"{model.backbone!r}; set model.backbone: {arch} (or leave model.backbone out)")
    return model.backbone, found


def preflight(arch: str, found: Located, partial: bool) -> LoadReport:
    """Load the weights once into a 3-band encoder of ``arch`` (before any data is read): a pickle, a damaged file
    or weights of another architecture fail here, not after ingest."""
    encoder = timm.create_model(arch, pretrained=False, num_classes=0)
    return load_weights(encoder, found, [f"band{i + 1}" for i in range(3)], partial, "first_conv")


def check_model(cfg: C) -> C:
    """The experiment with model.backbone resolved ('auto' -> the weights' architecture), validated again; raises
    a GeocnnError before any data is read when the weights are unusable or not cached."""
    model: ModelConfig = cfg.model  # type: ignore[attr-defined]
    arch, found = resolve_start(model)
    if found.kind != "random":
        preflight(arch, found, model.weights_partial)
    if arch != model.backbone:
        return derive(cfg, {"model.backbone": arch})  # type: ignore[arg-type]
    return cfg


def check_bands(model: ModelConfig, data_bands: list[str]) -> str:
    """How the data's bands will meet the weights' (a sentence); a mismatch model.band_match refuses raises here,
    once the store's bands are known and before a run is opened or a network trained."""
    if model.transfer == "from_scratch" or not model.weights_spec.pretrained:
        return "random initialisation"
    found = locate(model.weights_spec, model.backbone)
    return match_bands(data_bands, found.bands, found.sensor, model.band_match)[2]
