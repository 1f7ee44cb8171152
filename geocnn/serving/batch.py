"""Batch prediction of newly arrived files with the current model: images -> tables, scenes -> maps + a table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geocnn.errors import GeocnnError
from geocnn.outputs.tables import read_table, write_table
from geocnn.serving.watch import (BATCHES, EARTH_PATTERNS, GALAXY_PATTERNS, Item, Ledger, Outcome, check_folder, discover,
                          exclusive, new_batch_id)


@dataclass
class ModelRef:
    """A model as asked for (path or models:/ URI), where its bundle is, its registry version and its domain."""

    ref: str
    bundle_dir: Path
    version: str | None
    kind: str

    @property
    def label(self) -> str:
        """How the ledger and tables name the model: the reference, plus the version an alias resolved to."""
        return self.ref if not self.version or self.ref.endswith(f"/{self.version}") else f"{self.ref} (v{self.version})"


def resolve(ref: str) -> ModelRef:
    """Fetch the model now (an alias like @champion resolves to its current version) and read its domain."""
    import json

    from geocnn.inference.bundle import META, resolve_model

    version = None
    if ref.startswith("models:/"):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from geocnn.tracking.runs import tracking_uri

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
    kind = json.loads((bundle_dir / META).read_text()).get("preprocessing", {}).get("kind", "galaxy")
    return ModelRef(ref, bundle_dir, None if version is None else str(version), kind)


def default_patterns(kind: str) -> tuple[str, ...]:
    """File patterns a watch folder picks up for a model's domain."""
    return EARTH_PATTERNS if kind == "earth" else GALAXY_PATTERNS


def _stamp(frame: pd.DataFrame, model: ModelRef, batch: str) -> pd.DataFrame:
    frame["model"] = model.ref
    frame["model_version"] = model.version or ""
    frame["batch"] = batch
    frame["predicted_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return frame


def predict_images(model: ModelRef, input_dir: Path, items: list[Item], output_dir: Path, batch: str,
                   batch_size: int = 64, device: str = "auto") -> tuple[list[Outcome], list[Path]]:
    """Predict new galaxy images; an unreadable image is a failed item, the others go on. Writes the batch table."""
    from geocnn.inference.bundle import load_bundle
    from geocnn.data.sources.images import crop_resize
    from geocnn.outputs.tables import predictions_frame
    from geocnn.inference.predict import predict_chips
    from geocnn.data.sources.galaxy_tables import load_image

    bundle = load_bundle(model.bundle_dir)
    pre = bundle.preprocessing
    outcomes: list[Outcome] = []
    chips, ok_items = [], []
    want = (bundle.spec.in_chans, pre["chip_size"], pre["chip_size"])
    for item in items:
        path = item.absolute(input_dir)
        try:
            chip = crop_resize(load_image(path, pre["channels"]), pre["crop"], pre["chip_size"], source=str(path))
            if chip.shape != want:
                raise GeocnnError(f"{path}: chip of shape {chip.shape}, the model expects {want}")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is that file's failure, not the batch's
            outcomes.append(Outcome(item, False, f"{type(exc).__name__}: {exc}"))
            continue
        chips.append(chip)
        ok_items.append(item)
    written: list[Path] = []
    if ok_items:
        pred = predict_chips(bundle.net, np.stack(chips), None, batch_size, bundle.tta_views, device)
        frame = predictions_frame(np.array([i.path for i in ok_items]), pred, bundle.spec)
        frame.insert(1, "file", [str(i.absolute(input_dir)) for i in ok_items])
        written = write_batch(_stamp(frame, model, batch), output_dir, batch)
        outcomes.extend(Outcome(i, True) for i in ok_items)
    return outcomes, written


def predict_scenes(model: ModelRef, input_dir: Path, items: list[Item], output_dir: Path, batch: str,
                   stride_px: int | None = None, batch_size: int = 128) -> tuple[list[Outcome], list[Path]]:
    """Map each new scene (GeoTIFF + PNG under output_dir/maps/); a failing scene does not stop the others.
    Writes the batch table: one row per scene with the map paths and summary statistics."""
    import rasterio

    from geocnn.domains.earth import map_from_bundle

    outcomes: list[Outcome] = []
    rows = []
    for item in items:
        path = item.absolute(input_dir)
        out = output_dir / "maps" / Path(item.path).with_suffix("")
        try:
            paths = map_from_bundle(str(model.bundle_dir), out, [str(path)], stride_px, None, batch_size)
            with rasterio.open(paths["map_tif"]) as src:
                values = src.read(1, masked=True).astype(np.float64).filled(np.nan)
        except Exception as exc:  # noqa: BLE001 - a corrupt or mismatched scene fails alone
            outcomes.append(Outcome(item, False, f"{type(exc).__name__}: {exc}"))
            continue
        finite = values[np.isfinite(values)]
        rows.append({"id": item.path, "file": str(path), "map_tif": str(paths["map_tif"]),
                     "map_png": str(paths["map_png"]), "valid_pixels": int(finite.size),
                     "mean": float(finite.mean()) if finite.size else np.nan,
                     "min": float(finite.min()) if finite.size else np.nan,
                     "max": float(finite.max()) if finite.size else np.nan})
        outcomes.append(Outcome(item, True))
    written = write_batch(_stamp(pd.DataFrame(rows), model, batch), output_dir, batch) if rows else []
    return outcomes, written


def write_batch(frame: pd.DataFrame, output_dir: Path, batch: str) -> list[Path]:
    """The batch's table as Parquet and CSV under output_dir/batches/ (each write atomic)."""
    folder = output_dir / BATCHES
    return [write_table(frame, folder / f"{batch}.parquet"), write_table(frame, folder / f"{batch}.csv")]


def rebuild_tables(ledger: Ledger) -> list[Path]:
    """output_dir/predictions.parquet and .csv: every recorded batch, the newest row per file (atomic rewrite)."""
    frames = [read_table(p) for b in ledger.batches() if (p := ledger.root / BATCHES / f"{b}.parquet").exists()]
    if not frames:
        return []
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("id", keep="last").sort_values("id")
    return [write_table(frame, ledger.root / "predictions.parquet"), write_table(frame, ledger.root / "predictions.csv")]


@dataclass
class Steps:
    """The steps of a watch-folder run (plain functions, or Prefect tasks wrapping them)."""

    resolve: Callable[..., ModelRef] = resolve
    discover: Callable[..., list[Item]] = discover
    images: Callable[..., tuple[list[Outcome], list[Path]]] = predict_images
    scenes: Callable[..., tuple[list[Outcome], list[Path]]] = predict_scenes
    tables: Callable[..., list[Path]] = rebuild_tables


def predict_new(input_dir: str | Path, output_dir: str | Path, model: str, patterns: list[str] | None = None,
                min_age_s: float = 2.0, max_attempts: int = 3, batch_size: int = 64, device: str = "auto",
                stride_px: int | None = None, run_id: str | None = None, steps: Steps | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Predict the files that arrived in ``input_dir`` since they were last processed; record each in the ledger.

    One run at a time per output folder (a second returns ``skipped``). Outputs are written before the ledger
    records them, and outputs no ledger entry references are removed, so a stopped run neither loses nor
    duplicates work. A failing file is recorded and retried by later runs, up to ``max_attempts``.
    """
    steps = steps or Steps()
    src, out = Path(input_dir), Path(output_dir)
    check_folder(src)  # before the output folder or its ledger is created
    with exclusive(out) as mine:
        if not mine:
            log(f"another prediction run is writing to {out}; this run leaves the files to it")
            return {"skipped": True, "input_dir": str(src), "output_dir": str(out)}
        ledger = Ledger(out)
        try:
            for orphan in ledger.remove_orphans():
                log(f"removed {orphan}: written by a run that stopped before recording it")
            ref = steps.resolve(model)
            items = steps.discover(src, patterns or default_patterns(ref.kind), min_age_s)
            todo, given_up = ledger.pending(items, max_attempts)
            summary: dict[str, Any] = {"skipped": False, "input_dir": str(src), "output_dir": str(out),
                                       "model": ref.label, "n_new": len(todo), "n_done": 0, "n_failed": 0,
                                       "failures": {}, "given_up": [i.path for i in given_up], "outputs": {},
                                       "batch": None, "items": []}
            if todo:
                batch = new_batch_id()
                if ref.kind == "earth":
                    outcomes, written = steps.scenes(ref, src, todo, out, batch, stride_px=stride_px,
                                                     batch_size=batch_size)
                else:
                    outcomes, written = steps.images(ref, src, todo, out, batch, batch_size=batch_size, device=device)
                ledger.commit(batch, outcomes, ref.label, run_id)
                tables = steps.tables(ledger)
                summary.update(batch=batch, n_done=sum(o.ok for o in outcomes), n_failed=sum(not o.ok for o in outcomes),
                               failures={o.item.path: o.error for o in outcomes if not o.ok},
                               outputs={p.name: str(p) for p in [*written, *tables]},
                               items=[{"file": o.item.path, "status": "done" if o.ok else "failed",
                                       "error": o.error[:300]} for o in outcomes])
        finally:
            ledger.close()
    for path, error in summary["failures"].items():
        log(f"{path} failed (retried next run): {error}")
    log(f"{summary['n_done']} predicted, {summary['n_failed']} failed, {len(given_up)} given up; model {ref.label}; "
        f"outputs in {out}")
    return summary
