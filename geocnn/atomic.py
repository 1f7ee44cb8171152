"""Atomic file writes: write to a temporary sibling, then rename, so no half-written output is left.

Temporary siblings are named ``.<name>.<pid>.<random>.part``; one left by a killed process (its pid no longer
running) is removed by the next write of the same output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (read without changing it where the OS allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(path: Path) -> None:
    """Give ``path`` (and a folder's whole tree) the modes a plain write would: 0666/0777 less the umask. Temporary
    files (mkstemp, and writers that save through their own temporaries, e.g. safetensors) come out 0600/0700."""
    mask = umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove(path: Path) -> None:
    """Delete a file or a folder tree, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_parts(path: Path) -> list[Path]:
    """Delete temporary siblings of ``path`` left by processes that are gone (killed mid-write)."""
    removed = []
    for part in path.parent.glob(f".{path.name}.*.part*"):  # also a map's .part.stage.tif
        pid = part.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove(part)
            removed.append(part)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        share(tmp_path)  # outputs are shared like any file the user writes, not 0600 like a temporary
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        share(tmp)  # mkdtemp makes 0700, and writers inside may make 0600 files
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
