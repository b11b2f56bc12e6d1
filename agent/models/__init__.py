"""Models shipped with the agent, described by ``manifest.json`` and named ``builtin:NAME``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PREFIX = "builtin:"


class UnknownModelError(KeyError):
    """A ``builtin:`` name that is not in the manifest; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


@cache
def manifest() -> dict[str, dict[str, Any]]:
    """Manifest entries by model name (file, sha256, input/output spec, metrics, ...)."""
    return json.loads((HERE / "manifest.json").read_text())["models"]


def resolve(name: str) -> Path:
    """Path of a shipped model from ``NAME`` or ``builtin:NAME``."""
    key = name.removeprefix(PREFIX)
    entries = manifest()
    if key not in entries:
        known = ", ".join(PREFIX + n for n in entries)
        raise UnknownModelError(f"unknown built-in model {name!r}; known: {known}")
    return HERE / entries[key]["file"]
