"""Sparkplug B sink: the agent is an edge node; each pipeline device is a Sparkplug device.

On every connection it publishes ``NBIRTH`` (``bdSeq``, ``Node Control/Rebirth``) with an
``NDEATH`` of the same ``bdSeq`` as its MQTT will. Before a device's first data it publishes a
``DBIRTH`` declaring every metric with its alias and datatype; events and summaries then go
out as ``DDATA`` with aliases only. An ``NCMD`` ``Node Control/Rebirth`` from a host
republishes all births. ``seq`` runs 0..255 over NBIRTH, DBIRTH and DDATA as the
specification requires. Stats records are not sent.

Device metrics: ``event/score``, ``event/threshold`` (Double), ``event/anomaly`` (Boolean),
``summary/count``, ``summary/windows``, ``summary/anomalies`` (Int64), ``summary/mean``,
``summary/max`` (Double), and one Double ``event/<f>`` and ``summary/<f>`` per
``extra_metrics`` field.

Device states from the decoder (a Sparkplug source's births and deaths): ``offline`` sends a
``DDEATH`` for a device this node has born (its next record births it again); ``online``
sends nothing (the device is born with its first record). A record with none of the
metrics above (a state of a device never born, a plugin's summary without ``count``) is not
sent: Sparkplug has no empty ``DDATA``. The ``NDEATH`` will is not retained, as the
specification requires.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Literal

import paho.mqtt.client as mqtt
from pydantic import Field

from agent.config import ComponentConfig
from agent.errors import NotConnectedError
from agent.proto.sparkplug import BOOLEAN, DOUBLE, INT64, NAMESPACE, REBIRTH, UINT64, Payload
from agent.protocols import SinkContext
from agent.records import EVENT, SUMMARY, Record
from agent.transport.mqtt import Connection, client_id, topic_level

CORE = [
    ("event/score", DOUBLE),
    ("event/threshold", DOUBLE),
    ("event/anomaly", BOOLEAN),
    ("summary/count", INT64),
    ("summary/windows", INT64),
    ("summary/anomalies", INT64),
    ("summary/mean", DOUBLE),
    ("summary/max", DOUBLE),
]


class SparkplugSinkConfig(ComponentConfig):
    type: Literal["sparkplug_b"]
    broker: str = Field(description="name of a broker in `brokers`")
    group: str = Field("edge-agent", pattern=r"^[^/+#]+$", description="Sparkplug group id")
    node: str | None = Field(
        None, pattern=r"^[^/+#]+$", description="edge node id; default: agent.id"
    )
    extra_metrics: list[str] = Field(
        [], description="more numeric payload fields sent as event/<f> and summary/<f>"
    )
    qos: Literal[0, 1] = Field(
        0,
        description="0 as the specification says (records leave the spool once written to "
        "the socket); 1 to leave it only on PUBACK",
    )
    ack_timeout: float = Field(10, gt=0, description="seconds to wait for publishes")


def _set(m: Payload.Metric, datatype: int, value: float | None) -> None:
    if value is None:
        m.is_null = True
    elif datatype == BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype in (INT64, UINT64):
        m.long_value = int(value) & ((1 << 64) - 1)
    else:
        m.double_value = float(value)


class SparkplugSink:
    """Publishes events and summaries as Sparkplug B device data, with births."""

    config_model = SparkplugSinkConfig

    def __init__(self, config: SparkplugSinkConfig, context: SinkContext) -> None:
        self.config = config
        self.node = config.node or context.agent_id
        self.metrics = CORE + [
            (f"{kind}/{f}", DOUBLE) for kind in ("event", "summary") for f in config.extra_metrics
        ]
        self._alias = {name: i + 1 for i, (name, _) in enumerate(self.metrics)}
        base = f"{NAMESPACE}/{config.group}"
        self._topic = {t: f"{base}/{t}/{self.node}" for t in ("NBIRTH", "NDEATH", "NCMD")}
        self._ddata = f"{base}/DDATA/{self.node}/"
        self._lock = threading.Lock()
        self._seq = 0
        self.bd_seq = 0
        self.devices: dict[str, int] = {}  # sanitized device -> alias offset
        self._born: set[str] = set()
        broker = context.broker(config.broker)
        cid = client_id(broker.client_id, f"{context.agent_id}-{config.broker}", "spb")
        self.conn = Connection(config.broker, broker, cid, will=self._will(), will_retain=False)
        self.conn.on_connected.append(self._on_connect)
        disconnected = self.conn.client.on_disconnect
        assert disconnected is not None, "Connection installs its own on_disconnect"

        def on_disconnect(*args) -> None:
            disconnected(*args)
            with self._lock:  # the next session's NBIRTH and will carry a new bdSeq
                self.bd_seq = (self.bd_seq + 1) % 256
                topic, body = self._will()
                self.conn.client.will_set(topic, body, qos=1, retain=False)

        self.conn.client.on_disconnect = on_disconnect
        self.conn.client.message_callback_add(self._topic["NCMD"], self._on_ncmd)

    # -- births ------------------------------------------------------------------------
    def _will(self) -> tuple[str, bytes]:
        p = Payload(timestamp=int(time.time() * 1000))
        p.metrics.add(name="bdSeq", datatype=INT64, long_value=self.bd_seq)
        return self._topic["NDEATH"], p.SerializeToString()

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) % 256
        return seq

    def _publish(self, topic: str, p: Payload) -> mqtt.MQTTMessageInfo:
        return self.conn.client.publish(topic, p.SerializeToString(), qos=self.config.qos)

    def _nbirth(self) -> None:
        self._seq = 0
        ms = int(time.time() * 1000)
        p = Payload(timestamp=ms, seq=self._next_seq())
        p.metrics.add(name="bdSeq", timestamp=ms, datatype=INT64, long_value=self.bd_seq)
        p.metrics.add(name=REBIRTH, timestamp=ms, datatype=BOOLEAN, boolean_value=False)
        self._publish(self._topic["NBIRTH"], p)
        self._born.clear()

    def _dbirth(self, device: str) -> mqtt.MQTTMessageInfo:
        offset = self.devices.setdefault(device, 1000 * (len(self.devices) + 1))
        ms = int(time.time() * 1000)
        p = Payload(timestamp=ms, seq=self._next_seq())
        for name, datatype in self.metrics:
            m = p.metrics.add(
                name=name, alias=offset + self._alias[name], timestamp=ms, datatype=datatype
            )
            _set(m, datatype, None)
        self._born.add(device)
        return self._publish(f"{NAMESPACE}/{self.config.group}/DBIRTH/{self.node}/{device}", p)

    def _on_connect(self, client, session_present: bool) -> None:
        client.subscribe(self._topic["NCMD"], qos=0)
        with self._lock:
            self._nbirth()

    def _on_ncmd(self, client, userdata, msg) -> None:
        try:
            p = Payload.FromString(msg.payload)
        except Exception:  # a bad command is ignored
            return
        if any(m.name == REBIRTH and m.boolean_value for m in p.metrics):
            with self._lock:
                alive = [d for d in self.devices if d in self._born]
                self._nbirth()
                for device in alive:
                    self._dbirth(device)

    # -- sink --------------------------------------------------------------------------
    def start(self) -> None:
        self.conn.start()

    def _ddeath(self, device: str) -> mqtt.MQTTMessageInfo:
        self._born.discard(device)
        p = Payload(timestamp=int(time.time() * 1000), seq=self._next_seq())
        return self._publish(f"{NAMESPACE}/{self.config.group}/DDEATH/{self.node}/{device}", p)

    def _payload(self, r: Record, device: str) -> Payload:
        offset = self.devices[device]
        body = r.payload
        prefix = "event" if r.kind == EVENT else "summary"
        ts = body.get("ts", body.get("period_end", time.time()))
        ms = int(float(ts) * 1000)
        p = Payload(timestamp=int(time.time() * 1000), seq=self._next_seq(), uuid=r.id or None)
        fields = dict(body)
        if r.kind == EVENT and "score" in body:
            fields["anomaly"] = True
        for name, datatype in self.metrics:
            kind, _, f = name.partition("/")
            if kind == prefix and f in fields:
                m = p.metrics.add(alias=offset + self._alias[name], timestamp=ms, datatype=datatype)
                _set(m, datatype, fields[f])
        return p

    def _has_metric(self, r: Record) -> bool:
        prefix = "event" if r.kind == EVENT else "summary"
        return any(
            name.partition("/")[2] in r.payload
            or (name == "event/anomaly" and "score" in r.payload)
            for name, _ in self.metrics
            if name.startswith(prefix + "/")
        )

    def write_many(self, records: Sequence[Record]) -> None:
        if not self.conn.connected.is_set():
            raise NotConnectedError(f"broker {self.conn.name} not connected")
        infos = []
        with self._lock:
            for r in records:
                if r.kind not in (EVENT, SUMMARY) or not r.device:
                    continue
                device = topic_level(r.device)
                if r.kind == EVENT and "state" in r.payload and "score" not in r.payload:
                    if r.payload["state"] == "offline" and device in self._born:
                        infos.append(self._ddeath(device))
                    continue
                if not self._has_metric(r):
                    continue
                if device not in self._born:
                    infos.append(self._dbirth(device))
                infos.append(self._publish(self._ddata + device, self._payload(r, device)))
        if any(i.rc != mqtt.MQTT_ERR_SUCCESS for i in infos):
            raise NotConnectedError(f"publish to {self.conn.name} failed")
        deadline = time.monotonic() + self.config.ack_timeout
        for info in infos:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            if not info.is_published():
                raise NotConnectedError(f"no acknowledgement from {self.conn.name}")

    def close(self) -> None:
        """Disconnect cleanly; publish NDEATH first, as the will is not sent on a clean close."""
        if self.conn.connected.is_set():
            topic, body = self._will()
            info = self.conn.client.publish(topic, body, qos=1)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(self.config.ack_timeout)
        self.conn.stop()
