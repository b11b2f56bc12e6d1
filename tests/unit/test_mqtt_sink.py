"""The MQTT sink's topics."""

from __future__ import annotations

from agent.config import BrokerConfig
from agent.records import EVENT, Record
from agent.sinks.mqtt import MqttSink, MqttSinkConfig
from agent.transport.mqtt import Connection


def test_mqtt_sink_topic_keeps_a_device_id_to_one_level_without_wildcards():
    """A device id from a payload field may hold '+', '#' or '/': paho would refuse such a
    topic with ValueError on every retry, so the sink writes them as '_' in the topic."""
    conn = Connection("up", BrokerConfig(), "t-topic")
    context = type("Context", (), {"connection": lambda self, name: conn})()
    sink = MqttSink(MqttSinkConfig(type="mqtt", broker="up", events="ev/{device}"), context)
    r = Record(EVENT, "p", "line+1/#a\x00", {"device": "line+1/#a\x00"}, "e-1")
    assert sink.topic(r) == "ev/line_1__a_"
    conn.client.publish(sink.topic(r), b"{}", qos=1)  # no ValueError (not connected: queued)
