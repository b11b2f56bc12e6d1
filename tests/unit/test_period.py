"""The period snapshot: one row per touched device with its running totals, whether it
reads the few touched devices cell by cell or many column by column."""

import numpy as np
import orjson
import pytest

from agent.stages import period
from agent.stages.aggregate import Summaries
from agent.stages.windows import DeviceIndex, Groups


@pytest.mark.parametrize("batches", [1, 2])  # one touched array, or two overlapping
@pytest.mark.parametrize("devices", [1, 2, period.FEW, period.FEW + 1, 40])
def test_snapshot_rows_hold_each_touched_devices_totals(devices, batches):
    rng = np.random.default_rng(devices)
    index = DeviceIndex(64)
    summaries = Summaries(index)
    names = [f"d{i}" for i in range(50)]
    slots = index.slots(names)
    summaries.add_samples(Groups.of(slots[:10]))  # an earlier, already written batch
    period.snapshot("p", summaries, 0.0)
    sent = [rng.choice(slots, devices, replace=False) for _ in range(batches)]
    for batch in sent:
        summaries.add_samples(Groups.of(batch))
        scored = batch[rng.random(devices) < 0.7]
        summaries.add_scores(scored, rng.random(len(scored)) * 3, rng.random(len(scored)) < 0.3)
    summaries.opened[sent[0]] += 1
    write = period.snapshot("p", summaries, 123.0)
    touched = sorted(set(np.concatenate(sent).tolist()))
    expect = []
    for s in touched:
        w = int(summaries.windows[s])
        body = [
            int(summaries.count[s]),
            w,
            int(summaries.anomalies[s]),
            float(summaries.score_sum[s]),
            float(summaries.score_max[s]) if w else None,
            123.0,
            int(summaries.opened[s]),
            int(summaries.closed[s]),
        ]
        expect.append((names[s], body))
    assert [(d, orjson.loads(b)) for d, b in write.rows] == expect
    assert period.snapshot("p", summaries, 0.0).rows == []  # nothing touched since
