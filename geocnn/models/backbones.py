"""timm encoders: creation by name, freezing for a transfer mode, and layer-wise lr decay parameter groups."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
from timm.models._manipulate import group_with_matcher
from torch import nn

from geocnn.errors import GeocnnError
from geocnn.models.weights import load_local_weights


def check_backbone(name: str, key: str = "model.backbone") -> None:
    """Refuse a name timm does not know, suggesting the closest names it does (``resnt18`` -> ``resnet18``)."""
    arch = name.split(".")[0]
    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    close += [n for n in timm.list_models(f"*{arch.split('_')[0]}*") if n not in close][:5 - len(close)]
    hint = f"Did you mean {', '.join(close)}?" if close else "No timm model has a similar name."
    raise GeocnnError(f"{key}={name!r} is not a timm model. {hint} (`python -c \"import timm; "
                      "print(timm.list_models('resnet*'))\"` lists names.)")


def create_encoder(name: str, in_chans: int, weights: str = "random") -> nn.Module:
    """A timm model without classifier (``num_classes=0``) whose forward returns pooled features.

    Args:
        name: timm model name.
        in_chans: number of input bands.
        weights: 'random', 'timm' (timm's pretrained weights, needs a network or a filled HF cache), or a
            path to a local ``.safetensors`` / ``.pth`` state dict.
    """
    check_backbone(name)
    try:
        model = timm.create_model(name, pretrained=weights == "timm", num_classes=0, in_chans=in_chans)
    except Exception as exc:  # noqa: BLE001 - network or hub errors, reworded
        if weights == "timm":
            raise GeocnnError(f"could not fetch timm pretrained weights for {name!r} ({exc}). Without a network use "
                              "model.weights=random or a local weights file.") from None
        raise
    if weights not in ("random", "timm"):
        load_local_weights(model, Path(weights), in_chans)
    return model


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
