"""Shared fixtures: a real mosquitto per session, W1 models, MQTT helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.testing.mosquitto import Mosquitto
from agent.tools.training import w1

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """A test on the session's ``broker`` is a ``mosquitto`` test; without the binary those
    are skipped, saying how to get it."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mosquitto)
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        return
    skip = pytest.mark.skip(
        reason="needs the mosquitto broker binary: apt-get install mosquitto (or brew install "
        "mosquitto), on PATH or at /usr/sbin/mosquitto"
    )
    for item in items:
        if "mosquitto" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real mosquitto on a free loopback port for the whole session."""
    with Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="session")
def w1_models(tmp_path_factory) -> tuple[Path, Path]:
    """The W1 fp32 and int8 models, built from the spec."""
    return w1.build(tmp_path_factory.mktemp("w1models"))
