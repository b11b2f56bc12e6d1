"""Load SKAB, AI4I 2020 and C-MAPSS FD001 from the repository's ``datasets/`` as numpy arrays.

The data root is ``--data`` if given, else ``$EDGE_AGENT_DATA``, else ``./datasets`` in the
working directory, else the ``datasets/`` folder of the checkout this package runs from.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SKAB_CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
SKAB_WARMUP = 400
AI4I_TYPES = {"L": 0, "M": 1, "H": 2}
AI4I_FEATURES = (
    "Type",
    "Air temperature [K]",
    "Process temperature [K]",
    "Rotational speed [rpm]",
    "Torque [Nm]",
    "Tool wear [min]",
)
AI4I_MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")
AI4I_SEED = 42
AI4I_TEST_FRACTION = 0.2


class DatasetNotFound(FileNotFoundError):
    """A dataset file or folder is missing; the message says where it looked and what to do."""


def _checkout_datasets() -> Path:
    """``datasets/`` of the checkout holding this module (an editable install or ``python -m``)."""
    return Path(__file__).resolve().parents[2] / "datasets"


def data_root(path: str | os.PathLike[str] | None = None) -> Path:
    """The datasets folder: ``path``, else ``$EDGE_AGENT_DATA``, else ``./datasets``, else the
    checkout's ``datasets/``; the first of the last two that exists (``./datasets`` if none)."""
    if path is not None:
        return Path(path)
    env = os.environ.get("EDGE_AGENT_DATA")
    if env:
        return Path(env)
    for candidate in (Path("datasets"), _checkout_datasets()):
        if candidate.is_dir():
            return candidate
    return Path("datasets")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetNotFound(
            f"{path}: not found (expected {what}). Run from a clone of the repository, which"
            " holds datasets/, or point at that folder with --data DIR or $EDGE_AGENT_DATA"
        )
    return path


@dataclass(frozen=True)
class SkabFile:
    """One SKAB experiment: ``values[n, 8]`` in ``SKAB_CHANNELS`` order, epoch-second times."""

    name: str
    values: np.ndarray
    ts: np.ndarray
    anomaly: np.ndarray
    changepoint: np.ndarray


def read_skab_file(path: Path, name: str) -> SkabFile:
    """Parse one semicolon-separated SKAB CSV; files without labels get zero labels."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    header, body = rows[0], rows[1:]
    if tuple(header[1:9]) != SKAB_CHANNELS:
        raise ValueError(f"{path}: expected columns datetime;{';'.join(SKAB_CHANNELS)}")
    ts = np.array([r[0] for r in body], dtype="datetime64[s]").astype(np.int64)
    values = np.array([r[1:9] for r in body], dtype=np.float64)
    labels = (
        np.array([r[9:11] for r in body], dtype=np.float64).astype(np.int8)
        if len(header) >= 11
        else np.zeros((len(body), 2), np.int8)
    )
    return SkabFile(name, values, ts, labels[:, 0], labels[:, 1])


def skab_files(root: str | os.PathLike[str] | None = None) -> list[SkabFile]:
    """The 34 labelled SKAB files (valve1, valve2, other), sorted by folder and number."""
    base = _require(data_root(root) / "skab" / "data", "the SKAB data folder")
    out = []
    for folder in ("valve1", "valve2", "other"):
        paths = sorted((base / folder).glob("*.csv"), key=lambda p: int(p.stem))
        out += [read_skab_file(p, f"{folder}/{p.name}") for p in paths]
    return out


def skab_anomaly_free(root: str | os.PathLike[str] | None = None) -> SkabFile:
    """The anomaly-free SKAB recording (labels all zero)."""
    path = data_root(root) / "skab" / "data" / "anomaly-free" / "anomaly-free.csv"
    return read_skab_file(_require(path, "SKAB anomaly-free.csv"), "anomaly-free/anomaly-free.csv")


@dataclass(frozen=True)
class Ai4i:
    """AI4I 2020: raw features ``x[n, 6]`` in ``AI4I_FEATURES`` order, labels and the split."""

    x: np.ndarray
    failure: np.ndarray
    modes: np.ndarray
    train: np.ndarray
    test: np.ndarray


def stratified_split(
    y: np.ndarray, test_fraction: float = AI4I_TEST_FRACTION, seed: int = AI4I_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices; each class keeps ``round(test_fraction * count)`` rows out."""
    rng = np.random.default_rng(seed)
    test = []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        test.append(idx[: round(test_fraction * len(idx))])
    test_idx = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(y)), test_idx), test_idx


def ai4i(root: str | os.PathLike[str] | None = None) -> Ai4i:
    """Load AI4I 2020; ``Type`` is encoded L=0, M=1, H=2; UDI and Product ID are dropped."""
    path = _require(data_root(root) / "ai4i2020" / "ai4i2020.csv", "ai4i2020.csv")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    x = np.array(
        [[AI4I_TYPES[r["Type"]], *(float(r[c]) for c in AI4I_FEATURES[1:])] for r in rows],
        dtype=np.float32,
    )
    failure = np.array([int(r["Machine failure"]) for r in rows], np.int64)
    modes = np.array([[int(r[m]) for m in AI4I_MODES] for r in rows], np.int64)
    train, test = stratified_split(failure)
    return Ai4i(x, failure, modes, train, test)


CMAPSS_SETTINGS = ("setting1", "setting2", "setting3")
CMAPSS_SENSORS = tuple(f"s{i}" for i in range(1, 22))


@dataclass(frozen=True)
class Cmapss:
    """C-MAPSS engines: per row ``unit`` and ``cycle``; ``values[n, 24]`` are the three
    settings then sensors s1..s21 (``CMAPSS_SETTINGS + CMAPSS_SENSORS``). ``rul`` is the true
    remaining life at each engine's last row (0 for run-to-failure training engines)."""

    unit: np.ndarray
    cycle: np.ndarray
    values: np.ndarray
    rul: dict[int, int]

    @property
    def columns(self) -> tuple[str, ...]:
        return CMAPSS_SETTINGS + CMAPSS_SENSORS

    def engines(self) -> list[int]:
        return sorted(np.unique(self.unit).tolist())

    def engine(self, unit: int) -> np.ndarray:
        """Rows ``[cycles, 24]`` of one engine, in cycle order."""
        return self.values[self.unit == unit]


def read_cmapss(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit, cycle, values[n, 24]) of a space-separated C-MAPSS file with 26 columns."""
    try:
        raw = np.loadtxt(_require(path, "a C-MAPSS file"), dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a C-MAPSS file of 26 numeric columns ({e})") from None
    if raw.shape[1] != 26:
        raise ValueError(f"{path}: {raw.shape[1]} columns, expected 26 (unit, cycle, 3+21)")
    return raw[:, 0].astype(np.int64), raw[:, 1].astype(np.int64), raw[:, 2:].astype(np.float32)


def cmapss_train(root: str | os.PathLike[str] | None = None) -> Cmapss:
    """FD001 training engines (run to failure): ``datasets/cmapss/train_FD001.txt``."""
    unit, cycle, values = read_cmapss(data_root(root) / "cmapss" / "train_FD001.txt")
    return Cmapss(unit, cycle, values, {u: 0 for u in np.unique(unit).tolist()})


def cmapss_test(folder: str | os.PathLike[str]) -> Cmapss:
    """NASA's FD001 test protocol from ``folder``: ``test_FD001.txt`` (truncated engines) and
    ``RUL_FD001.txt`` (true RUL at each engine's last cycle, one line per engine)."""
    base = Path(folder)
    for name in ("test_FD001.txt", "RUL_FD001.txt"):
        if not (base / name).is_file():
            raise DatasetNotFound(
                f"{base / name}: not found (--data names a folder holding NASA's FD001 test "
                "files test_FD001.txt and RUL_FD001.txt)"
            )
    unit, cycle, values = read_cmapss(base / "test_FD001.txt")
    ruls = np.loadtxt(base / "RUL_FD001.txt", ndmin=1)
    engines = np.unique(unit).tolist()
    if len(ruls) != len(engines):
        raise ValueError(
            f"{base / 'RUL_FD001.txt'}: {len(ruls)} values for {len(engines)} test engines"
        )
    return Cmapss(unit, cycle, values, {u: int(r) for u, r in zip(engines, ruls.tolist())})
