"""What the web console costs: W1 at 1,000 msg/s over 1,000 devices, three ways in turns.

``off``: configs/w1.yaml as it is (no metrics section, no console). ``served``: the same
with ``metrics:`` on loopback, so the console keeps its history ring and serves, but nobody
looks. ``watched``: as ``served`` with the console open in a headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by Selenium) on its device table, which polls
``/api/state`` every 2 s. Each trial is a W1 trial (:func:`bench.w1.run_trial`: same
collector, same checks); the figures are the agent's CPU seconds per 1,000 samples and its
event latency, the browser's CPU, and the size of ``/api/state`` at 1,000 devices, as the
device table asks for it, raw and gzip-compressed.

    python -m bench.console --rounds 2 --duration 60 --json-out out/console.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .broker import mosquitto
from .proc import cpu_seconds, print_result
from .w1 import AGENT_CONFIG, Processor, Settings, build_models, machine, run_trial

AGENT = Processor("agent-int8-q0", "agent", 0, "int8")
VARIANTS = ("off", "served", "watched")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_with_metrics(workdir: Path, port: int) -> Path:
    cfg = yaml.safe_load(AGENT_CONFIG.read_text())
    cfg["metrics"] = {"host": "127.0.0.1", "port": port}
    path = workdir / "w1-console.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class PayloadProbe(threading.Thread):
    """Fetches /api/state as the device table does, every few seconds; keeps the last sizes."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.last: dict[str, Any] = {}

    def run(self) -> None:
        while not self.stop.wait(5):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    body = r.read()
            except OSError:
                continue  # the agent is not up yet, or already stopped
            doc = json.loads(body)
            devices = sum(len(p.get("table", {}).get("device", [])) for p in doc["pipelines"])
            self.last = {
                "devices": devices,
                "bytes": len(body),
                "gzip_bytes": len(gzip.compress(body, 1)),
            }


def _browser(profile: Path, url: str, port: int):
    """Headless Chromium that opens ``url`` as soon as the agent listens on ``port``."""
    from agent.testing import browser

    if (why := browser.missing()) is not None:
        raise SystemExit(f"bench.console needs a browser: {why}")
    driver = browser.chromium(profile)

    def open_when_up() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                time.sleep(0.2)
                continue
            driver.get(url)
            return

    threading.Thread(target=open_when_up, daemon=True).start()
    return driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per trial")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--loadgen-procs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)

    trials: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    payload: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="console-bench-") as tmp,
        mosquitto(Path(tmp)) as broker,
    ):
        work = Path(tmp)
        port = _free_port()
        base = Settings(
            broker.port,
            work,
            build_models(work),
            devices=args.devices,
            duration=args.duration,
            loadgen_procs=args.loadgen_procs,
        )
        served = dataclasses.replace(base, agent_config=_config_with_metrics(work, port))
        url = f"http://127.0.0.1:{port}/"
        for r in range(args.rounds):
            for variant in VARIANTS:
                settings = base if variant == "off" else served
                driver = probe = None
                if variant == "watched":  # polls (and fails) until the agent is up
                    driver = _browser(work / f"profile-{r}", url + "#/devices", port)
                    probe = PayloadProbe(url + "api/state?events=0")
                    probe.start()
                    browser_cpu0 = cpu_seconds(driver.service.process.pid)
                try:
                    t = run_trial(settings, AGENT, args.rate, args.duration)
                    row = {
                        "round": r,
                        "held": t.held,
                        "why": t.why,
                        "rate": t.rate,
                        "cpu_s_per_1k": t.cpu_s_per_1k,
                        "p50_ms": t.p50_ms,
                        "p99_ms": t.p99_ms,
                        "rss_mb": t.rss_mb,
                        "steal_pct": t.steal_pct,
                    }
                    if driver is not None:
                        used = cpu_seconds(driver.service.process.pid) - browser_cpu0
                        row["browser_cpu_s_per_1k"] = round(used / max(t.sent, 1) * 1000, 5)
                finally:
                    if probe is not None:
                        probe.stop.set()
                        payload = probe.last or payload
                    if driver is not None:
                        driver.quit()
                trials[variant].append(row)
                print(f"{variant} round {r}: {row}", flush=True)

    def median(variant: str, key: str) -> float | None:
        vals = [t[key] for t in trials[variant] if t.get(key) is not None]
        return round(statistics.median(vals), 5) if vals else None

    lines = [
        f"W1 int8 QoS 0, {args.rate:,.0f} msg/s over {args.devices:,} devices, "
        f"{args.rounds} x {args.duration:.0f}-s trials per variant (medians)",
        f"{'variant':<9} {'held':>6} {'CPU s/1k':>9} {'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7}"
        f" {'browser CPU s/1k':>17}",
    ]
    for v in VARIANTS:
        held = f"{sum(t['held'] for t in trials[v])}/{len(trials[v])}"
        lines.append(
            f"{v:<9} {held:>6} {median(v, 'cpu_s_per_1k')!s:>9} {median(v, 'p50_ms')!s:>7} "
            f"{median(v, 'p99_ms')!s:>7} {median(v, 'rss_mb')!s:>7} "
            f"{median(v, 'browser_cpu_s_per_1k') or '':>17}"
        )
    lines.append(f"/api/state?events=0 at {payload.get('devices')} devices: {payload}")
    result = {
        "bench": "console",
        "rate": args.rate,
        "devices": args.devices,
        "duration_s": args.duration,
        "machine": machine(),
        "payload": payload,
        "trials": trials,
    }
    print_result("\n".join(lines), json.dumps(result), args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
