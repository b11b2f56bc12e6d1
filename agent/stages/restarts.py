"""Restarts: a device's sequence counter going back starts a new life of that device.

For equipment whose counter restarts after maintenance (an engine's cycle count), windows
must not mix two lives, and an episode of the old life ends there. Per device slot: the
last ``seq`` seen and the absolute sample position where the current life began. Enabled
by ``rule.reset_on_restart``; a sample without a sequence number (``seq < 0``) never
restarts a life.
"""

from __future__ import annotations

import numpy as np

from agent.stages import undo
from agent.stages.windows import DeviceIndex, Groups


class Restarts:
    """Per-device last ``seq`` and life start, indexed by device slot."""

    def __init__(self, index: DeviceIndex) -> None:
        self.last = np.full(index.capacity, -1, np.int64)
        self.start = np.zeros(index.capacity, np.int64)
        index.on_grow.append(self._grow)
        index.on_evict.append(self._evict)

    def _grow(self, cap: int) -> None:
        self.last = np.concatenate([self.last, np.full(cap - len(self.last), -1, np.int64)])
        self.start = np.concatenate([self.start, np.zeros(cap - len(self.start), np.int64)])

    def _evict(self, slots: np.ndarray) -> None:
        self.last[slots], self.start[slots] = -1, 0

    def save(self, slots: np.ndarray) -> undo.Restore:
        return undo.rows(self, ("last", "start"), slots)

    def push(
        self, slots: np.ndarray, seq: np.ndarray, groups: Groups, pos: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Samples at absolute positions ``pos`` (per device). Returns the indices of the
        samples that restart their device's life (in arrival order) and, per sample, where
        its life began."""
        order = np.lexsort((groups.rank, slots))
        s, q = slots[order], seq[order]
        first = np.ones(len(s), bool)
        first[1:] = s[1:] != s[:-1]
        prev = np.empty_like(q)
        prev[1:] = q[:-1]
        prev[first] = self.last[s[first]]
        restart = (q >= 0) & (prev >= 0) & (q < prev)
        final = np.ones(len(s), bool)
        final[:-1] = first[1:]
        self.last[s[final]] = q[final]
        life = self.start[slots]
        found = np.sort(order[restart])
        for i in found.tolist():  # rare: maintenance
            later = (slots == slots[i]) & (groups.rank >= groups.rank[i])
            life[later] = pos[i]
            self.start[slots[i]] = pos[i]
        return found, life
