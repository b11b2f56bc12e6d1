"""Undo what a batch changed when one of its stages raised part-way.

A stage that raises after decoding (a handler's defect on one device's window, a bug in a
stage) would otherwise leave the per-device state half-updated, so the batch could not be
processed again without counting some samples twice. Each stateful stage can ``save`` the
rows of the slots a batch touches before the batch changes them; :class:`Undo` restores
them in reverse order. Saving copies only the touched rows (and a few totals), so it costs
about what writing the batch costs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

Restore = Callable[[], None]


def rows(obj: object, names: Iterable[str], slots: np.ndarray) -> Restore:
    """Restores ``obj.<name>[slots]`` (``slots`` an integer array) for each name. The arrays
    are looked up again at restore time: an index that grew during the batch has replaced
    them."""
    saved = [(n, getattr(obj, n)[slots]) for n in names]  # advanced indexing: copies

    def restore() -> None:
        for n, v in saved:
            getattr(obj, n)[slots] = v

    return restore


def values(obj: object, names: Iterable[str]) -> Restore:
    """Restores attributes ``names`` of ``obj`` (shallow copies of lists, dicts, deques)."""
    saved = [(n, copy.copy(getattr(obj, n))) for n in names]

    def restore() -> None:
        for n, v in saved:
            setattr(obj, n, v)

    return restore


def chain(*steps: Restore) -> Restore:
    """One restore step running ``steps`` in order."""

    def restore() -> None:
        for step in steps:
            step()

    return restore


class Saves(Protocol):
    """A stage whose per-device state a batch can restore."""

    def save(self, slots: np.ndarray) -> Restore: ...


class Undo:
    """Restore steps recorded while a batch runs; :meth:`run` applies them last first."""

    def __init__(self) -> None:
        self._steps: list[Restore] = []

    def add(self, step: Restore) -> None:
        self._steps.append(step)

    def run(self) -> None:
        for step in reversed(self._steps):
            step()
        self._steps = []
