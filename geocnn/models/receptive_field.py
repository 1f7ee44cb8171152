"""Receptive fields measured by gradients: the input pixels one output position of a layer actually depends on.

The field of a tapped tensor is the bounding box of the non-zero gradient of its centre position (summed over
channels) with respect to the input, summed in absolute value over a few random inputs. It is measured on a float64
copy of the network in eval mode whose weights are all redrawn at random: the field belongs to the architecture, and
trained or initial weights can hide paths (timm's ResNets start every residual branch's last norm at zero, which
leaves only the shortcuts: resnet18 would measure 11 px instead of 435). Global context inside the network
(squeeze-excitation's spatial mean, group-norm statistics, adaptive pooling to 1x1) is held fixed while measuring,
since it would make every position depend on every pixel: the field counts the local paths (convolution and pooling
windows, residual branches). A field that touches the input's border is measured again on an input twice as large,
up to ``max_probe`` pixels; one still clipped there is a lower bound.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

Forward = Callable[[nn.Module, torch.Tensor], Any]
"""How to run a network on a normalised input batch (``lambda net, x: net(x)`` for a timm model)."""


@dataclass(frozen=True)
class Tap:
    """Where to read a tensor: the input (``where='in'``) or output (``'out'``) of the module named ``module``."""

    key: str
    module: str
    where: str = "out"


@dataclass(frozen=True)
class Field:
    """A measured receptive field: the side of the support's bounding box, and whether it is exact."""

    height: int
    width: int
    exact: bool
    """False: the field still touched the border of the largest input probed (``probe``): a lower bound."""
    probe: int
    """Side in pixels of the input it was measured on."""

    @property
    def side(self) -> int:
        """The longer side of the bounding box in pixels."""
        return max(self.height, self.width)

    def text(self) -> str:
        """``435``, ``7x3`` or ``>=1024``."""
        size = str(self.height) if self.height == self.width else f"{self.height}x{self.width}"
        return size if self.exact else f">={size}"


_REDUCTIONS = {torch.mean, torch.Tensor.mean, torch.sum, torch.Tensor.sum, torch.amax, torch.Tensor.amax,
               torch.amin, torch.Tensor.amin, torch.std, torch.Tensor.std, torch.var, torch.Tensor.var,
               torch.norm, torch.Tensor.norm, torch.linalg.vector_norm, torch.logsumexp, torch.Tensor.logsumexp}
_NORMS = {torch.norm, torch.Tensor.norm, torch.linalg.vector_norm}
_POOLS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}


class _LocalPaths(TorchFunctionMode):
    """Detaches global context: reductions over both spatial axes of a 4-D tensor, adaptive pooling to 1x1, and
    group-norm statistics; ``held`` tells whether the network had any."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.group_norm:
            self.held = True
            return _group_norm_fixed_statistics(*args, **kwargs)
        out = func(*args, **kwargs)
        if self._global(func, args, kwargs):
            self.held = True
            if isinstance(out, tuple):
                return type(out)([o.detach() if isinstance(o, torch.Tensor) else o for o in out])
            return out.detach()
        return out

    @staticmethod
    def _global(func: Any, args: tuple, kwargs: dict) -> bool:
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            return False
        if func in _POOLS:
            size = args[1] if len(args) > 1 else kwargs.get("output_size")
            return size in (1, (1, 1), [1, 1])
        if func not in _REDUCTIONS:
            return False
        at = 2 if func in _NORMS else 1  # torch.norm(x, p, dim), vector_norm(x, ord, dim); others (x, dim)
        dim = kwargs.get("dim", args[at] if len(args) > at else None)
        if isinstance(dim, bool):  # std/var(x, unbiased): a full reduction
            dim = None
        if dim is None:
            return True
        dims = {d % 4 for d in ([dim] if isinstance(dim, int) else dim)}
        return 0 not in dims and len(dims & {1, 2, 3}) >= 2


def _group_norm_fixed_statistics(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                                 bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Group norm whose per-group mean and variance are constants (no gradient flows through them)."""
    groups = x.reshape(x.shape[0], num_groups, -1)
    mean = groups.mean(-1, keepdim=True).detach()
    var = groups.var(-1, unbiased=False, keepdim=True).detach()
    out = ((groups - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


class _Enough(Exception):
    """Raised by a hook once every pending tap is captured: the rest of the forward is not needed."""


def probe_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A float64 eval-mode copy with every weight redrawn (normal, std 1/sqrt(fan-in); 1-D parameters uniform in
    [0.5, 1.5]), norm statistics reset to mean 0 / variance 1, and no in-place activations."""
    probe = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in probe.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / max(p[0].numel(), 1) ** 0.5)
            else:
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)
        for name, buf in probe.named_buffers():
            if name.endswith("running_mean"):
                buf.zero_()
            elif name.endswith("running_var"):
                buf.fill_(1.0)
    for module in probe.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    return probe


def support_box(grad: torch.Tensor) -> tuple[int, int, bool]:
    """Height and width of the bounding box of non-zero ``grad`` (B, C, H, W), and whether it touches the border."""
    support = grad.abs().sum((0, 1)) > 0
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    if len(rows) == 0:
        return 0, 0, False
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    h, w = support.shape
    return r1 - r0 + 1, c1 - c0 + 1, r0 == 0 or c0 == 0 or r1 == h - 1 or c1 == w - 1


def _capture(probe: nn.Module, forward: Forward, taps: list[Tap], x: torch.Tensor,
             context: _LocalPaths) -> dict[str, torch.Tensor]:
    """Run ``forward`` on ``x`` and keep each tap's tensor (stopping once all are held)."""
    held: dict[str, torch.Tensor] = {}
    pending = {t.key for t in taps}
    handles = []

    def keep(key: str, value: Any) -> None:
        if key in pending and isinstance(value, torch.Tensor) and value.ndim == 4:
            held[key] = value
            pending.discard(key)
            if not pending:
                raise _Enough

    modules = dict(probe.named_modules())
    for tap in taps:
        module = modules[tap.module]
        if tap.where == "in":
            handles.append(module.register_forward_pre_hook(lambda m, a, k=tap.key: keep(k, a[0] if a else None)))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, k=tap.key: keep(k, o)))
    try:
        with context:
            forward(probe, x)
    except _Enough:
        pass
    finally:
        for h in handles:
            h.remove()
    return held


def measure(model: nn.Module, forward: Forward, taps: Iterable[Tap], in_chans: int, start: int,
            max_probe: int = 1024, batch: int = 2, seed: int = 0) -> tuple[dict[str, Field], bool]:
    """Receptive fields of the tapped tensors' centre positions (see the module docstring).

    Args:
        model: the network (not changed; a redrawn float64 copy is probed).
        forward: how to run it on a normalised input batch.
        taps: the tensors to measure (4-D outputs or inputs of named modules).
        in_chans: input bands.
        start: side in pixels of the first input probed (the chip size).
        max_probe: largest input side probed; fields still clipped there are lower bounds.
        batch: random inputs whose gradients are summed.
        seed: seed of the redrawn weights and the inputs.

    Returns:
        The field of every tap that produced a 4-D tensor, and whether global context was held fixed.
    """
    probe = probe_copy(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    pending = list(taps)
    fields: dict[str, Field] = {}
    context = _LocalPaths()
    side = start
    while pending:
        x = torch.randn(batch, in_chans, side, side, generator=gen, dtype=torch.float64).requires_grad_(True)
        try:
            held = _capture(probe, forward, pending, x, context)
        except (RuntimeError, ValueError):  # an architecture that refuses this input size: keep what is measured
            break
        still: list[Tap] = []
        for tap in pending:
            t = held.get(tap.key)
            if t is None or not t.requires_grad:
                continue
            centre = t[:, :, t.shape[2] // 2, t.shape[3] // 2].sum()
            (grad,) = torch.autograd.grad(centre, x, retain_graph=True, allow_unused=True)
            if grad is None:
                continue
            h, w, clipped = support_box(grad)
            fields[tap.key] = Field(h, w, not clipped, side)
            if clipped:
                still.append(tap)
        pending = still
        if side * 2 > max_probe:
            break
        side *= 2
    return fields, context.held
