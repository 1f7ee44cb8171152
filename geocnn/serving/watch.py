"""Watch folder: the files that arrived, and a SQLite ledger of what was processed (reruns neither redo nor lose)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path

from geocnn.atomic import remove
from geocnn.errors import GeocnnError

LEDGER = "ledger.sqlite"
LOCK = ".ledger.lock"
BATCHES = "batches"

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    path TEXT PRIMARY KEY,      -- relative to the input folder
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL,       -- done | failed
    attempts INTEGER NOT NULL,
    error TEXT,
    batch TEXT,                 -- the batch table that holds its predictions (done items)
    model TEXT,
    run TEXT,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch TEXT PRIMARY KEY,
    run TEXT,
    model TEXT,
    n_done INTEGER NOT NULL,
    n_failed INTEGER NOT NULL,
    created TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Item:
    """A file in the watch folder, identified by its relative path; size and mtime tell a changed file."""

    path: str
    size: int
    mtime_ns: int

    def absolute(self, root: Path) -> Path:
        """The file's path under the input folder."""
        return root / self.path


@dataclass
class Outcome:
    """What happened to one item in a run."""

    item: Item
    ok: bool
    error: str = ""


def check_folder(input_dir: str | Path) -> Path:
    """The watch folder, or a clear error when it is missing."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise GeocnnError(f"watch folder {input_dir} does not exist; create it (files dropped there are predicted) "
                          "or set schedule.input_dir / --input")
    return input_dir


def discover(input_dir: Path, patterns: tuple[str, ...] | list[str], min_age_s: float = 0.0) -> list[Item]:
    """Files under ``input_dir`` matching ``patterns`` (case-insensitive), skipping hidden ones and files modified
    in the last ``min_age_s`` seconds (still being copied), sorted by path."""
    input_dir = check_folder(input_dir)
    now = time.time()
    found = []
    for root, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not any(fnmatch(name.lower(), p.lower()) for p in patterns):
                continue
            path = Path(root) / name
            try:
                st = path.stat()
            except FileNotFoundError:  # moved away while we looked
                continue
            if now - st.st_mtime < min_age_s:
                continue
            found.append(Item(path.relative_to(input_dir).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(found, key=lambda i: i.path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """The record of processed files in ``output_dir/ledger.sqlite`` (one transaction per batch)."""

    def __init__(self, output_dir: Path) -> None:
        self.root = Path(output_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / LEDGER
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def pending(self, items: list[Item], max_attempts: int) -> tuple[list[Item], list[Item]]:
        """(to process, given up): new or changed files, and failed ones with attempts left; a changed file starts
        its attempts again."""
        known = {row[0]: row[1:] for row in self.db.execute("SELECT path, size, mtime_ns, status, attempts FROM items")}
        todo, given_up = [], []
        for item in items:
            rec = known.get(item.path)
            if rec is None or (rec[0], rec[1]) != (item.size, item.mtime_ns):
                todo.append(item)
            elif rec[2] == "failed":
                (todo if rec[3] < max_attempts else given_up).append(item)
        return todo, given_up

    def attempts(self, item: Item) -> int:
        """Failed attempts so far on this version of the file."""
        row = self.db.execute("SELECT size, mtime_ns, status, attempts FROM items WHERE path=?",
                              (item.path,)).fetchone()
        if row is None or (row[0], row[1]) != (item.size, item.mtime_ns) or row[2] != "failed":
            return 0
        return int(row[3])

    def commit(self, batch: str, outcomes: list[Outcome], model: str, run: str | None) -> None:
        """Record a batch and its items' outcomes in one transaction (after its outputs were written)."""
        now = _now()
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                            (batch, run, model, sum(o.ok for o in outcomes), sum(not o.ok for o in outcomes), now))
            for o in outcomes:
                tries = 0 if o.ok else self.attempts(o.item) + 1
                self.db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (o.item.path, o.item.size, o.item.mtime_ns, "done" if o.ok else "failed", tries,
                                 o.error or None, batch if o.ok else None, model, run, now))

    def batches(self) -> list[str]:
        """Batches recorded, oldest first."""
        return [r[0] for r in self.db.execute("SELECT batch FROM batches ORDER BY rowid")]  # insertion order

    def items(self) -> list[dict[str, object]]:
        """Every recorded item as a dict (for reports and tests)."""
        cur = self.db.execute("SELECT * FROM items ORDER BY path")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur]

    def remove_orphans(self) -> list[Path]:
        """Delete batch outputs that no ledger entry references (a run stopped between writing and recording)."""
        known = set(self.batches())
        removed = []
        folder = self.root / BATCHES
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.split(".")[0] not in known:
                    remove(path)
                    removed.append(path)
        return removed


@contextlib.contextmanager
def exclusive(output_dir: Path) -> Iterator[bool]:
    """Hold the output folder's lock; yields False (without waiting) when another run holds it."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def new_batch_id() -> str:
    """A sortable, unique batch id (UTC time + random suffix)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(3).hex()
