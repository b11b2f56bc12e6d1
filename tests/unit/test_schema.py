"""`edge-agent schema` accepts every shipped config as written (durations such as `2s`,
`${VAR}` in numeric keys) and rejects a config `check` rejects."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from agent.tools.schema import config_schema

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), ROOT / "docker" / "agent.yaml"])


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = config_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_against_the_schema(validator, path: Path) -> None:
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_schema_rejects_what_check_rejects(validator) -> None:
    config = yaml.safe_load((ROOT / "configs" / "w1.yaml").read_text())
    config["pipelines"][0]["window"]["hop"] = 0
    config["pipelines"][0]["summary"]["every"] = "soon"
    config["brokers"]["local"]["port"] = "${not a variable}"
    assert len(list(validator.iter_errors(config))) == 3
