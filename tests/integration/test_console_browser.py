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
from agent.runtime.agent import Agent
from tests.support import browser
from tests.support.configs import agent_config, mqtt_sink, w1_pipeline
from tests.support.mqtt import ROOT, publish, w1_payloads
from tests.support.waiting import until

pytestmark = pytest.mark.mosquitto

DEVICES, SAMPLES, FAULTY = 20, 160, "dev0007"
WAIT = 30  # s: the longest any condition below may take on a loaded 2-core machine
URL = re.compile(r"^console: (http://127\.0\.0\.1:\d+/)", re.M)


def _config(port: int, prefix: str, model: Path, spool: Path) -> dict:
    pipe = w1_pipeline(
        f"{prefix}/+/telemetry", model, sinks=[mqtt_sink(events=f"{prefix}-ev/{{device}}")]
    )
    metrics = {"host": "127.0.0.1", "port": 0}
    return agent_config(port, spool, pipe, agent_id="console-test", metrics=metrics)


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
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, WAIT, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return wait.until(lambda d: predicate(d))
    except Exception as e:  # TimeoutException: say what was awaited and what the page had
        body = driver.execute_script("return document.body.innerText")[:1500]
        raise AssertionError(f"timed out waiting for {what}; page:\n{body}") from e


# The page redraws its view every 2 s, so an element found now may be gone a moment later:
# reads take the text or an attribute of every match in one script (atomic with respect to
# the page's own scripts), and actions are retried on a stale element.
READ = """return Array.from(document.querySelectorAll(arguments[0]),
    e => arguments[1] === null ? e.innerText : e.getAttribute(arguments[1]));"""


def _read(driver, selector: str, attribute: str | None = None) -> list[str]:
    """The text (or ``attribute``) of every element matching ``selector``."""
    return driver.execute_script(READ, selector, attribute)


def _act(driver, selector: str, action) -> None:
    """``action(element)`` on the first match, again on a fresh one if it went stale."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(10):
        try:
            return action(driver.find_element("css selector", selector))
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector} kept going stale")


def _points(driver) -> int:
    """Points in the device page's chart (0 while another view is still shown)."""
    return int((_read(driver, "#chart", "data-points") or ["0"])[0] or 0)


def _type(element, text: str) -> None:
    element.clear()
    element.send_keys(text)


def test_console_shows_devices_and_an_open_episode(broker, w1_models, tmp_path, driver):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    agent = Agent(parse_config(_config(broker.port, prefix, w1_models[1], tmp_path / "s.db"), "t"))
    agent.build()
    agent.start()
    try:
        sources = [u.source for u in agent.units.values()]
        assert until(lambda: all(s.conn.connected.is_set() for s in sources), WAIT)
        threading.Event().wait(0.3)  # the SUBACK follows the CONNACK
        base = f"http://127.0.0.1:{agent.metrics.port}"
        publish(broker.port, prefix + "/{device}/telemetry", _payloads(), qos=1)
        assert until(lambda: agent.status()["w1"]["decoded"] == DEVICES * SAMPLES, WAIT)

        # Overview: the pipeline with its devices and one open episode; brokers up.
        driver.get(base + "/")
        card = '.pipeline[data-pipeline="w1"]'
        _wait(driver, lambda d: "1 open" in "".join(_read(d, card)), "1 open")
        assert f"{DEVICES} devices" in _read(driver, card)[0]
        (brokers,) = _read(driver, "#brokers")
        assert "up" in brokers and "down" not in brokers
        assert FAULTY in _read(driver, "#recent-events")[0]

        # Device table: every device, the one with the open episode first (the default
        # order), marked open; the filter narrows the table, a header click sorts it.
        driver.get(base + "/#/devices/w1")
        rows = "#devices tbody tr"
        _wait(driver, lambda d: len(_read(d, rows)) == DEVICES, f"{DEVICES} rows")
        assert _read(driver, rows, "data-device")[0] == FAULTY
        assert _read(driver, "#devices tbody tr.open", "data-device") == [FAULTY]
        assert "open" in _read(driver, rows)[0]
        _act(driver, "#filter", lambda e: _type(e, "dev000"))
        _wait(driver, lambda d: len(_read(d, rows)) == 10, "10 rows matching dev000")
        _act(driver, 'th[data-sort="device"]', lambda e: e.click())
        _wait(driver, lambda d: _read(d, rows, "data-device")[:2] == ["dev0000", "dev0001"], "sort")
        browser.save_screenshot(driver, tmp_path, "console-test-devices.png")

        # A tablet in portrait: the page fits its width (wide tables scroll inside their box).
        driver.set_window_size(768, 1024)
        driver.refresh()
        _wait(driver, lambda d: len(_read(d, rows)) == DEVICES, "rows on a tablet")
        width = driver.execute_script("return [document.documentElement.scrollWidth, innerWidth]")
        assert width[0] <= width[1], width
        driver.set_window_size(1280, 900)

        # Device page: state, a chart with sampled points, the opened event with its cause.
        driver.get(f"{base}/#/device/w1/{FAULTY}")
        _wait(driver, lambda d: FAULTY in "".join(_read(d, "#device-name")), "device page")
        _wait(driver, lambda d: _points(d) > 0, "history")
        (events,) = _read(driver, "#device-events")
        assert "opened" in events
        event = next(p for _, p in list(agent.console.events) if p.get("event") == "opened")
        assert event["device"] == FAULTY
        cause = event.get("cause")
        if cause:  # the W1 model names channels when its export has a cause output
            assert str(cause[0]["channel"]) in events
        browser.save_screenshot(driver, tmp_path, "console-test-device.png")

        # Events list: the opened event, linked to its device.
        driver.get(base + "/#/events")
        opened = '#events tr[data-event="opened"]'
        _wait(driver, lambda d: _read(d, opened), "opened event")
        assert FAULTY in _read(driver, opened)[0]
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
        _wait(driver, lambda d: len(_read(d, rows)) == 6, "6 demo pumps")
        _wait(driver, lambda d: not any("warming" in r for r in _read(d, rows)), "warm-up done")
        driver.get(url + "#/events")
        links = "#events tbody tr td:nth-child(3) a"  # a flood event names no device
        _wait(driver, lambda d: _read(d, links), "a device's event")
        device = _read(driver, links)[0]
        driver.get(url + "#/devices")
        _wait(driver, lambda d: len(_read(d, rows)) == 6, "the table again")
        browser.save_screenshot(driver, tmp_path, "console-devices.png")
        driver.get(f"{url}#/device/pumps/{device}")
        _wait(driver, lambda d: _points(d) > 5, "a chart")
        browser.save_screenshot(driver, tmp_path, "console-device.png")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
