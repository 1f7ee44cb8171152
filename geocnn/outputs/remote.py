"""Outputs to object storage: write locally in a staging folder, upload every file, then a _SUCCESS marker last.

A failed upload deletes what it had uploaded, so a destination holds either a complete output (with ``_SUCCESS``)
or nothing new. A local destination is written as before (atomically, by the writers themselves).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geocnn.data.sources.uris import filesystem, is_uri, join, name, storage_error
from geocnn.errors import GeocnnError

SUCCESS = "_SUCCESS"
"""Written last into an uploaded output folder: readers trust a folder only when it is there."""


@contextlib.contextmanager
def output_dir(dest: str | Path) -> Iterator[Path]:
    """A local folder to write an output folder into: ``dest`` itself, or for a URI a staging folder that is uploaded
    under ``dest`` (then ``_SUCCESS``) when the block succeeds; nothing is uploaded when it fails."""
    if not is_uri(dest):
        yield Path(dest)
        return
    with tempfile.TemporaryDirectory(prefix="geocnn-upload-") as tmp:
        yield Path(tmp)
        upload_dir(Path(tmp), str(dest))


@contextlib.contextmanager
def output_file(dest: str | Path) -> Iterator[Path]:
    """A local path to write one output file to: ``dest`` itself, or for a URI a staged file uploaded to ``dest`` as
    one object (an object PUT is atomic: readers see the old object or the whole new one) when the block succeeds."""
    if not is_uri(dest):
        yield Path(dest)
        return
    with tempfile.TemporaryDirectory(prefix="geocnn-upload-") as tmp:
        staged = Path(tmp) / (name(str(dest)) or "output")
        yield staged
        if not staged.is_file():
            raise GeocnnError(f"{dest}: nothing was written to upload")
        _upload([(staged, str(dest))], str(dest))


def upload_dir(local: Path, dest: str) -> list[str]:
    """Upload every file under ``local`` to the folder URI ``dest``, then ``dest/_SUCCESS``; on failure delete what was
    uploaded (and a stale ``_SUCCESS`` first, so a half-replaced folder is never marked complete). Returns the URIs."""
    files = sorted(p for p in local.rglob("*") if p.is_file() or p.is_symlink())
    pairs = [(p, join(dest, p.relative_to(local).as_posix())) for p in files]
    marker = join(dest, SUCCESS)
    fs, marker_path = filesystem(marker)
    try:
        fs.rm_file(marker_path)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - a missing bucket or refused keys: say so before uploading anything
        raise storage_error(exc, dest, "writing") from None
    empty = Path(tempfile.mkdtemp(prefix="geocnn-success-")) / SUCCESS
    empty.write_bytes(b"")
    try:
        return _upload([*pairs, (empty, marker)], dest)
    finally:
        empty.unlink(missing_ok=True)
        empty.parent.rmdir()


def _upload(pairs: list[tuple[Path, str]], dest: str) -> list[str]:
    """Put each local file at its URI in order; on any failure remove the ones already put, then raise."""
    fs, _ = filesystem(dest)
    done: list[str] = []
    try:
        for local, uri in pairs:
            if not os.path.isfile(local):
                raise GeocnnError(f"{local}: staged output file vanished or is not a file; nothing kept at {dest}")
            fs.put_file(str(local), filesystem(uri)[1])
            done.append(uri)
    except BaseException as exc:
        for uri in reversed(done):
            with contextlib.suppress(Exception):
                fs.rm_file(filesystem(uri)[1])
        if isinstance(exc, (GeocnnError, KeyboardInterrupt)) or not isinstance(exc, Exception):
            raise
        raise storage_error(exc, dest, "writing") from None
    return done
