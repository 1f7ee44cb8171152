"""Local weight files: safetensors or weights-only state dicts, prefixes stripped, first conv adapted to the bands."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.models._manipulate import adapt_input_conv
from torch import nn

from geocnn.errors import GeocnnError


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise GeocnnError(f"model.weights: file {path} does not exist; give a .safetensors or .pth state dict")
    if path.suffix == ".safetensors":
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


