"""Decision rules of the typed output kinds, their event fields and per-device summaries.

A handler of the ``score`` kind needs none of this: the processor compares its scores with
the threshold directly. A typed handler (:class:`agent.protocols.ClassOutput`,
:class:`agent.protocols.RegressionOutput`) is decided here, and every kind ends as what the
episode machine takes: a severity per window and its threshold, *over* when severity >
threshold, escalated above ``severity.critical`` x threshold, cleared at or below ``clear``
x threshold.

- ``classes``: severity ``1 - P(healthy)`` against the handler's ``threshold``.
- ``regression``: severity ``limit / value`` (``lower`` is worse) or ``value / limit``
  (``higher``) against 1: over when the value is past the limit, critical at twice as far
  (RUL under half the limit), cleared once it is back beyond ``limit / clear``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.protocols import ClassOutput, RegressionOutput, output_kind
from agent.stages import undo
from agent.stages.windows import DeviceIndex

FLOOR = 1e-3  # a regression value is floored at this share of the limit (severity <= 1000)


@dataclass(slots=True)
class Decided:
    """One batch's decision: severity and threshold per window, details for the replay."""

    severity: np.ndarray
    threshold: np.ndarray
    details: dict[str, np.ndarray] = field(default_factory=dict)


class ClassDecision:
    """``classes``: over when ``1 - P(healthy)`` exceeds the handler's threshold."""

    kind = "classes"
    keeps_score = True  # events keep score (= 1 - P(healthy)) and threshold

    def __init__(self, handler: ClassOutput) -> None:
        self.handler = handler
        self.classes = list(handler.classes)
        self.healthy = self.classes.index(handler.healthy)
        self.others = np.array([i for i in range(len(self.classes)) if i != self.healthy])
        self.probs = np.zeros((0, len(self.classes)))

    def decide(self, windows: np.ndarray) -> Decided:
        p = np.asarray(self.handler.probabilities(windows), np.float64)
        self.probs = p
        details = {f"p_{c}": p[:, i] for i, c in enumerate(self.classes)}
        details["class"] = p.argmax(axis=1)
        severity = 1.0 - p[:, self.healthy]
        return Decided(severity, np.full(len(p), float(self.handler.threshold)), details)

    def fields(self, hits: np.ndarray) -> list[dict]:
        """The most likely class other than the healthy one, its probability and all."""
        p = self.probs[hits]
        best = self.others[p[:, self.others].argmax(axis=1)] if len(self.others) else []
        return [
            {
                "class": self.classes[int(k)],
                "probability": round(float(row[k]), 4),
                "probabilities": {c: round(float(v), 4) for c, v in zip(self.classes, row)},
            }
            for row, k in zip(p, best)
        ]

    def closed(self, fields: dict) -> dict:
        return fields

    def summary(self, index: DeviceIndex) -> ClassCounts:
        return ClassCounts(index, self.classes)

    def same_summary(self, other: Decision) -> bool:
        """Whether ``other``'s per-device summary can carry on for this one (reload)."""
        return isinstance(other, ClassDecision) and other.classes == self.classes


class RegressionDecision:
    """``regression``: over when the value is past the handler's limit (``threshold``)."""

    kind = "regression"
    keeps_score = False  # events carry the value, its interval and the limit instead

    def __init__(self, handler: RegressionOutput) -> None:
        self.handler = handler
        self.quantity, self.units = handler.quantity, handler.units
        self.lower = handler.worse == "lower"
        self.value = self.low = self.high = np.zeros(0)

    @property
    def limit(self) -> float:
        return float(self.handler.threshold)

    def decide(self, windows: np.ndarray) -> Decided:
        value, low, high = (np.asarray(a, np.float64) for a in self.handler.estimate(windows))
        self.value, self.low, self.high = value, low, high
        limit = self.limit
        floor = FLOOR * limit
        severity = limit / np.maximum(value, floor) if self.lower else value / limit
        details = {self.quantity: value, "low": low, "high": high}
        return Decided(severity, np.ones(len(value)), details)

    def fields(self, hits: np.ndarray) -> list[dict]:
        q = self.quantity
        return [
            {
                q: round(float(self.value[i]), 2),
                "interval": [round(float(self.low[i]), 2), round(float(self.high[i]), 2)],
                "units": self.units,
                "limit": self.limit,
            }
            for i in hits.tolist()
        ]

    def worst(self, severity: float) -> float:
        """The value a severity stands for."""
        return self.limit / severity if self.lower else severity * self.limit

    def closed(self, fields: dict) -> dict:
        """A closed episode's peak severity as the worst value; the limit as threshold."""
        out = {k: v for k, v in fields.items() if k not in ("peak", "threshold")}
        out[f"{self.quantity}_{'min' if self.lower else 'max'}"] = round(
            self.worst(fields["peak"]), 2
        )
        out["limit"], out["units"] = self.limit, self.units
        return out

    def summary(self, index: DeviceIndex) -> Estimates:
        return Estimates(index, self.quantity, self.lower)

    def same_summary(self, other: Decision) -> bool:
        return isinstance(other, RegressionDecision) and (other.quantity, other.lower) == (
            self.quantity,
            self.lower,
        )


Decision = ClassDecision | RegressionDecision


def decision_for(handler: object) -> Decision | None:
    """The decision rule of a loaded handler's declared kind; None for ``score`` and
    ``events``."""
    kind = output_kind(handler)
    if kind == "classes":
        assert isinstance(handler, ClassOutput)
        return ClassDecision(handler)
    if kind == "regression":
        assert isinstance(handler, RegressionOutput)
        return RegressionDecision(handler)
    return None


class _SlotArrays:
    """Arrays indexed by device slot that follow the index's capacity."""

    _FILL: dict[str, float] = {}

    def __init__(self, index: DeviceIndex, width: int = 0) -> None:
        self.width = width
        for name, fill in self._FILL.items():
            setattr(self, name, self._new(index.capacity, fill))
        index.on_grow.append(self._grow)

    def _new(self, cap: int, fill: float) -> np.ndarray:
        return np.full((cap, self.width) if self.width else cap, fill, np.float64)

    def _grow(self, cap: int) -> None:
        for name, fill in self._FILL.items():
            old = getattr(self, name)
            new = self._new(cap, fill)
            new[: len(old)] = old
            setattr(self, name, new)

    def save(self, slots: np.ndarray) -> undo.Restore:
        return undo.rows(self, self._FILL, slots)


class ClassCounts(_SlotArrays):
    """Per device: windows by most likely class in the period."""

    _FILL = {"counts": 0.0}
    replaces: tuple[str, ...] = ()
    counts: np.ndarray  # [slots, classes], set by _SlotArrays from _FILL

    def __init__(self, index: DeviceIndex, classes: list[str]) -> None:
        self.classes = classes
        super().__init__(index, len(classes))

    def add(self, slots: np.ndarray, decided: Decided) -> None:
        np.add.at(self.counts, (slots, decided.details["class"]), 1)

    def flush(self, active: np.ndarray) -> list[dict]:
        rows = self.counts[active].astype(np.int64).tolist()
        self.counts[active] = 0
        return [{"classes": dict(zip(self.classes, row))} for row in rows]


class Estimates(_SlotArrays):
    """Per device: the last value and the worst (min or max) of the period."""

    _FILL = {"last": np.nan, "worst": np.nan}
    replaces = ("mean", "max")  # of the severity, which means nothing to a reader here
    last: np.ndarray  # set by _SlotArrays from _FILL
    worst: np.ndarray

    def __init__(self, index: DeviceIndex, quantity: str, lower: bool) -> None:
        self.quantity, self.lower = quantity, lower
        super().__init__(index)

    def add(self, slots: np.ndarray, decided: Decided) -> None:
        value = decided.details[self.quantity]
        devices, newest = np.unique(slots[::-1], return_index=True)  # each slot's last window
        self.last[devices] = value[::-1][newest]
        pick = np.fmin if self.lower else np.fmax
        pick.at(self.worst, slots, value)

    def flush(self, active: np.ndarray) -> list[dict]:
        q, tail = self.quantity, "min" if self.lower else "max"
        out = [
            {f"{q}_last": _num(a), f"{q}_{tail}": _num(b)}
            for a, b in zip(self.last[active].tolist(), self.worst[active].tolist())
        ]
        self.last[active] = np.nan
        self.worst[active] = np.nan
        return out


def _num(v: float) -> float | None:
    return None if np.isnan(v) else round(v, 2)


KindSummary = ClassCounts | Estimates
