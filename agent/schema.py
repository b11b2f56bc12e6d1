"""The JSON Schema of the whole config, components included, generated from the registry."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, create_model

from .config import Config, PipelineConfig
from .registry import KINDS, Registry


def _union(models: list[type]) -> Any:
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007


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
        sinks=(list[_union(models["sink"])], Field(min_length=1)),
    )
    config = create_model(
        "EdgeAgentConfig",
        __base__=Config,
        pipelines=(list[pipeline], Field(min_length=1)),
    )
    schema = config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edge-agent configuration"
    return schema
