"""Optional abilities are declared Protocols, asked with isinstance: no string probe comes back
in agent/, and a component with or without each ability is treated as its Protocol says."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import orjson
import pytest

from agent.config import BrokerConfig, parse_config
from agent.errors import ModelError
from agent.outbox.forwarding import Forwarder
from agent.outbox.spool import Spool
from agent.protocols import output_kind
from agent.records import EVENT, Message
from agent.registry import Registry
from agent.sinks.context import Upstream
from agent.sinks.file import FileSink, FileSinkConfig
from agent.sinks.mqtt import MqttSink, MqttSinkConfig
from agent.stages.processor import Processor
from agent.transport.mqtt import Connection
from tests.support.configs import sample_pipeline

AGENT = Path(__file__).resolve().parents[2] / "agent"

# getattr/hasattr with a literal name that are not component abilities, with the reason.
NOT_ABILITIES = {
    ("registry.py", "config_model"): "the one mandatory declaration, checked with a clear error",
    ("testing/conformance.py", "config_model"): "same, in the kit",
    ("runtime/health.py", "reason"): "URLError's reason (not every OSError has one)",
    ("config.py", "problem_mark"): "a YAML error's position, when PyYAML gives one",
    ("config.py", "problem"): "a YAML error's text, when PyYAML gives one",
    ("outbox/spool.py", "SQLITE_CORRUPT"): "sqlite3 constant, absent before Python 3.11",
    ("outbox/spool.py", "SQLITE_NOTADB"): "sqlite3 constant, absent before Python 3.11",
    ("outbox/spool.py", "sqlite_errorcode"): "sqlite3 error code, Python 3.11+",
    ("transport/fastpath.py", "_create_socket"): "paho's private hook the fast path replaces",
    ("transport/mqtt.py", "reason"): "an SSL error's reason",
    ("transport/mqtt.py", "setsockopt"): "paho may hand a wrapped socket",
    ("tools/docs.py", "__name__"): "a type annotation's name",
    ("fleet/cli.py", "canary"): "argparse namespace of subcommands without --canary",
}


def _literal_probes() -> set[tuple[str, str]]:
    found = set()
    for path in AGENT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                found.add((path.relative_to(AGENT).as_posix(), node.args[1].value))
    return found


def test_no_ability_is_probed_by_name():
    """Every getattr/hasattr with a literal name in agent/ is one of the listed non-abilities:
    a component ability is a Protocol in agent/protocols.py, asked with isinstance."""
    probes = _literal_probes()
    assert ("registry.py", "config_model") in probes  # the scan sees the calls it must see
    unexpected = sorted(probes - NOT_ABILITIES.keys())
    assert not unexpected, f"declare these as Protocols in agent/protocols.py: {unexpected}"


class Bare:
    """A windowed handler with no optional ability: score = newest value of channel 0."""

    threshold = 1.0

    def load(self, window_size: int, channels: int) -> None:
        pass

    def infer(self, windows: np.ndarray) -> np.ndarray:
        return windows[:, -1, 0].astype(np.float64)


class Able(Bare):
    """The same scores, with Binds, Details and Describes."""

    output = "score"

    def __init__(self) -> None:
        self.bound: object = None
        self.last_details: dict[str, np.ndarray] = {}

    def bind(self, decoder) -> None:
        self.bound = decoder

    def infer(self, windows: np.ndarray) -> np.ndarray:
        scores = super().infer(windows)
        self.last_details = {"twice": 2 * scores}
        return scores

    def describe(self, hits: np.ndarray) -> list[dict]:
        return [{"twice": float(self.last_details["twice"][i])} for i in hits.tolist()]


class ClaimsClasses(Bare):
    """Declares the classes kind without implementing ClassOutput."""

    output = "classes"


class StreamWithoutSave:
    """Declares the events kind; lacks save(), so it is not a StreamHandler in full."""

    output = "events"
    stateful = True

    def load(self, window_size: int, channels: int) -> None:
        pass

    def update(self, batch) -> list[dict]:
        return []

    def flush(self) -> list[dict]:
        return []


def _processor(handler) -> Processor:
    pipe = sample_pipeline(rule={"events": "windows"})
    cfg = parse_config({"brokers": {"local": {}}, "pipelines": [pipe]}, "t").pipelines[0]
    proc = Processor(cfg, Registry().get("decoder", "json")(cfg.decoder), handler)
    proc.load()
    return proc


MESSAGES = [Message("t/a", orjson.dumps({"ts": 1e9 + i, "v": [v]})) for i, v in enumerate([0, 3])]


def test_handler_abilities_are_used_when_declared_and_skipped_when_not():
    able, bare = Able(), Bare()
    with_abilities, without = _processor(able), _processor(bare)
    assert able.bound is with_abilities.decoder  # bind ran before load
    (event,), scored = with_abilities.process(MESSAGES)
    assert event.kind == EVENT and event.payload["twice"] == 6.0 and event.payload["score"] == 3
    assert scored is not None and scored.details["twice"].tolist() == [0.0, 6.0]
    (event,), scored = without.process(MESSAGES)
    assert "twice" not in event.payload and event.payload["score"] == 3
    assert scored is not None and scored.details == {}


def test_output_kind_is_the_declared_one_only_when_implemented():
    assert output_kind(Bare()) == "score"  # no declaration: the score kind
    assert output_kind(Able()) == "score"
    assert output_kind(ClaimsClasses()) == "score"  # a claim without the Protocol
    assert _processor(ClaimsClasses()).decision is None


def test_forwarder_lanes_follow_the_sink_abilities(tmp_path):
    """A Concurrent + Pipelined sink (MQTT) gets two lanes and a pipelined event lane; a sink
    without those abilities (file) gets one lane."""
    conn = Connection("up", BrokerConfig(), "t-lanes")
    context = Upstream("agent-1", {"up": BrokerConfig()}, lambda name: conn)
    spool = Spool(tmp_path / "spool.db")
    try:
        mqtt = Forwarder(
            "p.0", MqttSink(MqttSinkConfig(type="mqtt", broker="up"), context), spool, 10, 0
        )
        file = Forwarder(
            "p.1", FileSink(FileSinkConfig(type="file", path=tmp_path / "out.jsonl")), spool, 10, 0
        )
        assert len(mqtt._threads) == 2 and mqtt.live is not None
        assert len(file._threads) == 1 and file.live is None
    finally:
        spool.close()


def test_a_claim_of_the_events_kind_without_the_protocol_is_refused():
    """A stream handler that cannot undo a failed batch would count its good messages twice
    when the batch is processed again in halves: refused when the pipeline is built."""
    with pytest.raises(ModelError, match=r"StreamWithoutSave declares output 'events'.*save"):
        _processor(StreamWithoutSave())
