"""timm encoders: creation by name, freezing for a transfer mode, and layer-wise lr decay parameter groups."""

from __future__ import annotations

import difflib

import timm
from timm.models._manipulate import group_with_matcher
from torch import nn

from geocnn.errors import GeocnnError
from geocnn.models import lenet  # noqa: F401  (registers lenet5 and lenet5_relu with timm, so names find them)
from geocnn.models.weight_sources import Located, locate
from geocnn.models.weights import LoadReport, load_weights


def check_backbone(name: str, key: str = "model.backbone") -> None:
    """Refuse a name timm does not know, suggesting the closest names it does (``resnt18`` -> ``resnet18``).

    'auto' (the architecture of model.weights) passes; :func:`geocnn.models.start.check_model` resolves it.
    """
    if name == "auto":
        return
    arch = name.split(".")[0]
    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    close += [n for n in timm.list_models(f"*{arch.split('_')[0]}*") if n not in close][:5 - len(close)]
    hint = f"Did you mean {', '.join(close)}?" if close else "No timm model has a similar name."
    raise GeocnnError(f"{key}={name!r} is not a timm model. {hint} (`python -c \"import timm; "
                      "print(timm.list_models('resnet*'))\"` lists names.)")


def create_encoder(name: str, in_chans: int, weights: str | Located = "random", data_bands: list[str] | None = None,
                   partial: bool = False, band_match: str = "auto") -> nn.Module:
    """A timm model without classifier (``num_classes=0``) whose forward returns pooled features, started from
    ``weights`` (any `model.weights` spec, see :func:`geocnn.models.weight_sources.locate`)."""
    return start_encoder(name, in_chans, weights, data_bands, partial, band_match)[0]


def start_encoder(name: str, in_chans: int, weights: str | Located = "random", data_bands: list[str] | None = None,
                  partial: bool = False, band_match: str = "auto") -> tuple[nn.Module, LoadReport]:
    """The encoder and the report of its weights load (counts, checksum, band matching).

    Args:
        name: timm model name.
        in_chans: number of input bands.
        weights: a `model.weights` spec or its located form.
        data_bands: the data's band names in chip order (matched by name to the weights' bands); None: unnamed.
        partial: accept a partial match (else anything but a complete one is refused with the counts).
        band_match: 'auto', 'name' or 'first_conv' (see ModelConfig.band_match).
    """
    check_backbone(name)
    found = weights if isinstance(weights, Located) else locate(weights, name)
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    bands = list(data_bands) if data_bands else [f"band{i + 1}" for i in range(in_chans)]
    if len(bands) != in_chans:
        raise GeocnnError(f"{len(bands)} band names for {in_chans} input bands")
    return model, load_weights(model, found, bands, partial, band_match)


def block_ids(encoder: nn.Module) -> dict[str, int]:
    """Parameter name -> coarse block index (0 = stem, increasing with depth), from timm's group_matcher."""
    if not hasattr(encoder, "group_matcher"):
        names = [n for n, _ in encoder.named_parameters()]
        return {n: i * 4 // max(len(names), 1) for i, n in enumerate(names)}
    groups = group_with_matcher(encoder.named_parameters(), encoder.group_matcher(coarse=True))
    return {name: int(gid) for gid, names in groups.items() for name in names}


def apply_transfer(encoder: nn.Module, mode: str, n_blocks: int) -> None:
    """Freeze encoder parameters for a transfer mode: linear_probe all; partial all but the last ``n_blocks``."""
    ids = block_ids(encoder)
    top = max(ids.values())
    for name, p in encoder.named_parameters():
        if mode == "linear_probe":
            p.requires_grad_(False)
        elif mode == "partial":
            p.requires_grad_(ids[name] > top - n_blocks)
        else:
            p.requires_grad_(True)


def encoder_param_groups(encoder: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """Optimiser groups for trainable encoder parameters: lr * layer_decay**(depth from the top).

    Biases and norm weights (1-D) get no weight decay, as in timm.
    """
    ids = block_ids(encoder)
    top = max(ids.values())
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in encoder.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1
        g = groups.setdefault((ids[name], decay), {
            "params": [], "lr": lr * layer_decay ** (top + 1 - ids[name]),
            "weight_decay": weight_decay if decay else 0.0, "name": f"block{ids[name]}"})
        g["params"].append(p)
    return list(groups.values())
