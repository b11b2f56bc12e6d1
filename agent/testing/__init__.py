"""Test support for the agent and for plugin authors: a real mosquitto, conformance checks."""

from agent.testing.conformance import (
    check_config_model,
    check_decoder,
    check_handler,
    check_sink,
    check_sink_unavailable,
    check_stream_handler,
)

__all__ = [
    "check_config_model",
    "check_decoder",
    "check_handler",
    "check_sink",
    "check_sink_unavailable",
    "check_stream_handler",
]
