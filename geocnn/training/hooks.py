"""Fit hooks: what a caller around the run skeleton adds to every fit (a search's pruning callback, validation only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import lightning as L


@dataclass
class FitHooks:
    """Extra callbacks for each fit, and whether held-out prediction stops at the validation rows.

    A hyperparameter trial uses both: its pruning callback sees every epoch's validation metrics, and its fits never
    predict the test rows (a trial is scored on validation only; test is scored once, on the chosen configuration).
    """

    callbacks: Callable[[int], list[L.Callback]] = lambda index: []
    """Callbacks for the ``index``-th fit inside the block (0, 1, ... : folds, stages, in the order they run)."""
    validation_only: bool = False
    """Fits predict their validation rows only (no test, no training rows)."""
    fits: int = field(default=0, init=False)

    def next_callbacks(self) -> list[L.Callback]:
        """The callbacks of the next fit (and count it)."""
        out = self.callbacks(self.fits)
        self.fits += 1
        return out


NONE = FitHooks()
_CURRENT: ContextVar[FitHooks] = ContextVar("geocnn_fit_hooks", default=NONE)


def current() -> FitHooks:
    """The hooks of the enclosing :func:`using` block (none by default)."""
    return _CURRENT.get()


@contextmanager
def using(hooks: FitHooks) -> Iterator[FitHooks]:
    """Apply ``hooks`` to every fit inside the block (in this thread of this process)."""
    token = _CURRENT.set(hooks)
    try:
        yield hooks
    finally:
        _CURRENT.reset(token)
