"""QoS 1 on a persistent session: a full intake pushes back; nothing is acknowledged unread."""

from __future__ import annotations

import uuid

import pytest

from agent.config import BrokerConfig, SourceConfig
from agent.transport.intake import Intake
from agent.transport.source import MqttSource
from tests.support.mqtt import client
from tests.support.waiting import until

pytestmark = pytest.mark.mosquitto


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_a_full_intake_holds_qos1_input_back_instead_of_acknowledging_it(
    broker, overflow, fast_path
):
    """An intake of 5 and 40 messages at once: whatever ``overflow`` says, every message
    reaches the worker's side and none is counted dropped (before, 35 were dropped and
    acknowledged, so the broker forgot them)."""
    topic = f"pb{uuid.uuid4().hex[:6]}/d/t"
    broker_cfg = BrokerConfig(port=broker.port, clean_start=False)
    source_cfg = SourceConfig(
        broker="local", topics=[topic], qos=1, queue=5, overflow=overflow, fast_path=fast_path
    )
    intake = Intake(5, overflow)
    source = MqttSource("local", broker_cfg, source_cfg, intake, f"pb-{uuid.uuid4().hex}")
    source.start()
    pub = client(broker.port, "pb")
    try:
        assert source.subscribed.wait(10)
        for i in range(40):
            pub.publish(topic, str(i).encode(), qos=1)
        got: list[bytes] = []

        def worker_side() -> bool:  # what the pipeline does: take, then acknowledge
            batch = intake.drain(2)
            got.extend(m.payload for m in batch)
            source.acknowledge(batch)
            return len(got) >= 40

        assert until(worker_side, 20), f"{len(got)} of 40 messages reached the worker"
        assert sorted(int(p) for p in got) == list(range(40))
        assert intake.dropped == 0
    finally:
        pub.loop_stop()
        pub.disconnect()
        source.stop()
