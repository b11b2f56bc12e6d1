"""The context the runtime hands its sinks: this agent's id and its upstream connections."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.config import BrokerConfig
from agent.transport.mqtt import Connection


@dataclass(frozen=True)
class Upstream:
    """An :class:`agent.protocols.SinkContext`: ``connection`` is the runtime's shared
    connection to a named broker (the Agent's), ``brokers`` the configured brokers."""

    agent_id: str
    brokers: Mapping[str, BrokerConfig]
    shared: Callable[[str], Connection]

    def connection(self, broker: str) -> Connection:
        return self.shared(broker)

    def broker(self, name: str) -> BrokerConfig:
        return self.brokers[name]
