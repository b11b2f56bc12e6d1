"""Sparkplug B (protobuf over MQTT): births, aliases, sequence numbers, deaths.

Topics are ``spBv1.0/<group>/<TYPE>/<edge node>[/<device>]``. The decoder keeps the
session state Sparkplug needs (alias tables, last values, ``seq`` of each edge node) and is
otherwise pure: it never publishes. A rebirth request (``NCMD`` with ``Node Control/Rebirth``)
goes into ``SampleBatch.control`` and the runtime publishes it on the source broker.

A ``DDATA`` (or ``NDATA``) gives one sample for its device (``<group>/<node>/<device>``, or
``<group>/<node>`` for node data): the configured metrics in order, each its value in this
message or, report-by-exception, its last known value. Births only set values; ``NDEATH``
and ``DDEATH`` mark devices offline (``SampleBatch.states``).

Error kinds: ``protobuf`` (payload does not parse), ``topic`` (not a Sparkplug topic),
``no_birth`` (data before a birth, or after a death), ``unknown_alias``, ``seq_gap``,
``incomplete`` (a configured metric has no value yet). The last four ask for a rebirth.

As third-party encoders send them: a signed integer may be stored at its own width (Int8
-3 as 253, Python encoders) or sign-extended to 32 bits (Eclipse Tahu Java); both decode to
-3. Data metrics may omit the datatype, as the specification recommends: the one declared
in the birth is used. A message without ``seq`` is not checked for gaps. Offline states
are stamped when the death arrives: an ``NDEATH`` will carries the time of the connect.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from google.protobuf.message import DecodeError
from pydantic import Field

from agent.config import ComponentConfig, Duration
from agent.proto.sparkplug import NAMESPACE, Payload, metric_value, rebirth_request
from agent.records import Message, SampleBatch


class SparkplugDecoderConfig(ComponentConfig):
    type: Literal["sparkplug_b"]
    metrics: list[str] = Field(
        min_length=1, description="metric names, in channel order (e.g. 'Pump/Pressure')"
    )
    rebirth: bool = Field(
        True, description="ask the edge node for a rebirth (NCMD) on a gap or unknown alias"
    )
    rebirth_holdoff: Duration = Field(
        10, description="at most one rebirth request per edge node in this time"
    )
    max_nodes: int = Field(
        10_000,
        ge=1,
        description="edge nodes whose sessions are kept; a birth of one more takes the place "
        "of an offline node, or is rejected as node_limit",
    )
    max_node_devices: int = Field(
        10_000,
        ge=1,
        description="devices kept per edge node; a DBIRTH of one more is rejected as node_devices",
    )


@dataclass
class _Node:
    """What an edge node's births said: aliases, last values, sequence number."""

    # alias -> metric name; None for a metric that is not a channel (known, so not a cause
    # for a rebirth, and its name, of any length, is not kept)
    aliases: dict[int, str | None] = field(default_factory=dict)
    seq: int = -1
    bd_seq: int | None = None
    online: bool = False
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # entity -> name -> v
    datatypes: dict[str, dict[str, int]] = field(default_factory=dict)  # from the births
    devices_online: set[str] = field(default_factory=set)
    rebirth_at: float = -math.inf


class SparkplugDecoder:
    """Decodes Sparkplug B payloads into samples; keeps each edge node's session."""

    config_model = SparkplugDecoderConfig

    def __init__(self, config: SparkplugDecoderConfig) -> None:
        self.config = config
        self.channels = len(config.metrics)
        self._index = {name: i for i, name in enumerate(config.metrics)}
        self.nodes: dict[tuple[str, str], _Node] = {}

    def decode_many(self, messages: Sequence[Message]) -> SampleBatch:
        self._out: dict = {
            "devices": [],
            "ts": [],
            "seq": [],
            "rows": [],
            "errors": {},
            "rejects": [],
            "control": [],
            "states": [],
        }
        origin: list[int] = []
        for at, msg in enumerate(messages):
            before = len(self._out["rows"])
            self._one(msg)
            origin += [at] * (len(self._out["rows"]) - before)
        o = self._out
        return SampleBatch(
            o["devices"],
            np.asarray(o["ts"], np.float64),
            np.asarray(o["seq"], np.int64),
            np.asarray(o["rows"], np.float32).reshape(len(o["rows"]), self.channels),
            o["errors"],
            o["rejects"],
            control=o["control"],
            states=o["states"],
            origin=np.asarray(origin, np.int64),
        )

    # -- helpers -------------------------------------------------------------------------
    def _reject(self, msg: Message, kind: str, reason: str) -> None:
        errors = self._out["errors"]
        errors[kind] = errors.get(kind, 0) + 1
        self._out["rejects"].append((msg, kind, reason))

    def _rebirth(self, group: str, name: str, node: _Node, msg: Message) -> None:
        now = msg.received or time.time()
        if not self.config.rebirth or now - node.rebirth_at < self.config.rebirth_holdoff:
            return
        node.rebirth_at = now
        self._out["control"].append(rebirth_request(group, name, now))

    def _state(self, entity: str, state: str, ts: float) -> None:
        self._out["states"].append((entity, state, ts))

    # -- one message ---------------------------------------------------------------------
    def _one(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 3 or parts[0] != NAMESPACE:
            self._reject(msg, "topic", "not a spBv1.0 topic")
            return
        if parts[1] == "STATE" or parts[2] in ("NCMD", "DCMD"):
            return  # host state and commands are not telemetry
        if len(parts) not in (4, 5):
            self._reject(msg, "topic", "expected spBv1.0/group/TYPE/node[/device]")
            return
        group, mtype, name = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else None
        try:
            p = Payload.FromString(msg.payload)
        except DecodeError as e:
            self._reject(msg, "protobuf", f"not a Sparkplug B payload ({e})")
            return
        arrived = msg.received or time.time()
        ts = p.timestamp / 1000 if p.HasField("timestamp") else arrived
        seq = p.seq if p.HasField("seq") else None
        key = (group, name)
        node_id = f"{group}/{name}"
        if mtype == "NBIRTH":
            if not self._room_for(key, evict=True):
                self._reject(msg, "node_limit", f"{node_id}: {len(self.nodes)} nodes kept already")
                return
            born = self.nodes[key] = _Node(seq=-1 if seq is None else seq, online=True)
            born.values[node_id] = {}
            born.datatypes[node_id] = {}
            self._learn(born, node_id, p, birth=True)
            bd = [metric_value(m) for m in p.metrics if m.name == "bdSeq"]
            born.bd_seq = int(bd[0]) if bd and bd[0] is not None else None
            self._state(node_id, "online", ts)
            return
        node = self.nodes.get(key)
        if mtype == "NDEATH":
            if node is None or not node.online:
                return
            bd = [metric_value(m) for m in p.metrics if m.name == "bdSeq"]
            if bd and node.bd_seq is not None and bd[0] is not None and int(bd[0]) != node.bd_seq:
                return  # the will of an older session
            node.online = False
            for d in sorted(node.devices_online):
                self._state(d, "offline", arrived)
            node.devices_online.clear()
            self._state(node_id, "offline", arrived)
            return
        if node is None or not node.online:
            self._reject(msg, "no_birth", f"{mtype} before NBIRTH of {node_id}")
            if node is None and self._room_for(key, evict=False):  # for its rebirth holdoff
                node = self.nodes[key] = _Node()
            if node is not None:
                self._rebirth(group, name, node, msg)
            return
        if seq is not None:  # the specification requires it; without it nothing is checked
            expected, known = (node.seq + 1) % 256, node.seq >= 0
            node.seq = seq
            if known and seq != expected:
                self._reject(msg, "seq_gap", f"{node_id}: seq {seq}, expected {expected}")
                self._rebirth(group, name, node, msg)
        entity = f"{node_id}/{device}" if device is not None else node_id
        if mtype == "DBIRTH" and device is not None:
            kept = len(node.values) - 1  # the node's own entity is one
            if entity not in node.values and kept >= self.config.max_node_devices:
                self._reject(msg, "node_devices", f"{entity}: {kept} devices of {node_id} kept")
                return
            node.values[entity] = {}
            node.datatypes[entity] = {}
            if not self._learn(node, entity, p, birth=True):
                self._reject(msg, "unknown_alias", f"{entity}: DBIRTH metric without a name")
            node.devices_online.add(entity)
            self._state(entity, "online", ts)
        elif mtype == "DDEATH" and device is not None:
            if entity in node.devices_online:
                node.devices_online.discard(entity)
                self._state(entity, "offline", ts)
            node.values.pop(entity, None)  # its data needs a new DBIRTH, which starts afresh
            node.datatypes.pop(entity, None)
        elif mtype in ("DDATA", "NDATA"):
            if device is not None and entity not in node.devices_online:
                self._reject(msg, "no_birth", f"DDATA before DBIRTH of {entity}")
                self._rebirth(group, name, node, msg)
                return
            if not self._learn(node, entity, p, birth=False):
                self._reject(msg, "unknown_alias", f"{entity}: an alias not in any birth")
                self._rebirth(group, name, node, msg)
            self._sample(node, entity, ts, -1 if seq is None else seq, msg, group, name)
        else:
            self._reject(msg, "topic", f"unknown message type {mtype}")

    def _room_for(self, key: tuple[str, str], evict: bool) -> bool:
        """Whether ``key``'s session can be kept (``max_nodes``): known, below the limit, or,
        for a birth (``evict``), in the place of an offline node, which is forgotten. Data
        of unknown nodes never pays for the search: at the limit it would, per message."""
        if key in self.nodes or len(self.nodes) < self.config.max_nodes:
            return True
        if not evict:
            return False
        offline = next((k for k, n in self.nodes.items() if not n.online), None)
        if offline is None:
            return False
        del self.nodes[offline]
        return True

    def _learn(self, node: _Node, entity: str, p: Payload, birth: bool) -> bool:
        """Apply a payload's metrics to ``entity``; False if an alias was unknown. Only the
        configured metrics' datatypes and values are kept."""
        values = node.values.setdefault(entity, {})
        datatypes = node.datatypes.setdefault(entity, {})
        ok = True
        for m in p.metrics:
            metric: str | None
            if m.HasField("name"):
                metric = m.name if m.name in self._index else None
                if birth and m.HasField("alias"):
                    node.aliases[m.alias] = metric
            elif m.HasField("alias") and m.alias in node.aliases:
                metric = node.aliases[m.alias]
            else:
                ok = False
                continue
            if metric is None:
                continue  # not a channel
            if birth and m.datatype:
                datatypes[metric] = m.datatype
            if m.is_historical:
                continue
            v = metric_value(m, datatypes.get(metric, 0))
            if v is not None and math.isfinite(v):
                values[metric] = v
        return ok

    def _sample(
        self, node: _Node, entity: str, ts: float, seq: int, msg: Message, group: str, name: str
    ) -> None:
        values = node.values.get(entity, {})
        missing = [m for m in self.config.metrics if m not in values]
        if missing:
            self._reject(msg, "incomplete", f"{entity}: no value yet for {missing[:3]}")
            self._rebirth(group, name, node, msg)
            return
        o = self._out
        o["devices"].append(entity)
        o["ts"].append(ts)
        o["seq"].append(seq)
        o["rows"].append([values[m] for m in self.config.metrics])
