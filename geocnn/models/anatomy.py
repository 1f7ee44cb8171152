"""A network's anatomy measured on the real model: per stage its output shape, stride, receptive field, parameters
(trainable under a transfer mode) and multiply-adds, with warnings about chips too small for the network.

Stages are timm's ``feature_info`` entries (see :func:`stage_plan`): the stem is everything before the first stage,
each stage row runs from the previous stage's output to its own (EfficientNet's unlisted blocks join the next listed
one), and the head row is what follows the last stage (global pooling, GeoNet's dropout and head). A model without
``feature_info`` has one row per top-level module. Shapes come from forward hooks on a dummy chip, multiply-adds from
torch's ``FlopCounterMode`` (MACs = FLOPs / 2), receptive fields from gradients
(:mod:`geocnn.models.receptive_field`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from geocnn.errors import GeocnnError
from geocnn.models.backbones import apply_transfer
from geocnn.models.network import GeoNet
from geocnn.models.receptive_field import Field, Forward, Tap, measure

TRANSFERS = ("from_scratch", "linear_probe", "partial", "full")
STEM, HEAD = "stem", "head"


@dataclass
class Row:
    """One stage (or, with ``layers``, one leaf layer) of the network."""

    name: str
    kind: str
    """'stage' or 'layer'."""
    stage: str
    """The stage row this row belongs to (its own name for a stage)."""
    modules: str
    """Stage: the modules it runs; layer: the layer's type (kernel/stride of convolutions and pools)."""
    shape: tuple[int, ...]
    """Output shape without the batch: (C, H, W), or (C,) after global pooling."""
    stride: float | None
    """Input side / output side (None without a spatial output)."""
    field: Field | None
    """Measured receptive field of one output position (None: no spatial output, or not measured)."""
    params: int = 0
    trainable: int = 0
    macs: int = 0

    @property
    def frozen(self) -> int:
        """Parameters not trained under the transfer mode."""
        return self.params - self.trainable

    @property
    def spatial(self) -> tuple[int, int] | None:
        """(H, W) of the output, None without spatial axes."""
        return (self.shape[-2], self.shape[-1]) if len(self.shape) == 3 else None

    def shape_text(self) -> str:
        """``64 x 16 x 16``."""
        return " x ".join(str(s) for s in self.shape)

    def field_text(self) -> str:
        """``435``, ``>=1024``, ``global`` (the head, after global pooling) or ``-`` (not measured)."""
        if self.field is not None:
            return self.field.text()
        return "global" if self.stage == HEAD else "-"


@dataclass
class Anatomy:
    """What a network does to a chip: rows (stages, optionally leaf layers), totals, warnings and notes."""

    title: str
    in_chans: int
    chip: int
    transfer: str | None
    """The transfer mode trainable parameters are counted under (None: the model's own requires_grad)."""
    rows: list[Row]
    params: int
    trainable: int
    macs: int
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def frozen(self) -> int:
        """Parameters not trained under the transfer mode."""
        return self.params - self.trainable

    @property
    def stages(self) -> list[Row]:
        """The stage rows (stem, stages, head)."""
        return [r for r in self.rows if r.kind == "stage"]

    def stage(self, name: str) -> Row:
        """The stage row called ``name``."""
        for row in self.stages:
            if row.name == name:
                return row
        raise KeyError(f"no stage {name!r}; stages are {[r.name for r in self.stages]}")

    def to_frame(self) -> pd.DataFrame:
        """One row per table row: name, kind, stage, modules, output, stride, receptive field, parameters, MACs."""
        records = []
        for r in self.rows:
            hw = r.spatial
            records.append({
                "name": r.name, "kind": r.kind, "stage": r.stage, "modules": r.modules, "output": r.shape_text(),
                "channels": r.shape[0] if r.shape else None, "height": hw[0] if hw else None,
                "width": hw[1] if hw else None, "stride": r.stride,
                "rf_px": r.field.side if r.field else None, "rf": r.field_text(),
                "rf_exact": r.field.exact if r.field else None,
                "params": r.params, "trainable": r.trainable, "frozen": r.frozen, "macs": r.macs})
        frame = pd.DataFrame.from_records(records)
        for column in ("channels", "height", "width", "rf_px"):
            frame[column] = frame[column].astype("Int64")
        return frame

    def to_text(self) -> str:
        """An aligned table (as torchinfo prints), the totals, the notes and the warnings."""
        head = (f"{'Stage / layer':<26} {'Modules / type':<24} {'Output':>16} {'Stride':>6} {'RF px':>7} "
                f"{'Params':>12} {'Trainable':>12} {'Frozen':>12} {'MACs':>9}")
        rule = "=" * len(head)
        lines = [self.title, rule, head, "-" * len(head)]
        for r in self.rows:
            name = r.name if r.kind == "stage" else f"  {r.name}"
            stride = "-" if r.stride is None else (f"{r.stride:g}" if r.stride == int(r.stride) else f"{r.stride:.2f}")
            lines.append(f"{_cut(name, 26):<26} {_cut(r.modules, 24):<24} {r.shape_text():>16} {stride:>6} "
                         f"{r.field_text():>7} {r.params:>12,} {r.trainable:>12,} {r.frozen:>12,} "
                         f"{_si(r.macs):>9}")
        mode = f"transfer {self.transfer}" if self.transfer else "requires_grad as the model has it"
        lines += [rule, f"Params: {self.params:,} total, {self.trainable:,} trainable, {self.frozen:,} frozen ({mode})",
                  f"MACs: {_si(self.macs)} per {self.in_chans}-band {self.chip} x {self.chip} chip (one forward pass)"]
        lines += [f"Note: {n}" for n in self.notes]
        if self.warnings:
            lines.append("Warnings:")
            lines += [f"  - {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"


def _si(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


# ------------------------------------------------------------------------------------------------------- stages
def _has_param_children(module: nn.Module) -> bool:
    return any(True for child in module.children() for _ in child.parameters())


@dataclass(frozen=True)
class StagePlan:
    """Where the stem ends (a module's input or output) and the modules whose outputs end the stages."""

    stem_end: tuple[str, str] | None
    """(module name, 'in' or 'out'); None for a model without stages."""
    stages: list[str]


def stage_plan(model: nn.Module) -> StagePlan:
    """The stages of ``model`` (a timm model or a GeoNet): timm's ``feature_info`` modules, except that a first entry
    that is a bare activation or norm (no submodule with parameters), or lies in a module named ``stem``, belongs to
    the stem; the stem ends where the first stage block starts (or, when the stages are single layers as in VGG, at
    that first entry). A model without ``feature_info``: one stage per top-level module."""
    encoder, prefix = (model.encoder, "encoder.") if isinstance(model, GeoNet) else (model, "")
    modules = dict(encoder.named_modules())
    info = getattr(encoder, "feature_info", None)
    names: list[str] = []
    if isinstance(info, list) and all(isinstance(d, dict) and "module" in d for d in info):
        names = [str(d["module"]) for d in info if str(d["module"]) in modules]
    if not names:
        names = [n for n, _ in encoder.named_children()]
        return StagePlan((prefix + names[0], "in") if names else None, [prefix + n for n in names])
    tap = None
    if len(names) > 1 and ("stem" in names[0].split(".") or not _has_param_children(modules[names[0]])):
        tap = names.pop(0)
    if tap is None or _has_param_children(modules[names[0]]):
        return StagePlan((prefix + names[0], "in"), [prefix + n for n in names])
    return StagePlan((prefix + tap, "out"), [prefix + n for n in names])


def _pair(value: Any) -> tuple[int, int]:
    return (value[0], value[-1]) if isinstance(value, (tuple, list)) else (value, value)


def _layer_type(module: nn.Module) -> str:
    """``Conv2d 3x3/2``, ``MaxPool2d 3x3/2``, ``Conv2d 1x1`` or the class name."""
    kind = type(module).__name__
    kernel, stride = getattr(module, "kernel_size", None), getattr(module, "stride", None)
    if kernel is None or stride is None:
        return kind
    (kh, kw), (sh, sw) = _pair(kernel), _pair(stride)
    text = f"{kind} {kh}x{kw}"
    if (sh, sw) != (1, 1):
        text += f"/{sh}" if sh == sw else f"/{sh}x{sw}"
    return text


# -------------------------------------------------------------------------------------------------------- trace
@dataclass
class _Trace:
    """What one hooked forward saw: the segment each module first ran in, boundary shapes and running FLOPs."""

    segment_of: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    boundary_shape: dict[int, tuple[int, ...]] = field(default_factory=dict)
    boundary_flops: dict[int, int] = field(default_factory=dict)
    leaf_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    leaf_flops: dict[str, int] = field(default_factory=dict)
    output_shape: tuple[int, ...] = ()


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else ()


def _trace(model: nn.Module, forward: Forward, plan: StagePlan, x: torch.Tensor) -> tuple[_Trace, int]:
    """Run ``forward`` once under FlopCounterMode with hooks on every module (segment 0 = stem, k = stage k,
    len(stages) + 1 = head); return what it saw and the total FLOPs."""
    tr = _Trace()
    stages = plan.stages
    state = {"segment": 0}
    counter = FlopCounterMode(display=False)
    leaf_start: dict[str, int] = {}
    handles = []

    def end_stem(value: Any) -> None:
        tr.boundary_shape[0] = _shape(value)
        tr.boundary_flops[0] = counter.get_total_flops()
        state["segment"] = 1

    def pre(name: str, module: nn.Module, args: tuple) -> None:
        if state["segment"] == 0 and plan.stem_end == (name, "in"):
            end_stem(args[0] if args else None)
        if name not in tr.segment_of:
            tr.segment_of[name] = state["segment"]
            tr.order.append(name)
        if not any(True for _ in module.children()):
            leaf_start.setdefault(name, counter.get_total_flops())

    def post(name: str, module: nn.Module, args: tuple, out: Any) -> None:
        if name in leaf_start and name not in tr.leaf_shape:
            tr.leaf_shape[name] = _shape(out)
            tr.leaf_flops[name] = counter.get_total_flops() - leaf_start[name]
        seg = state["segment"]
        if seg == 0 and plan.stem_end == (name, "out"):
            end_stem(out)
        elif 1 <= seg <= len(stages) and name == stages[seg - 1]:
            tr.boundary_shape[seg] = _shape(out)
            tr.boundary_flops[seg] = counter.get_total_flops()
            state["segment"] = seg + 1

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: pre(n, m, a)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: post(n, m, a, o)))
    try:
        with torch.no_grad(), counter:
            tr.output_shape = _shape(forward(model, x))
    finally:
        for h in handles:
            h.remove()
    return tr, counter.get_total_flops()


def _units(tr: _Trace, leaves: list[str], segment: int) -> list[str]:
    """The shallowest modules all of whose executed leaves ran in ``segment``, in execution order."""
    segments: dict[str, set[int]] = {}
    for leaf in leaves:
        parts = leaf.split(".")
        for i in range(1, len(parts) + 1):
            segments.setdefault(".".join(parts[:i]), set()).add(tr.segment_of[leaf])
    units = []
    for name in tr.order:
        if name == "" or segments.get(name) != {segment}:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent == "" or segments.get(parent) != {segment}:
            units.append(name)
    return units


def _shown(name: str, model: nn.Module) -> str:
    return name.removeprefix("encoder.") if isinstance(model, GeoNet) else name


def _modules_text(names: list[str]) -> str:
    text = ", ".join(names)
    return text if len(text) <= 24 or len(names) < 3 else f"{names[0]} .. {names[-1]}"


# ----------------------------------------------------------------------------------------------------- describe
def _forward_of(model: nn.Module) -> Forward:
    if isinstance(model, GeoNet):
        return lambda net, x: net.forward_normalised(x)
    return lambda net, x: net(x)


def _model_name(model: nn.Module) -> str:
    if isinstance(model, GeoNet):
        return f"GeoNet({model.spec.backbone}, {model.spec.task} head)"
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _trainable_flags(work: nn.Module, transfer: str | None, n_blocks: int) -> None:
    """Apply the transfer mode to ``work`` (a copy): its encoder's freezing; the GeoNet head always trains."""
    if transfer is None:
        return
    if transfer not in TRANSFERS:
        raise GeocnnError(f"model.transfer={transfer!r} is not one of {list(TRANSFERS)}")
    if isinstance(work, GeoNet):
        apply_transfer(work.encoder, transfer, n_blocks)
        for p in list(work.head.parameters()):
            p.requires_grad_(True)
    else:
        apply_transfer(work, transfer, n_blocks)


def _parameters(work: nn.Module, tr: _Trace, n_seg: int) -> tuple[list[int], list[int], dict[str, tuple[int, int]]]:
    """Parameters and trainable parameters per segment (each module's own, in the segment it first ran in; a
    module that never ran counts in the head), and (total, trainable) per leaf layer."""
    params, trainable = [0] * n_seg, [0] * n_seg
    leaf: dict[str, tuple[int, int]] = {}
    for name, p in work.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        seg = tr.segment_of.get(owner, n_seg - 1)
        n, t = p.numel(), p.numel() if p.requires_grad else 0
        params[seg] += n
        trainable[seg] += t
        if owner in tr.leaf_shape:
            leaf[owner] = (leaf.get(owner, (0, 0))[0] + n, leaf.get(owner, (0, 0))[1] + t)
    return params, trainable, leaf


def _stride(chip: int, shape: tuple[int, ...]) -> float | None:
    return chip / shape[-2] if len(shape) == 3 and shape[-2] > 0 else None


def describe(model: nn.Module, in_chans: int, chip: int, transfer: str | None = None, n_blocks: int = 2,
             layers: bool = False, max_probe: int = 1024, title: str | None = None,
             notes: list[str] | None = None) -> Anatomy:
    """The anatomy of ``model`` (a timm encoder or a whole GeoNet) on ``in_chans``-band ``chip`` x ``chip`` chips.

    The model is not changed: shapes, parameters and MACs are read from a copy (with the transfer mode applied),
    receptive fields from a float64 copy with redrawn weights.

    Args:
        model: the network.
        in_chans: input bands (the model's first layer must take them).
        chip: chip side in pixels.
        transfer: model.transfer to count trainable parameters under (None: the model's own requires_grad).
        n_blocks: model.n_blocks (partial transfer: last blocks unfrozen).
        layers: add one row per leaf layer under its stage.
        max_probe: largest input side the receptive field is probed on (doubling from ``chip``).
        title: the table's first line (default: the model's name and the input).
        notes: lines printed under the totals (e.g. what a placeholder head width means).
    """
    if in_chans < 1 or chip < 1:
        raise GeocnnError(f"describe needs at least 1 band and a chip of at least 1 px (got {in_chans} bands, "
                          f"{chip} px): check data.chip_size and the bands")
    work = copy.deepcopy(model).float().cpu().eval()
    _trainable_flags(work, transfer, n_blocks)
    plan = stage_plan(work)
    stages = plan.stages
    forward = _forward_of(work)
    x = torch.zeros(1, in_chans, chip, chip)
    try:
        tr, total_flops = _trace(work, forward, plan, x)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise GeocnnError(f"{_model_name(model)} cannot run on a {in_chans}-band {chip} x {chip} chip ({exc}); "
                          "check data.chip_size and the bands against model.backbone") from None
    n_seg = len(stages) + 2  # stem, stages, head
    modules = dict(work.named_modules())
    leaves = [n for n in tr.order if n and not any(True for _ in modules[n].children())]
    names = [STEM] + [_shown(s, work) for s in stages] + [HEAD]

    params, trainable, leaf_params = _parameters(work, tr, n_seg)

    flops_at = [tr.boundary_flops.get(k) for k in range(len(stages) + 1)] + [total_flops]
    ends = [plan.stem_end or ("", "in")] + [(s, "out") for s in stages]
    taps = [Tap(names[k], *ends[k]) for k in range(len(stages) + 1) if len(tr.boundary_shape.get(k, ())) == 3]
    if layers:
        taps += [Tap(f"layer:{n}", n) for n in leaves  # the head's layers come after global pooling
                 if len(tr.leaf_shape.get(n, ())) == 3 and tr.segment_of[n] < n_seg - 1]
    fields, held = measure(work, forward, taps, in_chans, chip, max(max_probe, chip))

    rows: list[Row] = []
    previous = 0
    for seg in range(n_seg):
        seg_leaves = [n for n in leaves if tr.segment_of[n] == seg]
        if seg in (0, n_seg - 1) and not seg_leaves and params[seg] == 0:
            continue  # no stem (the first stage starts at the input), or no head (the last stage is the output)
        if seg < n_seg - 1 and seg not in tr.boundary_shape:
            continue  # a stage the forward never reached
        shape = tr.boundary_shape.get(seg, ()) if seg < n_seg - 1 else tr.output_shape
        end = flops_at[seg] if flops_at[seg] is not None else total_flops
        units = [_shown(u, work) for u in _units(tr, leaves, seg)]
        rows.append(Row(names[seg], "stage", names[seg], _modules_text(units), shape, _stride(chip, shape),
                        fields.get(names[seg]), params[seg], trainable[seg], (end - previous) // 2))
        previous = end
        if layers:
            for leaf in seg_leaves:
                lshape = tr.leaf_shape.get(leaf, ())
                total, train = leaf_params.get(leaf, (0, 0))
                rows.append(Row(_shown(leaf, work), "layer", names[seg], _layer_type(modules[leaf]), lshape,
                                _stride(chip, lshape), fields.get(f"layer:{leaf}"), total, train,
                                tr.leaf_flops.get(leaf, 0) // 2))
    all_notes = list(notes or [])
    if held:
        all_notes.append("global context inside the stages (squeeze-excitation, group-norm statistics) was held "
                         "fixed: RF counts the local paths (kernels, pools, residual branches) to one position")
    anatomy = Anatomy(
        title=title or f"{_model_name(model)} on {in_chans}-band {chip} x {chip} px chips",
        in_chans=in_chans, chip=chip, transfer=transfer, rows=rows,
        params=sum(params), trainable=sum(trainable), macs=total_flops // 2, notes=all_notes)
    anatomy.warnings = chip_warnings(anatomy)
    return anatomy


def chip_warnings(anatomy: Anatomy) -> list[str]:
    """Chips too small for the network: a last feature map under 2x2, stages running on 1x1 maps, a last-stage
    receptive field under a quarter of the chip."""
    spatial = [r for r in anatomy.stages if r.spatial is not None]
    if not spatial:
        return []
    chip, out = anatomy.chip, []
    last = spatial[-1]
    h, w = last.spatial  # type: ignore[misc]
    if h < 2 or w < 2:
        stride = last.stride or chip
        out.append(f"a {chip} px chip through a network that downsamples {stride:g}x leaves {h}x{w} of feature map "
                   f"after {last.name}: its spatial layout is gone before pooling; use data.chip_size >= "
                   f"{int(2 * stride)} or a shallower network (model.backbone)")
    on_one = [b.name for a, b in zip(spatial, spatial[1:]) if a.spatial == (1, 1)]
    if on_one:
        out.append(f"{', '.join(on_one)} run{'' if len(on_one) > 1 else 's'} on a 1x1 map: the kernels see one "
                   "position and zero padding, so those parameters add little; raise data.chip_size or choose a "
                   "shallower network (model.backbone)")
    if last.field is not None and last.field.exact and last.field.side < chip / 4:
        out.append(f"the last stage ({last.name}) sees {last.field.side} px of a {chip} px chip (under a quarter): "
                   "its features cannot relate distant parts of the chip; use a deeper model.backbone or a smaller "
                   "data.chip_size (coarser pixels)")
    return out

