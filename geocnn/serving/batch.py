"""Batch prediction of newly arrived files with the current model: each domain predicts its files (tables, maps)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pandas as pd

from geocnn.domains import DOMAINS
from geocnn.errors import GeocnnError
from geocnn.fanout import SEQUENTIAL, Mapper, shards
from geocnn.inference.bundle import load_bundle
from geocnn.outputs.tables import read_table, write_table
from geocnn.serving.watch import BATCHES, Item, Ledger, Outcome, check_folder, discover, exclusive, new_batch_id
from geocnn.tracking.model_uri import ModelRef, resolve


class FilesFailed(GeocnnError):
    """Some files of a watch-folder run failed or were given up (the others were predicted and recorded)."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        super().__init__(f"{summary.get('n_failed', 0)} file(s) failed, {len(summary.get('given_up', []))} given "
                         f"up; {summary.get('n_done', 0)} predicted (outputs in {summary.get('output_dir')})")


ANY_DOMAIN_PATTERNS = tuple(dict.fromkeys(p for d in DOMAINS.values() for p in d.watch_patterns))
"""What any domain's model could predict: looked for before the model is resolved."""


def default_patterns(ref: ModelRef) -> tuple[str, ...]:
    """File patterns a watch folder picks up for a model: its domain's."""
    return DOMAINS[load_bundle(ref.bundle_dir).preprocessing.domain].watch_patterns


def sample_id(relative_path: str) -> str:
    """A file's id in prediction tables: its path under the input folder without the suffix (``<class>/<stem>``
    for class folders, as in training; the same in `geocnn predict --images` and the watch folder)."""
    return Path(relative_path).with_suffix("").as_posix()


def _stamp(frame: pd.DataFrame, model: ModelRef, batch: str) -> pd.DataFrame:
    frame["model"] = model.ref
    frame["model_version"] = model.version or ""
    frame["batch"] = batch
    frame["predicted_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return frame


def predict_items(model: ModelRef, input_dir: Path, items: list[Item], output_dir: Path, batch: str,
                  batch_size: int = 64, device: str = "auto",
                  stride_px: int | None = None) -> tuple[list[Outcome], list[Path]]:
    """Predict new files with the model's domain (galaxy images -> a table; scenes -> maps and a row each); a file
    that fails does not stop the others. Writes the batch's table."""
    bundle = load_bundle(model.bundle_dir)
    domain = DOMAINS[bundle.preprocessing.domain]
    ids = [sample_id(i.path) for i in items]
    frame, failures = domain.predict_files(bundle, ids, [i.absolute(input_dir) for i in items], output_dir,
                                           batch_size, device, stride_px)
    outcomes = [Outcome(i, sid not in failures, failures.get(sid, "")) for i, sid in zip(items, ids)]
    written = write_batch(_stamp(frame, model, batch), output_dir, batch) if len(frame) else []
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
    return [write_table(frame, ledger.root / "predictions.parquet"),
            write_table(frame, ledger.root / "predictions.csv")]


@dataclass(frozen=True)
class ItemsJob:
    """A shard of new files to predict, as a unit of work (the model is read from its bundle folder)."""

    model: ModelRef
    input_dir: Path
    items: list[Item]
    output_dir: Path
    batch: str
    batch_size: int
    device: str
    stride_px: int | None


def predict_job(job: ItemsJob) -> tuple[list[Outcome], list[Path]]:
    """:func:`predict_items` of one shard (its own batch table under output_dir/batches/)."""
    return predict_items(job.model, job.input_dir, job.items, job.output_dir, job.batch, job.batch_size, job.device,
                         job.stride_px)


@dataclass
class Steps:
    """The steps of a watch-folder run (plain functions, or Prefect tasks wrapping them)."""

    resolve: Callable[..., ModelRef] = resolve
    discover: Callable[..., list[Item]] = discover
    predict: Callable[..., tuple[list[Outcome], list[Path]]] = predict_items
    tables: Callable[..., list[Path]] = rebuild_tables


def predict_new(input_dir: str | Path, output_dir: str | Path, model: str, patterns: list[str] | None = None,
                min_age_s: float = 2.0, max_attempts: int = 3, batch_size: int = 64, device: str = "auto",
                stride_px: int | None = None, run_id: str | None = None, steps: Steps | None = None,
                log: Callable[[str], None] = print, warn: Callable[[str], None] | None = None,
                mapper: Mapper = SEQUENTIAL, shard_size: int | None = None) -> dict[str, Any]:
    """Predict the files that arrived in ``input_dir`` since they were last processed; record each in the ledger.

    One run at a time per output folder (a second returns ``skipped``). Outputs are written before the ledger
    records them, and outputs no ledger entry references are removed, so a stopped run neither loses nor
    duplicates work. A failing file is recorded and retried by later runs, up to ``max_attempts``. With a parallel
    ``mapper`` and ``shard_size``, the new files are predicted in shards of that many files side by side, each
    shard its own batch (table under batches/, ledger entry).
    """
    steps = steps or Steps()
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
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
            # the folder first: a schedule with nothing new to do does not resolve (download) the model
            items = steps.discover(src, patterns or ANY_DOMAIN_PATTERNS, min_age_s)
            todo, given_up = ledger.pending(items, max_attempts)
            ref = steps.resolve(model) if todo else None
            if ref is not None and not patterns:
                wanted = default_patterns(ref)
                todo = [i for i in todo if any(fnmatch(Path(i.path).name.lower(), w.lower()) for w in wanted)]
            summary: dict[str, Any] = {"skipped": False, "input_dir": str(src), "output_dir": str(out),
                                       "model": ref.label if ref else model, "n_new": len(todo), "n_done": 0,
                                       "n_failed": 0, "failures": {}, "given_up": [i.path for i in given_up],
                                       "outputs": {}, "batch": None, "items": []}
            if todo:
                assert ref is not None
                batch = new_batch_id()
                if mapper.parallel and shard_size and len(todo) > shard_size:
                    jobs = [ItemsJob(ref, src, todo[a:b], out, f"{batch}-{k:03d}", batch_size, device, stride_px)
                            for k, (a, b) in enumerate(shards(len(todo), shard_size))]
                    outcomes, written = [], []
                    for job, (done, paths) in zip(jobs, mapper.map("predict-files", predict_job, jobs)):
                        ledger.commit(job.batch, done, ref.label, run_id)
                        outcomes += done
                        written += paths
                else:
                    outcomes, written = steps.predict(ref, src, todo, out, batch, batch_size=batch_size,
                                                      device=device, stride_px=stride_px)
                    ledger.commit(batch, outcomes, ref.label, run_id)
                tables = steps.tables(ledger)
                summary.update(batch=batch, n_done=sum(o.ok for o in outcomes),
                               n_failed=sum(not o.ok for o in outcomes),
                               failures={o.item.path: o.error for o in outcomes if not o.ok},
                               outputs={p.name: str(p) for p in [*written, *tables]},
                               items=[{"file": o.item.path, "status": "done" if o.ok else "failed",
                                       "error": o.error[:300]} for o in outcomes])
        finally:
            ledger.close()
    for path, error in summary["failures"].items():
        warn(f"{path} failed (retried next run, up to schedule.max_attempts={max_attempts}): {error}")
    for path in summary["given_up"]:
        warn(f"{path} given up: it failed {max_attempts} times (schedule.max_attempts); fix or replace the file")
    if not todo and not given_up:
        log(f"nothing new in {src}")
    else:
        log(f"{summary['n_done']} predicted, {summary['n_failed']} failed, {len(given_up)} given up; model "
            f"{summary['model']}; outputs in {out}")
    return summary
