"""The JSON Schema of the whole config, components included, generated from the registry."""

from __future__ import annotations

from types import GenericAlias
from typing import Annotated, Any, Union

from pydantic import Field, create_model

from agent.config import _ENV, Config, PipelineConfig
from agent.registry import KINDS, Registry

# A value written as ${VAR} or ${VAR:-default} is a string in the YAML file, whatever the key
VARIABLE = {"type": "string", "pattern": "^" + _ENV.pattern + "$"}


def _union(models: list[type]) -> Any:
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007


def _list_of(item: Any) -> Any:
    """``list[item]`` for an item type built at run time (no static type to check)."""
    return GenericAlias(list, (item,))


def config_schema(registry: Registry | None = None) -> dict:
    """JSON Schema for configs, with every built-in and installed plugin component."""
    reg = registry or Registry()
    models = {
        kind: list({reg.get(kind, n).config_model: None for n in reg.names(kind)}) for kind in KINDS
    }
    pipeline = create_model(
        "Pipeline",
        __base__=PipelineConfig,
        decoder=(_union(models["decoder"]), ...),
        handler=(_union(models["handler"]), ...),
        sinks=(_list_of(_union(models["sink"])), Field(min_length=1)),
    )
    config = create_model(
        "EdgeAgentConfig",
        __base__=Config,
        pipelines=(_list_of(pipeline), Field(min_length=1)),
    )
    schema = _allow_variables(config.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edge-agent configuration"
    return schema


def _allow_variables(node: Any) -> Any:
    """Let every number, boolean or constrained string also be written as ``${VAR}``
    (substituted from the environment before validation), so an editor accepts
    ``port: ${MQTT_PORT:-1883}``."""
    if isinstance(node, list):
        return [_allow_variables(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _allow_variables(v) for k, v in node.items()}
    kind = out.get("type")
    constrained = kind == "string" and any(k in out for k in ("pattern", "enum", "const"))
    if kind in ("number", "integer", "boolean") or constrained:
        keep = {k: out.pop(k) for k in ("title", "description", "default") if k in out}
        return {"anyOf": [out, VARIABLE], **keep}
    return out
