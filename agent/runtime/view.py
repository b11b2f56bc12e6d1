"""What the metrics server, the console and the fleet manager read of a running agent.

Declared here, below the Agent, so that those readers need not import the Agent that
builds them (no import cycle, not even a type-only one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agent.config import Config
from agent.outbox.spool import Spool
from agent.runtime.unit import RunningPipeline
from agent.transport.mqtt import Connection


class ConfigSource(Protocol):
    """What a reload asks the fleet manager (:class:`agent.fleet.manager.FleetManager`)."""

    def load(self, path: str | Path) -> Config:
        """The config a reload applies: ``path``, with the applied fleet pipelines if any."""
        ...


class RunningAgent(Protocol):
    """The read side of :class:`agent.runtime.agent.Agent`."""

    config: Config
    boot: str
    started: bool
    spool: Spool | None
    units: dict[str, RunningPipeline]

    def status(self) -> dict[str, dict]:
        """Figures of every pipeline, by name."""
        ...

    def failed(self) -> list[str]:
        """Pipelines whose worker ended on an error."""
        ...

    def connections(self) -> list[tuple[str, str, Connection]]:
        """(broker, role, connection) of every MQTT connection."""
        ...

    def connection_states(self) -> list[tuple[str, str, bool]]:
        """(broker, role, connected) of every MQTT connection."""
        ...
