"""Bad plugins stop start-up with an error naming the distribution and the entry point.

Each test installs a throwaway distribution (a dist-info with entry_points.txt) on
sys.path, exactly what pip leaves for a wheel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError, PluginError
from agent.registry import Registry


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site-packages dir on sys.path; ``install(dist, eps, modules)``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist: str, entry_points: str, modules: dict[str, str] | None = None) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(entry_points)
        for name, code in (modules or {}).items():
            (tmp_path / f"{name}.py").write_text(code)

    yield install
    for name in [m for m in sys.modules if m.startswith("bad_plugin")]:
        del sys.modules[name]


def test_import_failure_names_distribution_and_entry_point(site):
    site(
        "acme-broken",
        "[edge_agent.handlers]\nbroken = bad_plugin_a:Handler\n",
        {"bad_plugin_a": "import no_such_module_xyz\n"},
    )
    with pytest.raises(PluginError) as e:
        Registry().get("handler", "broken")
    msg = str(e.value)
    assert msg.startswith("acme-broken: entry point edge_agent.handlers:broken")
    assert "failed to import" in msg and "no_such_module_xyz" in msg


def test_duplicate_of_builtin_and_between_plugins(site):
    site("acme-dup", "[edge_agent.sinks]\nmqtt = bad_plugin_b:Sink\n")
    expected = r"acme-dup: entry point edge_agent.sinks:mqtt duplicates built-in sink 'mqtt'"
    with pytest.raises(PluginError, match=expected):
        Registry().names("sink")


def test_duplicate_between_two_plugins(site):
    site("acme-one", "[edge_agent.decoders]\ntwin = bad_plugin_c:One\n")
    site("acme-two", "[edge_agent.decoders]\ntwin = bad_plugin_d:Two\n")
    with pytest.raises(PluginError, match=r"edge_agent.decoders:twin is also registered by acme-"):
        Registry().names("decoder")


def test_invalid_config_model(site):
    site(
        "acme-nomodel",
        "[edge_agent.handlers]\nplain = bad_plugin_e:Handler\ntypeless = bad_plugin_e:Typeless\n",
        {
            "bad_plugin_e": (
                "from pydantic import BaseModel\n"
                "class Handler:\n    config_model = dict\n"
                "class M(BaseModel):\n    x: int = 1\n"
                "class Typeless:\n    config_model = M\n"
            )
        },
    )
    with pytest.raises(
        PluginError,
        match=r"^acme-nomodel: entry point edge_agent.handlers:plain"
        r": .* has no pydantic config_model",
    ):
        Registry().get("handler", "plain")
    with pytest.raises(PluginError, match="M has no 'type' field"):
        Registry().get("handler", "typeless")


def test_config_naming_a_broken_plugin_fails_at_load(site, tmp_path):
    """Start-up (config load) reports it with the YAML path."""
    site(
        "acme-broken2",
        "[edge_agent.handlers]\nbroken2 = bad_plugin_f:Handler\n",
        {"bad_plugin_f": "raise RuntimeError('boom at import')\n"},
    )
    root = Path(__file__).resolve().parents[2]
    text = (root / "configs" / "w1.yaml").read_text()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text.replace("type: onnx_autoencoder", "type: broken2"))
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    (line,) = e.value.errors
    assert line.startswith(
        "pipelines[0].handler.type: acme-broken2: entry point edge_agent.handlers:broken2"
    )
    assert "boom at import" in line


def test_components_shows_plugin_origin(capsys):
    """`edge-agent components` names the distribution; `schema` includes plugin models."""
    from agent.cli import main

    assert main(["components"]) == 0
    out = capsys.readouterr().out
    assert any(
        ln.split()[:3] == ["handler", "people_flow", "edge-stream-agent-people-flow"]
        for ln in out.splitlines()
    )
    assert any(
        ln.split()[:3] == ["decoder", "vibration_block", "edge-stream-agent-vibration"]
        for ln in out.splitlines()
    )
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert '"PeopleFlowConfig"' in out and '"BearingConfig"' in out


def test_component_of_another_kind_is_named():
    """A plugin decoder written as a handler: the error says what it is and where from."""
    with pytest.raises(PluginError) as e:
        Registry().get("handler", "vibration_block")
    assert str(e.value).endswith(
        "'vibration_block' is a decoder (edge-stream-agent-vibration 0.1.0), not a handler"
    )


def test_plugin_not_installed_names_the_plugin():
    """A shipped plugin's component while that plugin is not installed: how to get it."""
    reg = Registry()
    reg._eps = {kind: {} for kind in ("decoder", "handler", "sink")}  # nothing installed
    with pytest.raises(PluginError) as e:
        reg.get("decoder", "vibration_block")
    assert str(e.value) == (
        "unknown decoder 'vibration_block'; known: deepstream_analytics, deepstream_full, "
        "deepstream_minimal, detections_json, json, sparkplug_b; 'vibration_block' comes with "
        "the edge-stream-agent-vibration plugin, which is not installed (from the edge-agent "
        "repository: pip install ./plugins/vibration)"
    )


def test_plugin_table_matches_the_shipped_plugins():
    """The hint table lists exactly the entry points of plugins/*/pyproject.toml."""
    import tomllib

    from agent.builtins import PLUGIN_COMPONENTS
    from agent.registry import GROUPS

    root = Path(__file__).resolve().parents[2]
    found: dict[str, dict[str, tuple[str, str]]] = {kind: {} for kind in GROUPS}
    for toml in sorted(root.glob("plugins/*/pyproject.toml")):
        project = tomllib.loads(toml.read_text())["project"]
        folder = str(toml.parent.relative_to(root))
        for kind, group in GROUPS.items():
            for name in project.get("entry-points", {}).get(group, {}):
                found[kind][name] = (project["name"], folder)
    assert found == PLUGIN_COMPONENTS
