"""Fan-out of independent units of work (scenes to map, folds, ingest and prediction shards) through a Mapper.

The library runs units one after another in this process (:data:`SEQUENTIAL`). ``pipelines/fanout.py`` supplies a
Mapper that submits each unit as a Prefect task to the configured task runner (threads, Dask or Ray). A unit is a
picklable callable of one picklable item that reads its inputs by path and writes its outputs atomically: it relies
on no state of the process that submitted it, so it may run in another process or on another machine, and a unit
whose worker died may simply run again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Mapper(Protocol):
    """Runs ``unit`` over ``items`` and returns the results in item order (a failed unit raises)."""

    parallel: bool
    """Whether units may run at the same time (in other processes): callers then turn progress bars off."""

    def map(self, name: str, unit: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """Each unit's result, in the order of ``items``; ``name`` names the units (task names, logs)."""
        ...


class Sequential:
    """Units one after another in this process (the default, and what every library call does)."""

    parallel = False

    def map(self, name: str, unit: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return [unit(item) for item in items]


SEQUENTIAL = Sequential()
_CURRENT: ContextVar[Any] = ContextVar("geocnn_mapper", default=SEQUENTIAL)


def current() -> Mapper:
    """The Mapper of the running flow (``using``), else sequential."""
    return _CURRENT.get()


@contextmanager
def using(mapper: Mapper) -> Iterator[Mapper]:
    """Make ``mapper`` the one that fan-out points of the library (folds, ingest shards) use inside the block."""
    token = _CURRENT.set(mapper)
    try:
        yield mapper
    finally:
        _CURRENT.reset(token)


def shards(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges cutting ``n`` rows into shards of at most ``size`` rows."""
    return [(start, min(start + size, n)) for start in range(0, n, max(1, size))]
