"""structlog set up once: readable lines on a terminal, JSON lines (orjson) otherwise."""

from __future__ import annotations

import logging
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING

import orjson


def _import_structlog_without_rich() -> ModuleType:
    """structlog imports rich (3.5 MB resident, with pygments) only to pretty-print
    tracebacks on a console; the agent logs JSON lines. rich stays importable afterwards
    (the demo's live view uses it)."""
    before = sys.modules.get("rich")
    sys.modules["rich"] = None  # type: ignore[assignment]  # import rich -> ImportError
    try:
        import structlog
    finally:
        if before is None:
            del sys.modules["rich"]
        else:
            sys.modules["rich"] = before
    return structlog


if TYPE_CHECKING:
    import structlog
else:
    structlog = _import_structlog_without_rich()

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def console_wanted(fmt: str = "auto") -> bool:
    """Whether logs are written for a person: ``console``, or ``auto`` on a terminal (a pipe,
    journald or a log shipper gets JSON lines)."""
    if fmt == "auto":
        return sys.stderr.isatty()
    return fmt == "console"


def setup(level: str = "info", pretty: bool | None = None) -> None:
    """Configure structlog for the process; logs go to stderr.

    ``pretty`` None decides by the terminal; colour codes only ever go to a terminal.
    """
    if pretty is None:
        pretty = console_wanted()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if pretty:
        colors = sys.stderr.isatty()
        processors: list[structlog.typing.Processor]
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=colors)]
        factory: structlog.PrintLoggerFactory | structlog.BytesLoggerFactory
        factory = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get(**bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger bound with ``bound`` (pipeline=, component=...)."""
    return structlog.get_logger().bind(**bound)


class RateLimit:
    """Allows one log line per key per ``every`` seconds; counts what it held back."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.every:
            self._last[key] = now
            return True
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        return False
