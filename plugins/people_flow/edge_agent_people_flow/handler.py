"""People flow over camera detections: zones, occupancy, dwell, line crossings, anomalies.

A :class:`agent.protocols.StreamHandler`: it needs the tracks of each camera, so it is the
documented exception to "handlers keep no per-device state". The state lives here, is
touched only from the pipeline's worker thread, and is bounded: a track ends after
``track_timeout`` without a detection (on that camera's own timestamps, so results do not
depend on batching), a camera is forgotten after ``camera_ttl`` without frames (on the
agent's clock: cameras' clocks are not compared with each other, so a camera whose clock
lags, or was never set and stamps 1970, is analysed like any other). A frame older than its
camera's last one is not analysed and is counted in ``late_frames``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from agent.config import ComponentConfig, Duration, Model
from agent.errors import ModelError
from agent.records import SampleBatch

from .geometry import crossing, in_polygon

WHOLE = "frame"  # the zone every object is in


class ZoneConfig(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="zone name")
    polygon: list[tuple[float, float]] = Field(
        min_length=3, description="corner points [x, y] in pixels, in order"
    )


class LineConfig(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="line name")
    a: tuple[float, float] = Field(description="start point [x, y] in pixels")
    b: tuple[float, float] = Field(
        description="end point; `in` counts crossings from the right of a walker going a->b "
        "(as drawn on the image) to the left, `out` the other way"
    )


class PeopleFlowConfig(ComponentConfig):
    type: Literal["people_flow"]
    classes: list[str] = Field(
        ["person"], description="labels analysed (case-insensitive); empty: every label"
    )
    zones: list[ZoneConfig] = Field([], description="named zones; `frame` is always added")
    lines: list[LineConfig] = Field([], description="counting lines")
    anchor: Literal["bottom_center", "center"] = Field(
        "bottom_center", description="point of a box that decides its zone (feet: bottom)"
    )
    track_timeout: Duration = Field(2.0, description="a track unseen this long has left")
    camera_ttl: Duration = Field(
        600, description="a camera that sent no frame this long (agent's clock) is forgotten"
    )
    profile_slot: Duration = Field(
        3600, description="occupancy profile resolution: one slot per this much of a day"
    )
    profile_alpha: float = Field(
        0.01, gt=0, le=1, description="learning rate of the occupancy profile (EWMA)"
    )
    profile_min_frames: int = Field(
        50, ge=1, description="frames a slot must have seen before it can raise anomalies"
    )
    anomaly_z: float = Field(
        4.0, gt=0, description="event when occupancy is this many deviations off the profile"
    )
    min_std: float = Field(0.5, gt=0, description="floor of the profile's deviation (people)")

    @model_validator(mode="after")
    def _unique_names(self) -> PeopleFlowConfig:
        names = [z.name for z in self.zones]
        if WHOLE in names or len(set(names)) != len(names):
            raise ValueError(f"zone names must be unique and not {WHOLE!r}")
        if len({ln.name for ln in self.lines}) != len(self.lines):
            raise ValueError("line names must be unique")
        return self


@dataclass
class _Track:
    label: str
    point: np.ndarray
    last: float
    zones: dict[str, float] = field(default_factory=dict)  # zone -> entered at


@dataclass
class _Profile:
    """Occupancy mean and variance per time-of-day slot (EWMA after a plain-mean start)."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    anomalous: bool = False


_NEW = _Profile()


class _Camera:
    def __init__(self, zones: list[str], lines: list[str]) -> None:
        self.tracks: dict[int, _Track] = {}
        self.last = -math.inf  # the camera's own clock
        self.heard = -math.inf  # the agent's clock
        self.profile: dict[tuple[str, int], _Profile] = {}
        self.reset(zones, lines)

    def reset(self, zones: list[str], lines: list[str]) -> None:
        self.frames = 0
        self.late = 0
        self.occ_sum = dict.fromkeys(zones, 0.0)
        self.occ_max = dict.fromkeys(zones, 0)
        self.entries: dict[str, dict[str, int]] = {z: defaultdict(int) for z in zones}
        self.dwell: dict[str, list[float]] = {z: [] for z in zones}
        self.crossings = {ln: {"in": 0, "out": 0} for ln in lines}
        self.seen: dict[str, set[int]] = defaultdict(set)  # label -> tracks this period

    def save(self) -> Callable[[], None]:
        """A step that puts back what a frame may change (lists that only grow keep their
        length; profiles are replaced, never changed, so a shallow copy holds them)."""
        scalars = (self.last, self.heard, self.frames, self.late)
        tracks = [(tid, tr, tr.point, tr.last, dict(tr.zones)) for tid, tr in self.tracks.items()]
        profile = dict(self.profile)
        occ = (dict(self.occ_sum), dict(self.occ_max))
        entries = {z: dict(e) for z, e in self.entries.items()}
        dwell = {z: len(d) for z, d in self.dwell.items()}
        crossings = {ln: dict(c) for ln, c in self.crossings.items()}
        seen = {label: set(s) for label, s in self.seen.items()}

        def restore() -> None:
            self.last, self.heard, self.frames, self.late = scalars
            self.tracks = {}
            for tid, tr, point, last, zones in tracks:
                tr.point, tr.last, tr.zones = point, last, zones
                self.tracks[tid] = tr
            self.profile = profile
            self.occ_sum, self.occ_max = occ
            self.entries = {z: defaultdict(int, e) for z, e in entries.items()}
            for z, n in dwell.items():
                del self.dwell[z][n:]
            self.crossings = crossings
            self.seen = defaultdict(set, seen)

        return restore


class PeopleFlowHandler:
    """Counts, occupancy, dwell and line crossings per camera; occupancy anomalies."""

    config_model = PeopleFlowConfig
    stateful = True
    output = "events"
    threshold = math.inf  # not a window scorer: events come from update()
    clock = staticmethod(time.monotonic)  # when a camera was last heard from

    def __init__(self, config: PeopleFlowConfig) -> None:
        self.config = config
        self.zone_names = [WHOLE, *(z.name for z in config.zones)]
        self.polygons = {z.name: np.asarray(z.polygon, np.float64) for z in config.zones}
        self.lines = {
            ln.name: (np.asarray(ln.a, np.float64), np.asarray(ln.b, np.float64))
            for ln in config.lines
        }
        self.classes = {c.lower() for c in config.classes}
        self.cameras: dict[str, _Camera] = {}

    def load(self, window_size: int, channels: int) -> None:
        """Nothing to load; the decoder must give detections (checked on the first batch)."""

    # -- per batch -------------------------------------------------------------------------
    def save(self, devices: Sequence[str]) -> Callable[[], None]:
        """Puts back the state of ``devices``' cameras (one not known yet is forgotten)."""
        saved = {d: self.cameras[d].save() if d in self.cameras else None for d in devices}

        def restore() -> None:
            for d, step in saved.items():
                if step is None:
                    self.cameras.pop(d, None)
                else:
                    step()

        return restore

    def update(self, batch: SampleBatch) -> list[dict]:
        det = batch.detections
        if det is None:
            raise ModelError("people_flow needs a camera decoder (deepstream_*, detections_json)")
        b = det.boxes.astype(np.float64)
        cx = (b[:, 0] + b[:, 2]) / 2
        cy = b[:, 3] if self.config.anchor == "bottom_center" else (b[:, 1] + b[:, 3]) / 2
        points = np.stack([cx, cy], axis=1)
        inside = {z: in_polygon(points, p) for z, p in self.polygons.items()}
        keep = np.asarray(
            [not self.classes or lab.lower() in self.classes for lab in det.labels], bool
        )
        order = np.argsort(det.frame, kind="stable")
        starts = np.searchsorted(det.frame[order], np.arange(len(batch) + 1))
        events: list[dict] = []
        heard = self.clock()
        for i, camera in enumerate(batch.devices):
            self._camera(camera).heard = heard
            rows = order[starts[i] : starts[i + 1]]
            rows = rows[keep[rows]]
            events += self._frame(camera, float(batch.ts[i]), rows, det, points, inside)
        return events

    def _camera(self, name: str) -> _Camera:
        cam = self.cameras.get(name)
        if cam is None:
            cam = self.cameras[name] = _Camera(self.zone_names, list(self.lines))
        return cam

    def _frame(self, name, t, rows, det, points, inside) -> list[dict]:
        cam = self._camera(name)
        if t < cam.last:  # late frame: tracks must move forward in time
            cam.late += 1
            return []
        cam.last = t
        cam.frames += 1
        self._expire(cam, t)
        untracked = dict.fromkeys(self.zone_names, 0)
        for r in rows.tolist():
            zones = [WHOLE, *(z for z in self.polygons if inside[z][r])]
            label, track_id, p = det.labels[r], int(det.track[r]), points[r]
            if track_id < 0:
                for z in zones:
                    untracked[z] += 1
                continue
            tr = cam.tracks.get(track_id)
            if tr is None:
                tr = cam.tracks[track_id] = _Track(label, p, t)
                cam.seen[label].add(track_id)
            else:
                for ln, (a, b) in self.lines.items():
                    d = crossing(tr.point, p, a, b)
                    if d:
                        cam.crossings[ln]["in" if d > 0 else "out"] += 1
            for z in list(tr.zones):
                if z not in zones:  # left the zone
                    cam.dwell[z].append(t - tr.zones.pop(z))
            for z in zones:
                if z not in tr.zones:
                    tr.zones[z] = t
                    cam.entries[z][label] += 1
            tr.point, tr.last = p, t
        events = []
        for z in self.zone_names:
            occ = untracked[z] + sum(1 for tr in cam.tracks.values() if z in tr.zones)
            cam.occ_sum[z] += occ
            cam.occ_max[z] = max(cam.occ_max[z], occ)
            ev = self._profile(cam, name, z, t, occ)
            if ev:
                events.append(ev)
        return events

    def _expire(self, cam: _Camera, t: float) -> None:
        for tid in [k for k, tr in cam.tracks.items() if tr.last < t - self.config.track_timeout]:
            tr = cam.tracks.pop(tid)
            for z, entered in tr.zones.items():
                cam.dwell[z].append(tr.last - entered)

    def _profile(self, cam: _Camera, name: str, zone: str, t: float, occ: int) -> dict | None:
        c = self.config
        slot = int((t % 86400) // c.profile_slot)
        p = replace(cam.profile.get((zone, slot), _NEW))  # replaced, never changed: see save()
        cam.profile[zone, slot] = p
        event = None
        if p.n >= c.profile_min_frames:
            std = max(math.sqrt(p.var), c.min_std)
            z = (occ - p.mean) / std
            if abs(z) > c.anomaly_z and not p.anomalous:
                p.anomalous = True
                event = {
                    "device": name,
                    "ts": t,
                    "event": "occupancy_anomaly",
                    "zone": zone,
                    "occupancy": occ,
                    "expected": round(p.mean, 3),
                    "std": round(std, 3),
                    "score": round(z, 3),
                    "threshold": c.anomaly_z,
                }
            elif abs(z) < c.anomaly_z / 2:
                p.anomalous = False
        p.n += 1
        alpha = max(c.profile_alpha, 1.0 / p.n)
        delta = occ - p.mean
        p.mean += alpha * delta
        p.var = (1 - alpha) * (p.var + alpha * delta * delta)
        return event

    # -- per period ------------------------------------------------------------------------
    def flush(self) -> list[dict]:
        """One summary per camera that sent frames this period; forget silent cameras."""
        out = []
        now = self.clock()
        for name, cam in list(self.cameras.items()):
            if cam.heard < now - self.config.camera_ttl:
                del self.cameras[name]
                continue
            if not cam.frames and not cam.late:
                continue
            zones = {}
            for z in self.zone_names:
                dwell = np.asarray(cam.dwell[z], np.float64)
                zones[z] = {
                    "occupancy_mean": round(cam.occ_sum[z] / max(cam.frames, 1), 3),
                    "occupancy_max": cam.occ_max[z],
                    "entries": dict(sorted(cam.entries[z].items())),
                    "dwell_count": len(dwell),
                    "dwell_mean_s": round(float(dwell.mean()), 3) if len(dwell) else None,
                    "dwell_p90_s": round(float(np.quantile(dwell, 0.9)), 3) if len(dwell) else None,
                    "dwell_max_s": round(float(dwell.max()), 3) if len(dwell) else None,
                }
            out.append(
                {
                    "device": name,
                    "frames": cam.frames,
                    "late_frames": cam.late,
                    "tracks": {k: len(v) for k, v in sorted(cam.seen.items())},
                    "active_tracks": len(cam.tracks),
                    "zones": zones,
                    "lines": cam.crossings,
                }
            )
            cam.reset(self.zone_names, list(self.lines))
        return out
