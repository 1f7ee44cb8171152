"""Content fingerprints of an experiment's inputs: the cache key of ingest (same bytes + same settings = same key)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from geocnn import __version__
from geocnn.config import ExperimentConfig

FULL_HASH_BYTES = 256 * 2**20
"""Files up to this size are hashed whole; larger ones by size, mtime and their first and last MiB."""


def file_digest(path: Path, h: "hashlib._Hash") -> None:
    """Feed a file's identity into ``h``: its bytes (or, for very large files, size + mtime + head and tail)."""
    st = path.stat()
    h.update(f"{path.name}:{st.st_size}\n".encode())
    with open(path, "rb") as fh:
        if st.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(2**20), b""):
                h.update(block)
        else:
            h.update(str(st.st_mtime_ns).encode())
            h.update(fh.read(2**20))
            fh.seek(-2**20, 2)
            h.update(fh.read(2**20))


def _files(path: str | None) -> list[Path]:
    if not path:
        return []
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in f.parts))
    return [p] if p.exists() else []


def input_files(cfg: ExperimentConfig) -> list[Path]:
    """Every file ingest reads: catalog, image folder, scenes (each band of a '{band}' stack), layers, label raster."""
    data, earth = cfg.data, cfg.earth
    files = _files(data.catalog)
    if data.format not in ("survey", "synthetic_earth", "synthetic"):
        files += _files(data.images or (str(Path(data.catalog).parent) if data.catalog else None))
    for scene in earth.scenes:
        if "{band}" in scene:
            files += [Path(scene.format(band=b)) for b in (earth.bands or [])]
        else:
            files += _files(scene)
    for path in [*earth.layers, earth.label_raster]:
        files += _files(path)
    return sorted(set(files))


def ingest_key(cfg: ExperimentConfig) -> str:
    """The ingest cache key: data/earth settings, the geocnn version, and the content of every input file."""
    h = hashlib.sha256()
    h.update(__version__.encode())
    settings = {"data": cfg.data.model_dump(), "task": cfg.model.task, "split": cfg.split.model_dump()}
    if cfg.data.format in ("survey", "synthetic_earth"):
        settings["earth"] = cfg.earth.model_dump()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for f in input_files(cfg):
        file_digest(f, h)
    return h.hexdigest()
