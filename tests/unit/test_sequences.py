"""Sequence gaps and repeats: a batch counts what its samples one at a time count, whether
its slots are distinct (no sort) or repeated (sorted by slot)."""

import numpy as np
import pytest

from agent.stages.sequence import Sequences
from agent.stages.windows import DeviceIndex, Groups


def reference(slots: list[int], seqs: list[int], capacity: int) -> tuple[int, int, list[int]]:
    last, gap, repeat = [-1] * capacity, 0, 0
    for s, q in zip(slots, seqs):
        if q < 0:
            continue
        if last[s] >= 0:
            gap += q > last[s] + 1
            repeat += q <= last[s]
        last[s] = q
    return gap, repeat, last


@pytest.mark.parametrize("distinct", [True, False])
def test_a_batch_counts_what_its_samples_one_at_a_time_count(distinct):
    rng = np.random.default_rng(7)
    index = DeviceIndex(64)
    seqs = Sequences(index)
    all_slots: list[int] = []
    all_seqs: list[int] = []
    branches = set()
    for _ in range(400):
        n = int(rng.integers(1, 9))
        # 4 devices: mostly repeated slots
        slots = rng.choice(20, n, replace=False) if distinct else rng.integers(0, 4, n + 1)
        seq = rng.integers(-1, 12, len(slots))  # -1: no sequence number
        groups = Groups.of(slots)
        branches.add(groups.distinct)
        seqs.observe(slots, seq, groups.distinct)
        all_slots += slots.tolist()
        all_seqs += seq.tolist()
    gap, repeat, last = reference(all_slots, all_seqs, len(seqs.last))
    assert (seqs.gap, seqs.repeat, seqs.last.tolist()) == (gap, repeat, last)
    assert gap and repeat
    assert branches == ({True} if distinct else {True, False})  # both branches ran
