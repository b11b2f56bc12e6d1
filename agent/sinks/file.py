"""File (JSON lines) and stdout sinks."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

from pydantic import Field

from agent.config import ComponentConfig
from agent.protocols import SinkContext
from agent.records import Record, dumps


class FileSinkConfig(ComponentConfig):
    type: Literal["file"]
    path: Path = Field(description="JSON-lines file, appended to")
    fsync: bool = Field(True, description="fsync after each write (nothing lost on power cut)")


class StdoutSinkConfig(ComponentConfig):
    type: Literal["stdout"]


def _line(r: Record) -> bytes:
    return dumps({"kind": r.kind, "pipeline": r.pipeline, "id": r.id, **r.payload}) + b"\n"


class FileSink:
    """Appends one JSON object per record to a file."""

    config_model = FileSinkConfig

    def __init__(self, config: FileSinkConfig, context: SinkContext | None = None) -> None:
        self.config = config
        self._f: IO[bytes] | None = None

    def start(self) -> None:
        self.config.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.config.path, "ab")  # noqa: SIM115

    def write_many(self, records: Sequence[Record]) -> None:
        assert self._f is not None
        self._f.write(b"".join(_line(r) for r in records))
        self._f.flush()
        if self.config.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f:
            self._f.close()


class StdoutSink:
    """Prints one JSON object per record on stdout."""

    config_model = StdoutSinkConfig

    def __init__(self, config: StdoutSinkConfig, context: SinkContext | None = None) -> None:
        self.config = config

    def start(self) -> None:
        pass

    def write_many(self, records: Sequence[Record]) -> None:
        sys.stdout.buffer.write(b"".join(_line(r) for r in records))
        sys.stdout.flush()

    def close(self) -> None:
        pass
