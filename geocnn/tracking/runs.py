"""MLflow runs: the embedded SQLite default, runs that survive resume, epoch metrics, metrics and artifacts."""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import InputTag
from mlflow.utils.git_utils import get_git_commit, get_git_repo_url

from geocnn.config import AnyExperiment, flatten
from geocnn.data.sources.uris import configure_endpoints, is_uri, storage_error
from geocnn.errors import GeocnnError

DEFAULT_DB = Path("data/mlflow/mlflow.db")
DEFAULT_ARTIFACTS = Path("data/mlflow/artifacts")
PROJECT = Path(__file__).resolve().parents[2]
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""Opens the experiment on its training runs in MLflow 3's UI (not the GenAI overview)."""


def tracking_uri(configured: str | None = None) -> str:
    """The tracking URI: the config's, else $MLFLOW_TRACKING_URI, else SQLite at data/mlflow/mlflow.db."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_DB.resolve()}"


def current_uri() -> str:
    """The tracking URI this process logs to now (handed to units of work running in other processes)."""
    return mlflow.get_tracking_uri()


def use_uri(uri: str) -> None:
    """Log to ``uri`` from this process (a unit of work in a worker process of the run's task runner)."""
    mlflow.set_tracking_uri(uri)


def artifact_root() -> str:
    """Artifact location for new experiments on a local store ($GEOCNN_MLFLOW_ARTIFACTS or data/mlflow/artifacts)."""
    root = Path(os.environ.get("GEOCNN_MLFLOW_ARTIFACTS", DEFAULT_ARTIFACTS)).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


def ui_command(uri: str | None = None) -> str:
    """The shell command that opens the MLflow UI on these runs, runnable from the current folder."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    try:
        shown = str(mlflow_bin.relative_to(Path.cwd()))
    except ValueError:
        shown = str(mlflow_bin)
    return f"{shown} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def run_url(experiment_id: str | None, run_id: str, ui: str | None = None) -> str | None:
    """The run's page in the MLflow UI: on the tracking server, or on ``ui`` (e.g. a local `mlflow ui`)."""
    base = ui or tracking_uri()
    if not base.startswith(("http://", "https://")) or experiment_id is None:
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def server_command(host: str = "127.0.0.1", port: int = 5000, db: Path | None = None,
                   artifacts: Path | None = None, workers: int = 1) -> list[str]:
    """The `mlflow server` command of the local tracking server: SQLite backend, local artifact root served over
    HTTP (clients need no access to the folder), bound to the loopback interface by default."""
    db = (db or DEFAULT_DB).resolve()
    artifacts = (artifacts or Path(os.environ.get("GEOCNN_MLFLOW_ARTIFACTS", DEFAULT_ARTIFACTS))).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
            artifacts.as_uri(), "--serve-artifacts", "--host", host, "--port", str(port), "--workers", str(workers)]


def setup(cfg: AnyExperiment) -> str:
    """Point MLflow at the configured store and experiment (created with tracking.artifact_location, else a local
    artifact root); return its id."""
    uri = tracking_uri(cfg.tracking.tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    wanted = cfg.tracking.artifact_location
    if wanted and is_uri(wanted):
        configure_endpoints()  # MLFLOW_S3_ENDPOINT_URL from AWS_ENDPOINT_URL for an S3-compatible server
    if exp is None:
        local = not uri.startswith(("http://", "https://", "databricks"))
        return client.create_experiment(cfg.tracking.experiment, tags=EXPERIMENT_KIND,
                                        artifact_location=wanted or (artifact_root() if local else None))
    if wanted and exp.artifact_location.rstrip("/") != wanted.rstrip("/"):
        raise GeocnnError(f"tracking.artifact_location {wanted}: the MLflow experiment {cfg.tracking.experiment!r} "
                          f"already keeps its artifacts at {exp.artifact_location}, and an experiment's artifact "
                          "root cannot change. Choose a new tracking.experiment, or remove tracking.artifact_location.")
    if "mlflow.experimentKind" not in exp.tags:
        for key, value in EXPERIMENT_KIND.items():
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def provenance() -> dict[str, str]:
    """Who ran what from where: MLflow's user, source and git tags (git only inside a checkout)."""
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    command = "geocnn" if argv0 in ("geocnn", "cli.py", "__main__.py") else argv0
    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.type": "LOCAL",
            "mlflow.source.name": " ".join([command, *sys.argv[1:]])[:5000]}
    commit = get_git_commit(str(PROJECT))
    if commit:
        tags["mlflow.source.git.commit"] = commit
        repo = get_git_repo_url(str(PROJECT))
        if repo:
            tags["mlflow.source.git.repoURL"] = repo
    return tags


def start_run(cfg: AnyExperiment, resume_run_id: str | None = None, resumed_at_epoch: int | None = None,
              run_name: str | None = None, params: dict[str, Any] | None = None, parent: str | None = None,
              task: str | None = None) -> str:
    """Create (or reopen, when resuming) a run of this experiment; log the resolved config (or ``params``).

    Args:
        cfg: the experiment (its tracking section chooses the store and MLflow experiment).
        resume_run_id: an unfinished run of the same command to reopen (tagged ``geocnn.resumed``).
        resumed_at_epoch: the first epoch the resumed training runs.
        run_name: the run's name (default the experiment name).
        params: parameters to log instead of the flattened config (e.g. a stage's own settings).
        parent: the parent run (``mlflow.parentRunId``) of a child run, e.g. stage 1 of two-stage transfer.
        task: what the run predicts (``geocnn.task``; default ``model.task``).
    """
    experiment_id = setup(cfg)
    client = MlflowClient(mlflow.get_tracking_uri())
    if resume_run_id:
        try:
            run = client.get_run(resume_run_id)
        except mlflow.exceptions.MlflowException:
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            client.update_run(resume_run_id, status="RUNNING")
            if resumed_at_epoch is not None:  # training continues a checkpoint (not a run that failed before one)
                count = int(run.data.tags.get("geocnn.resume_count", "0")) + 1
                for key, value in {"geocnn.resumed": "true", "geocnn.resume_count": str(count),
                                   "geocnn.resumed_at_epoch": str(resumed_at_epoch)}.items():
                    client.set_tag(resume_run_id, key, value)
            return run.info.run_id
    tags = {**provenance(), "geocnn.task": task or cfg.model.task, "geocnn.domain": cfg.domain}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=run_name or cfg.name, tags=tags)
    flat = params if params is not None else {**flatten(cfg), "output_dir": str(cfg.out.resolve())}
    items = [(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]), run_id=run.info.run_id)
    if params is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
            client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id


def log_dataset(run_id: str, samples: Any, name: str, source: str, digest: str, targets: str | None = None) -> None:
    """The training data as an MLflow dataset input (name, content digest, source, schema, rows): the UI's
    Dataset column."""
    with warnings.catch_warnings():  # MLflow's hints on source kinds and integer columns: not actionable here
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_pandas(samples, source=source, name=name, digest=digest[:36],
                              targets=targets)
        entity = dataset._to_mlflow_entity()  # the schema is inferred here
    entity_input = mlflow.entities.DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])
    client().log_inputs(run_id, datasets=[entity_input])


def describe(run_id: str, text: str) -> None:
    """The run's description (the UI's Description box, ``mlflow.note.content``)."""
    client().set_tag(run_id, "mlflow.note.content", text)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark a run FINISHED, FAILED or KILLED (MLflow's status of an interrupted run)."""
    MlflowClient(mlflow.get_tracking_uri()).set_terminated(run_id, status=status)


class EpochMetrics(L.Callback):
    """Logs the epoch's train/ and val/ metrics and the learning rate to an MLflow run (step = epoch).

    Epochs the run already holds (a resumed run retraining deterministically) are not logged twice.
    """

    def __init__(self, run_id: str, prefix: str = "") -> None:
        self.run_id = run_id
        self.prefix = prefix
        self.logged_through = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:  # data-parallel: rank 0 alone logs (every rank holds the same metrics)
            return
        history = MlflowClient(mlflow.get_tracking_uri()).get_metric_history(self.run_id, self.prefix + "train/loss")
        self.logged_through = max((m.step for m in history), default=-1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch <= self.logged_through or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        opt = trainer.optimizers[0] if trainer.optimizers else None
        if opt is not None:
            metrics["train/lr"] = max(g["lr"] for g in opt.param_groups)
        now = int(time.time() * 1000)
        MlflowClient(mlflow.get_tracking_uri()).log_batch(
            self.run_id, metrics=[mlflow.entities.Metric(self.prefix + k, v, now, trainer.current_epoch)
                                  for k, v in metrics.items()])


def log_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Log final metrics (names keep their slashes: test/rmse, baseline/rmse)."""
    clean = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
    mlflow.log_metrics(clean, run_id=run_id)


def log_start(run_id: str, params: dict[str, Any], report: dict[str, Any]) -> None:
    """Record the starting weights: params weights.* (source, tag, sha256, licence, counts), the tensor counts as
    metrics, and the whole load report as weights/start.json."""
    c = client()
    existing = c.get_run(run_id).data.params
    new = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
    if new:
        c.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in new.items()])
    counts = {f"weights/{k}": float(report[k]) for k in ("matched", "missing", "unexpected", "head_dropped")}
    mlflow.log_metrics(counts, run_id=run_id)
    c.log_dict(run_id, report, "weights/start.json")


def log_artifacts(run_id: str, paths: list[Path], folder: str | None = None) -> None:
    """Upload files to the run (a refused or missing artifact store is a GeocnnError naming it)."""
    client = MlflowClient(mlflow.get_tracking_uri())
    for p in paths:
        try:
            client.log_artifact(run_id, str(p), folder)
        except Exception as exc:  # noqa: BLE001 - boto3/gcs errors from a remote artifact store
            root = client.get_run(run_id).info.artifact_uri or ""
            if not is_uri(root):
                raise
            raise storage_error(exc, root, "uploading MLflow artifacts") from None


def client() -> MlflowClient:
    """A client on the current tracking URI."""
    return MlflowClient(mlflow.get_tracking_uri())


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    """Set tags on a run."""
    c = client()
    for key, value in tags.items():
        c.set_tag(run_id, key, value)


def set_alias(name: str, alias: str, version: str | int, uri: str | None = None) -> None:
    """Point a registry alias (e.g. 'champion') at a model version."""
    MlflowClient(tracking_uri(uri)).set_registered_model_alias(name, alias, str(version))


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    """Write ``text`` as an artifact of the run (e.g. 'model/anatomy.txt', 'tune/best_config.yaml')."""
    client().log_text(run_id, text, artifact_file)


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric logged step by step (per-epoch curves), in step order."""
    return sorted((m.step, float(m.value)) for m in client().get_metric_history(run_id, key))


def run_status(run_id: str) -> str | None:
    """A run's status (RUNNING, FINISHED, FAILED, KILLED), or None when the store has no such run."""
    try:
        return client().get_run(run_id).info.status
    except mlflow.exceptions.MlflowException:
        return None


def reopen_run(run_id: str) -> None:
    """Mark a run RUNNING again (a resumed study's parent run)."""
    client().update_run(run_id, status="RUNNING")


def child_runs(parent: str, experiment_id: str | None = None) -> list[Any]:
    """The runs whose ``mlflow.parentRunId`` is ``parent`` (oldest first)."""
    c = client()
    exp = experiment_id or c.get_run(parent).info.experiment_id
    runs = c.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=5000,
                         order_by=["attributes.start_time ASC"])
    return list(runs)


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log parameters the run does not hold yet (values cut to MLflow's 6000 characters)."""
    c = client()
    existing = c.get_run(run_id).data.params
    new = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
    if new:
        c.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in new.items()])
