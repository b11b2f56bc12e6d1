"""Integer-factor decimation of sample blocks behind an anti-alias low-pass filter (numpy only).

Each block is filtered on its own (the decoder keeps no state between messages), with its
ends extended by point reflection so the filter does not see a step at the block edges.
"""

from __future__ import annotations

from functools import cache

import numpy as np

MAX_FACTOR = 8
TAPS_PER_FACTOR = 40  # 161 taps at factor 4: stopband from ~0.93 of the new Nyquist
PASS = 0.85  # the filter passes up to PASS x the new Nyquist frequency


@cache
def lowpass(factor: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass (beta 8, ~80 dB stopband), unit DC gain, for ``factor``."""
    taps = TAPS_PER_FACTOR * factor + 1
    cutoff = PASS * 0.5 / factor  # cycles per input sample
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0)
    return h / h.sum()


def ratio(fs: float, target: float) -> int | None:
    """The decimation factor taking ``fs`` to ``target`` (1 when equal), or None when ``fs``
    is not an integer multiple of ``target`` up to ``MAX_FACTOR``."""
    k = round(fs / target)
    if 1 <= k <= MAX_FACTOR and abs(fs - k * target) <= 1e-6 * fs:
        return k
    return None


def decimate(x: np.ndarray, factor: int) -> np.ndarray:
    """``[n, ...]`` samples at ``fs`` -> ``[n // factor, ...]`` at ``fs / factor``, low-pass
    filtered first. ``n`` must be a multiple of ``factor`` and exceed the filter's half length
    ``TAPS_PER_FACTOR * factor / 2``."""
    if factor == 1:
        return x
    h = lowpass(factor)
    half = len(h) // 2
    x = np.asarray(x, np.float64)
    if len(x) % factor or len(x) <= half:
        raise ValueError(f"{len(x)} samples: not a multiple of {factor} longer than {half}")
    # odd extension (as scipy's filtfilt pads): value and slope stay continuous at the ends
    head, tail = 2 * x[:1] - x[half:0:-1], 2 * x[-1:] - x[-2 : -half - 2 : -1]
    padded = np.concatenate([head, x, tail])
    # only every factor-th output is kept, so only those dot products are computed
    view = np.lib.stride_tricks.sliding_window_view(padded, len(h), axis=0)[::factor]
    return np.tensordot(view, h[::-1], axes=([-1], [0]))
