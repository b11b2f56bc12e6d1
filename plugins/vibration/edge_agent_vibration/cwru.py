"""CWRU bearing recordings in the NumPy conversion (``<rpm>_Normal.npz``,
``<rpm>_<B|IR|OR@k>_<size>_DE12.npz``, drive-end array ``DE``), cut into blocks by time.

The train/held-out split is by time within each recording: the first ``TRAIN_FRACTION`` of
its samples train, the rest are held out, so no block of a held-out stretch ever sat beside a
training block in the same stretch of signal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("normal", "ball", "inner", "outer")
FAULTS = {"B": "ball", "IR": "inner"}  # OR@k (outer race at k o'clock) -> outer
NORMAL_RATE = 48000  # the CWRU normal baselines are recorded at 48 kHz
FAULT_RATE = 12000  # the *_DE12 files: drive-end faults at 12 kHz
TRAIN_FRACTION = 0.7
_NAME = re.compile(r"^(\d+)_(?:(Normal)|(B|IR|OR@\d+)_(\d+)_DE12)\.npz$")


@dataclass(frozen=True)
class Recording:
    """One drive-end recording: ``signal`` in g at ``fs`` Hz, its label and shaft speed."""

    name: str
    label: str
    fault_size: int  # fault diameter in thousandths of an inch (0 for normal)
    rpm: float
    fs: int
    signal: np.ndarray

    def split(self, block: int, fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
        """Non-overlapping ``block``-sample blocks of the first ``fraction`` of the recording
        and of the rest: ``([k1, block], [k2, block])``."""
        cut = int(len(self.signal) * fraction) // block * block
        return _blocks(self.signal[:cut], block), _blocks(self.signal[cut:], block)


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    n = len(x) // block
    return x[: n * block].reshape(n, block)


def parse_name(name: str) -> tuple[str, int, float, int] | None:
    """``(label, fault size, rpm, fs)`` from a file name, or None if it is not one of ours."""
    m = _NAME.match(name)
    if not m:
        return None
    rpm = float(m[1])
    if m[2]:
        return "normal", 0, rpm, NORMAL_RATE
    kind = m[3]
    return FAULTS.get(kind, "outer"), int(m[4]), rpm, FAULT_RATE


def find(root: str | Path) -> list[Recording]:
    """Every recording named like the CWRU conversion under ``root`` (recursively), by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (expected CWRU .npz recordings)")
    out = []
    for path in sorted(root.rglob("*.npz")):
        parsed = parse_name(path.name)
        if parsed is None:
            continue
        label, size, rpm, fs = parsed
        with np.load(path) as data:
            if "DE" not in data.files:
                raise FileNotFoundError(f"{path}: no drive-end array DE (has {data.files})")
            signal = np.asarray(data["DE"], np.float64).reshape(-1)
        out.append(Recording(path.stem, label, size, rpm, fs, signal))
    if not out:
        raise FileNotFoundError(
            f"{root}: no files named <rpm>_Normal.npz or <rpm>_<B|IR|OR@k>_<size>_DE12.npz"
        )
    return out


def shipped_root() -> Path:
    """The repository's ``datasets/cwru``: beside the ``agent`` package (an editable
    install), else under the current folder (a repository checkout)."""
    import agent

    for base in (Path(agent.__file__).resolve().parents[1], Path.cwd()):
        if (base / "datasets" / "cwru").is_dir():
            return base / "datasets" / "cwru"
    raise FileNotFoundError(
        "datasets/cwru: not beside the agent package nor in the current folder; pass --data"
    )
