"""The web console in a real headless Chromium, against a running agent fed by a real broker
(and against `edge-agent demo`): devices appear, an injected anomaly opens an episode that
the overview, the device table, the device page (chart and events, with their cause) and the
events list show."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from agent.config import parse_config
from agent.runtime import Agent
from tests.support import browser
from tests.support.mqtt import ROOT, publish, w1_payloads
from tests.support.waiting import until

pytestmark = pytest.mark.mosquitto

DEVICES, SAMPLES, FAULTY = 20, 160, "dev0007"
WAIT = 30  # s: the longest any condition below may take on a loaded 2-core machine
URL = re.compile(r"^console: (http://127\.0\.0\.1:\d+/)", re.M)


def _config(port: int, prefix: str, model: Path, spool: Path) -> dict:
    return {
        "agent": {"id": "console-test"},
        "brokers": {"local": {"host": "127.0.0.1", "port": port}},
        "spool": {"path": str(spool)},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "pipelines": [
            {
                "name": "w1",
                "source": {"broker": "local", "topics": [f"{prefix}/+/telemetry"], "qos": 1},
                "decoder": {
                    "type": "json",
                    "device": "topic[1]",
                    "ts": "ts",
                    "seq": "seq",
                    "values": "v",
                    "channels": 8,
                },
                "window": {"size": 32, "hop": 8},
                "handler": {"type": "onnx_autoencoder", "model": str(model), "threshold": 1.5},
                "summary": {"every": "1s"},
                "sinks": [{"type": "mqtt", "broker": "local", "events": f"{prefix}-ev/{{device}}"}],
            }
        ],
    }


def _payloads() -> list[tuple[str, int, bytes, bool]]:
    """W1 telemetry without spikes; FAULTY's last 64 samples shifted by +10 on every channel,
    so its last windows stay over the threshold and its episode stays open."""
    out = []
    for device, seq, body, _ in w1_payloads(DEVICES, SAMPLES, spike_rate=0.0):
        if device == FAULTY and seq >= SAMPLES - 64:
            msg = orjson.loads(body)
            msg["v"] = (np.array(msg["v"]) + 10.0).round(4).tolist()
            body = orjson.dumps(msg)
        out.append((device, seq, body, device == FAULTY))
    return out


@pytest.fixture
def driver(tmp_path):
    browser.require()
    d = browser.chromium(tmp_path / "profile")
    yield d
    d.quit()


def _wait(driver, predicate, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(lambda d: predicate(d))
    except Exception as e:  # TimeoutException: say what was awaited and what the page had
        body = driver.find_element("tag name", "body").text[:1500]
        raise AssertionError(f"timed out waiting for {what}; page:\n{body}") from e


def _css(driver, selector: str):
    return driver.find_elements("css selector", selector)


def test_console_shows_devices_and_an_open_episode(broker, w1_models, tmp_path, driver):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    agent = Agent(parse_config(_config(broker.port, prefix, w1_models[1], tmp_path / "s.db"), "t"))
    agent.build()
    agent.start()
    try:
        assert until(lambda: all(s.conn.connected.is_set() for s in agent.sources), WAIT)
        threading.Event().wait(0.3)  # the SUBACK follows the CONNACK
        base = f"http://127.0.0.1:{agent.metrics.port}"
        publish(broker.port, prefix + "/{device}/telemetry", _payloads(), qos=1)
        assert until(lambda: agent.status()["w1"]["decoded"] == DEVICES * SAMPLES, WAIT)

        # Overview: the pipeline with its devices and one open episode; brokers up.
        driver.get(base + "/")
        card = '.pipeline[data-pipeline="w1"]'
        _wait(driver, lambda d: "1 open" in "".join(e.text for e in _css(d, card)), "1 open")
        assert f"{DEVICES} devices" in _css(driver, card)[0].text
        brokers = _css(driver, "#brokers")[0].text
        assert "up" in brokers and "down" not in brokers
        assert FAULTY in _css(driver, "#recent-events")[0].text

        # Device table: every device, the faulty one first (sorted by score / threshold)
        # and marked open; the filter narrows the table to it.
        driver.get(base + "/#/devices/w1")
        rows = "#devices tbody tr"
        _wait(driver, lambda d: len(_css(d, rows)) == DEVICES, f"{DEVICES} rows")
        first = _css(driver, rows)[0]
        assert first.get_attribute("data-device") == FAULTY
        assert "open" in first.get_attribute("class") and "open" in first.text
        assert len(_css(driver, "#devices tbody tr.open")) == 1
        field = _css(driver, "#filter")[0]
        field.send_keys("dev000")
        _wait(driver, lambda d: len(_css(d, rows)) == 10, "10 rows matching dev000")
        _css(driver, 'th[data-sort="device"]')[0].click()
        _wait(
            driver,
            lambda d: _css(d, rows)[0].get_attribute("data-device") == "dev0000",
            "sorted by device",
        )
        browser.save_screenshot(driver, tmp_path, "console-test-devices.png")

        # A tablet in portrait: the page fits its width (wide tables scroll inside their box).
        driver.set_window_size(768, 1024)
        driver.refresh()
        _wait(driver, lambda d: len(_css(d, rows)) == DEVICES, "rows on a tablet")
        width = driver.execute_script("return [document.documentElement.scrollWidth, innerWidth]")
        assert width[0] <= width[1], width
        driver.set_window_size(1280, 900)

        # Device page: state, a chart with sampled points, the opened event with its cause.
        driver.get(f"{base}/#/device/w1/{FAULTY}")
        _wait(
            driver,
            lambda d: _css(d, "#device-name") and FAULTY in _css(d, "#device-name")[0].text,
            "device page",
        )
        _wait(
            driver,
            lambda d: (
                _css(d, "#chart") and int(_css(d, "#chart")[0].get_attribute("data-points")) > 0
            ),
            "history points",
        )
        events = _css(driver, "#device-events")[0].text
        assert "opened" in events
        event = next(p for _, p in list(agent.console.events) if p.get("event") == "opened")
        assert event["device"] == FAULTY
        cause = event.get("cause")
        if cause:  # the W1 model names channels when its export has a cause output
            assert str(cause[0]["channel"]) in events
        browser.save_screenshot(driver, tmp_path, "console-test-device.png")

        # Events list: the opened event, linked to its device.
        driver.get(base + "/#/events")
        _wait(driver, lambda d: _css(d, '#events tr[data-event="opened"]'), "opened event")
        assert FAULTY in _css(driver, '#events tr[data-event="opened"]')[0].text
    finally:
        agent.stop()


def test_demo_prints_the_console_url_and_serves_it(tmp_path, driver):
    """`edge-agent demo` prints the console's URL and serves it while it runs; devices and,
    once a pump's faults begin, an event appear. The screenshots are the docs' pictures."""
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("w") as stdout, err.open("w") as stderr:  # files: a full pipe stalls it
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "demo",
                "--headless",
                "--duration",
                "120",
                "--rate",
                "80",
                "--devices",
                "6",
                "--data",
                str(ROOT / "datasets" / "skab" / "data"),
            ],
            stdout=stdout,
            stderr=stderr,
            cwd=tmp_path,
        )
    try:
        found = until(lambda: URL.search(out.read_text()) or proc.poll() is not None, WAIT)
        m = URL.search(out.read_text())
        assert found and m, f"no console URL; stderr: {err.read_text()[-2000:]}"
        url = m[1]
        driver.get(url + "#/devices")
        rows = "#devices tbody tr"
        _wait(driver, lambda d: len(_css(d, rows)) == 6, "6 demo pumps")
        _wait(driver, lambda d: not any("warming" in r.text for r in _css(d, rows)), "warm-up done")
        driver.get(url + "#/events")
        _wait(driver, lambda d: _css(d, "#events tbody tr"), "an event")
        device = _css(driver, "#events tbody tr td:nth-child(3)")[0].text
        driver.get(url + "#/devices")
        _wait(driver, lambda d: len(_css(d, rows)) == 6, "the table again")
        browser.save_screenshot(driver, tmp_path, "console-devices.png")
        driver.get(f"{url}#/device/pumps/{device}")
        _wait(
            driver,
            lambda d: (
                _css(d, "#chart") and int(_css(d, "#chart")[0].get_attribute("data-points")) > 5
            ),
            "a chart of several points",
        )
        browser.save_screenshot(driver, tmp_path, "console-device.png")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
