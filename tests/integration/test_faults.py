"""Faults with real brokers (a local and an upstream mosquitto): nothing accepted is lost.

Each test prints its figures (run with -s); docs/reliability.md quotes them.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.testing.mosquitto import Mosquitto
from tests.support.faults import (
    line_config,
    samples_per_device,
    spool_rows,
    tally,
)
from tests.support.mqtt import AgentProcess, Collector, client, kill_left, publish, w1_payloads
from tests.support.waiting import until

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

OUTAGE = float(os.environ.get("FAULT_OUTAGE", "30"))  # seconds the upstream is down


def uniq() -> str:
    return uuid.uuid4().hex[:8]


def figures(name: str, **numbers: object) -> None:
    print(f"\nFIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


def summed(collector: Collector) -> int:
    return sum(samples_per_device(tally(collector.of("summary/"))[0]).values())


def first_message(port: int, topic: str, timeout: float = 10) -> tuple[bool, dict] | None:
    """(retain flag, body) of the first message a fresh subscriber to ``topic`` receives."""
    got: list[tuple[bool, dict]] = []
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"t-fresh-{uniq()}", protocol=mqtt.MQTTv5
    )
    c.on_message = lambda _c, _u, msg: got.append((msg.retain, orjson.loads(msg.payload)))
    c.connect("127.0.0.1", port, 30)
    c.subscribe(topic, qos=1)
    c.loop_start()
    try:
        until(lambda: got, timeout)
    finally:
        c.loop_stop()
        c.disconnect()
    return got[0] if got else None


def test_upstream_outage_delivers_everything(broker, w1_models, tmp_path):
    """Upstream down for 30 s mid-run: every event and summary arrives; copies share ids."""
    line = uniq()
    (tmp_path / "up").mkdir()
    up = Mosquitto(workdir=tmp_path / "up").start()
    col = Collector(up.port, ["events/#", "summary/#", "stats/#"], session=f"col-{line}")
    dead = Collector(broker.port, [f"dead/{line}/#"])
    dead_letter = {"dead_letter": f"dead/{line}/{{kind}}"}
    cfg = line_config(tmp_path, line, broker.port, up.port, w1_models[1], source_extra=dead_letter)
    agent = AgentProcess(cfg, {})
    try:
        agent.wait_ready()
        items = w1_payloads(devices=100, samples=400)
        topic = f"plant/{line}/{{device}}/telemetry"
        bad = [b"not json", b'{"ts": 1, "v": [1e39, 1, 2, 3, 4, 5, 6, 7]}', b"{" * 70_000]
        pub = client(broker.port, "bad")
        for body in bad:
            pub.publish(f"plant/{line}/devbad/telemetry", body, qos=1).wait_for_publish(10)
        pub.disconnect()
        publish(broker.port, topic, items[:10_000], qos=1)  # samples 0-99 of every device
        assert col.wait_for(lambda: summed(col) >= 10_000, 60)
        up.stop(hold=True)
        down = time.monotonic()
        publish(broker.port, topic, items[10_000:30_000], qos=1)  # 100-299 while down
        peak = len(spool_rows(tmp_path / "spool.db"))
        while time.monotonic() - down < OUTAGE:
            time.sleep(1)
            peak = max(peak, len(spool_rows(tmp_path / "spool.db")))
        up.start()
        publish(broker.port, topic, items[30_000:], qos=1)  # 300-399 after
        seen = col.wait_for(lambda: summed(col) >= len(items), 120)
        assert seen, (summed(col), [r.get("event") for r in agent.logs[-30:]])
        assert agent.stop() == 0, agent.logs[-20:]
        col.settle()
    finally:
        kill_left(agent)
        up.stop()
    summaries, dup_s = tally(col.of("summary/"))
    events, dup_e = tally(col.of("events/"))
    stats = col.of("stats/")
    dead_kinds = sorted(t.rsplit("/", 1)[1] for t, _, _ in dead.raw)
    dead_reasons = [dict(getattr(props, "UserProperty", [])) for _, _, props in dead.raw]
    col.close()
    dead.close()
    per_device = samples_per_device(summaries)
    figures(
        "upstream_outage",
        samples=len(items),
        outage_s=OUTAGE,
        spool_peak_rows=peak,
        summaries=len(summaries),
        events=len(events),
        duplicates=dup_s + dup_e,
        samples_in_summaries=sum(per_device.values()),
        spool_dropped=stats[-1]["spool"]["dropped"],
        dead_letters=dead_kinds,
    )
    assert peak > 0, "nothing was spooled during the outage"
    assert all(per_device[f"dev{d:04d}"] == 400 for d in range(100)), per_device
    assert sum(s["windows"] for s in summaries.values()) == 100 * 47
    assert sum(s["anomalies"] for s in summaries.values()) == len(events)
    assert len({(e["device"], e["seq"]) for e in events.values()}) == len(events)
    for d, k, _, spiked in items:
        if spiked:
            assert any(e["device"] == d and k <= e["seq"] <= k + 31 for e in events.values())
    assert stats[-1]["spool"]["dropped"] == 0 and stats[-1]["spool"]["expired"] == 0
    assert dead_kinds == ["json", "too_large", "values"]
    # each dead letter carries why it was rejected (MQTT 5 user property), and where it came from
    assert all(r.get("reason") for r in dead_reasons), dead_reasons
    assert all(r.get("topic") == f"plant/{line}/devbad/telemetry" for r in dead_reasons)
    assert stats[-1]["errors"] == {"json": 1, "too_large": 1, "values": 1}


def test_local_broker_restart_with_persistent_session(broker, w1_models, tmp_path):
    """The local broker restarts mid-stream (QoS 1, persistent session): no sample missing."""
    line = uniq()
    (tmp_path / "local").mkdir()
    local = Mosquitto(workdir=tmp_path / "local").start()
    col = Collector(broker.port, ["summary/#"])
    cfg = line_config(tmp_path, line, local.port, broker.port, w1_models[1])
    agent = AgentProcess(cfg, {})
    items = w1_payloads(devices=100, samples=300)
    try:
        agent.wait_ready()
        pub = client(local.port, "pub")
        pub.reconnect_delay_set(0.1, 0.5)
        acked: set[int] = set()  # PUBACKed mids; paho resends the rest after reconnecting
        pub.on_publish = lambda c, u, mid, rc, props: acked.add(mid)
        infos = []
        for i, (d, _, body, _) in enumerate(items):
            infos.append(pub.publish(f"plant/{line}/{d}/telemetry", body, qos=1))
            if i == len(items) // 3:
                local.restart()  # persistence file kept: sessions and queued messages survive
            if i % 1000 == 999:  # at most 2,000 unacknowledged: the broker's queue holds them
                assert until(lambda i=i: i + 1 - len(acked) <= 2000, 60), i + 1 - len(acked)
        assert until(lambda: len(acked) >= len(infos), 60), len(infos) - len(acked)
        pub.loop_stop()
        pub.disconnect()
        assert col.wait_for(lambda: summed(col) >= len(items), 90), summed(col)
        assert agent.stop() == 0, agent.logs[-20:]
        col.settle()
    finally:
        kill_left(agent)
        local.stop()
    summaries, dup = tally(col.of("summary/"))
    col.close()
    per_device = samples_per_device(summaries)
    reconnects = len(agent.events("mqtt_connected"))
    figures(
        "local_restart",
        samples=len(items),
        samples_in_summaries=sum(per_device.values()),
        redelivered_samples=sum(per_device.values()) - len(items),
        duplicate_messages=dup,
        agent_connects=reconnects,
    )
    assert all(per_device[f"dev{d:04d}"] >= 300 for d in range(100)), per_device
    assert reconnects >= 3  # local twice (before and after the restart), upstream once


def test_sigkill_with_full_spool_then_restart_drains_it(broker, w1_models, tmp_path):
    """SIGKILL while upstream is unreachable; a restart delivers every spooled row."""
    line = uniq()
    (tmp_path / "up").mkdir()
    up = Mosquitto(workdir=tmp_path / "up")  # not started: its port is held, refused
    up_port = up.port
    spool = tmp_path / "spool.db"
    status_topic = f"status/{line}"
    status = Collector(broker.port, [status_topic])
    no_beats = {"id": f"a-{line}", "status_topic": status_topic, "status_broker": "local"}
    cfg = line_config(tmp_path, line, broker.port, up_port, w1_models[1], agent=no_beats)
    items = w1_payloads(devices=100, samples=200)
    agent = AgentProcess(cfg, {})
    agent.wait_ready()
    # the birth message is retained: a subscriber arriving after it still gets "online"
    assert status.wait_for(lambda: status.of(status_topic), 10)
    birth = first_message(broker.port, status_topic)
    assert birth is not None and birth[0] is True, birth
    assert birth[1]["state"] == "online" and birth[1]["agent"] == f"a-{line}", birth
    publish(broker.port, f"plant/{line}/{{device}}/telemetry", items, qos=1)

    def spooled_samples() -> int:
        return sum(p.get("count", 0) for k, _, p in spool_rows(spool) if k == "summary")

    assert until(lambda: spooled_samples() >= len(items), 60), spooled_samples()
    before = spool_rows(spool)
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    assert status.wait_for(lambda: status.of(status_topic)[-1]["state"] == "offline", 10)

    up.start()
    col = Collector(up.port, ["events/#", "summary/#", "stats/#"])
    again = AgentProcess(cfg, {})
    try:
        wanted = {i for _, i, _ in before}
        got = lambda: {m["id"] for _, m in col.messages}  # noqa: E731
        assert col.wait_for(lambda: wanted <= got(), 60), len(wanted - got())
        assert again.stop() == 0, again.logs[-20:]
    finally:
        kill_left(again)
        up.stop()
    after = spool_rows(spool)
    delivered = {m["id"] for _, m in col.messages}
    summaries, dup = tally(col.of("summary/"))
    per_device = samples_per_device(summaries)
    states = [m["state"] for m in status.of(status_topic)]
    col.close()
    status.close()
    figures(
        "sigkill",
        samples=len(items),
        spooled_at_kill=len(before),
        spooled_rows_delivered=len(wanted & delivered),
        samples_in_summaries=sum(per_device.values()),
        duplicates=dup,
        spool_left=len(after),
        status_sequence="->".join(dict.fromkeys(states)),
    )
    assert after == []
    assert sum(per_device.values()) >= len(items)
    assert all(per_device[f"dev{d:04d}"] >= 200 for d in range(100))
    assert "offline" in states and states[-1] == "offline" and "online" in states


def test_spool_cap_drops_oldest_counted_reported_agent_runs_on(broker, w1_models, tmp_path):
    """A 24 KB spool with upstream down: oldest rows dropped, counted in status and stats."""
    line = uniq()
    (tmp_path / "up").mkdir()
    up = Mosquitto(workdir=tmp_path / "up")  # not started: its port is held, refused
    up_port = up.port
    status_topic = f"status/{line}"
    status = Collector(broker.port, [status_topic])
    cap = {"max_mb": 0.024}
    cfg = line_config(
        tmp_path, line, broker.port, up_port, w1_models[1], spool_extra=cap, beat=True
    )
    agent = AgentProcess(cfg, {})
    try:
        agent.wait_ready()
        publish(broker.port, f"plant/{line}/{{device}}/telemetry", w1_payloads(100, 300), qos=1)

        def dropped() -> int:
            beats = [m for m in status.of(status_topic) if "spool" in m]
            return beats[-1]["spool"]["dropped"] if beats else 0

        assert status.wait_for(lambda: dropped() > 0, 30)
        assert agent.proc.poll() is None
        up.start()
        col = Collector(up.port, ["summary/#", "stats/#"])
        assert col.wait_for(lambda: col.of("stats/"), 30)  # the backlog is flowing again
        assert agent.stop() == 0, agent.logs[-20:]
        col.settle()
        up.stop()
    finally:
        kill_left(agent)
    delivered, dup = tally(col.of(""))
    last = col.of("stats/")[-1]["spool"]
    col.close()
    status.close()
    figures(
        "spool_cap",
        records_stored=last["stored"] + 1,
        dropped_by_cap=last["dropped"],
        delivered_unique=len(delivered),
        duplicates=dup,
        reported_in_heartbeat=dropped(),
        warnings_logged=len(agent.events("spool_full_dropped")),
    )
    assert last["dropped"] > 0 and agent.events("spool_full_dropped")
    assert len(delivered) == last["stored"] + 1 - last["dropped"] - last["expired"]


def test_sigterm_with_upstream_down_spools_final_summaries(broker, w1_models, tmp_path):
    """SIGTERM while upstream is down: exit 0, the final summaries are spooled, then delivered."""
    line = uniq()
    spool = tmp_path / "spool.db"
    status_topic = f"status/{line}"
    status = Collector(broker.port, [status_topic])
    (tmp_path / "up").mkdir()
    up = Mosquitto(workdir=tmp_path / "up").start()
    # no periodic flush: every summary in the spool comes from the flush at SIGTERM
    hourly = {"summary": {"every": "1h"}}
    cfg = line_config(tmp_path, line, broker.port, up.port, w1_models[1], hourly, beat=True)
    items = w1_payloads(devices=10, samples=40)
    agent = AgentProcess(cfg, {})
    again = None
    try:
        agent.wait_ready()
        up.stop(hold=True)

        def decoded() -> int:
            beats = [m for m in status.of(status_topic) if "pipelines" in m]
            return beats[-1]["pipelines"]["w1"]["decoded"] if beats else 0

        publish(broker.port, f"plant/{line}/{{device}}/telemetry", items, qos=1)
        assert status.wait_for(lambda: decoded() >= len(items), 30), decoded()
        assert not [k for k, _, _ in spool_rows(spool) if k == "summary"]  # none flushed yet
        rc = agent.stop()
        assert rc == 0, agent.logs[-20:]
        at_stop = spool_rows(spool)
        spooled = sum(p["count"] for k, _, p in at_stop if k == "summary")
        stopped = agent.events("agent_stopped")

        up.start()
        col = Collector(up.port, ["events/#", "summary/#", "stats/#"])
        again = AgentProcess(cfg, {})
        again.wait_ready()
        wanted = {i for _, i, _ in at_stop}
        got = lambda: {m["id"] for _, m in col.messages}  # noqa: E731
        assert col.wait_for(lambda: wanted <= got(), 60), len(wanted - got())
        assert again.stop() == 0, again.logs[-20:]
        col.settle()
    finally:
        kill_left(agent, again)
        up.stop()
    summaries, dup = tally(col.of("summary/"))
    delivered = sum(samples_per_device(summaries).values())
    left = spool_rows(spool)
    col.close()
    status.close()
    figures(
        "sigterm_upstream_down",
        samples=len(items),
        exit_code=rc,
        spooled_rows_at_exit=len(at_stop),
        samples_in_spooled_summaries=spooled,
        samples_in_delivered_summaries=delivered,
        duplicates=dup,
        spool_left=len(left),
    )
    assert spooled == len(items), at_stop
    assert stopped and stopped[-1]["spooled"] == len(at_stop), stopped
    assert delivered == len(items), summaries
    assert left == []
