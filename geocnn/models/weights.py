"""Starting weights loaded into an encoder: read safely, mapped to timm names, bands matched, strictly checked."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.models._manipulate import adapt_input_conv
from torch import nn

from geocnn.errors import GeocnnError
from geocnn.models.weight_layouts import from_efficientnet_pytorch, layout_of, strip_prefixes
from geocnn.models.weight_sources import Located


@dataclass
class LoadReport:
    """What a weights load did: the source, its checksum, the tensor counts and how bands and inputs were matched."""

    spec: str
    kind: str
    arch: str | None = None
    source: str = ""
    tag: str | None = None
    file: str | None = None
    sha256: str | None = None
    license: str | None = None
    matched: int = 0
    missing: int = 0
    unexpected: int = 0
    wrong_shape: int = 0
    head_dropped: int = 0
    encoder_tensors: int = 0
    layout: str = "timm"
    bands: str = "none"
    """'none' (the weights' bands as they are), 'by_name' (input channels picked by band name), 'first_conv'
    (timm's positional adaptation of the first convolution) or 'random' (no weights)."""
    band_detail: str = ""
    normalisation: str = "train"
    """'weights' (the weights' own statistics) or 'train' (the train split's band statistics)."""
    normalisation_detail: str = ""
    examples: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (bundle.json, MLflow)."""
        return asdict(self)

    def params(self) -> dict[str, Any]:
        """Flat MLflow params: weights.source, .tag, .sha256, .license, .matched/missing/unexpected, bands."""
        keys = ("kind", "arch", "source", "tag", "sha256", "license", "matched", "missing", "unexpected",
                "head_dropped", "bands", "normalisation")
        return {f"weights.{k}": getattr(self, k) for k in keys if getattr(self, k) is not None}

    def sentence(self) -> str:
        """One line for the run summary."""
        if self.kind == "random":
            return "weights: random initialisation (from scratch)"
        text = (f"weights: {self.spec} ({self.kind}{', ' + self.tag if self.tag else ''}; sha256 "
                f"{(self.sha256 or '?')[:12]}): {self.matched}/{self.encoder_tensors} encoder tensors loaded, "
                f"{self.missing} missing, {self.unexpected} unexpected")
        text += f", {self.head_dropped} classifier tensors dropped" if self.head_dropped else ""
        text += f"; bands {self.bands}" + (f" ({self.band_detail})" if self.band_detail else "")
        text += f"; normalisation {self.normalisation}" + (f" ({self.normalisation_detail})"
                                                           if self.normalisation_detail else "")
        return text


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.bin with ``weights_only=True`` (never an unsafe pickle)."""
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
                          "dicts of tensors are accepted; no unsafe pickle fallback is performed (a pickled model "
                          "can run code when loaded). Convert the file to .safetensors.") from None
    return unwrap(obj, str(path))


def unwrap(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a plain state dict, or one under 'state_dict'/'model'/'model_state_dict'."""
    for wrapper in ("state_dict", "model", "model_state_dict", "teacher", "student"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise GeocnnError(f"{where}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def source_state(found: Located, encoder: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """The weights' tensors under timm's names for ``encoder`` (prefixes stripped, foreign layouts mapped)."""
    path = found.require_cached()
    state = unwrap(found.loader(), found.source) if found.loader else read_state_file(path)
    if found.card.get("bundle"):  # a geocnn bundle: the encoder's part of the whole network
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    state = strip_prefixes(state)
    layout = layout_of(state)
    if layout == "efficientnet_pytorch":
        if not hasattr(encoder, "blocks"):
            raise GeocnnError(f"model.weights={found.spec!r}: EfficientNet weights (efficientnet_pytorch layout) "
                              f"cannot load into {type(encoder).__name__}; set model.backbone to "
                              f"{found.arch or 'tf_efficientnet_lite0'}")
        state = from_efficientnet_pytorch(state, encoder)
    return state, layout


# ----------------------------------------------------------------------------------------------------- bands
_UNNAMED = re.compile(r"^(band)?_?\d+$")
_COLOURS = {"red": "red", "r": "red", "green": "green", "g": "green", "blue": "blue", "b": "blue",
            "nir": "nir", "near_infrared": "nir", "gray": "gray", "grey": "gray", "l": "gray"}
_SENSOR_COLOURS = {"landsat_oli": {"b2": "blue", "b3": "green", "b4": "red", "b5": "nir", "b6": "swir1",
                                   "b7": "swir2", "b1": "coastal"},
                   "sentinel2": {"b2": "blue", "b3": "green", "b4": "red", "b8": "nir", "b1": "coastal",
                                 "b11": "swir1", "b12": "swir2"},
                   "landsat_etm": {"b1": "blue", "b2": "green", "b3": "red", "b4": "nir", "b5": "swir1",
                                   "b7": "swir2"},
                   "landsat_tm": {"b1": "blue", "b2": "green", "b3": "red", "b4": "nir", "b5": "swir1",
                                  "b7": "swir2"}}


def canonical_band(name: str, sensor: str | None = None) -> str | None:
    """A band name comparable across files: lower case, no SR_/TOA_ prefix or file stem, B04 -> b4, colours by
    sensor (Landsat OLI / Sentinel-2 B4 = red); None for positional names (band1, 1)."""
    n = str(name).strip().lower().rsplit(":", 1)[-1]
    n = re.sub(r"^.*_(?=b\d+a?$)", "", n)  # LC08_..._B4, SR_B4 -> b4
    n = re.sub(r"^(sr|toa|st)_", "", n)
    n = re.sub(r"^b0*(\d+a?)$", r"b\1", n)
    if _UNNAMED.match(n) or not n:
        return None
    if sensor and n in _SENSOR_COLOURS.get(sensor, {}):
        return _SENSOR_COLOURS[sensor][n]
    return _COLOURS.get(n, n)


def match_bands(data: list[str], weights: list[str] | None, sensor: str | None, mode: str
                ) -> tuple[str, list[int | None] | None, str]:
    """How the data's bands map onto the weights' input channels: ('none'|'by_name'|'first_conv', for by_name the
    weights channel of each data band (None: a band the weights lack, started from the mean filter), a sentence).

    mode 'name' refuses data bands the weights lack; 'first_conv' always adapts by position.
    """
    if mode == "first_conv" or not weights:
        same = weights is not None and len(weights) == len(data)
        why = ("model.band_match=first_conv" if mode == "first_conv" else "the weights do not name their bands")
        return ("none" if same and mode != "first_conv" else "first_conv", None,
                f"{why}: {len(data)} data band(s) onto {len(weights) if weights else '?'} weight channel(s) "
                "by position")
    d = [canonical_band(b, sensor) for b in data]
    w = [canonical_band(b, sensor) for b in weights]
    if all(x is None for x in d):
        same = len(weights) == len(data)
        return ("none" if same else "first_conv", None,
                f"the data's bands are unnamed ({', '.join(map(str, data[:4]))}): "
                + ("taken in the weights' order" if same else "first convolution adapted by position"))
    if d == w:
        return "none", None, f"the data's bands are the weights' bands ({', '.join(weights)})"
    found: list[int | None] = [w.index(x) if x is not None and x in w else None for x in d]
    unmatched = [a for a, i in zip(data, found) if i is None]
    if mode == "name" and unmatched:
        raise GeocnnError(f"model.weights: the data's bands {data} cannot all be matched by name to the weights' "
                          f"bands {weights} (no match for {unmatched}; model.band_match=name). Select bands the "
                          "weights have (earth.bands / data.bands), or set model.band_match: auto (bands the "
                          "weights lack start from the mean filter) or first_conv (adapt by position).")
    if all(i is None for i in found):
        return "first_conv", None, (f"no band names in common ({', '.join(map(str, data))} vs "
                                    f"{', '.join(weights)}): first convolution adapted by position")
    pairs = ", ".join(f"{a}->{weights[i]}" if i is not None else f"{a}->mean filter" for a, i in zip(data, found))
    return "by_name", found, f"picked by name: {pairs}"


def adapt_first_conv(state: dict[str, torch.Tensor], key: str | None, how: str, picks: list[int | None] | None,
                     in_chans: int) -> None:
    """Fit the first convolution's input channels to the data: pick channels by name (a band the weights lack gets
    the mean filter), scaled so activations keep their size; or timm's positional adaptation."""
    if not key or key not in state:
        return
    w = state[key].float()
    if how == "by_name" and picks is not None:
        mean = w.mean(1)
        cols = [w[:, i] if i is not None else mean for i in picks]
        state[key] = torch.stack(cols, 1) * (w.shape[1] / len(picks))
    elif w.shape[1] != in_chans:
        state[key] = adapt_input_conv(in_chans, w, base_chans=w.shape[1])


# ----------------------------------------------------------------------------------------------------- load
def _head_prefixes(encoder: nn.Module) -> tuple[str, ...]:
    cfg = getattr(encoder, "pretrained_cfg", {}) or {}
    heads = cfg.get("classifier") or ("fc", "head", "classifier")
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return tuple(f"{h}." for h in heads) + ("fc.", "classifier.", "head.fc.", "head.")


def load_weights(encoder: nn.Module, found: Located, data_bands: list[str], partial: bool = False,
                 band_match: str = "auto") -> LoadReport:
    """Load located weights into ``encoder`` (built for ``len(data_bands)`` input channels); refuse anything but a
    complete match unless ``partial``. The classifier of an ImageNet model is dropped (counted, not an error)."""
    report = LoadReport(spec=found.spec, kind=found.kind, arch=found.arch, source=found.source, tag=found.tag,
                        license=found.license, encoder_tensors=len(encoder.state_dict()))
    if found.kind == "random":
        report.bands = "random"
        return report
    path = found.require_cached()
    report.file = str(path)
    report.sha256 = sha256_of(path)
    state, report.layout = source_state(found, encoder)
    own = encoder.state_dict()
    cfg = getattr(encoder, "pretrained_cfg", {}) or {}
    first_key = f"{cfg['first_conv']}.weight" if cfg.get("first_conv") else None
    if first_key is None or first_key not in own:  # models whose cfg names no first conv: the first 4-D weight
        first_key = next((k for k, v in own.items() if v.ndim == 4), None)
    weight_bands = found.bands
    if first_key in state and weight_bands and len(weight_bands) != state[first_key].shape[1]:
        weight_bands = None  # a card that disagrees with the tensors: trust the tensors
    report.bands, picks, report.band_detail = match_bands(data_bands, weight_bands, found.sensor, band_match)
    if first_key in state:
        adapt_first_conv(state, first_key, report.bands, picks, len(data_bands))
    heads = _head_prefixes(encoder)
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    extra = [k for k in state if k not in own]
    dropped = [k for k in extra if k.startswith(heads)]
    unexpected = [k for k in extra if not k.startswith(heads)]
    missing = [k for k in own if k not in matched]
    report.matched, report.missing, report.unexpected = len(matched), len(missing), len(unexpected)
    report.wrong_shape, report.head_dropped = len(wrong), len(dropped)
    report.examples = {"missing": missing[:5], "unexpected": unexpected[:5], "wrong_shape": wrong[:5]}
    if not matched or ((missing or unexpected or wrong) and not partial):
        hint = (f" They were made for {found.arch!r}; set model.backbone: {found.arch} (or leave it out)."
                if found.arch else " Is it a state dict of the same model.backbone?")
        raise GeocnnError(
            f"{found.spec}: {len(matched)} of the encoder's {len(own)} tensors match by name and shape; "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} with other shapes (e.g. {wrong[:3]}).{hint}"
            + ("" if not matched else " To load the matching part anyway, set model.weights_partial: true."))
    encoder.load_state_dict(matched, strict=False)
    return report


def weights_normalisation(found: Located, data_bands: list[str], dtype: str, report: LoadReport, mode: str
                          ) -> tuple[list[float], list[float]] | None:
    """Per data band mean/std in chip units from the weights' own statistics, or None (use the train split's).

    'unit' statistics (ImageNet-style, pixels in 0-1) apply to 8-bit chips (x255); 'raw' ones (TorchGeo, encoder
    cards, bundles) apply as they are. Channels picked by name take their band's values; positional adaptation
    takes the mean over the weights' channels. Records the choice in ``report``.
    """
    if mode == "train" or found.kind == "random":
        report.normalisation, report.normalisation_detail = "train", (
            "model.normalise=train" if found.kind != "random" else "")
        return None
    why = ""
    if not found.mean or not found.std:
        why = "the weights define no normalisation"
    elif found.scale == "unit" and dtype != "uint8":
        why = f"the weights' statistics are for 0-255 images and these chips are {dtype}"
    if why:
        if mode == "weights":
            raise GeocnnError(f"model.normalise=weights, but {why}; use model.normalise: auto or train")
        report.normalisation, report.normalisation_detail = "train", why + ": train-split band statistics"
        return None
    assert found.mean is not None and found.std is not None
    k = 255.0 if found.scale == "unit" else 1.0
    mean, std = [m * k for m in found.mean], [s * k for s in found.std]
    n = len(data_bands)
    if report.bands == "by_name":
        _, picks, _ = match_bands(data_bands, found.bands, found.sensor, "auto")
        assert picks is not None
        if any(i is None for i in picks):  # bands the weights lack: their own train statistics would be guesses
            report.normalisation, report.normalisation_detail = "train", (
                "some data bands are not among the weights' bands: train-split band statistics")
            return None
        mean, std = [mean[i] for i in picks if i is not None], [std[i] for i in picks if i is not None]
    elif len(mean) != n:
        mean, std = [sum(mean) / len(mean)] * n, [sum(std) / len(std)] * n
    report.normalisation = "weights"
    report.normalisation_detail = (f"{found.kind} statistics"
                                   + (" x255 for 8-bit chips" if found.scale == "unit" else " in chip units"))
    return mean, std
