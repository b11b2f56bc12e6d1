"""A live reload that restarts, adds and removes pipelines while samples flow (QoS 1,
persistent sessions): every sample published is counted exactly once, by the pipeline it was
sent to or, for a removed pipeline, left in its broker session; no record id names two records.
(Issue #19's branch adds a test of ids across two rebuild reloads and a restart; this one
covers adding and removing pipelines too.) Prints its figures (run with -s).
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections import Counter
from dataclasses import dataclass

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.faults import write_config
from tests.support.mqtt import AgentProcess, Collector, kill_left, publish, w1_payloads
from tests.support.waiting import until

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

DEVICES, SAMPLES = 10, 300


def _pipeline(base: dict, name: str, line: str) -> dict:
    pipe = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    pipe["name"] = name
    pipe["source"]["topics"] = [f"{name}/{line}/+/telemetry"]
    pipe["summary"]["every"] = "0.2s"  # many records while the reload runs
    pipe["sinks"][0].update(
        events=f"ev-{line}/{{pipeline}}/{{device}}",
        summaries=f"sum-{line}/{{pipeline}}/{{device}}",
        stats=f"stats-{line}/{{pipeline}}",
    )
    return pipe


class SessionReader:
    """Resumes a removed pipeline's persistent session (its client id, clean_start false)
    and takes what the broker kept for it: the messages that pipeline never acknowledged."""

    def __init__(self, port: int, client_id: str) -> None:
        self.seqs: Counter = Counter()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.resumed = threading.Event()
        self.marked = threading.Event()
        self.session_present = False

        def on_connect(client, userdata, flags, reason, properties):
            self.session_present = bool(flags.session_present)
            self.resumed.set()

        self.c.on_connect = on_connect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0  # the session ends when this reader leaves
        self.c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
        self.c.loop_start()
        assert self.resumed.wait(10), "the session reader did not connect"

    def drain(self, timeout: float = 30) -> None:
        """Until all the session held has arrived: a marker published now is queued behind
        it (the broker delivers one session's messages in order)."""
        topic = f"reader-marker/{uuid.uuid4().hex}"
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.subscribe(topic, 1)
        assert subscribed.wait(10), "the session reader could not subscribe its marker"
        self.c.publish(topic, b"marker", qos=1)
        assert self.marked.wait(timeout), "the marker did not come back"

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic.startswith("reader-marker/"):
            self.marked.set()
            return
        body = orjson.loads(msg.payload)
        self.seqs[(msg.topic.split("/")[2], body["seq"])] += 1

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@dataclass
class Run:
    applied: dict  # the reload_applied log record
    counted: dict[str, Counter]  # pipeline -> device -> samples in its unique summaries
    left: Counter  # (device, seq) -> copies the removed pipeline's session still held
    bodies: dict[str, set[bytes]]  # record id -> the distinct payloads sent under it
    duplicates: int  # records received more than once (same topic and body)


@pytest.fixture(scope="module")
def run(broker, w1_models, tmp_path_factory) -> Run:
    """Pipelines ``keep`` and ``gone`` take samples; while both are being published to, a
    reload restarts ``keep`` (its ``source.queue`` changed), removes ``gone`` and adds
    ``new``; then ``keep`` and ``new`` get the rest, the agent stops, and a reader resumes
    ``gone``'s session."""
    tmp_path = tmp_path_factory.mktemp("topology")
    line = uuid.uuid4().hex[:8]
    agent_id = f"topo-{line}"
    cfg = write_config(
        tmp_path / "agent.yaml",
        local=broker.port,
        upstream=broker.port,
        model=w1_models[1],
        spool=tmp_path / "spool.db",
        agent={"id": agent_id},
    )
    doc = yaml.safe_load(cfg.read_text())
    base = doc["pipelines"][0]
    doc["pipelines"] = [_pipeline(base, "keep", line), _pipeline(base, "gone", line)]
    cfg.write_text(yaml.safe_dump(doc))
    items = w1_payloads(devices=DEVICES, samples=SAMPLES, spike_rate=0.02)
    half = len(items) // 2
    col = Collector(broker.port, [f"sum-{line}/#", f"ev-{line}/#", f"stats-{line}/#"])
    agent = AgentProcess(cfg, {})
    reader = None
    try:
        agent.wait_ready_count(2)
        load = [
            threading.Thread(
                target=publish,
                args=(broker.port, f"{name}/{line}/{{device}}/telemetry", part, 1),
            )
            for name, part in (("keep", items[:half]), ("gone", items))
        ]
        for t in load:
            t.start()
        doc["pipelines"] = [_pipeline(base, "keep", line), _pipeline(base, "new", line)]
        doc["pipelines"][0]["source"]["queue"] = 7000  # a source change: restart
        cfg.write_text(yaml.safe_dump(doc))
        agent.proc.send_signal(signal.SIGHUP)
        assert until(lambda: agent.events("reload_applied"), 30), agent.logs[-10:]
        for t in load:
            t.join()
        agent.wait_ready_count(4)  # keep's new source and new's have their SUBACKs
        publish(broker.port, f"keep/{line}/{{device}}/telemetry", items[half:], qos=1)
        publish(broker.port, f"new/{line}/{{device}}/telemetry", items, qos=1)
        assert agent.stop() == 0, agent.logs[-20:]
        col.settle()
        reader = SessionReader(broker.port, f"{agent_id}-gone-in")
        assert reader.session_present, "the removed pipeline's session was not kept"
        reader.drain()
    finally:
        kill_left(agent)
        if reader is not None:
            reader.close()
        col.close()
    bodies: dict[str, set[bytes]] = {}
    for _, m in col.messages:
        bodies.setdefault(m["id"], set()).add(orjson.dumps(m, option=orjson.OPT_SORT_KEYS))
    # A summary delivered twice (at least once) counts once: the same topic and body.
    unique = {(t, orjson.dumps(m, option=orjson.OPT_SORT_KEYS)): m for t, m in col.messages}
    counted: dict[str, Counter] = {"keep": Counter(), "gone": Counter(), "new": Counter()}
    for (topic, _), m in unique.items():
        if topic.startswith(f"sum-{line}/"):
            counted[topic.split("/")[1]][m["device"]] += m["count"]
    result = Run(
        agent.events("reload_applied")[0],
        counted,
        reader.seqs,
        bodies,
        len(col.messages) - len(unique),
    )
    print(
        f"\nFIGURES reload_topology: samples per pipeline={len(items)}; counted "
        + ", ".join(f"{k}={sum(v.values())}" for k, v in counted.items())
        + f"; left in gone's session={sum(result.left.values())}; records={len(bodies)}, "
        f"id_conflicts={sum(len(b) > 1 for b in bodies.values())}, "
        f"redelivered_records={result.duplicates}"
    )
    return result


def test_every_sample_counted_once_across_restart_add_and_remove(run):
    """``keep`` (restarted) and ``new`` (added) counted every sample sent to them once;
    ``gone`` (removed) counted what it took before it stopped and its session holds the
    rest, each sample in one place only."""
    applied = run.applied
    assert (applied["restarted"], applied["added"], applied["removed"]) == (
        ["keep"],
        ["new"],
        ["gone"],
    )
    per_device = Counter({f"dev{d:04d}": SAMPLES for d in range(DEVICES)})
    assert run.counted["keep"] == per_device
    assert run.counted["new"] == per_device
    assert max(run.left.values(), default=1) == 1, "a sample left twice in the session"
    assert run.counted["gone"] + Counter(device for device, _ in run.left) == per_device


def test_no_record_id_names_two_records(run):
    """Every id upstream names one payload (a redelivered record repeats its own)."""
    conflicts = {k: sorted(b) for k, b in run.bodies.items() if len(b) > 1}
    assert not conflicts, (
        f"{len(conflicts)} ids name two records, e.g. {next(iter(conflicts.items()))}"
    )
