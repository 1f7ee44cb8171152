"""Model references: a bundle folder, or an MLflow URI (models:/NAME@ALIAS, models:/NAME/V, runs:/ID/model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from geocnn.errors import GeocnnError
from geocnn.inference.bundle import META
from geocnn.tracking.runs import tracking_uri

BUNDLE_TAG = "geocnn.bundle_uri"
"""Run tag of format-1 two-stage runs: the URI of the CNN bundle behind a registered stage-2 ridge."""


@dataclass
class ModelRef:
    """A model as asked for (path or models:/ URI), where its bundle is, and the registry version it resolved to."""

    ref: str
    bundle_dir: Path
    version: str | None

    @property
    def label(self) -> str:
        """How ledgers and tables name the model: the reference, plus the version an alias resolved to."""
        if not self.version or self.ref.endswith(f"/{self.version}"):
            return self.ref
        return f"{self.ref} (v{self.version})"


def is_uri(ref: str) -> bool:
    """Whether ``ref`` is an MLflow model URI rather than a folder."""
    return "://" in ref or ref.startswith(("models:/", "runs:/"))


def resolve(ref: str) -> ModelRef:
    """Fetch the model now (an alias like @champion resolves to its current version)."""
    version = None
    if ref.startswith("models:/"):
        name, _, alias = ref.removeprefix("models:/").partition("@")
        try:
            client = MlflowClient(tracking_uri())
            version = (client.get_model_version_by_alias(name, alias).version if alias
                       else name.partition("/")[2] or None)
        except MlflowException as exc:
            raise GeocnnError(f"model {ref}: not in the registry at {tracking_uri()} ({exc.message}); train once "
                              "(`geocnn run CONFIG`) so that a version is registered and promoted, or give a bundle "
                              "folder") from None
    bundle_dir = resolve_model(ref)
    if not (bundle_dir / META).exists():
        raise GeocnnError(f"model {ref}: {bundle_dir} is not a geocnn bundle ({META} missing)")
    return ModelRef(ref, bundle_dir, None if version is None else str(version))


def resolve_model(ref: str) -> Path:
    """The bundle folder of a path or an MLflow model URI (downloaded to the local cache)."""
    if not is_uri(ref):
        return Path(ref)
    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds
        raise GeocnnError(f"could not fetch model {ref!r} from MLflow at {mlflow.get_tracking_uri()}: {exc}") from None
    found = list(local.rglob(META))
    if found:
        return found[0].parent
    linked = linked_bundle(ref)  # format-1 two-stage models: the ridge's run points at the CNN bundle
    if linked:
        return resolve_model(linked)
    raise GeocnnError(f"{ref}: the MLflow model holds no geocnn bundle ({META})")


def linked_bundle(ref: str) -> str | None:
    """The bundle URI tagged on the run behind a models:/ or runs:/ reference (format-1 two-stage models), if any."""
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
        return client.get_run(run_id).data.tags.get(BUNDLE_TAG)
    except MlflowException:
        return None


def download_artifact(name: str, version: str, path: str) -> str:
    """A file logged by the run behind a registered model version, downloaded locally."""
    client = MlflowClient(tracking_uri())
    run_id = client.get_model_version(name, version).run_id
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
