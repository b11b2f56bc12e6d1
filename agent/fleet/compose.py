"""A bundle carries pipelines; the gateway's own file keeps the rest.

``agent``, ``brokers``, ``spool``, ``metrics`` and ``fleet`` never come from the network:
they hold the gateway's identity, addresses, credentials (from its environment) and the
trusted keys, and all but ``fleet`` apply only at a restart anyway. A model in a bundle is
referenced from the pipelines as ``fleet:NAME`` and resolved to its staged file here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.config import Config, load_config, parse_config
from agent.errors import ConfigError
from agent.registry import Registry

REF = "fleet:"


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"not valid YAML ({e})"]) from None


def pipelines_of(text: str, source: str) -> list:
    """The pipelines of a bundle's config text; anything else in it is refused."""
    data = _yaml(text, source)
    if not isinstance(data, dict) or "pipelines" not in data:
        raise ConfigError(source, ["(top level): expected a mapping with `pipelines`"])
    extra = sorted(set(data) - {"pipelines"})
    if extra:
        raise ConfigError(
            source,
            [f"{k}: comes from the gateway's local config only, not from a bundle" for k in extra],
        )
    if not isinstance(data["pipelines"], list):
        raise ConfigError(source, ["pipelines: expected a list"])
    return data["pipelines"]


def _resolve(node: Any, models: dict[str, Path], path: str, errors: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _resolve(v, models, f"{path}.{k}", errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, models, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    if isinstance(node, str) and node.startswith(REF):
        name = node.removeprefix(REF)
        if name not in models:
            errors.append(f"{path}: model {name!r} is not in the bundle ({sorted(models)})")
            return node
        return str(models[name])
    return node


def compose(
    local_path: str | Path,
    text: str,
    models: dict[str, Path],
    source: str,
    registry: Registry | None = None,
) -> Config:
    """The local config with the bundle's pipelines, validated like ``edge-agent check``."""
    try:
        local = _yaml(Path(local_path).read_text(), str(local_path))
    except OSError as e:
        raise ConfigError(str(local_path), [f"cannot read: {e.strerror}"]) from None
    if not isinstance(local, dict):
        raise ConfigError(str(local_path), ["(top level): expected a mapping of sections"])
    errors: list[str] = []
    pipelines = _resolve(pipelines_of(text, source), models, "pipelines", errors)
    if errors:
        raise ConfigError(source, errors)
    return parse_config({**local, "pipelines": pipelines}, source, registry)


def extract(config: str | Path, model_files: list[Path]) -> tuple[str, dict[str, bytes]]:
    """The operator's side: a config `check` accepts -> (pipelines YAML, models by name).

    Every string in the pipelines naming one of ``model_files`` (as written, or the same
    file) becomes ``fleet:<file name>``; a model file the pipelines never name is an error.
    """
    load_config(config)  # the same checks as `edge-agent check`, with the local paths
    raw = yaml.safe_load(Path(config).read_text())
    by_path = {Path(m).resolve(): Path(m).name for m in model_files}
    if len(set(by_path.values())) != len(by_path):
        raise ValueError("two model files share a file name; rename one")
    used: set[str] = set()

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        if isinstance(node, str) and "${" not in node:
            name = by_path.get(Path(node).resolve())
            if name:
                used.add(name)
                return REF + name
        return node

    pipelines = swap(raw["pipelines"])
    unused = sorted(set(by_path.values()) - used)
    if unused:
        raise ValueError(f"{config}: no pipeline names the model file(s) {unused}")
    models = {name: p.read_bytes() for p, name in by_path.items()}
    return yaml.safe_dump({"pipelines": pipelines}, sort_keys=False), models
