"""docs/configuration.md is the output of `edge-agent schema --markdown`."""

from __future__ import annotations

from pathlib import Path

from agent.config import Config, PipelineConfig
from agent.tools.docs import config_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_up_to_date():
    """Regenerate with: edge-agent schema --markdown > docs/configuration.md"""
    assert (ROOT / "docs/configuration.md").read_text() == config_markdown()


def test_reference_lists_every_key():
    """Every field of every section appears with its path."""
    text = config_markdown()
    for name in Config.model_fields:
        assert f"| `{name}` |" in text
    for name in PipelineConfig.model_fields:
        assert f"| `pipelines[].{name}` |" in text
