"""Count windows over many devices: hop semantics, order, devices mid-stream, eviction."""

from __future__ import annotations

import numpy as np

from agent.stages.windows import CountWindows, DeviceIndex


def reference(stream, size, hop):
    """The plain definition: per device, every `hop`-th sample from the `size`-th on."""
    hist, out = {}, []
    for i, (dev, v) in enumerate(stream):
        h = hist.setdefault(dev, [])
        h.append(v)
        if len(h) >= size and (len(h) - size) % hop == 0:
            out.append((i, np.array(h[-size:])))
    return out


def run(stream, size, hop, batch, channels=3):
    idx = DeviceIndex(10_000, initial=2)
    w = CountWindows(idx, size, hop, channels)
    out = []
    for lo in range(0, len(stream), batch):
        chunk = stream[lo : lo + batch]
        slots = idx.slots([d for d, _ in chunk])
        due, wins = w.push(slots, np.array([v for _, v in chunk], np.float32))
        out += [(lo + int(i), wins[k]) for k, i in enumerate(due)]
    return sorted(out, key=lambda x: x[0])


def make_stream(rng, n, devices, channels=3):
    return [
        (f"d{rng.integers(devices)}", rng.normal(size=channels).astype(np.float32))
        for _ in range(n)
    ]


def test_window_every_hop():
    """After 32 samples, each 8th new sample yields one window, oldest sample first."""
    stream = [("a", np.full(3, i, np.float32)) for i in range(100)]
    got = run(stream, 32, 8, batch=7)
    assert [i for i, _ in got] == [31, 39, 47, 55, 63, 71, 79, 87, 95]
    assert np.array_equal(got[0][1][:, 0], np.arange(32))
    assert np.array_equal(got[-1][1][:, 0], np.arange(64, 96))


def test_many_devices_any_batch_size_match_reference():
    """Interleaved devices, batches from 1 to larger than the ring: same windows."""
    rng = np.random.default_rng(3)
    stream = make_stream(rng, 3000, devices=40)
    want = reference(stream, 16, 4)
    for batch in (1, 5, 64, 500, 3000):
        got = run(stream, 16, 4, batch)
        assert [i for i, _ in got] == [i for i, _ in want]
        for (_, a), (_, b) in zip(got, want, strict=True):
            assert np.array_equal(a, b)


def test_devices_appearing_mid_stream():
    """A device that shows up late gets its first window at its own 32nd sample."""
    stream = [("old", np.zeros(3, np.float32))] * 40 + [
        (d, np.ones(3, np.float32)) for _ in range(32) for d in ("old", "new")
    ]
    got = run(stream, 32, 8, batch=16)
    new_first = reference(stream, 32, 8)
    assert [i for i, _ in got] == [i for i, _ in new_first]
    assert stream[got[-1][0]][0] == "new"


def test_idle_devices_evicted_and_slots_reused():
    """Memory stays bounded with churning ids: evicted slots are reused, windows restart."""
    idx = DeviceIndex(100, initial=4)
    w = CountWindows(idx, 4, 1, 1)
    for gen in range(50):
        names = [f"g{gen}-{k}" for k in range(3)]
        slots = idx.slots(names * 3)
        idx.last_seen[slots] = gen
        due, _ = w.push(slots, np.zeros((9, 1), np.float32))
        assert len(due) == 0  # 3 samples each: no window yet, nothing left from old owners
        assert idx.evict_idle(before=gen + 0.5) == 3
    assert idx.capacity == 4 and len(idx) == 0


def test_device_limit_reported_as_minus_one():
    idx = DeviceIndex(2, initial=1)
    assert idx.slots(["a", "b", "c", "a"]).tolist() == [0, 1, -1, 0]
