"""Cumulative histograms of one pipeline's inference batches (read by /metrics)."""

from __future__ import annotations

import bisect
from collections.abc import Callable

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class BatchStats:
    """Cumulative histograms of inference latency and batch size; one ``observe`` per batch."""

    def __init__(self) -> None:
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.size = [0] * (len(BATCH_BUCKETS) + 1)
        self.size_sum = 0
        self.count = 0

    def save(self) -> Callable[[], None]:
        """A step restoring these histograms in place (see :mod:`agent.stages.undo`)."""
        saved = (self.latency.copy(), self.latency_sum, self.size.copy(), self.size_sum, self.count)

        def restore() -> None:
            self.latency, self.latency_sum, self.size, self.size_sum, self.count = saved

        return restore

    def observe(self, windows: int, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.size[bisect.bisect_left(BATCH_BUCKETS, windows)] += 1
        self.size_sum += windows
        self.count += 1
