"""The people-flow plugin through the real pipeline on DeepStream minimal messages."""

from __future__ import annotations

from edge_agent_people_flow.handler import PeopleFlowHandler

from agent.config import load_config
from agent.registry import Registry
from agent.stages.isolate import process_isolated
from agent.stages.processor import Processor, build_processor
from tests.conftest import ROOT
from tests.support.payloads import T0, minimal


def _processor():
    cfg = load_config(ROOT / "configs" / "people_flow.yaml")
    return build_processor(cfg.pipelines[0])


def obj(track: int, x: float, y: float, label: str = "Person") -> str:
    """A 40x100 box whose bottom centre is (x, y)."""
    return f"{track}|{x - 20}|{y - 100}|{x + 20}|{y}|{label}"


def test_zone_entry_dwell_and_line_crossing():
    """Track 1 walks down through the door line into the entrance zone, stays 3 s, leaves."""
    p = _processor()
    msgs = []
    ys = [700, 850, 950, 950, 950, 950, 950, 950]  # crosses y=900 between frames 1 and 2
    for i, y in enumerate(ys):
        msgs.append(minimal("cam1", T0 + i * 0.5, [obj(1, 300, y), obj(2, 1500, 300, "Cart")], i))
    msgs.append(minimal("cam1", T0 + 10, [], 99))  # track 1 timed out: its dwell ends
    events, _ = p.process(msgs)
    assert events == []
    (summary,) = [r.payload for r in p.flush() if r.kind == "summary"]
    assert summary["device"] == "cam1" and summary["count"] == 9  # frames, from the core
    assert summary["tracks"] == {"Person": 1}  # the cart is not analysed
    entrance = summary["zones"]["entrance"]
    assert entrance["entries"] == {"Person": 1}
    assert entrance["dwell_count"] == 1 and entrance["dwell_max_s"] == 3.5  # 700 is inside too
    assert summary["lines"] == {"door": {"in": 0, "out": 1}}
    assert summary["zones"]["checkout"]["entries"] == {}


def test_occupancy_anomaly_event_once():
    """After learning ~2 people in the checkout, 12 people raise one event."""
    p = _processor()
    msgs = [minimal("cam2", T0 + i, [obj(1, 1400, 300), obj(2, 1600, 300)], i) for i in range(60)]
    crowd = [obj(10 + k, 1300 + 40 * k, 400) for k in range(12)]
    msgs += [minimal("cam2", T0 + 60 + i, crowd, 60 + i) for i in range(3)]
    events, _ = p.process(msgs)
    zones = [e.payload["zone"] for e in events]
    assert zones == ["frame", "checkout"]  # one event per zone and excursion
    ev = events[1].payload
    # the crowd plus the two tracks seen a second ago (a track lasts track_timeout, 2 s)
    assert ev["event"] == "occupancy_anomaly" and ev["occupancy"] == 14
    assert abs(ev["expected"] - 2) < 0.01 and ev["device"] == "cam2"


def test_each_camera_keeps_its_own_clock():
    """A camera whose clock was never set (1970) is analysed beside one on time, across
    summary periods; a camera is forgotten after camera_ttl of silence on the agent's clock,
    and a frame older than its camera's last is counted, not silently dropped."""
    p = _processor()
    now = [0.0]
    p.handler.clock = lambda: now[0]
    for period in range(3):
        t_on, t_1970 = T0 + period * 10, 1000.0 + period * 10
        msgs = [minimal("on-time", t_on + i, [obj(1, 300, 950)], i) for i in range(3)]
        msgs += [minimal("no-ntp", t_1970 + i, [obj(-2147483000, 300, 950)], i) for i in range(3)]
        p.process(msgs)
        now[0] += 300
        summaries = {r.payload["device"]: r.payload for r in p.flush() if r.kind == "summary"}
        assert set(summaries) == {"on-time", "no-ntp"}, period
        assert summaries["no-ntp"]["frames"] == 3
        assert summaries["no-ntp"]["zones"]["entrance"]["occupancy_mean"] == 1.0
    p.process([minimal("no-ntp", 999.0, [obj(5, 300, 950)], 9)])  # before its last frame
    summary = [r.payload for r in p.flush() if r.kind == "summary"]
    assert [(s["device"], s["frames"], s["late_frames"]) for s in summary] == [("no-ntp", 0, 1)]
    now[0] += 601
    assert [r for r in p.flush() if r.kind == "summary"] == []
    assert p.handler.cameras == {}


def test_full_schema_person_block_from_peoplenet_is_kept():
    """`classes: [person]` keeps the full schema's `Person` block (PeopleNet's label), with
    the text object ids current DeepStream sends."""
    import yaml

    from agent.config import parse_config
    from tests.support.payloads import full

    data = yaml.safe_load((ROOT / "configs" / "people_flow.yaml").read_text())
    data["pipelines"][0]["decoder"] = {"type": "deepstream_full", "classes": ["person"]}
    p = build_processor(parse_config(data, "people_flow.yaml").pipelines[0])
    msgs = [
        full("cam3", T0 + i * 0.5, 4, (280, 700 + 60 * i, 320, 800 + 60 * i), "Person")
        for i in range(4)
    ]
    p.process(msgs)
    (summary,) = [r.payload for r in p.flush() if r.kind == "summary"]
    assert summary["tracks"] == {"Person": 1}
    assert summary["lines"] == {"door": {"in": 0, "out": 1}}


class MarkedTrackRaises(PeopleFlowHandler):
    """A defect part-way through a frame: after the frame changed the camera's state, a
    frame with track 666 raises."""

    def _frame(self, name, t, rows, det, points, inside) -> list[dict]:
        events = super()._frame(name, t, rows, det, points, inside)
        if (det.track[rows] == 666).any():
            raise RuntimeError("handler defect on track 666")
        return events


def test_a_frame_that_raises_costs_only_itself():
    """The handler's state is saved before each batch and put back when the batch fails, so
    the halves processed again count nothing twice: two cameras' crossings, entries, dwell,
    occupancy and profile end as the good frames alone leave them."""
    cfg = load_config(ROOT / "configs" / "people_flow.yaml").pipelines[0]

    def processor(handler_cls) -> Processor:
        registry = Registry()
        decoder = registry.get("decoder", cfg.decoder.type)(cfg.decoder)
        p = Processor(cfg, decoder, handler_cls(cfg.handler))
        p.load()
        return p

    def walk(camera: str, start: int) -> list:
        ys = [700, 850, 950, 950, 700, 950]  # down, up, down over the door line
        return [
            minimal(camera, T0 + (start + i) * 0.5, [obj(1, 300, y), obj(2, 1500, 300)], i)
            for i, y in enumerate(ys)
        ]

    good = [m for pair in zip(walk("cam1", 0), walk("cam2", 0)) for m in pair]
    good += walk("cam1", 6) + walk("cam2", 6)
    bad = minimal("cam1", T0 + 3.25, [obj(1, 300, 700), obj(666, 1500, 300)], 50)
    p = processor(MarkedTrackRaises)
    process_isolated(p, [*good[:9], bad, *good[9:]])
    assert [(m, kind) for m, kind, _ in p.rejected] == [(bad, "internal")]
    ref = processor(PeopleFlowHandler)
    ref.process(good)
    assert p.counters.decoded == ref.counters.decoded == len(good)

    def summaries(processor: Processor) -> list[dict]:
        out = [r.payload for r in processor.flush() if r.kind == "summary"]
        return [{k: v for k, v in s.items() if not k.startswith("period_")} for s in out]

    got = summaries(p)
    assert got == summaries(ref)
    assert {s["device"]: s["lines"]["door"] for s in got} == {
        "cam1": {"in": 3, "out": 4},
        "cam2": {"in": 3, "out": 4},
    }
