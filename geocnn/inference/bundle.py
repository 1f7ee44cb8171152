"""Bundle: safetensors weights + bundle.json, everything predict needs and nothing it must guess."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from geocnn import __version__
from geocnn.errors import GeocnnError
from geocnn.atomic import atomic_dir
from geocnn.models.network import GeoNet, NetSpec

WEIGHTS = "weights.safetensors"
META = "bundle.json"


@dataclass
class Bundle:
    """A trained network with its preprocessing and output schema."""

    net: GeoNet
    meta: dict[str, Any]
    root: Path

    @property
    def spec(self) -> NetSpec:
        """The network spec (backbone, bands, normalisation, task, targets)."""
        return self.net.spec

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How raw images become chips (crop, chip_size, channels, bands)."""
        return self.meta["preprocessing"]

    @property
    def tta_views(self) -> int:
        """Test-time views averaged by default."""
        return int(self.meta.get("tta_views", 1))


def save_bundle(net: GeoNet, path: str | Path, preprocessing: dict[str, Any], tta_views: int,
                extra: dict[str, Any] | None = None) -> Path:
    """Write weights and bundle.json to ``path`` atomically (a complete bundle or none)."""
    path = Path(path)
    meta = {"geocnn_version": __version__, "spec": net.spec.to_dict(), "preprocessing": preprocessing,
            "tta_views": tta_views, "weights": WEIGHTS, **(extra or {})}
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return path


def load_bundle(path: str | Path) -> Bundle:
    """Rebuild the network from bundle.json and load its weights (safetensors only)."""
    path = Path(path)
    pickled = sorted(p.name for p in path.glob("*") if p.suffix in (".pt", ".pth", ".ckpt", ".pkl", ".bin"))
    if pickled and not (path / WEIGHTS).exists():
        raise GeocnnError(f"{path}: holds {', '.join(pickled)} but no {WEIGHTS}. Pickled weights are never loaded "
                          "(unpickling can run arbitrary code); bundles carry safetensors only. Re-export the model "
                          "with geocnn, or convert the state dict with safetensors.torch.save_file.")
    if not (path / META).exists() or not (path / WEIGHTS).exists():
        raise GeocnnError(f"{path}: not a geocnn bundle ({META} and {WEIGHTS} expected). Use the 'bundle' folder "
                          "of a run's output_dir or a models:/NAME@ALIAS URI.")
    meta = json.loads((path / META).read_text())
    spec = NetSpec(**meta["spec"])
    net = GeoNet(spec, weights="random")
    missing, unexpected = net.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
    missing = [k for k in missing if k not in ("y_mean", "y_std") or spec.target_mean]  # bundles before 0.1: none
    if missing or unexpected:
        raise GeocnnError(f"{path}: weights do not fit the network in {META} (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); the bundle is damaged or from another version")
    net.eval()
    return Bundle(net=net, meta=meta, root=path)


def resolve_model(ref: str) -> Path:
    """A bundle folder from a path, or from an MLflow model URI (models:/NAME@ALIAS, models:/NAME/3, runs:/ID/model)."""
    if "://" not in ref and not ref.startswith(("models:/", "runs:/")):
        return Path(ref)
    import mlflow

    from geocnn.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds
        raise GeocnnError(f"could not fetch model {ref!r} from MLflow at {mlflow.get_tracking_uri()}: {exc}") from None
    found = list(local.rglob(META))
    if found:
        return found[0].parent
    linked = linked_bundle(ref)  # a two-stage model: the ridge's run points at the CNN bundle (with the ridge)
    if linked:
        return resolve_model(linked)
    raise GeocnnError(f"{ref}: the MLflow model holds no geocnn bundle ({META})")


def linked_bundle(ref: str) -> str | None:
    """The bundle URI tagged on the run behind a models:/ or runs:/ reference (two-stage Earth models), if any."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        if ref.startswith("runs:/"):
            run_id = ref.removeprefix("runs:/").split("/")[0]
        else:
            name, _, rest = ref.removeprefix("models:/").partition("@")
            if rest:
                run_id = client.get_model_version_by_alias(name, rest).run_id
            else:
                name, _, version = name.partition("/")
                run_id = client.get_model_version(name, version).run_id
        return client.get_run(run_id).data.tags.get("geocnn.bundle_uri")
    except MlflowException:
        return None
