"""Foreign state-dict layouts mapped onto timm's key names (wrapper prefixes, efficientnet_pytorch's EfficientNets)."""

from __future__ import annotations

import re

import torch
from torch import nn

PREFIXES = ("module.", "encoder.", "model.", "backbone.", "net.encoder.")
"""Wrapper prefixes stripped from every key (DDP, Lightning modules, geocnn bundles and encoder wrappers)."""

# efficientnet_pytorch (lukemelas) names inside one MBConv block -> timm's, by block type
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
       "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without wrapper prefixes ('module.', 'encoder.', 'net.encoder.', ...); keys of other parts of a wrapper
    (e.g. a bundle's 'head.*', an SSL projection head) stay as they are and are reported as unexpected."""
    out = {}
    for k, v in state.items():
        for prefix in PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def layout_of(state: dict[str, torch.Tensor]) -> str:
    """'efficientnet_pytorch' for lukemelas-style EfficientNet keys (`_conv_stem`, `_blocks.N`), else 'timm'."""
    return "efficientnet_pytorch" if "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state) \
        else "timm"


def from_efficientnet_pytorch(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict onto a timm EfficientNet (``tf_efficientnet_lite0`` and kin).

    Its flat ``_blocks.N`` list is laid onto timm's ``blocks.<stage>.<index>`` in order (the N-th block of one is the
    N-th of the other), and the names inside a block follow the block's type (depthwise-separable first block, then
    inverted residuals). Keys that do not fit stay under their own names, so the strict check reports them.
    """
    flat = [(f"blocks.{s}.{i}", type(block).__name__) for s, stage in enumerate(model.blocks)
            for i, block in enumerate(stage)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m and int(m.group(1)) < len(flat):
            where, kind = flat[int(m.group(1))]
            names = _DS if kind == "DepthwiseSeparableConv" else _IR
            part = names.get(m.group(2))
            out[f"{where}.{part}.{m.group(3)}" if part else key] = value
            continue
        top, _, rest = key.partition(".")
        out[f"{_TOP[top]}.{rest}" if top in _TOP else key] = value
    return out
