"""LeNet-5 (LeCun et al. 1998) and its modern ReLU/max-pool variant, registered with timm as lenet5, lenet5_relu."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from geocnn.errors import GeocnnError

MIN_SIZE = 32
"""Smallest input side in pixels: C1, S2, C3, S4 and C5 leave C5 a 1x1 map on a 32x32 input, nothing below."""

SQUASH_A, SQUASH_S = 1.7159, 2.0 / 3.0
"""The paper's squashing function f(a) = A tanh(S a) (appendix A): f(1) = 1, f(-1) = -1."""

C3_TABLE = (
    "X...XXX..XXXX.XX",
    "XX...XXX..XXXX.X",
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
)
"""Table I of LeCun et al. (1998): row i, column j is X when C3 feature map j sees S2 feature map i. Maps 0-5 see
three neighbouring S2 maps, 6-11 four neighbouring ones, 12-14 four non-neighbouring ones, 15 all six: 60
connections (the table breaks symmetry and keeps the parameter count down)."""

LAYERS = ("c1", "s2", "c3", "s4", "c5", "f6")
"""The paper's layer names, which are also the model's module names (the output layer is timm's ``fc``)."""


def connection_mask() -> torch.Tensor:
    """Table I as a (16, 6) float 0/1 tensor: [C3 map, S2 map] is 1 where they are connected."""
    return torch.tensor([[float(row[j] == "X") for row in C3_TABLE] for j in range(len(C3_TABLE[0]))])


class Squash(nn.Module):
    """The paper's sigmoid: f(a) = 1.7159 tanh(2a/3)."""

    def __init__(self) -> None:
        super().__init__()
        self.amplitude, self.slope = SQUASH_A, SQUASH_S

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.tanh(self.slope * x)


class Subsample(nn.Module):
    """The paper's S2/S4 layer: the sum of each 2x2 block times a trainable coefficient, plus a trainable bias, per
    map (2 parameters per map; the squashing follows in the layer's own module)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = F.avg_pool2d(x, 2) * 4.0
        return total * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class MaskedConv2d(nn.Conv2d):
    """A convolution whose input-output connections are limited by a fixed 0/1 ``mask`` (out, in): the weight is
    multiplied by it in every forward, so unconnected weights never act and get zero gradient."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask: torch.Tensor) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        if tuple(mask.shape) != (out_channels, in_channels):
            raise GeocnnError(f"connection mask of shape {tuple(mask.shape)} for a {in_channels} -> {out_channels} "
                              f"convolution; pass a ({out_channels}, {in_channels}) 0/1 mask")
        self.register_buffer("mask", mask.to(torch.float32).view(out_channels, in_channels, 1, 1).clone())
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def stage(layer: nn.Module, act: nn.Module) -> nn.Sequential:
    """One of the paper's layers: its weights (conv, subsampling or full connection), then the activation."""
    return nn.Sequential(OrderedDict(layer=layer, act=act))


class LeNet5(nn.Module):
    """LeNet-5 with timm's model interface.

    ``classic=True`` is the network of LeCun et al. (1998), "Gradient-based learning applied to document
    recognition": C1 (6 maps, 5x5) - S2 (2x2 sum-pooling times a trainable coefficient plus a trainable bias per map)
    - C3 (16 maps, 5x5, connected to S2's maps by Table I, :data:`C3_TABLE`) - S4 (as S2) - C5 (120 maps, 5x5) - F6
    (84 units), each followed by the squashing function 1.7159 tanh(2a/3), weights drawn from U(-2.4/F, 2.4/F) with F
    the unit's fan-in (subsampling coefficients start at 1/4: a plain average). The paper's output layer of
    Euclidean radial basis functions (fixed 7x12 bitmaps of the characters) is replaced by timm's classifier, a
    linear layer ``fc`` on F6's 84 units, so any number of classes and any loss fit. ``classic=False`` is the
    modern variant: ReLU, 2x2 max-pooling, C3 connected to all of S2's maps, default PyTorch initialisation.

    Inputs of side 32 give C5 a 1x1 map, as in the paper; larger inputs are accepted and C5's maps are averaged over
    space before F6 (so any chip of at least 32 px works); smaller ones are refused. ``num_features`` is F6's width
    (84): what the model returns with ``num_classes=0``; ``forward_features`` returns C5's maps (B, 120, H', W').

    Args:
        num_classes: output classes (0: no classifier; the forward returns F6's 84 features).
        in_chans: input bands seen by C1 (the paper: 1). C3's connection table is unchanged, since it connects S2's
            6 maps whatever C1 reads.
        classic: the 1998 network (True) or the modern variant (False).
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, classic: bool = True, drop_rate: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__()
        if kwargs.pop("global_pool", "avg") not in ("avg", ""):
            raise GeocnnError("LeNet-5 averages C5's maps over space; global_pool other than 'avg' is not supported")
        if kwargs:
            raise GeocnnError(f"LeNet-5 takes no arguments {sorted(kwargs)}; it takes num_classes, in_chans, "
                              "classic and drop_rate")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.classic = classic
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = 84
        self.grad_checkpointing = False
        self.min_size = MIN_SIZE

        def act() -> nn.Module:
            return Squash() if classic else nn.ReLU(inplace=True)

        def pool(channels: int) -> nn.Module:
            return Subsample(channels) if classic else nn.MaxPool2d(2)

        c3_mask = connection_mask() if classic else torch.ones(16, 6)
        self.c1 = stage(nn.Conv2d(in_chans, 6, 5), act())
        self.s2 = stage(pool(6), act()) if classic else stage(pool(6), nn.Identity())
        self.c3 = stage(MaskedConv2d(6, 16, 5, c3_mask), act())
        self.s4 = stage(pool(16), act()) if classic else stage(pool(16), nn.Identity())
        self.c5 = stage(nn.Conv2d(16, 120, 5), act())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.f6 = stage(nn.Linear(120, 84), act())
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(84, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            {"num_chs": 6, "reduction": 1, "module": "c1"},
            {"num_chs": 6, "reduction": 2, "module": "s2"},
            {"num_chs": 16, "reduction": 2, "module": "c3"},
            {"num_chs": 16, "reduction": 4, "module": "s4"},
            {"num_chs": 120, "reduction": 4, "module": "c5"},
        ]
        if classic:
            self.init_paper()

    @torch.no_grad()
    def init_paper(self) -> None:
        """The paper's initialisation: weights and biases from U(-2.4/F, 2.4/F), F the fan-in of the unit (for C3
        the inputs its connection table gives it); subsampling coefficients 1/4 (the mean of the block), biases 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                fan_in = w[0].numel() * torch.ones(w.shape[0])
                if isinstance(module, MaskedConv2d):
                    fan_in = module.mask.sum(dim=(1, 2, 3)) * w[0, 0].numel()
                bound = (2.4 / fan_in).view(-1, *[1] * (w.ndim - 1))
                w.copy_((torch.rand_like(w) * 2 - 1) * bound)
                if isinstance(module, MaskedConv2d):
                    w.mul_(module.mask)
                if module.bias is not None:
                    module.bias.copy_((torch.rand_like(module.bias) * 2 - 1) * bound.flatten())
            elif isinstance(module, Subsample):
                module.weight.fill_(0.25)
                module.bias.zero_()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning rates and partial unfreezing: stem = C1; blocks = (S2, C3),
        (S4, C5), F6 (the classifier, unmatched, comes last as in timm)."""
        return {"stem": r"^c1\.", "blocks": [(r"^(?:s2|c3)\.", (0,)), (r"^(?:s4|c5)\.", (1,)), (r"^f6\.", (2,))]}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Accepted for timm's interface; LeNet-5 is too small to need it."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The output layer (``fc``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new output layer for ``num_classes`` classes (0: none, the forward returns F6's 84 features)."""
        if global_pool not in (None, "avg", ""):
            raise GeocnnError("LeNet-5 averages C5's maps over space; global_pool other than 'avg' is not supported")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """C1 to C5: (B, in_chans, H, W) -> C5's maps (B, 120, H', W'), H' = 1 for H = 32."""
        h, w, least = x.shape[-2], x.shape[-1], self.min_size
        if h < least or w < least:
            raise GeocnnError(f"LeNet-5 got a {h}x{w} input; {least}x{least} is the minimum (C5 needs a 5x5 map "
                              f"from S4). Set data.chip_size to {least} or more.")
        return self.c5(self.s4(self.c3(self.s2(self.c1(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """C5's maps -> spatial average -> F6 (84) -> dropout -> classifier; ``pre_logits``: stop at F6."""
        x = self.f6(self.pool(x))
        if pre_logits:
            return x
        return self.fc(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def trainable_parameters(model: LeNet5) -> dict[str, int]:
    """Trainable parameters per layer (c1 ... f6, fc), counting only the weights a connection mask lets act (the
    paper's count: C3 has 1,516, not 16 x 6 x 25 + 16)."""
    counts: dict[str, int] = {}
    for name in (*LAYERS, "fc"):
        total = 0
        for module in getattr(model, name).modules():
            for pname, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                live = module.mask.expand_as(p) if isinstance(module, MaskedConv2d) and pname == "weight" else None
                total += int(live.sum()) if live is not None else p.numel()
        counts[name] = total
    return counts


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # mean/std map white paper (0) to -0.1 and black ink (1) to 1.175, the paper's input scaling (mean ~0, var ~1)
    return {"url": "", "num_classes": 10, "input_size": (1, 32, 32), "pool_size": (1, 1), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.1 / 1.275,), "std": (1 / 1.275,), "first_conv": "c1.layer",
            "classifier": "fc", "license": "mit", **kwargs}


default_cfgs = generate_default_cfgs({"lenet5": _cfg(), "lenet5_relu": _cfg()})


def _create(variant: str, pretrained: bool, classic: bool, **kwargs: Any) -> LeNet5:
    if pretrained:
        raise GeocnnError(f"timm model {variant!r} has no pretrained weights; use model.weights=random (or a "
                          "bundle / state dict of your own)")
    return build_model_with_cfg(LeNet5, variant, pretrained, classic=classic,
                                feature_cfg={"out_indices": (0, 1, 2, 3, 4)}, **kwargs)


@register_model
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5 as in LeCun et al. (1998): squashing tanh, trainable subsampling, Table I connections; linear output."""
    return _create("lenet5", pretrained, classic=True, **kwargs)


@register_model
def lenet5_relu(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5's layer sizes the modern way: ReLU, 2x2 max-pooling, C3 connected to all of S2's maps."""
    return _create("lenet5_relu", pretrained, classic=False, **kwargs)
