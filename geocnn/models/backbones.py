"""timm encoders: creation, local weight files (adapted to any band count), freezing and layer-wise lr decay."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models._manipulate import adapt_input_conv, group_with_matcher
from torch import nn

from geocnn.errors import GeocnnError


def create_encoder(name: str, in_chans: int, weights: str = "random") -> nn.Module:
    """A timm model without classifier (``num_classes=0``) whose forward returns pooled features.

    Args:
        name: timm model name.
        in_chans: number of input bands.
        weights: 'random', 'timm' (timm's pretrained weights, needs a network or a filled HF cache), or a
            path to a local ``.safetensors`` / ``.pth`` state dict.
    """
    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise GeocnnError(f"model.backbone={name!r} is not a timm model. Similar: {close}. "
                          "See timm.list_models() for all names.")
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


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise GeocnnError(f"model.weights: file {path} does not exist; give a .safetensors or .pth state dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - SafetensorError and OS errors
            raise GeocnnError(f"{path}: not a valid .safetensors file ({exc}); re-export the weights") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - includes pickle refusals
        raise GeocnnError(f"{path}: could not load with weights_only=True ({type(exc).__name__}). Only plain state "
                          "dicts of tensors are accepted; no unsafe pickle fallback is performed. Convert the file "
                          "to .safetensors.") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise GeocnnError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    return obj


def load_local_weights(model: nn.Module, path: Path, in_chans: int) -> None:
    """Load a local state dict into an encoder, adapting the first conv to ``in_chans`` and dropping the classifier.

    Keys are matched after stripping 'module.', 'encoder.' and 'model.' prefixes; a file matching too few
    of the encoder's tensors is refused with the counts.
    """
    state = {}
    for k, v in _read_state_dict(path).items():
        for prefix in ("module.", "encoder.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    own = model.state_dict()
    first_conv = (getattr(model, "pretrained_cfg", {}) or {}).get("first_conv")
    first_key = f"{first_conv}.weight" if first_conv else None
    if first_key in state and first_key in own and state[first_key].shape[1] != in_chans:
        state[first_key] = adapt_input_conv(in_chans, state[first_key].float(), base_chans=state[first_key].shape[1])
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    wrong_shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if len(matched) < 0.5 * len(own):
        raise GeocnnError(f"{path}: only {len(matched)} of the encoder's {len(own)} tensors match by name and shape "
                          f"({len(wrong_shape)} have other shapes, e.g. {wrong_shape[:3]}). Is it a state dict of "
                          "the same model.backbone?")
    model.load_state_dict(matched, strict=False)


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
