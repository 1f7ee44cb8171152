"""The `geocnn` command line (typer): one library call per command (demo, run, predict, map, serve, ...)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperArgument, TyperOption

from geocnn.errors import GeocnnError, Interrupted


def _conventional_help() -> None:
    """Help in the usual Unix style: `serve [OPTIONS] CONFIG`, `--port INTEGER`, flags without a type. Typer 0.2x
    prints `{config}`, `<int>` and `<bool>` and has no setting for it; these three display hooks restore it."""
    label = {"bool": "", "int": "INTEGER", "float": "FLOAT", "str": "TEXT", "Path": "PATH", "list[str]": "TEXT"}

    def option_type(self: TyperOption, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag:
            return None
        bare = self.bare_type()
        return label.get(bare, bare.upper())

    def argument_type(self: TyperArgument, ctx: Any) -> str | None:
        return None

    TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign]
    TyperArgument._usage_display_name = (  # type: ignore[method-assign]
        lambda self: self.display_name_raw.upper() if self.required else f"[{self.display_name_raw.upper()}]")
    TyperArgument._rich_display_name = lambda self: self.display_name_raw.upper()  # type: ignore[method-assign]


_conventional_help()
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune timm CNNs on galaxy images and satellite scenes; track runs in MLflow; export "
                       "predictions and maps.")
STATE: dict[str, Any] = {"debug": False, "exit_now": None}
PROJECT = Path(__file__).resolve().parents[1]
# Commands import the library inside their bodies: `geocnn --help` and `geocnn config` stay fast (no torch, MLflow
# or Prefect at start-up). Nothing else in geocnn imports inside functions.

SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config key: key.sub=value")]


def _exit_without_teardown() -> None:
    """After Ctrl-C: once every other exit handler has run (Prefect stops its server, MLflow flushes; this one is
    registered first, so it runs last), leave without the interpreter's teardown of torch's libraries, which takes
    seconds (tens on a busy machine) and would keep the prompt waiting."""
    if STATE["exit_now"] is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(STATE["exit_now"])


atexit.register(_exit_without_teardown)


def show_version(value: bool) -> None:
    """Print the version and exit (``geocnn --version``)."""
    if value:
        from geocnn import __version__

        typer.echo(f"geocnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for user errors.")] = False,
         version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
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
        except KeyboardInterrupt as exc:  # Ctrl-C: one line, the run stays resumable
            if STATE["debug"]:
                raise
            typer.secho(str(exc) if isinstance(exc, Interrupted) else "interrupted",
                        fg=typer.colors.YELLOW, err=True)
            STATE["exit_now"] = 130
            raise typer.Exit(130) from None
        except (GeocnnError, FileNotFoundError, PermissionError) as exc:
            fail(exc)
        except Exception as exc:  # noqa: BLE001 - Prefect wraps task errors; unwrap ours
            cause = exc
            while cause is not None and not isinstance(cause, (GeocnnError, KeyboardInterrupt)):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            if isinstance(cause, KeyboardInterrupt):
                typer.secho(str(cause), fg=typer.colors.YELLOW, err=True)
                STATE["exit_now"] = 130
                raise typer.Exit(130) from None
            fail(cause)

    return wrapper


def print_summary(summary: dict[str, Any]) -> None:
    """Held-out metrics beside baselines, output paths, the MLflow run and model, and how to open the UI."""
    from geocnn.tracking.runs import run_url, ui_command

    metrics: dict[str, float] = summary["metrics"]
    typer.echo(f"\nHeld-out metrics ({int(metrics.get('test/n', 0))} samples; model vs train-derived baseline):")
    for name, value in sorted(metrics.items()):
        if name.startswith("test/") and "/" not in name.removeprefix("test/") and name != "test/n" \
                and not name.endswith(("_ci_low", "_ci_high")):
            base = metrics.get("baseline/" + name.removeprefix("test/"))
            low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
            ci = "" if low is None else f" [{low:7.4f}, {high:7.4f}]"
            typer.echo(f"  {name:<28} {value:8.4f}{ci}" + ("" if base is None else f"   baseline {base:8.4f}"))
    if "compare/baseline/p_value" in metrics:
        typer.echo(f"  (95 % bootstrap intervals; model vs baseline on the same rows: difference "
                   f"{metrics['compare/baseline/difference']:+.4f}, paired test p = "
                   f"{metrics['compare/baseline/p_value']:.3g})")
    print_uncertainty(metrics)
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
    freed = summary.get("checkpoints_freed_bytes", 0)
    if freed:
        typer.echo(f"  (training checkpoints deleted, {freed / 2**20:.0f} MiB freed: the bundle holds the weights; "
                   "train.keep_checkpoints=true keeps them)")
    if summary.get("run_id"):
        typer.echo(f"\nMLflow run   {summary['run_id']}")
        typer.echo(f"logged model {summary.get('model_uri', '-')}")
        if "registered_version" in summary:
            typer.echo(f"registered   models:/{summary['registered_model']}/{summary['registered_version']}")
        if "promotion" in summary:
            verdict = "promoted to champion" if summary.get("promoted") == "true" else "champion unchanged"
            unregistered = "" if "registered_version" in summary else " (not registered: tracking.register)"
            typer.echo(f"registry     {verdict}{unregistered}: {summary['promotion']}")
        url = run_url(summary.get("experiment_id"), summary["run_id"])
        if url:
            typer.echo(f"run page     {url}")
        else:
            typer.echo(f"Open the MLflow UI:  {ui_command()}")
            typer.echo("then the run: " + str(run_url(summary.get("experiment_id"), summary["run_id"],
                                                       "http://127.0.0.1:5000")))


def print_uncertainty(metrics: dict[str, float]) -> None:
    """The run's calibration and coverage: nominal level beside what was measured on rows never calibrated on."""
    level = metrics.get("uncertainty/level")
    if level is None:
        return
    typer.echo(f"\nUncertainty (nominal {level:.0%}; measured on rows the calibration never saw):")
    for tag, what in (("loco_", "leave-one-group-out"), ("cv_", "leave-one-fold-out"), ("", "test")):
        if f"uncertainty/{tag}coverage" not in metrics:
            continue
        width = metrics.get(f"uncertainty/{tag}mean_width")
        size = metrics.get("uncertainty/mean_set_size")
        extra = f", mean interval width {width:.4f}" if width is not None else \
            f", mean set size {size:.2f}" if size is not None else ""
        typer.echo(f"  coverage ({what}) {metrics[f'uncertainty/{tag}coverage']:.3f}{extra}")
        worst = {k.rsplit("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"uncertainty/{tag}coverage/")}
        if worst and tag:
            name = min(worst, key=worst.get)
            unit = "group" if tag == "loco_" else "fold"
            typer.echo(f"  worst {unit}: {name} {worst[name]:.3f} (coverage.csv has every one)")
        break
    if "uncertainty/temperature" in metrics:
        typer.echo(f"  temperature {metrics['uncertainty/temperature']:.3f} (fitted on validation); expected "
                   f"calibration error on test {metrics.get('test/ece_uncalibrated', float('nan')):.4f} -> "
                   f"{metrics.get('test/ece', float('nan')):.4f}")


def run_config(config: Path | None, overrides: list[str], no_prefect: bool) -> dict[str, Any]:
    """Validate a config (fail fast, before any flow starts), then run it as a Prefect flow or plain steps."""
    from geocnn.config import load_config

    cfg = load_config(config, overrides)  # before the engine is imported: a config error answers at once
    from geocnn.models.start import check_model

    cfg = check_model(cfg)  # before any flow, server or data: a typo or uncached weights answer at once
    from geocnn.domains import domain_for
    from geocnn.domains.base import run_experiment
    from geocnn.training.ranks import is_global_zero

    # Data-parallel ranks other than 0 (torchrun, srun, or Lightning re-running this command for its devices) run
    # the plain library steps as workers: no Prefect flow run, no outputs, no MLflow run; they print nothing.
    if not is_global_zero():
        return run_experiment(cfg, domain_for(cfg))
    if no_prefect:
        from geocnn import fanout
        from pipelines.fanout import mapper_for

        with mapper_for(cfg.orchestration) as mapper, fanout.using(mapper):  # folds, shards: the configured engine
            return run_experiment(cfg, domain_for(cfg))
    from pipelines.experiment import experiment_flow

    with prefect_console():
        return experiment_flow(None if config is None else str(config), overrides)


@contextlib.contextmanager
def prefect_console() -> Iterator[None]:
    """Flows run from the command line: a failing step's error is geocnn's one line (Prefect's tracebacks only with
    --debug), and a temporary API server that does not come up says what to do."""
    from pipelines.console import hide_run_errors_on_console

    if not STATE["debug"]:
        hide_run_errors_on_console()
    try:
        yield
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        raise GeocnnError("Prefect's temporary API server did not start in time (a busy machine?). Rerun with "
                          "--no-prefect to run the same steps without Prefect, point PREFECT_API_URL at a running "
                          "server (`prefect server start`), or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
                          ) from None


@app.command()
@guarded
def run(config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")], set_: SetOption = None,
        no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run the steps without Prefect.")] = False,
        ) -> None:
    """Run the whole experiment as a Prefect flow: ingest, split, train, evaluate, export, track."""
    print_rank_zero(run_config(config, list(set_ or []), no_prefect))


@app.command()
@guarded
def train(config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")],
          set_: SetOption = None) -> None:
    """Train and evaluate without Prefect (library path); same outputs as `geocnn run`."""
    print_rank_zero(run_config(config, list(set_ or []), no_prefect=True))


@app.command()
@guarded
def tune(config: Annotated[Path, typer.Argument(help="Experiment YAML with a tune: section (see README).")],
         set_: SetOption = None,
         trials: Annotated[Optional[int], typer.Option("--trials", help="tune.n_trials.")] = None,
         timeout_min: Annotated[Optional[float], typer.Option("--timeout-min", help="tune.timeout_min.")] = None,
         parallel: Annotated[Optional[int], typer.Option("--parallel", help="tune.parallel (trials at once, on "
                                                         "orchestration.task_runner).")] = None,
         storage: Annotated[Optional[str], typer.Option("--storage", help="tune.storage (Optuna database URL).")]
         = None,
         no_refit: Annotated[bool, typer.Option("--no-refit", help="Validation only: do not score the best "
                                                "configuration on test.")] = False,
         write_config: Annotated[Optional[Path], typer.Option("--write-config", help="Also write the chosen "
                                                              "config here (e.g. the config file itself).")] = None,
         no_prefect: Annotated[bool, typer.Option("--no-prefect", help="Run without Prefect.")] = False,
         ) -> None:
    """Search tune.space on validation (Optuna, MLflow child runs), then score the best configuration on test once."""
    from geocnn.config import load_config

    overrides = list(set_ or [])
    for key, value in (("n_trials", trials), ("timeout_min", timeout_min), ("parallel", parallel),
                       ("storage", storage)):
        if value is not None:
            overrides.append(f"tune.{key}={value}")
    if no_refit:
        overrides.append("tune.refit=false")
    cfg = load_config(config, overrides)  # a config error answers before any flow starts
    from geocnn.models.start import check_model
    from geocnn.tuning.search import summary_lines

    check_model(cfg)
    if no_prefect:
        from geocnn import fanout
        from geocnn.tuning.search import tune as run_tune
        from pipelines.fanout import mapper_for

        with mapper_for(cfg.orchestration) as mapper, fanout.using(mapper):
            summary = run_tune(cfg, source=config, overrides=overrides, write_config=write_config)
    else:
        from pipelines.tune import tune_flow

        with prefect_console():
            summary = tune_flow(str(config), overrides, str(write_config) if write_config else None)
    if summary.get("final"):
        typer.echo("final run of the best configuration (test scored once):")
        print_summary(summary["final"])
    for line in summary_lines(summary):
        typer.echo(line)
    for plot in summary["plots"]:
        typer.echo(f"  plot: {plot}")
    if summary.get("parent_run"):
        typer.echo(f"MLflow parent run: {summary['parent_run']} (trials are its child runs)")


@app.command()
@guarded
def pretrain(config: Annotated[Path, typer.Argument(help="Experiment YAML (its data, model.backbone, pretrain).")],
             set_: SetOption = None,
             out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default pretrain.out).")]
             = None) -> None:
    """Pretrain the encoder self-supervised (MoCo v2 / SimCLR / BYOL) on the images without labels."""
    from geocnn.config import load_config
    from geocnn.domains.pretrain import pretrain as run_pretrain

    result = run_pretrain(load_config(config, list(set_ or [])), out)
    card = result.card
    typer.echo(f"encoder bundle: {result.encoder_dir} ({card['method']}, {card['arch']}, {card['epochs']} epochs "
               f"on {card['data']['n_images']} images)")
    typer.echo(f"loss: {result.loss_curve[0]:.4f} (epoch 1) -> {result.loss_curve[-1]:.4f} (last)")
    if result.run_id:
        typer.echo(f"MLflow run: {result.run_id}")
    typer.echo(f"use it: model.weights: {result.encoder_dir}")


def print_rank_zero(summary: dict[str, Any]) -> None:
    """The run's summary, printed by global rank 0 only (other data-parallel ranks finish silently, exit 0)."""
    from geocnn.training.ranks import is_global_zero

    if is_global_zero():
        print_summary(summary)


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
    out: Annotated[str, typer.Option("--out", "-o", help="Output table (.csv or .parquet; a path or an s3://, "
                                                        "gs:// URI).")],
    images: Annotated[Optional[str], typer.Option(help="Folder of images or tiles (searched recursively; a path or "
                                                      "an s3://, gs:// folder URI).")] = None,
    catalog: Annotated[Optional[str], typer.Option(help="CSV/Parquet (a path or a URI): an id and a file column, or "
                                                        "(Earth models on scenes) survey points with lat/lon "
                                                        "columns.")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="Id column of --catalog (default: id, or row numbers "
                                                          "for points).")] = None,
    file_column: Annotated[str, typer.Option(help="Image/tile path column of --catalog.")] = "file",
    lat_column: Annotated[str, typer.Option(help="Latitude column of --catalog points.")] = "lat",
    lon_column: Annotated[str, typer.Option(help="Longitude column of --catalog points.")] = "lon",
    scene: Annotated[Optional[list[str]], typer.Option("--scene", help="Scenes to cut point chips from: files, "
                                                       "globs, folders or VRTs, one mosaic (default: the "
                                                       "model's).")] = None,
    tta: Annotated[Optional[str], typer.Option(help="Test-time views: none, flip2, rot4, dihedral8, rotN or a count "
                                                    "(default: the bundle's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Prediction batch size.")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    allow_outside_root: Annotated[bool, typer.Option(help="Let --catalog paths leave the catalog's folder.")] = False,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", help="Predict in shards of this many rows, "
                                                      "one task each; --out is then a folder: a partitioned Parquet "
                                                      "dataset (part-00000.parquet, ...).")] = None,
    task_runner: Annotated[str, typer.Option("--task-runner", help="Where shards run: sequential, threads, dask "
                                             "or ray.")] = "sequential",
    address: Annotated[Optional[str], typer.Option(help="An existing Dask scheduler or Ray cluster for "
                                                   "--task-runner.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Workers of a local cluster (default: the cores).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse inputs unlike the training data (resolution, "
                                         "data type, band names or values) instead of warning; nothing is "
                                         "written.")] = False,
) -> None:
    """Predict images, tiles or survey points with a bundle or a registered MLflow model; write a table (or, with
    --shard-size, a partitioned Parquet dataset written shard by shard)."""
    from geocnn.config.common import parse_views
    from geocnn.data.catalog import Catalog
    from geocnn.data.sources.galaxy_tables import read_csv_catalog
    from geocnn.data.sources.images import location, relative_name, walk_images
    from geocnn.data.sources.survey import read_survey
    from geocnn.data.sources.uris import is_dir, is_uri
    from geocnn.domains.base import predict_catalog
    from geocnn.inference.bundle import load_bundle
    from geocnn.outputs.tables import write_table
    from geocnn.serving.batch import sample_id
    from geocnn.tracking.model_uri import resolve

    if (images is None) == (catalog is None):
        raise GeocnnError("give exactly one of --images DIR or --catalog FILE")
    if images is not None and not (is_dir(images) if is_uri(images) else location(images).is_dir()):
        raise GeocnnError(f"--images {images}: not a folder")
    ref = resolve(model)
    typer.echo(f"model {ref.label}", err=True)
    bundle = load_bundle(ref.bundle_dir)
    from_files = bundle.preprocessing.chips.files
    truth: dict[str, str] = {}
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
        found = walk_images(location(images))
        if not found:
            raise GeocnnError(f"--images {images}: no .jpg/.png/.fits/.tif/.npy images found")
        ids: dict[str, Path | str] = {}
        for path in found:
            key = sample_id(relative_name(path, location(images)))
            if key in ids:
                raise GeocnnError(f"{path} and {ids[key]} would both get id {key!r}; rename or remove one")
            ids[key] = path
        truth = class_folders(ids, bundle.preprocessing.classes)
        cat = Catalog(pd_frame({"id": list(ids), "image": [str(p) for p in ids.values()]}), [], str(images))
    if scene:  # globs, folders, VRTs (STAC: resolve into files with `geocnn map`'s options, or list them)
        from geocnn.data.sources.scenes import resolve_scenes

        scene = resolve_scenes(scene, key="--scene")
    failures: dict[str, str] = {}
    try:
        views = None if tta is None else parse_views(tta)
    except ValueError as exc:
        raise GeocnnError(f"--tta: {exc}") from None
    if shard_size is not None:
        predict_sharded(ref.bundle_dir, cat, out, shard_size, truth, bundle.preprocessing.targets[0], batch_size,
                        device, views, scene, task_runner, address, workers)
        return
    frame = predict_catalog(bundle, cat, batch_size, device, views, scene, progress=True, failures=failures,
                            strict=strict)
    if truth:  # class folders: the true class beside the prediction, so `geocnn score` can score it
        frame.insert(1, bundle.preprocessing.targets[0], frame["id"].map(truth))
    if failures and not len(frame):
        key, error = next(iter(failures.items()))
        raise GeocnnError(f"none of the {len(failures)} inputs could be predicted, nothing written to {out}; the "
                          f"first, {key}: {error}")
    for key, error in failures.items():
        typer.secho(f"skipped {key}: {error}", fg=typer.colors.YELLOW, err=True)
    from geocnn.outputs.remote import output_file

    with output_file(out) as local:
        write_table(frame, local)
    what = "files" if images is not None else "catalog rows"
    typer.echo(f"wrote {len(frame)} predictions to {out}" + (f"; {len(failures)} unreadable {what} skipped (listed "
                                                           "above)" if failures else ""))


def predict_sharded(bundle_dir: Path, cat: Any, out: str, shard_size: int, truth: dict[str, str], target: str,
                    batch_size: int, device: str, views: int | None, scenes: list[str] | None, task_runner: str,
                    address: str | None, workers: int | None) -> None:
    """`geocnn predict --shard-size`: shards as units on the task runner -> a partitioned Parquet dataset."""
    from geocnn import fanout
    from geocnn.config import OrchestrationConfig
    from geocnn.outputs.remote import output_dir
    from geocnn.serving.shards import predict_dataset

    if task_runner not in ("sequential", "threads", "dask", "ray"):
        raise GeocnnError(f"--task-runner {task_runner}: choose sequential, threads, dask or ray")
    if truth:
        cat.frame[target] = cat.frame["id"].map(truth)
    orch = OrchestrationConfig(task_runner=task_runner, address=address, workers=workers)
    with contextlib.ExitStack() as stack:
        mapper: Any = fanout.SEQUENTIAL
        if orch.task_runner != "sequential":
            from pipelines.fanout import mapper_for

            mapper = stack.enter_context(mapper_for(orch))
        with output_dir(out) as local:
            done = predict_dataset(bundle_dir, cat, local, shard_size, mapper, batch_size, device, views, scenes,
                                   keep=(target,) if truth else ())
    for key, error in done["failures"].items():
        typer.secho(f"skipped {key}: {error}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"wrote {done['rows']} predictions in {len(done['parts'])} parts to {out}"
               + (f"; {len(done['failures'])} unreadable rows skipped (listed above)" if done["failures"] else ""))


def class_folders(ids: dict[str, Path | str], classes: list[str]) -> dict[str, str]:
    """id -> true class when every file sits in a folder named after one of the model's classes, else {}."""
    if not classes:
        return {}
    first = {key: key.split("/", 1)[0] for key in ids if "/" in key}
    if len(first) != len(ids) or not set(first.values()) <= set(classes):
        return {}
    return first


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
    out: Annotated[str, typer.Option("--out", help="Output folder for prediction.tif and prediction.png (a path or "
                                                   "an s3://, gs:// URI: uploaded, then _SUCCESS).")],
    scene: Annotated[Optional[list[str]], typer.Option("--scene", help="Scenes: GeoTIFFs, globs, folders, VRTs, "
                                                       "STAC JSON or a STAC API URL (default: the training "
                                                       "scenes).")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Window stride in native pixels (default: half a chip).")] \
    = None,
    grid: Annotated[Optional[str], typer.Option(help="Write on the grid of this raster (CRS, transform, shape).")]
    = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    task_runner: Annotated[str, typer.Option("--task-runner", help="Where the scenes are mapped: sequential, "
                                             "threads, dask or ray (one task per scene).")] = "sequential",
    address: Annotated[Optional[str], typer.Option(help="An existing Dask scheduler (tcp://host:8786) or Ray "
                                                   "cluster (ray://host:10001) for --task-runner.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Workers of a local cluster (default: the cores).")] = None,
    stac_asset: Annotated[Optional[str], typer.Option("--stac-asset", help="Asset key of STAC items given as "
                                                      "--scene (e.g. visual, B04).")] = None,
    stac_bbox: Annotated[Optional[str], typer.Option("--stac-bbox", help="STAC: keep items intersecting "
                                                     "'min_lon,min_lat,max_lon,max_lat'.")] = None,
    stac_datetime: Annotated[Optional[str], typer.Option("--stac-datetime", help="STAC: keep items of this date "
                                                         "or interval (2015-01-01/2015-12-31).")] = None,
    html: Annotated[bool, typer.Option("--html/--no-html", help="Also write prediction.html beside the COG: a "
                                       "self-contained Leaflet map (prediction, interval width), viewable offline.")]
    = True,
    units: Annotated[str, typer.Option(help="Units of the prediction for the HTML map's colour bar.")] = "",
    definition: Annotated[Optional[str], typer.Option(help="One-line definition of the predicted target, printed "
                                                      "under the PNG and tagged in the GeoTIFF (DEFINITION).")] = None,
    diverging: Annotated[Optional[bool], typer.Option("--diverging/--sequential", help="PNG colour map: diverging "
                                                      "at 0 or sequential (default: diverging when the map's "
                                                      "values span 0).")] = None,
    mask_to_grid: Annotated[bool, typer.Option("--mask-to-grid/--no-mask-to-grid", help="With --grid: no "
                                               "prediction where the grid raster has no data.")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse scenes unlike the training data (resolution, "
                                         "data type, band names or values) instead of warning; nothing is "
                                         "written.")] = False,
) -> None:
    """Wall-to-wall prediction map of scenes with a saved Earth model (sliding windows, overlaps averaged); several
    scenes are mapped one task each, then mosaicked (VRT + merged COG) with a per-scene table."""
    from geocnn import fanout
    from geocnn.domains import DOMAINS
    from geocnn.domains.earth_maps import check_scene, map_scenes, scenes_of
    from geocnn.inference.bundle import load_bundle
    from geocnn.tracking.model_uri import is_uri, resolve_model

    bundle = load_bundle(resolve_model(model))
    if not DOMAINS[bundle.preprocessing.domain].maps:
        raise GeocnnError(f"{model}: a {bundle.preprocessing.domain} model does not map scenes; maps need a bundle "
                          "from an Earth experiment (data.format survey or synthetic_earth)")
    from geocnn.config import MapsConfig, OrchestrationConfig

    if task_runner not in ("sequential", "threads", "dask", "ray"):
        raise GeocnnError(f"--task-runner {task_runner}: choose sequential, threads, dask or ray")
    orch = OrchestrationConfig(task_runner=task_runner, address=address, workers=workers)
    if scene:  # paths, globs, folders, VRTs, STAC documents or API URLs -> the concrete scenes
        from geocnn.data.sources.scenes import resolve_scenes

        try:
            bbox = [float(v) for v in stac_bbox.split(",")] if stac_bbox else None
        except ValueError:
            raise GeocnnError(f"--stac-bbox {stac_bbox}: give four numbers, min_lon,min_lat,max_lon,max_lat") from None
        scene = resolve_scenes(scene, asset=stac_asset, bbox=bbox, datetime_range=stac_datetime, key="--scene")
    chosen = scenes_of(bundle, scene, model)
    for path in chosen:  # every scene checked before any output exists
        check_scene(bundle, path, strict)
    from geocnn.outputs.remote import output_dir

    with output_dir(out) as local, contextlib.ExitStack() as stack:
        mapper: Any = fanout.SEQUENTIAL
        if orch.task_runner != "sequential" and len(chosen) > 1:
            from pipelines.fanout import mapper_for

            mapper = stack.enter_context(mapper_for(orch))
        style = MapsConfig(units=units or None, definition=definition, diverging=diverging,
                           mask_to_grid=mask_to_grid)  # units, definition: colour bar and GeoTIFF tags too
        paths = map_scenes(bundle.root, chosen, local, stride, grid, device=device, mapper=mapper, style=style,
                           model=model if is_uri(model) else None, guard=False)
        if html:
            from geocnn.outputs.webmap import write_webmap

            name = bundle.preprocessing.output_names[0]
            paths["map_html"] = write_webmap(paths["map_tif"], paths["map_tif"].with_suffix(".html"), target=name,
                                             units=units, title=f"predicted {name}")
    for key, path in paths.items():
        typer.echo(f"{key:<15} {str(path).replace(str(local), out.rstrip('/'), 1)}")


@app.command()
@guarded
def aggregate(
    map_path: Annotated[Path, typer.Argument(metavar="MAP", help="Prediction map GeoTIFF (e.g. prediction.tif).")],
    polygons: Annotated[Path, typer.Argument(help="Admin units: GeoJSON, GeoPackage or Shapefile.")],
    population: Annotated[Optional[Path], typer.Option(help="Population raster on the map's grid: weights the "
                                                       "means by people instead of area.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for aggregates.{gpkg|geojson,csv,parquet}.")] = Path("."),
    id_column: Annotated[Optional[str], typer.Option("--id-column", help="Column naming each polygon (checked "
                                                     "unique, written first).")] = None,
    band: Annotated[int, typer.Option(help="Prediction band when no band is described 'prediction'.")] = 1,
    format_: Annotated[str, typer.Option("--format", help="Vector output: gpkg or geojson.")] = "gpkg",
) -> None:
    """Per-polygon (population-)weighted mean prediction and interval, coverage and nodata share of a map."""
    from geocnn.outputs.aggregate import aggregate as aggregate_map

    result = aggregate_map(map_path, polygons, out, population=population, id_column=id_column, band=band,
                           fmt=format_)
    for note in result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    for key, path in result.paths.items():
        typer.echo(f"{key:<18} {path}")


@app.command()
@guarded
def score(
    table: Annotated[Path, typer.Argument(help="Predictions table (.csv or .parquet).")],
    target: Annotated[str, typer.Option(help="Observed values column (the true class for classification).")],
    prediction: Annotated[Optional[str], typer.Option(help="Predicted values column (regression; "
                                                           "classification tables are scored from prob_* "
                                                           "columns).")] = None,
    group: Annotated[Optional[str], typer.Option(help="Score per group (e.g. country) and average over groups.")] \
    = None,
    by: Annotated[Optional[str], typer.Option(help="Also score per value of this column (e.g. urban).")] = None,
) -> None:
    """Score any predictions table; print one JSON object (pooled, per group, group mean, per --by value).

    Regression: R2, r, RMSE, MAE of --prediction. Classification (prob_<class> columns): accuracy, balanced
    accuracy, ROC AUC and log loss against the true class in --target."""
    from geocnn.evaluation.grouped import is_classification_table, score_classification_table, score_table
    from geocnn.outputs.tables import read_table

    frame = read_table(table)
    if prediction is None and is_classification_table(frame, target):
        scores = score_classification_table(frame, target, group, by, source=str(table))
    elif prediction is None:
        raise GeocnnError(f"{table}: no prob_<class> columns, so this is not a classification table; give "
                          "--prediction COLUMN (the predicted values) to score a regression")
    else:
        scores = score_table(frame, target, prediction, group, by, source=str(table))
    typer.echo(json.dumps(scores, indent=2))


@app.command()
@guarded
def compare(
    first: Annotated[Path, typer.Argument(help="Run output_dir (its predictions.parquet) or predictions table A.")],
    second: Annotated[Path, typer.Argument(help="Run output_dir or predictions table B, same ids and truth.")],
    target: Annotated[str, typer.Option(help="Observed values column (the true class for classification).")],
    prediction: Annotated[Optional[str], typer.Option(help="Predicted values column of a regression (default "
                                                           "pred_<target>).")] = None,
    group: Annotated[Optional[str], typer.Option(help="Resample whole groups (e.g. country) in the bootstrap.")]
    = None,
    all_rows: Annotated[bool, typer.Option("--all-rows", help="Compare every common row, not only rows held out "
                                                              "(split=test) in both runs.")] = False,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
) -> None:
    """Paired test of two models on the same rows; print one JSON object.

    Classes (prob_<class> columns): McNemar's exact test on the galaxies only one model gets right. Regression: a
    paired bootstrap of R2. Both with 95 % bootstrap intervals of each model's metrics."""
    from geocnn.evaluation.compare import compare_tables
    from geocnn.outputs.tables import read_table

    paths = [p / "predictions.parquet" if p.is_dir() else p for p in (first, second)]
    result = compare_tables(read_table(paths[0]), read_table(paths[1]), target, prediction, group, not all_rows,
                            resamples, sources=(str(paths[0]), str(paths[1])))
    typer.echo(json.dumps(result, indent=2))


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
    port: Annotated[Optional[int], typer.Option(help="Port of the local Prefect server and UI (default 4200 when "
                                                     "free).")] = None,
) -> None:
    """Serve the retrain and watch-folder prediction deployments on their schedules until stopped (Ctrl-C).

    Uses the Prefect server at $PREFECT_API_URL when set; otherwise starts a local one (SQLite in data/prefect,
    127.0.0.1 only) for as long as it runs.
    """
    from geocnn.config import derive, load_config
    from geocnn.serving.schedules import describe_schedule, pick_port, plan, prefect_api
    from geocnn.tracking.runs import artifact_root, tracking_uri
    from pipelines.deployments import deployments

    cfg = load_config(config, set_ or [])
    retrain = None if no_retrain else (retrain_every if retrain_every is not None else retrain_cron)
    predict = None if no_predict else (predict_every if predict_every is not None else predict_cron)
    if no_retrain and retrain is None and cfg.schedule.retrain_cron:
        cfg = derive(cfg, {"schedule.retrain_cron": None})
    if no_predict and predict is None and cfg.schedule.predict_cron:
        cfg = derive(cfg, {"schedule.predict_cron": None})
    p = plan(cfg, config, list(set_ or []), retrain, predict, input_dir, output_dir, model)  # validates first
    chosen, note = (None, None) if os.environ.get("PREFECT_API_URL") else pick_port(port)
    if note:
        typer.echo(note)
    from prefect import serve as prefect_serve

    from pipelines.console import hide_run_errors_on_console, quiet_runner

    if not STATE["debug"]:
        hide_run_errors_on_console()
        quiet_runner()
    # flow runs are subprocesses: give them absolute MLflow locations
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(cfg.tracking.tracking_uri)
    os.environ["GEOCNN_MLFLOW_ARTIFACTS"] = artifact_root().removeprefix("file://")
    with prefect_api(port=chosen) as url:
        typer.echo(f"Prefect UI:  {url.removesuffix('/api')}")
        typer.echo(f"Prefect API: {url}   (from another shell: export PREFECT_API_URL={url}; then "
                   "`prefect deployment ls`, `prefect deployment run NAME`)")
        if p.retrain:
            typer.echo(f"retrain  {cfg.name}: {describe_schedule(p.retrain_schedule, p.timezone)}")
        if p.predict:
            typer.echo(f"predict  {p.predict['input_dir']} -> {p.predict['output_dir']} with {p.predict['model']}: "
                       f"{describe_schedule(p.predict_schedule, p.timezone)}")
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

        summary = predict_new(*args)  # without Prefect there is no task runner: files one shard, in this process
    else:
        from geocnn.serving.batch import FilesFailed
        from pipelines.predict import predict_flow

        try:
            with prefect_console():
                summary = predict_flow(*args, orchestration=cfg.orchestration.model_dump())
        except FilesFailed as exc:  # the flow run is Failed; the outputs of the other files are there all the same
            summary = exc.summary
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
    from geocnn.models.start import check_model

    cfg = check_model(load_config(path, set_ or []))
    typer.echo(yaml.safe_dump(cfg.model_dump(), sort_keys=False))


@app.command()
@guarded
def describe(
    target: Annotated[str, typer.Argument(help="A timm model name (resnet18), an experiment YAML or a bundle folder.")],
    chip_size: Annotated[Optional[int], typer.Option("--chip-size", help="Chip side in pixels (default: 224 for a "
                                                     "model name; data.chip_size / the bundle's).")] = None,
    bands: Annotated[Optional[int], typer.Option("--bands", help="Input bands (default: 3 for a model name; the "
                                                 "config's or bundle's).")] = None,
    transfer: Annotated[Optional[str], typer.Option("--transfer", help="Count trainable parameters under this "
                                                    "model.transfer: from_scratch, linear_probe, partial, full "
                                                    "(default: the config's; all trainable otherwise).")] = None,
    n_blocks: Annotated[Optional[int], typer.Option("--n-blocks", help="model.n_blocks for --transfer partial.")]
    = None,
    layers: Annotated[bool, typer.Option("--layers", help="Also one row per leaf layer (slower: a receptive "
                                         "field per layer).")] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the table as CSV here.")] = None,
    max_probe: Annotated[int, typer.Option("--max-probe", help="Largest input side in pixels the receptive field "
                                           "is probed on; larger fields print as >=.")] = 1024,
    set_: SetOption = None,
) -> None:
    """What the network does to a chip: per stage its output shape, stride, receptive field, parameters
    (trainable under the transfer mode) and multiply-adds, measured on the real model; warns when the chip is
    too small for it."""
    from geocnn.atomic import atomic_path
    from geocnn.domains.anatomy import describe_target

    anatomy = describe_target(target, chip_size, bands, transfer, n_blocks, layers, max_probe, list(set_ or []))
    typer.echo(anatomy.to_text(), nl=False)
    if csv is not None:
        with atomic_path(csv) as tmp:
            anatomy.to_frame().to_csv(tmp, index=False)
        typer.echo(f"table: {csv}")


weights_app = typer.Typer(help="Pretrained starting points: where a model.weights spec is, and fetching it.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")
SpecArgument = Annotated[str, typer.Argument(help="A model.weights spec: timm, timm:NAME.TAG, hf_hub:ORG/NAME, "
                                             "a TorchGeo enum (ResNet18_Weights.LANDSAT_OLI_SR_MOCO), package:NAME, "
                                             "or a file/folder.")]
BackboneOption = Annotated[str, typer.Option(help="The timm backbone (for 'timm': whose default tag).")]


def _show_located(found: Any) -> None:
    for label, value in (("spec", found.spec), ("kind", found.kind), ("architecture", found.arch),
                         ("tag", found.tag), ("source", found.source), ("licence", found.license),
                         ("bands", ", ".join(found.bands) if found.bands else None),
                         ("mean", found.mean), ("std", found.std),
                         ("scale", found.scale if found.mean else None), ("file", found.file),
                         ("cached", "yes" if found.cached else f"no (cache folder {found.cache})")):
        if value is not None:
            typer.echo(f"  {label:<13} {value}")


@weights_app.command("show")
@guarded
def weights_show(spec: SpecArgument, backbone: BackboneOption = "resnet18") -> None:
    """Where a spec's weights are, whether they are cached, and what they expect (bands, normalisation)."""
    from geocnn.config.weights import parse_weights
    from geocnn.models.weight_sources import locate

    try:
        parsed = parse_weights(spec)
    except ValueError as exc:
        raise GeocnnError(str(exc)) from None
    _show_located(locate(parsed, backbone))


@weights_app.command("fetch")
@guarded
def weights_fetch(spec: SpecArgument, backbone: BackboneOption = "resnet18") -> None:
    """Download a spec's weights into the local cache (Hugging Face cache or TORCH_HOME); needs a network. Copy
    the cache folder to machines without one (or point HF_HOME / TORCH_HOME at a shared copy)."""
    from geocnn.config.weights import parse_weights
    from geocnn.models.weight_sources import fetch

    try:
        parse_weights(spec)
    except ValueError as exc:
        raise GeocnnError(str(exc)) from None
    found = fetch(spec, backbone)
    typer.echo(f"cached: {found.file}")
    _show_located(found)


if __name__ == "__main__":  # pragma: no cover
    app()
