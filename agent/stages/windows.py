"""Per-device sliding count windows for many devices at once, in preallocated numpy arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agent.stages.undo import Restore, Undo

# Window buffers are reserved up to this many bytes of address space at start: np.zeros maps
# zero pages that become resident only when a device's slot is written, so growing to
# thousands of devices copies nothing (a copy holds the old and the new buffer at once).
RESERVE_BYTES = 256 << 20


class DeviceIndex:
    """Maps device ids to dense slots; grows by doubling up to ``max_devices``.

    Idle devices are evicted by :meth:`evict_idle` so memory stays bounded with churning ids.
    Arrays indexed by slot (windows, aggregates) follow :attr:`capacity` via ``on_grow``.
    """

    def __init__(self, max_devices: int, initial: int = 256) -> None:
        self.max_devices = max_devices
        self.capacity = min(initial, max_devices)
        self.slot_of: dict[str, int] = {}
        self.names: list[str | None] = [None] * self.capacity
        self.last_seen = np.zeros(self.capacity, np.float64)
        self._free: list[int] = list(range(self.capacity - 1, -1, -1))
        self.refused = 0  # devices turned away at max_devices (slot -1), since start
        self.on_grow: list = []  # callables(new_capacity)
        self.on_evict: list = []  # callables(slots array)

    def __len__(self) -> int:
        return len(self.slot_of)

    def slots(self, devices: Sequence[str]) -> np.ndarray:
        """Slot of each device, adding new ones; -1 where ``max_devices`` is reached."""
        get = self.slot_of.get
        out = np.empty(len(devices), np.int64)
        for i, d in enumerate(devices):
            s = get(d)
            out[i] = self._add(d) if s is None else s
        return out

    def _add(self, device: str) -> int:
        if not self._free:
            if self.capacity >= self.max_devices:
                self.refused += 1
                return -1
            self._grow(min(max(self.capacity * 3 // 2, self.capacity + 1), self.max_devices))
        slot = self._free.pop()
        self.slot_of[device] = slot
        self.names[slot] = device
        return slot

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        self.capacity = capacity
        self.names += [None] * (capacity - old)
        self.last_seen = np.resize(self.last_seen, capacity)
        self.last_seen[old:] = 0
        self._free = list(range(capacity - 1, old - 1, -1))
        for hook in self.on_grow:
            hook(capacity)

    def evict_idle(self, before: float) -> int:
        """Free every device last seen before ``before``; return how many."""
        used = np.array([s for s in self.slot_of.values()], np.int64)
        if not len(used):
            return 0
        idle = used[self.last_seen[used] < before]
        self._release(idle)
        return len(idle)

    def _release(self, slots: np.ndarray) -> None:
        if len(slots):  # hooks first: they may still name the devices they let go
            for hook in self.on_evict:
                hook(slots)
        for s in slots.tolist():
            del self.slot_of[self.names[s]]
            self.names[s] = None
            self._free.append(s)

    def save(self, devices: Sequence[str]) -> Callable[[], None]:
        """Before :meth:`slots`: a restore step that lets go of the devices it will add."""
        known = self.slot_of
        new = [d for d in dict.fromkeys(devices) if d not in known]

        def restore() -> None:
            self._release(np.array([known[d] for d in new if d in known], np.int64))

        return restore


class CountWindows:
    """The last ``size`` samples of every device; a window is due every ``hop`` samples.

    Each device has a ring of ``size + chunk - 1`` rows (``chunk = max(hop, 8)``) in one
    ``[devices, ring, channels]`` array: a batch is written ``chunk`` samples per device at a
    time, so every window that falls due is still whole when it is gathered.
    :meth:`push` writes a batch of samples (any devices, any order) and returns every window
    that became due, as one ``[k, size, channels]`` array, oldest sample first. A device's
    first window is due at its ``size``-th sample, then at every ``hop``-th one.
    """

    def __init__(self, index: DeviceIndex, size: int, hop: int, channels: int) -> None:
        self.index = index
        self.size, self.hop, self.channels = size, hop, channels
        self.chunk = max(hop, 8)
        self.ring = size + self.chunk - 1
        per_device = self.ring * channels * 4
        reserve = min(index.max_devices, max(index.capacity, RESERVE_BYTES // per_device))
        self.buf = np.zeros((reserve, self.ring, channels), np.float32)
        self.count = np.zeros(index.capacity, np.int64)
        self._offsets = np.arange(size, dtype=np.int64) - size + 1
        self._no_windows = np.empty((0, size, channels), np.float32)  # no element to write
        index.on_grow.append(self._grow)
        index.on_evict.append(self._evict)

    def _grow(self, capacity: int) -> None:
        if capacity > len(self.buf):  # past the reservation: copy (old and new both resident)
            buf = np.zeros((capacity, self.ring, self.channels), np.float32)
            buf[: len(self.buf)] = self.buf
            self.buf = buf
        self.count = np.concatenate([self.count, np.zeros(capacity - len(self.count), np.int64)])

    def _evict(self, slots: np.ndarray) -> None:
        self.count[slots] = 0

    def push(
        self,
        slots: np.ndarray,
        values: np.ndarray,
        groups: Groups | None = None,
        undo: Undo | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Append samples; return (indices into the batch of due samples, their windows).
        With ``undo``, first a step restoring what the push changes (the counts, and one
        ring cell per sample rather than whole rings) is added to it."""
        n = len(slots)
        if n == 0:
            return np.empty(0, np.int64), np.empty((0, self.size, self.channels), np.float32)
        g = groups or Groups.of(slots)
        rank = g.rank
        pos = self.count[slots] if g.distinct else self.count[slots] + rank  # distinct: rank 0
        cells = pos % self.ring
        if undo is not None:
            undo.add(self._restore(slots, cells, g.slots))
        self.count[g.slots] += g.counts
        max_rank = 0 if g.distinct else int(rank.max())
        if max_rank < self.chunk:  # common case: one pass
            return self._write_and_gather(slots, pos, cells, values, None)
        due_parts, win_parts = [], []
        for lo in range(0, max_rank + 1, self.chunk):  # <= chunk new samples per device
            sel = np.flatnonzero((rank >= lo) & (rank < lo + self.chunk))
            d, w = self._write_and_gather(slots[sel], pos[sel], cells[sel], values[sel], sel)
            due_parts.append(d)
            win_parts.append(w)
        due, wins = np.concatenate(due_parts), np.concatenate(win_parts)
        order = np.argsort(due, kind="stable")  # back to arrival order
        return due[order], wins[order]

    def _restore(self, slots: np.ndarray, cells: np.ndarray, distinct: np.ndarray) -> Restore:
        old, count = self.buf[slots, cells], self.count[distinct]  # advanced indexing: copies

        def restore() -> None:
            self.buf[slots, cells] = old
            self.count[distinct] = count  # looked up now: a grown index replaced the array

        return restore

    def _write_and_gather(
        self,
        slots: np.ndarray,
        pos: np.ndarray,
        cells: np.ndarray,
        values: np.ndarray,
        where: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``cells``: ``pos`` in the ring; ``where``: the samples' indices in the batch
        (None: all of them, in order)."""
        self.buf[slots, cells] = values
        filled = pos - (self.size - 1)
        due = ((filled >= 0) & (filled % self.hop == 0)).nonzero()[0]  # flatnonzero, unwrapped
        at = due if where is None else where[due]
        if not len(due):
            return at, self._no_windows
        rows = (pos[due, None] + self._offsets) % self.ring
        return at, self.buf[slots[due, None], rows]


def _constant(value: int) -> np.ndarray:
    out = np.full(1, value, np.int64)
    out.flags.writeable = False  # shared by every batch of one: a write raises
    return out


_ZERO, _ONE = _constant(0), _constant(1)


@dataclass(slots=True)
class Groups:
    """A batch's samples grouped by device slot, computed once and shared by the stages."""

    rank: np.ndarray  # per sample: how many earlier samples of the batch share its slot
    slots: np.ndarray  # the distinct slots
    counts: np.ndarray  # samples per distinct slot
    distinct: bool  # no two samples share a slot (every batch of one, most small ones)

    @classmethod
    def of(cls, slots: np.ndarray) -> Groups:
        n = len(slots)
        if n == 1:
            return cls(_ZERO, slots, _ONE, True)
        order = np.argsort(slots, kind="stable")
        s = slots[order]
        first = np.empty(n, bool)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        if len(starts) == n:  # every slot once
            return cls(np.zeros(n, np.int64), s, np.ones(n, np.int64), True)
        bounds = np.append(starts, n)
        counts = bounds[1:] - bounds[:-1]  # np.diff(starts, append=n) costs 3x as much
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n) - np.repeat(starts, counts)
        return cls(rank, s[starts], counts, False)
