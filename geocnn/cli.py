"""The `geocnn` command line (typer): one library call per command (demo, run, predict, map, serve, ...)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from geocnn.errors import GeocnnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune timm CNNs on galaxy images and satellite scenes; track runs in MLflow; export "
                       "predictions and maps.")
STATE: dict[str, bool] = {"debug": False}
PROJECT = Path(__file__).resolve().parents[1]
# Commands import the library inside their bodies: `geocnn --help` and `geocnn config` stay fast (no torch, MLflow
# or Prefect at start-up). Nothing else in geocnn imports inside functions.

SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config key: key.sub=value")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for user errors.")] = False) -> None:
    """geocnn: CNNs for scientific imagery."""
    STATE["debug"] = debug


def fail(exc: BaseException) -> None:
    """Print a user error without a traceback (unless --debug) and exit non-zero."""
    if STATE["debug"]:
        raise exc
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def guarded(fn: Any) -> Any:
    """Turn GeocnnError (and user-caused OS errors) into a clean message and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (GeocnnError, FileNotFoundError, PermissionError) as exc:
            fail(exc)
        except Exception as exc:  # noqa: BLE001 - Prefect wraps task errors; unwrap ours
            cause = exc
            while cause is not None and not isinstance(cause, GeocnnError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            fail(cause)

    return wrapper


def print_summary(summary: dict[str, Any]) -> None:
    """Held-out metrics beside baselines, output paths and the MLflow UI command."""
    from geocnn.tracking.runs import ui_command

    metrics: dict[str, float] = summary["metrics"]
    typer.echo(f"\nHeld-out metrics ({int(metrics.get('test/n', 0))} samples; model vs train-derived baseline):")
    for name, value in sorted(metrics.items()):
        if name.startswith("test/") and "/" not in name.removeprefix("test/"):
            base = metrics.get("baseline/" + name.removeprefix("test/"))
            typer.echo(f"  {name:<28} {value:8.4f}" + ("" if base is None else f"   baseline {base:8.4f}"))
    others = sorted(k for k in metrics if k.startswith(("baseline_", "poorer_half/")) and
                    k.rsplit("/", 1)[-1] in ("r2", "pearson_r2") and k.count("/") <= 2)
    if others:
        typer.echo("\nOther baselines and the poorer half of clusters (same folds):")
        for name in others:
            typer.echo(f"  {name:<40} {metrics[name]:8.4f}")
    if summary.get("resumed_at_epoch") is not None:
        typer.echo(f"\nResumed an interrupted training from its last checkpoint at epoch {summary['resumed_at_epoch']}"
                   " (same MLflow run, tagged geocnn.resumed)")
    typer.echo("\nOutputs:")
    for key, path in summary["outputs"].items():
        typer.echo(f"  {key:<20} {path}")
    if summary.get("run_id"):
        typer.echo(f"\nMLflow run {summary['run_id']}  model {summary.get('model_uri', '-')}"
                   + (f" (registered version {summary['registered_version']})" if "registered_version" in summary
                      else ""))
        if "promotion" in summary:
            verdict = "promoted to champion" if summary.get("promoted") == "true" else "champion unchanged"
            typer.echo(f"Registry: {verdict}: {summary['promotion']}")
        typer.echo(f"Open the MLflow UI:  {ui_command()}")


def run_config(config: Path | None, overrides: list[str], no_prefect: bool) -> dict[str, Any]:
    """Validate a config (fail fast, before any flow starts), then run it as a Prefect flow or plain steps."""
    from geocnn.config import load_config

    cfg = load_config(config, overrides)  # before the engine is imported: a config error answers at once
    from geocnn.domains import domain_for
    from geocnn.domains.base import run_experiment

    if no_prefect:
        return run_experiment(cfg, domain_for(cfg))
    from pipelines.experiment import experiment_flow

    return experiment_flow(None if config is None else str(config), overrides)


@app.command()
@guarded
def run(config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")], set_: SetOption = None,
        no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run the steps without Prefect.")] = False,
        ) -> None:
    """Run the whole experiment as a Prefect flow: ingest, split, train, evaluate, export, track."""
    print_summary(run_config(config, list(set_ or []), no_prefect))


@app.command()
@guarded
def train(config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")],
          set_: SetOption = None) -> None:
    """Train and evaluate without Prefect (library path); same outputs as `geocnn run`."""
    print_summary(run_config(config, list(set_ or []), no_prefect=True))


@app.command()
@guarded
def demo(
    domain: Annotated[str, typer.Argument(help="galaxy, earth, or all (both, one after the other).")] = "all",
    quick: Annotated[bool, typer.Option(help="Smaller, faster demo (about a minute per domain).")] = False,
    no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run the steps without Prefect.")] = False,
    set_: SetOption = None,
) -> None:
    """Generate synthetic data with a known signal and run the whole pipeline on it (galaxies and/or Earth)."""
    if domain not in (*DEMOS, "all"):
        raise GeocnnError(f"geocnn demo: unknown domain {domain!r}; use {', '.join(DEMOS)} or all")
    for name in (list(DEMOS) if domain == "all" else [domain]):
        config_name, quick_overrides, what = DEMOS[name]
        typer.echo(f"geocnn demo {name}: {what}")
        overrides = [*quick_overrides, *(set_ or [])] if quick else list(set_ or [])
        print_summary(run_config(PROJECT / "configs" / config_name, overrides, no_prefect))


DEMOS = {
    "galaxy": ("galaxy_demo.yaml", ["data.synthetic_count=300", "train.epochs=4"],
               "synthetic galaxies (elliptical, spiral, barred, ring, edge-on) -> resnet -> MLflow"),
    "earth": ("poverty_demo.yaml", ["earth.synthetic_size=512", "earth.synthetic_clusters=160",
                                    "two_stage.stage1_chips=800", "train.epochs=3"],
              "synthetic Landsat-like scene + night lights + survey clusters -> two-stage CNN (Jean et al.) -> "
              "out-of-country metrics, maps, MLflow"),
}


@app.command()
@guarded
def predict(
    model: Annotated[str, typer.Option("--model", "-m", help="Bundle folder, or models:/NAME@ALIAS, models:/NAME/V.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output table (.csv or .parquet).")],
    images: Annotated[Optional[Path], typer.Option(help="Folder of images or tiles (searched recursively).")] = None,
    catalog: Annotated[Optional[Path], typer.Option(help="CSV/Parquet: an id and a file column, or (Earth models on "
                                                         "scenes) survey points with lat/lon columns.")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="Id column of --catalog (default: id, or row numbers "
                                                          "for points).")] = None,
    file_column: Annotated[str, typer.Option(help="Image/tile path column of --catalog.")] = "file",
    lat_column: Annotated[str, typer.Option(help="Latitude column of --catalog points.")] = "lat",
    lon_column: Annotated[str, typer.Option(help="Longitude column of --catalog points.")] = "lon",
    scene: Annotated[Optional[list[str]], typer.Option("--scene", help="Scenes to cut point chips from (default: "
                                                                       "the model's).")] = None,
    tta: Annotated[Optional[int], typer.Option(help="Test-time views (default: the bundle's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Prediction batch size.")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    allow_outside_root: Annotated[bool, typer.Option(help="Let --catalog paths leave the catalog's folder.")] = False,
) -> None:
    """Predict images, tiles or survey points with a bundle or a registered MLflow model; write a table."""
    from geocnn.data.catalog import Catalog
    from geocnn.data.sources.galaxy_tables import read_csv_catalog
    from geocnn.data.sources.images import find_image_files
    from geocnn.data.sources.survey import read_survey
    from geocnn.domains.base import predict_catalog
    from geocnn.inference.bundle import load_bundle
    from geocnn.outputs.tables import write_table
    from geocnn.tracking.model_uri import resolve_model

    if (images is None) == (catalog is None):
        raise GeocnnError("give exactly one of --images DIR or --catalog FILE")
    bundle = load_bundle(resolve_model(model))
    from_files = bundle.preprocessing.chips.files
    if catalog is not None and not from_files:
        frame = read_survey(catalog, lat_column, lon_column, id_column=id_column)
        cat = Catalog(frame, [], str(catalog))
    elif catalog is not None:
        cat = read_csv_catalog(catalog, None, id_column=id_column or "id", file_column=file_column, targets=[],
                               require_targets=False, allow_outside_root=allow_outside_root)
    else:
        if not from_files:
            raise GeocnnError(f"--model {model}: this Earth model cuts chips from scenes around points; give "
                              "--catalog POINTS.csv (lat/lon columns), or map a scene with `geocnn map`")
        if not images.is_dir():
            raise GeocnnError(f"--images {images}: not a folder")
        found = find_image_files(images)
        if not found:
            raise GeocnnError(f"--images {images}: no .jpg/.png/.fits/.tif/.npy images found")
        cat = Catalog(pd_frame({"id": list(found), "image": [str(p) for p in found.values()]}), [], str(images))
    frame = predict_catalog(bundle, cat, batch_size, device, tta, scene, progress=True)
    write_table(frame, out)
    typer.echo(f"wrote {len(frame)} predictions to {out}")


def pd_frame(columns: dict[str, list[str]]) -> Any:
    """A DataFrame of the given columns (pandas imported only when a command needs it)."""
    import pandas as pd

    return pd.DataFrame(columns)


@app.command()
@guarded
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run's output_dir (holds predictions.parquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write into.")],
    formats: Annotated[str, typer.Option(help="Comma-separated table formats: csv,parquet.")] = "csv,parquet",
    split: Annotated[Optional[str], typer.Option(help="Only rows of this split (train, val, test).")] = None,
) -> None:
    """Export a run's predictions as tables (optionally one split only)."""
    from geocnn.outputs.tables import TABLE_FORMATS, read_table, write_tables

    frame = read_table(run_dir / "predictions.parquet")
    if split:
        if split not in set(frame.get("split", [])):
            raise GeocnnError(f"--split {split}: no rows of that split in {run_dir / 'predictions.parquet'}")
        frame = frame[frame["split"] == split]
    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in TABLE_FORMATS]
    if bad:
        raise GeocnnError(f"--formats: unknown {bad}; choose from {list(TABLE_FORMATS)}")
    for p in write_tables(frame, out, formats=fmts):
        typer.echo(f"wrote {p}")


@app.command("map")
@guarded
def map_(
    model: Annotated[str, typer.Option("--model", help="Earth bundle folder or models:/NAME@ALIAS.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for prediction.tif and prediction.png.")],
    scene: Annotated[Optional[list[str]], typer.Option("--scene", help="Scene GeoTIFF(s) (default: the "
                                                                       "training scenes).")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Window stride in native pixels (default: half a chip).")] \
    = None,
    grid: Annotated[Optional[str], typer.Option(help="Write on the grid of this raster (CRS, transform, shape).")]
    = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Wall-to-wall prediction map of a scene with a saved Earth model (sliding windows, overlaps averaged)."""
    from geocnn.domains import DOMAINS
    from geocnn.domains.earth_maps import map_scene, scenes_of
    from geocnn.inference.bundle import load_bundle
    from geocnn.tracking.model_uri import resolve_model

    bundle = load_bundle(resolve_model(model))
    if not DOMAINS[bundle.preprocessing.domain].maps:
        raise GeocnnError(f"{model}: a {bundle.preprocessing.domain} model does not map scenes; maps need a bundle "
                          "from an Earth experiment (data.format survey or synthetic_earth)")
    paths = map_scene(bundle, scenes_of(bundle, scene, model), out, stride, grid, device=device)
    for key, path in paths.items():
        typer.echo(f"{key:<10} {path}")


@app.command()
@guarded
def score(
    table: Annotated[Path, typer.Argument(help="Predictions table (.csv or .parquet).")],
    target: Annotated[str, typer.Option(help="Observed values column.")],
    prediction: Annotated[str, typer.Option(help="Predicted values column.")],
    group: Annotated[Optional[str], typer.Option(help="Score per group (e.g. country) and average over groups.")] \
    = None,
    by: Annotated[Optional[str], typer.Option(help="Also score per value of this column (e.g. urban).")] = None,
) -> None:
    """Score any predictions table; print one JSON object (pooled, per group, group mean, per --by value)."""
    from geocnn.evaluation.grouped import score_table
    from geocnn.outputs.tables import read_table

    typer.echo(json.dumps(score_table(read_table(table), target, prediction, group, by, source=str(table)), indent=2))


@app.command()
@guarded
def alias(name: Annotated[str, typer.Argument(help="Registered model name.")],
          version: Annotated[str, typer.Argument(help="Model version number.")],
          alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias, e.g. champion.")] = "champion",
          ) -> None:
    """Set a registry alias (e.g. champion) on a registered model version."""
    from geocnn.tracking.runs import set_alias

    try:
        set_alias(name, alias_name, version)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        raise GeocnnError(f"could not set alias {alias_name!r} on {name} version {version}: {exc}") from None
    typer.echo(f"{name}@{alias_name} -> version {version}")


@app.command()
@guarded
def serve(
    config: Annotated[Path, typer.Argument(help="Experiment YAML; its 'schedule' section gives the defaults.")],
    set_: SetOption = None,
    retrain_cron: Annotated[Optional[str], typer.Option(help="Cron of retraining, e.g. '0 3 * * 0'.")] = None,
    predict_cron: Annotated[Optional[str], typer.Option(help="Cron of watch-folder prediction, e.g. '*/15 * * * *'.")]
    = None,
    retrain_every: Annotated[Optional[float], typer.Option(help="Retrain every N seconds (instead of a cron).")] = None,
    predict_every: Annotated[Optional[float], typer.Option(help="Predict new files every N seconds.")] = None,
    input_dir: Annotated[Optional[str], typer.Option("--input", help="Watch folder (default: schedule.input_dir).")]
    = None,
    output_dir: Annotated[Optional[str], typer.Option("--output", help="Prediction outputs and ledger (default: "
                                                                       "schedule.output_dir).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model for prediction (default: models:/NAME@champion).")]
    = None,
    no_retrain: Annotated[bool, typer.Option("--no-retrain", help="Serve only the prediction deployment.")] = False,
    no_predict: Annotated[bool, typer.Option("--no-predict", help="Serve only the retraining deployment.")] = False,
) -> None:
    """Serve the retrain and watch-folder prediction deployments on their schedules until stopped (Ctrl-C).

    Uses the Prefect server at $PREFECT_API_URL when set; otherwise starts a local one (SQLite in data/prefect,
    127.0.0.1 only) for as long as it runs.
    """
    from prefect import serve as prefect_serve

    from geocnn.config import derive, load_config
    from geocnn.serving.schedules import plan, prefect_api
    from geocnn.tracking.runs import artifact_root, tracking_uri
    from pipelines.deployments import deployments

    cfg = load_config(config, set_ or [])
    retrain = None if no_retrain else (retrain_every if retrain_every is not None else retrain_cron)
    predict = None if no_predict else (predict_every if predict_every is not None else predict_cron)
    if no_retrain and retrain is None and cfg.schedule.retrain_cron:
        cfg = derive(cfg, {"schedule.retrain_cron": None})
    if no_predict and predict is None and cfg.schedule.predict_cron:
        cfg = derive(cfg, {"schedule.predict_cron": None})
    p = plan(cfg, config, list(set_ or []), retrain, predict, input_dir, output_dir, model)
    # flow runs are subprocesses: give them absolute MLflow locations
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(cfg.tracking.tracking_uri)
    os.environ["GEOCNN_MLFLOW_ARTIFACTS"] = artifact_root().removeprefix("file://")
    with prefect_api() as url:
        typer.echo(f"Prefect API: {url}   (UI: {url.removesuffix('/api')})")
        if p.retrain:
            typer.echo(f"retrain  {cfg.name}: {p.retrain_schedule} ({p.timezone})")
        if p.predict:
            typer.echo(f"predict  {p.predict['input_dir']} -> {p.predict['output_dir']} with {p.predict['model']}: "
                       f"{p.predict_schedule} ({p.timezone})")
        prefect_serve(*deployments(p, cfg.name))


@app.command()
@guarded
def watch(
    config: Annotated[Optional[Path], typer.Argument(help="Experiment YAML (for the schedule section's "
                                                          "defaults).")] = None,
    set_: SetOption = None,
    input_dir: Annotated[Optional[str], typer.Option("--input", help="Watch folder.")] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output", help="Outputs and ledger.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Bundle folder or models:/NAME@ALIAS.")] = None,
    no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run without Prefect.")] = False,
) -> None:
    """Predict the files that arrived in the watch folder since the last run, once (what the schedule runs)."""
    from geocnn.config import load_config
    from geocnn.serving.schedules import watch_paths
    from geocnn.serving.watch import check_folder

    if config is None and not (input_dir and output_dir and model):
        raise GeocnnError("give a config, or all of --input DIR --output DIR --model MODEL")
    cfg = load_config(config, set_ or []) if config else load_config(None, ["name=watch", *(set_ or [])])
    src, out, ref = watch_paths(cfg, input_dir, output_dir, model)
    check_folder(src)  # a clear error before any flow, server or ledger starts
    s = cfg.schedule
    args = (str(src), str(out), ref, list(s.patterns) or None, s.min_age_s, s.max_attempts)
    if no_prefect:
        from geocnn.serving.batch import predict_new

        summary = predict_new(*args)
    else:
        from pipelines.predict import predict_flow

        summary = predict_flow(*args)
    for key, path in summary.get("outputs", {}).items():
        typer.echo(f"{key:<28} {path}")
    if summary.get("n_failed"):
        raise typer.Exit(1)


@app.command("tracking-server")
@guarded
def tracking_server(
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    db: Annotated[Optional[Path], typer.Option(help="SQLite file (default data/mlflow/mlflow.db).")] = None,
    artifacts: Annotated[Optional[Path], typer.Option(help="Artifact root (default data/mlflow/artifacts).")] = None,
) -> None:
    """Start a local MLflow tracking server (SQLite backend, local artifacts served over HTTP) until stopped.
    Point runs at it with MLFLOW_TRACKING_URI=http://HOST:PORT."""
    import subprocess

    from geocnn.tracking.runs import server_command

    cmd = server_command(host, port, db, artifacts)
    typer.echo(f"MLflow tracking server on http://{host}:{port}  (export MLFLOW_TRACKING_URI=http://{host}:{port})")
    typer.echo(" ".join(cmd))
    try:
        raise typer.Exit(subprocess.call(cmd))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
@guarded
def config(path: Annotated[Path, typer.Argument(help="Experiment YAML.")], set_: SetOption = None) -> None:
    """Validate a config and print it fully resolved (defaults filled in)."""
    import yaml

    from geocnn.config import load_config

    typer.echo(yaml.safe_dump(load_config(path, set_ or []).model_dump(), sort_keys=False))


if __name__ == "__main__":  # pragma: no cover
    app()
