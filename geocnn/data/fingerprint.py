"""Content fingerprints of an experiment's inputs: the cache key of ingest (same bytes + same settings = same key)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from geocnn import __version__
from geocnn.data.sources.uris import fingerprint, is_dir, is_uri, list_files, path_exists

FULL_HASH_BYTES = 256 * 2**20
"""Files up to this size are hashed whole; larger ones by size, mtime and their first and last MiB."""


def file_digest(path: Path | str, h: "hashlib._Hash") -> None:
    """Feed a file's identity into ``h``: its bytes (or, for very large files, size + mtime + head and tail); a
    remote object's ETag and size (see uris.fingerprint)."""
    if is_uri(path):
        h.update(f"{fingerprint(str(path))}\n".encode())
        return
    path = Path(path)
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


def files_under(path: str | Path | None) -> list[Path | str]:
    """A file, or every (non-hidden) file under a folder; nothing for None or a missing path (URIs as str)."""
    if not path:
        return []
    if is_uri(path):
        return list_files(str(path)) if is_dir(str(path)) else [str(path)] if path_exists(path) else []
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in f.parts))
    return [p] if p.exists() else []


def ingest_key(settings: list[BaseModel], files: list[Path | str]) -> str:
    """The ingest cache key: the settings that shape the chips, the geocnn version, and every input file's content."""
    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(json.dumps([s.model_dump() for s in settings], sort_keys=True, default=str).encode())
    for f in sorted(set(files), key=str):
        file_digest(f, h)
    return h.hexdigest()
