"""The config reference (docs/configuration.md), generated from the pydantic models.

    edge-agent schema --markdown > docs/configuration.md

A test fails when the checked-in file differs from this output.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from agent.builtins import BUILTINS
from agent.config import ComponentConfig, Config
from agent.registry import KINDS, Registry

HEADER = """\
# Configuration reference

Generated from the pydantic models by `edge-agent schema --markdown`; do not edit by hand
(`tests/unit/test_docs.py` fails when this file is out of date). Strings may use `${VAR}` and
`${VAR:-default}` from the environment; durations take `500ms`, `10s`, `5m`, `1h`, `7d` or
seconds. `edge-agent check FILE` validates a file; `edge-agent schema` prints the JSON Schema.
"""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside ``annotation`` (X, X | None, list[X], dict[str, X])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _type(annotation: Any) -> str:
    """A short, readable type name."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"map of {_type(args[1])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, ComponentConfig):
        return "component"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`" if value is not None else "none"


def _rows(model: type[BaseModel], prefix: str, rows: list[str], seen: set) -> None:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        doc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {doc} |")
        if name == "type" and issubclass(model, ComponentConfig):
            continue
        for sub in _models_in(field.annotation):
            if sub is ComponentConfig or sub in seen:
                continue
            origin = typing.get_origin(field.annotation)
            inner = (
                f"{key}[]."
                if origin is list
                else f"{key}.<name>."
                if origin is dict
                else (f"{key}.")
            )
            _rows(sub, inner, rows, seen | {sub})


def _table(model: type[BaseModel], prefix: str = "") -> str:
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    _rows(model, prefix, rows, {model})
    return "\n".join(rows) + "\n"


def config_markdown(registry: Registry | None = None) -> str:
    """The whole reference: the sections, then every built-in component's keys.

    Plugins are left out so the file does not depend on what is installed; `edge-agent
    components` lists them and `edge-agent schema` includes their keys.
    """
    reg = registry or Registry()
    parts = [HEADER, "\n## Sections\n\n", _table(Config)]
    titles = {"decoder": "Decoders", "handler": "Model handlers", "sink": "Sinks"}
    slots = {
        "decoder": "pipelines[].decoder",
        "handler": "pipelines[].handler",
        "sink": "pipelines[].sinks[]",
    }
    for kind in KINDS:
        parts.append(f"\n## {titles.get(kind, kind)} (`{slots.get(kind, kind)}`)\n")
        done: set = set()
        builtin = sorted(BUILTINS.get(kind, {}))
        for name in builtin:
            model = reg.get(kind, name).config_model
            if model in done:
                continue
            done.add(model)
            aliases = [n for n in builtin if reg.get(kind, n).config_model is model]
            parts.append(f"\n### `type: {' | '.join(aliases)}` ({reg.origin(kind, name)})\n\n")
            parts.append(_table(model))
    return "".join(parts)
