"""Where component classes come from: the built-in table and entry points.

Entry-point groups ``edge_agent.decoders``, ``edge_agent.handlers`` and ``edge_agent.sinks``
are read for names only; a plugin is imported when a config names it.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from agent.builtins import BUILTINS, PLUGIN_COMPONENTS
from agent.errors import PluginError

KINDS = ("decoder", "handler", "sink")
GROUPS = {kind: f"edge_agent.{kind}s" for kind in KINDS}


def _import(ref: str) -> type:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class Component(Protocol):
    """What :meth:`Registry.get` checks of every class: a pydantic ``config_model``; the
    component kinds' own Protocols are in :mod:`agent.protocols`."""

    config_model: ClassVar[type[BaseModel]]

    def __init__(self, *args: Any) -> None: ...


class Registry:
    """Resolves ``(kind, name)`` to a component class, importing it on first use."""

    def __init__(self, builtins: dict[str, dict[str, str]] | None = None) -> None:
        self._builtins = BUILTINS if builtins is None else builtins
        self._classes: dict[tuple[str, str], type[Component]] = {}
        self._eps: dict[str, dict[str, EntryPoint]] | None = None

    def _entry_points(self, kind: str) -> dict[str, EntryPoint]:
        if self._eps is None:
            self._eps = {}
            for k, group in GROUPS.items():
                found: dict[str, EntryPoint] = {}
                for ep in entry_points(group=group):
                    dist = ep.dist.name if ep.dist else "?"
                    if ep.name in self._builtins.get(k, {}):
                        raise PluginError(
                            f"{dist}: entry point {group}:{ep.name} duplicates built-in "
                            f"{k} {ep.name!r}"
                        )
                    if ep.name in found and found[ep.name].value != ep.value:
                        other = found[ep.name].dist
                        raise PluginError(
                            f"{dist}: entry point {group}:{ep.name} is also registered by "
                            f"{other.name if other else '?'}"
                        )
                    found[ep.name] = ep
                self._eps[k] = found
        return self._eps[kind]

    def names(self, kind: str) -> list[str]:
        """Every known name of ``kind``, built-in and plugin, sorted."""
        return sorted({*self._builtins.get(kind, {}), *self._entry_points(kind)})

    def origin(self, kind: str, name: str) -> str:
        """``built-in`` or the distribution that provides the component."""
        if name in self._builtins.get(kind, {}):
            return "built-in"
        ep = self._entry_points(kind).get(name)
        return f"{ep.dist.name} {ep.dist.version}" if ep and ep.dist else "?"

    def unknown(self, kind: str, name: str) -> str:
        """Why ``name`` is not a ``kind``, with what the user probably meant."""
        known = self.names(kind)
        text = f"unknown {kind} {name!r}; known: {', '.join(known)}"
        for other in KINDS:
            if other != kind and name in self.names(other):
                return f"{text}; {name!r} is a {other} ({self.origin(other, name)}), not a {kind}"
        for other in KINDS:
            if name in PLUGIN_COMPONENTS.get(other, {}):
                dist, folder = PLUGIN_COMPONENTS[other][name]
                what = "" if other == kind else f" (a {other}, not a {kind})"
                return (
                    f"{text}; {name!r}{what} comes with the {dist} plugin, which is not "
                    f"installed (from the edge-agent repository: pip install ./{folder})"
                )
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        return f"{text}; did you mean {close[0]!r}?" if close else text

    def get(self, kind: str, name: str) -> type[Component]:
        """The component class for ``name``; raises PluginError naming what went wrong."""
        key = (kind, name)
        if key in self._classes:
            return self._classes[key]
        if name in self._builtins.get(kind, {}):
            cls = _import(self._builtins[kind][name])
            where = f"built-in {kind} {name!r}"
        else:
            ep = self._entry_points(kind).get(name)
            if ep is None:
                raise PluginError(self.unknown(kind, name))
            where = f"{ep.dist.name if ep.dist else '?'}: entry point {GROUPS[kind]}:{name}"
            try:
                cls = ep.load()
            except Exception as e:
                raise PluginError(f"{where} ({ep.value}) failed to import: {e!r}") from e
        model = getattr(cls, "config_model", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise PluginError(f"{where}: {cls!r} has no pydantic config_model")
        if "type" not in model.model_fields:
            raise PluginError(f"{where}: {model.__name__} has no 'type' field")
        self._classes[key] = cls
        return cls
