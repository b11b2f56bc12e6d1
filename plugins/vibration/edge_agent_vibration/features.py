"""Features of vibration windows for a whole batch at once: level and shape, the spectrum, and
the envelope spectrum read in orders of the shaft speed (bearing defect rates).

A bearing defect makes impacts at a fixed multiple (order) of the shaft speed: BPFO for the
outer race, BPFI for the inner race, twice BSF for a rolling element. They ring the machine's
structural resonances, so demodulating the high band (the envelope) and reading its spectrum
at those orders of each window's own shaft speed gives features that follow the speed, where
a fixed-Hz feature would drift when a load change moves the speed.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12
BANDS = 16  # spectral bands up to Nyquist
HARMONICS = 3  # of each defect rate
ORDER_BANDS = 12  # envelope energy in bands one order wide, centred on orders 1..12
PAD = 4  # the envelope spectrum is zero-padded 4x to find peaks between bins
PEAK_TOLERANCE = 0.02  # a defect peak is searched within +-2 % of its expected frequency
HIGHPASS = 1 / 24  # the envelope is taken of the band above fs / 24 (500 Hz at 12 kHz)

# Fault rates of the CWRU drive-end bearing (SKF 6205-2RS JEM) in orders of the shaft speed.
BEARING_6205 = {"bpfo": 3.5848, "bpfi": 5.4152, "bsf": 2.3568, "ftf": 0.39828}


def defect_orders(bearing: dict[str, float]) -> list[float]:
    """The envelope orders read as peaks: 1x shaft, BPFO, BPFI, 2 x BSF (a rolling element
    strikes both races once per spin)."""
    return [1.0, bearing["bpfo"], bearing["bpfi"], 2.0 * bearing["bsf"]]


def feature_names(channels: int = 1) -> list[str]:
    """One name per feature column, channel-major, in :func:`features` order."""
    one = ["log_rms", "crest", "log_kurtosis"]
    one += [f"band_{i}" for i in range(BANDS)]
    one += [
        f"env_{name}_h{h}"
        for name in ("shaft", "bpfo", "bpfi", "ball")
        for h in range(1, HARMONICS + 1)
    ]
    one += [f"env_order_{i}" for i in range(1, ORDER_BANDS + 1)]
    return [f"c{c}_{n}" for c in range(channels) for n in one]


def feature_count(channels: int) -> int:
    return len(feature_names(channels))


def _band_shares(spec: np.ndarray, bands: int) -> np.ndarray:
    """``log10`` of the share of energy in each of ``bands`` equal-width bands of axis 1."""
    edges = np.linspace(0, spec.shape[1], bands + 1).astype(np.int64)[:-1]
    energy = np.add.reduceat(spec, edges, axis=1)
    return np.log10(energy / (energy.sum(axis=1, keepdims=True) + EPS) + 1e-6)


def _envelope_spectrum(x: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    """``[n, size]`` -> magnitude spectrum of the envelope of the band above ``HIGHPASS * fs``
    (analytic signal by FFT), zero-padded ``PAD`` times; and its bin width in Hz."""
    size = x.shape[1]
    spec = np.fft.fft(x, axis=1)
    lo = max(1, int(size * HIGHPASS))
    analytic = np.zeros_like(spec)
    analytic[:, lo : size // 2] = 2 * spec[:, lo : size // 2]
    env = np.abs(np.fft.ifft(analytic, axis=1))
    env -= env.mean(axis=1, keepdims=True)
    return np.abs(np.fft.rfft(env * np.hanning(size), n=PAD * size, axis=1)), fs / (PAD * size)


def _order_features(es: np.ndarray, df: float, shaft_hz: np.ndarray, orders: list[float]):
    """Peaks at each defect order's harmonics over the median envelope level, and the share of
    envelope energy in bands one order wide, all ``log10`` and read at each row's speed."""
    n, bins = es.shape
    rows = np.arange(n)[:, None]
    hz = shaft_hz[:, None]
    targets = (np.outer(orders, np.arange(1, HARMONICS + 1)).reshape(-1)[None, :] * hz) / df
    width = np.maximum(np.ceil(targets * PEAK_TOLERANCE), 1).astype(np.int64)
    span = int(width.max())
    offsets = np.arange(-span, span + 1)
    idx = np.rint(targets).astype(np.int64)[:, :, None] + offsets
    near = np.abs(offsets) <= width[:, :, None]
    vals = es[rows[:, :, None], np.clip(idx, 0, bins - 1)]
    peak = np.where(near & (idx < bins), vals, 0).max(axis=2)
    top = np.clip(np.rint((ORDER_BANDS + 0.5) * hz / df).astype(np.int64), 1, bins)
    below = np.arange(int(top.max()))[None, :] < top
    floor = np.nanmedian(np.where(below, es[:, : below.shape[1]], np.nan), axis=1)[:, None]
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(es * es, axis=1)], axis=1)
    edges = np.clip(
        np.rint((np.arange(ORDER_BANDS + 1) + 0.5)[None, :] * hz / df).astype(np.int64), 0, bins
    )
    band = np.diff(np.take_along_axis(cum, edges, axis=1), axis=1)
    shares = band / (cum[rows[:, 0], top[:, 0]][:, None] + EPS)
    return np.log10(peak / (floor + EPS) + 1e-3), np.log10(shares + 1e-6)


def features(
    x: np.ndarray, fs: float, shaft_hz: np.ndarray, bearing: dict[str, float] = BEARING_6205
) -> np.ndarray:
    """``[n, size, channels]`` samples at ``fs`` Hz, each window's shaft speed ``[n]`` in Hz
    -> ``[n, feature_count(channels)]`` float32 (names: :func:`feature_names`).

    Per channel, after removing the mean: ``log10`` RMS, crest factor, ``log10`` kurtosis;
    ``log10`` share of spectral energy (Hann window) in ``BANDS`` equal bands up to Nyquist;
    from the envelope spectrum, ``log10`` of the peak over the median level at ``HARMONICS``
    harmonics of 1x, BPFO, BPFI and 2 x BSF, and the ``log10`` share of energy in bands one
    order wide. Everything but RMS is independent of the signal's scale.
    """
    x = np.asarray(x, np.float64)
    n, size, channels = x.shape
    x = x - x.mean(axis=1, keepdims=True)
    shaft_hz = np.broadcast_to(np.asarray(shaft_hz, np.float64), (n,))
    orders = defect_orders(bearing)
    power2 = np.mean(x * x, axis=1)
    rms = np.sqrt(power2)
    crest = np.abs(x).max(axis=1) / (rms + EPS)
    kurt = np.mean(x**4, axis=1) / (power2 * power2 + EPS)
    spec = np.abs(np.fft.rfft(x * np.hanning(size)[None, :, None], axis=1)) ** 2
    shares = _band_shares(spec[:, 1:], BANDS)
    per_channel = []
    for c in range(channels):
        es, df = _envelope_spectrum(x[:, :, c], fs)
        peaks, order_shares = _order_features(es, df, shaft_hz, orders)
        per_channel.append(
            np.concatenate(
                [
                    np.log10(rms[:, c : c + 1] + EPS),
                    crest[:, c : c + 1],
                    np.log10(kurt[:, c : c + 1] + EPS),
                    shares[:, :, c],
                    peaks,
                    order_shares,
                ],
                axis=1,
            )
        )
    return np.concatenate(per_channel, axis=1).astype(np.float32)
