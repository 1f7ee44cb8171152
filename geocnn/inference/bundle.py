"""Bundle: safetensors weights + bundle.json with a typed, versioned Preprocessing; everything predict needs.

Format 2 (this version) stores :class:`Preprocessing`; bundles written before it (format 1: an untyped
``preprocessing`` dict and, for two-stage models, ``stage2_ridge.json``) are converted when loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file

from geocnn import __version__
from geocnn.atomic import atomic_dir
from geocnn.data.chips import ChipSpec
from geocnn.data.profile import TrainingProfile
from geocnn.errors import GeocnnError
from geocnn.evaluation.conformal import Calibration
from geocnn.models.network import GeoNet, NetSpec
from geocnn.models.ridge import Stage2Ridge

WEIGHTS = "weights.safetensors"
META = "bundle.json"
FORMAT = 2
"""Bundle format version written by this geocnn."""
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


class Stage2(BaseModel):
    """The stage-2 head of a two-stage model: ridge on encoder features (Jean et al. 2016), as numbers."""

    model_config = ConfigDict(extra="forbid")

    target: str
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    alpha: float

    def model(self) -> Stage2Ridge:
        """The ridge as a predictor on features."""
        return Stage2Ridge(self.mean, self.scale, self.coef, self.intercept, self.alpha)


class Preprocessing(BaseModel):
    """How raw inputs become the model's chips and outputs: the contract between training and prediction."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(FORMAT, description="Bundle format version.")
    domain: Literal["galaxy", "earth"]
    chips: ChipSpec = Field(description="How chips are cut (files or scene windows, bands, crop, size, layers).")
    bands: list[str] = Field(description="Band names in chip order (layers appended).")
    dtype: str = Field(description="Chip dtype as stored (uint8 images, float32 rasters with NaN nodata).")
    resolution_m: float | None = Field(None, description="Ground size of one chip pixel in metres (Earth).")
    mean: list[float] = Field(description="Per-band mean of the train split (normalisation).")
    std: list[float] = Field(description="Per-band std of the train split.")
    tta_views: int = Field(1, ge=1, description="Test-time views averaged by default.")
    task: str
    targets: list[str]
    classes: list[str] = Field(default_factory=list)
    stage2: Stage2 | None = Field(None, description="Two-stage models: the ridge on encoder features.")
    start: dict[str, Any] | None = Field(None, description="The weights the encoder started from: spec, source, "
                                         "tag, sha256, licence, tensor counts, band matching, normalisation.")
    calibration: Calibration | None = Field(None, description="Uncertainty fitted by the training run: conformal "
                                            "quantiles (level, per output and category), the softmax temperature, "
                                            "what they were calibrated on. predict, map and watch apply it.")
    profile: TrainingProfile | None = Field(None, description="What the model was trained on (input dtype, band "
                                            "names and value quantiles, resolution, target ranges): predict, map "
                                            "and watch warn (--strict: refuse) on inputs unlike it. None in bundles "
                                            "written before it (no checks).")

    @property
    def chip_px(self) -> int:
        """Side of a chip in pixels."""
        return self.chips.out_px

    @property
    def output_names(self) -> list[str]:
        """What the model predicts: the stage-2 target, else the network's targets."""
        return [self.stage2.target] if self.stage2 else list(self.targets)


@dataclass
class Bundle:
    """A trained network with its preprocessing and output schema."""

    net: GeoNet
    preprocessing: Preprocessing
    meta: dict[str, Any]
    root: Path

    @property
    def spec(self) -> NetSpec:
        """The network spec (backbone, bands, normalisation, task, targets)."""
        return self.net.spec

    @property
    def tta_views(self) -> int:
        """Test-time views averaged by default."""
        return self.preprocessing.tta_views

    @property
    def stage2(self) -> Stage2Ridge | None:
        """The stage-2 ridge of a two-stage model (None for a CNN that predicts directly)."""
        return self.preprocessing.stage2.model() if self.preprocessing.stage2 else None


def save_bundle(net: GeoNet, path: str | Path, preprocessing: Preprocessing,
                extra: dict[str, Any] | None = None) -> Path:
    """Write weights and bundle.json to ``path`` atomically (a complete bundle or none)."""
    path = Path(path)
    meta = {"format": FORMAT, "geocnn_version": __version__, "net": net.spec.to_dict(),
            "preprocessing": preprocessing.model_dump(mode="json"), "weights": WEIGHTS, **(extra or {})}
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return path


def load_bundle(path: str | Path) -> Bundle:
    """Rebuild the network from bundle.json and load its weights (safetensors only; pickles are never loaded)."""
    path = Path(path)
    pickled = sorted(p.name for p in path.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickled and not (path / WEIGHTS).exists():
        raise GeocnnError(f"{path}: holds {', '.join(pickled)} but no {WEIGHTS}. Pickled weights are never loaded "
                          "(unpickling can run arbitrary code); bundles carry safetensors only. Re-export the model "
                          "with geocnn, or convert the state dict with safetensors.torch.save_file.")
    if not (path / META).exists() or not (path / WEIGHTS).exists():
        raise GeocnnError(f"{path}: not a geocnn bundle ({META} and {WEIGHTS} expected). Use the 'bundle' folder "
                          "of a run's output_dir or a models:/NAME@ALIAS URI.")
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as exc:
        raise GeocnnError(f"{path / META}: not valid JSON ({exc}); the bundle is damaged, re-export it") from None
    if "format" not in meta:
        meta = upgrade_v1(meta, path)
    elif meta["format"] > FORMAT:
        raise GeocnnError(f"{path}: bundle format {meta['format']} was written by a newer geocnn "
                          f"({meta.get('geocnn_version')}); this is {__version__} (format {FORMAT}). Upgrade geocnn.")
    try:
        spec = NetSpec(**meta["net"])
        pre = Preprocessing.model_validate(meta["preprocessing"])
    except (TypeError, KeyError, ValidationError) as exc:
        raise GeocnnError(f"{path / META}: does not describe a model this geocnn can rebuild ({exc}); re-export it "
                          f"by rerunning the experiment (`geocnn run CONFIG`)") from None
    net = GeoNet(spec)
    missing, unexpected = net.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
    missing = [k for k in missing if k not in ("y_mean", "y_std") or spec.target_mean]  # bundles before 0.1: none
    if missing or unexpected:
        raise GeocnnError(f"{path}: weights do not fit the network in {META} (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); the bundle is damaged or from another version")
    net.eval()
    return Bundle(net=net, preprocessing=pre, meta=meta, root=path)


def upgrade_v1(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """Read a format-1 bundle.json (geocnn 0.1 before the typed Preprocessing) as format 2.

    Raises:
        GeocnnError: saying how to re-export when the old metadata cannot be read.
    """
    try:
        spec = meta["spec"]
        old = meta["preprocessing"]
        earth = old.get("earth") or {}
        if old.get("kind") == "earth":
            chips = ChipSpec(out_px=old["chip_size"], files=False, bands=earth.get("bands"),
                             nodata=earth.get("nodata"), scenes=earth.get("scenes", []), chip_m=earth.get("chip_m"),
                             chip_px=earth.get("chip_px"), per_sample=earth.get("chips_per_cluster", 1),
                             box_m=earth.get("cluster_box_m", 10000.0), layers=earth.get("layers", []),
                             max_nodata_fraction=earth.get("max_nodata_fraction"))
        else:
            chips = ChipSpec(out_px=old["chip_size"], files=True, crop=old.get("crop"),
                             channels=old.get("channels", "rgb"))
        stage2 = None
        ridge = path / "stage2_ridge.json"
        if ridge.exists():
            numbers = json.loads(ridge.read_text())
            stage2 = Stage2(target=meta.get("target", "prediction"), **numbers)
        pre = Preprocessing(domain="earth" if old.get("kind") == "earth" else "galaxy", chips=chips,
                            bands=list(old.get("bands", [])), dtype=old.get("dtype", "float32"),
                            mean=list(spec.get("mean", [])), std=list(spec.get("std", [])),
                            tta_views=int(meta.get("tta_views", 1)), task=spec["task"], targets=list(spec["targets"]),
                            classes=list(spec.get("classes", [])), stage2=stage2)
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise GeocnnError(f"{path / META}: a bundle of an older geocnn ({meta.get('geocnn_version', 'unknown')}) "
                          f"that cannot be read ({exc}). Re-export it: rerun its experiment with this geocnn "
                          "(`geocnn run CONFIG`), which writes a new bundle under output_dir/bundle.") from None
    return {**{k: v for k, v in meta.items() if k not in ("spec", "preprocessing")}, "format": FORMAT,
            "net": spec, "preprocessing": pre.model_dump(mode="json"), "upgraded_from": 1}


def check_chips(pre: Preprocessing, chips_shape: tuple[int, ...], source: str = "input") -> None:
    """Refuse chips whose band count or size differs from what the bundle was trained on."""
    want = (len(pre.bands), pre.chip_px, pre.chip_px)
    if len(chips_shape) != 4 or tuple(chips_shape[1:]) != want:
        raise GeocnnError(f"{source}: chips of shape {tuple(chips_shape[1:])} (bands, height, width) do not fit the "
                          f"model, which expects {want} (bands {pre.bands}). Preprocess with the bundle's "
                          f"settings (crop {pre.chips.crop}, chip size {pre.chip_px}).")
