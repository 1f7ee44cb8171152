"""Batch prediction of a large catalog in shards: one unit per shard, written as a partitioned Parquet dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from geocnn.atomic import atomic_dir
from geocnn.data.catalog import Catalog
from geocnn.domains.base import predict_catalog
from geocnn.errors import GeocnnError
from geocnn.fanout import SEQUENTIAL, Mapper, shards
from geocnn.inference.bundle import load_bundle
from geocnn.outputs.tables import write_table

SUCCESS = "_SUCCESS"
"""Written last into a finished dataset folder (readers of a partitioned dataset ignore names starting with _)."""


@dataclass(frozen=True)
class ShardJob:
    """One shard of a catalog to predict (a unit of work: the bundle is read from its folder)."""

    bundle_dir: str
    frame: pd.DataFrame
    source: str
    out: str
    batch_size: int = 64
    device: str = "auto"
    views: int | None = None
    scenes: list[str] | None = field(default=None)
    keep: tuple[str, ...] = ()
    """Catalog columns copied into the table beside the id (e.g. the true class of class folders)."""


def predict_shard(job: ShardJob) -> dict[str, Any]:
    """Predict a shard's rows and write them as one Parquet part (atomically); unreadable rows are reported."""
    failures: dict[str, str] = {}
    frame = predict_catalog(load_bundle(Path(job.bundle_dir)), Catalog(job.frame, [], job.source), job.batch_size,
                            job.device, job.views, job.scenes, failures=failures)
    for k, col in enumerate(job.keep):
        frame.insert(1 + k, col, frame["id"].map(dict(zip(job.frame["id"].astype(str), job.frame[col]))))
    write_table(frame, job.out)
    return {"part": Path(job.out).name, "rows": int(len(frame)), "failures": failures}


def predict_dataset(bundle_dir: Path, catalog: Catalog, out_dir: Path, shard_size: int, mapper: Mapper = SEQUENTIAL,
                    batch_size: int = 64, device: str = "auto", views: int | None = None,
                    scenes: list[str] | None = None, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Predict ``catalog`` shard by shard (``mapper``: one after another, or side by side on a task runner) into
    ``out_dir`` as a partitioned Parquet dataset (part-00000.parquet, ... in catalog order, then _SUCCESS).

    The folder appears whole or not at all: parts are written into a staging folder beside it, which replaces
    ``out_dir`` only when every shard is done. Returns the parts, row count and the rows that failed.
    """
    if shard_size <= 0:
        raise GeocnnError(f"shard size {shard_size}: give a positive number of rows per shard")
    if out_dir.suffix.lower() in (".csv", ".parquet") and out_dir.exists() and out_dir.is_file():
        raise GeocnnError(f"{out_dir} is a file; a sharded prediction writes a folder (a partitioned Parquet "
                          "dataset): give a folder path")
    ranges = shards(len(catalog.frame), shard_size)
    with atomic_dir(out_dir) as tmp:
        jobs = [ShardJob(str(bundle_dir), catalog.frame.iloc[a:b].reset_index(drop=True), catalog.source,
                         str(tmp / f"part-{k:05d}.parquet"), batch_size, device, views, scenes, keep)
                for k, (a, b) in enumerate(ranges)]
        done = mapper.map("predict-shard", predict_shard, jobs)
        failures = {k: v for d in done for k, v in d["failures"].items()}
        rows = sum(d["rows"] for d in done)
        if not rows:
            key, error = next(iter(failures.items())) if failures else ("-", "no rows")
            raise GeocnnError(f"none of the {len(catalog.frame)} catalog rows could be predicted, nothing written to "
                              f"{out_dir}; the first, {key}: {error}")
        for d in done:  # a shard whose rows all failed wrote an empty part: drop it, the dataset holds rows only
            if not d["rows"]:
                (tmp / d["part"]).unlink(missing_ok=True)
        (tmp / SUCCESS).write_text(json.dumps({"parts": [d["part"] for d in done if d["rows"]], "rows": rows,
                                               "failed": len(failures), "shard_size": shard_size}, indent=2))
    return {"dataset": out_dir, "parts": [out_dir / d["part"] for d in done if d["rows"]], "rows": rows,
            "failures": failures}
