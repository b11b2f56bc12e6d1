"""``edge-agent demo``: the whole job on one machine in a minute.

An embedded MQTT broker (amqtt) unless ``--broker``; SKAB pump telemetry replayed as several
devices (``--data``), or a simulator of the same eight channels with injected faults; the
agent in-process on a generated config; a live view; a final table with the data reduction
(bytes of telemetry in / bytes sent upstream, counted by a subscriber on the upstream topics).

Model: the shipped ``builtin:skab_pump_ae_int8`` with the agent's online calibration (each
device's first 400 samples fit its normaliser and ``threshold: auto``). Should it be missing
(a trimmed install) the W1 autoencoder is used instead, with the same per-device calibration
done by the demo's publisher (see :func:`choose_model`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from agent import log
from agent.tools.training import datasets

SHIPPED_MODEL = "skab_pump_ae_int8"
WINDOW, HOP = 32, 8
WARMUP = datasets.SKAB_WARMUP  # rows a device's calibration is fitted on
TOPIC = "plant/pumps/{device}/telemetry"
UP = "demo/up"
PROGRESS_EVERY = 5.0  # s between progress lines when stdout is not a terminal


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", metavar="HOST:PORT", help="use this broker (default: embedded)")
    p.add_argument("--data", type=Path, help="SKAB directory (default: datasets/skab of the clone)")
    p.add_argument("--simulate", action="store_true", help="use the simulator, not SKAB files")
    p.add_argument("--devices", type=int, default=8, help="pumps to replay (default 8)")
    p.add_argument("--rate", type=float, default=20, help="samples/s per device (default 20)")
    p.add_argument("--duration", type=float, default=60, help="seconds (default 60)")
    p.add_argument("--headless", action="store_true", help="no live view; final table only")
    p.add_argument("--seed", type=int, default=7, help="seed of the simulator (--simulate)")


# -- data -----------------------------------------------------------------------------------
@dataclass
class Device:
    """One pump's rows ``values[n, 8]`` with fault labels; replay starts at ``start``."""

    name: str
    values: np.ndarray
    labels: np.ndarray
    start: int = 0
    pos: int = 0
    seq: int = 0
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def next(self) -> tuple[np.ndarray, bool]:
        if self.pos >= len(self.values):
            self.pos = self.start
        i = self.pos
        self.pos += 1
        self.seq += 1
        return self.values[i], bool(self.labels[i])


def find_data(arg: Path | None) -> Path | None:
    """The SKAB directory: ``--data``, else ``skab/data`` of the datasets folder (None, with a
    note on stderr, when there is none: the demo then runs on the simulator)."""
    if arg is not None:
        if not (arg.is_dir() and any(arg.rglob("*.csv"))):
            raise SystemExit(f"error: --data {arg}: no CSV files there")
        return arg
    default = datasets.data_root() / "skab" / "data"
    if default.is_dir() and any(default.rglob("*.csv")):
        return default
    print(
        f"note: no SKAB recordings at {default}; running on the simulator. Run from a clone"
        " of the repository (it holds datasets/skab) or pass --data DIR.",
        file=sys.stderr,
    )
    return None


def skab_devices(root: Path, n: int) -> list[Device]:
    """The labelled SKAB files (valve1, valve2, other) as ``n`` pumps."""
    files = sorted(
        (
            f
            for f in root.rglob("*.csv")
            if f.parent.name != "anomaly-free" and "results" not in f.parts
        ),
        key=lambda f: (f.parent.name, int(f.stem) if f.stem.isdigit() else 0),
    )
    devices = []
    for f in files:
        rec = datasets.read_skab_file(f, f.name)
        if len(rec.values) > WARMUP + WINDOW:
            devices.append(Device(f"{f.parent.name}-{f.stem}", rec.values, rec.anomaly > 0))
        if len(devices) == n:
            break
    return devices


def simulated_devices(n: int, rows: int = 3000, seed: int = 7) -> list[Device]:
    """Eight pump channels around SKAB's operating point, with faults after the warm-up:
    bearing wear (vibration up), cavitation (pressure and flow down), overheating (ramp)."""
    rng = np.random.default_rng(seed)
    level = np.array([0.21, 0.27, 2.2, 0.3, 90.0, 27.0, 230.0, 123.0])
    noise = np.array([0.005, 0.006, 0.25, 0.3, 0.8, 0.1, 5.0, 1.5])
    out = []
    for d in range(n):
        t = np.arange(rows)[:, None]
        v = level + 0.3 * noise * np.sin(t * 0.05 + rng.uniform(0, 6, 8))
        v = v + rng.normal(0, 1, (rows, 8)) * noise
        labels = np.zeros(rows, bool)
        at = WARMUP + 60 + int(rng.integers(0, 120))
        while at < rows - 100:
            length = int(rng.integers(30, 90))
            kind = (d + at) % 3
            seg = slice(at, at + length)
            if kind == 0:
                v[seg, 0:2] += noise[0:2] * rng.uniform(6, 12)
            elif kind == 1:
                v[seg, 3] -= noise[3] * rng.uniform(5, 8)
                v[seg, 7] -= noise[7] * rng.uniform(6, 10)
            else:
                v[seg, 4:6] += np.linspace(0, 1, length)[:, None] * noise[4:6] * 15
            labels[seg] = True
            at += length + int(rng.integers(150, 400))
        out.append(Device(f"sim-{d:02d}", v, labels))
    return out


# -- model ----------------------------------------------------------------------------------
@dataclass
class DemoModel:
    """The handler config of the demo pipeline and how samples are calibrated."""

    handler: dict
    label: str
    calibrate_at_source: bool  # True: the publisher normalises (W1 fallback)
    calibration: dict | None = None  # the pipeline's `calibration:` section (online)


def _fit(devices: list[Device]) -> None:
    for d in devices:
        w = d.values[:WARMUP]
        d.mean = w.mean(axis=0)
        d.scale = np.maximum(w.std(axis=0), np.maximum(0.01 * np.abs(d.mean), 1e-6))


def choose_model(workdir: Path, devices: list[Device]) -> DemoModel:
    """The shipped SKAB model with online calibration when available, else W1.

    The switch: once ``builtin:skab_pump_ae_int8`` resolves and the onnx handler accepts
    ``threshold: auto``, the agent calibrates each device itself and the publisher sends raw
    values. Until then the W1 model is built and the publisher applies the same per-device
    normaliser; the threshold is 1.05 x the highest warm-up window score.
    """
    from agent.config import parse_config

    try:
        from agent.models import resolve

        resolve(SHIPPED_MODEL)
        handler: dict[str, str | float]
        handler = {"type": "onnx_autoencoder", "model": f"builtin:{SHIPPED_MODEL}"}
        model = DemoModel(
            {**handler, "threshold": "auto"},
            f"{SHIPPED_MODEL} (int8, online calibration from {WARMUP} samples per device)",
            False,
            {"warmup": WARMUP},
        )
        parse_config(_config(1883, "3.1.1", workdir, model), "demo")
        return model
    except Exception:  # not shipped, or not accepted by this version: the W1 fallback
        pass
    import onnxruntime as ort
    from numpy.lib.stride_tricks import sliding_window_view

    from agent.tools.training import w1

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice
    _, int8 = w1.build(workdir / "models")
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    _fit(devices)
    top = 0.0
    for d in devices:
        z = ((d.values[:WARMUP] - d.mean) / d.scale).astype(np.float32)
        win = np.ascontiguousarray(sliding_window_view(z, (WINDOW, 8))[:, 0])
        top = max(top, float(session.run(["score"], {"input": win.reshape(len(win), -1)})[0].max()))
        d.start = d.pos = WARMUP - 2 * WINDOW  # the warm-up was used here; replay just before
    handler = {
        "type": "onnx_autoencoder",
        "model": str(int8),
        "threshold": round(1.05 * top, 4),
    }
    return DemoModel(handler, "W1 autoencoder (int8), calibrated by the demo publisher", True)


def _config(port: int, protocol: str, workdir: Path, model: DemoModel, host: str = "127.0.0.1"):
    online = {"calibration": model.calibration} if model.calibration else {}
    return {
        "agent": {"id": "demo"},
        "brokers": {"local": {"host": host, "port": port, "protocol": protocol}},
        "spool": {"path": str(workdir / "spool.db")},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "pipelines": [
            {
                "name": "pumps",
                "source": {"broker": "local", "topics": [TOPIC.format(device="+")], "qos": 0},
                "decoder": {
                    "type": "json",
                    "device": "topic[2]",
                    "ts": "ts",
                    "seq": "seq",
                    "values": "v",
                    "channels": 8,
                },
                "window": {"size": WINDOW, "hop": HOP},
                "handler": model.handler,
                **online,
                "summary": {"every": "5s"},
                "sinks": [
                    {
                        "type": "mqtt",
                        "broker": "local",
                        "events": f"{UP}/events/{{device}}",
                        "summaries": f"{UP}/summary/{{device}}",
                        "stats": f"{UP}/stats/{{pipeline}}",
                    }
                ],
            }
        ],
    }


# -- MQTT ends --------------------------------------------------------------------------------
def _client(host: str, port: int, name: str):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"demo-{name}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv311,
    )
    c.max_queued_messages_set(0)
    c.connect(host, port, 30)
    c.loop_start()
    return c


@dataclass
class Upstream:
    """What arrived on the upstream topics, counted by a subscriber."""

    bytes: int = 0
    events: int = 0
    summaries: int = 0
    summarised: int = 0  # samples counted in summaries
    recent: deque = field(default_factory=lambda: deque(maxlen=8))
    per_device: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client, userdata, msg) -> None:
        try:
            body = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            body = {}
        with self.lock:
            self.bytes += len(msg.topic) + len(msg.payload)
            kind = msg.topic.split("/")[2] if msg.topic.count("/") >= 2 else ""
            dev = self.per_device.setdefault(body.get("device", ""), [0, 0, 0.0])
            if kind == "events":
                self.events += 1
                dev[1] += 1
                self.recent.appendleft((time.strftime("%H:%M:%S"), body))
            elif kind == "summary":
                self.summaries += 1
                self.summarised += int(body.get("count", 0))
                dev[0] += int(body.get("windows", 0))
                dev[2] = max(dev[2], float(body.get("max") or 0.0))


class Publisher(threading.Thread):
    """Sends each device's next row every 1/rate s as W1-style JSON (QoS 0)."""

    def __init__(
        self, host: str, port: int, devices: list[Device], rate: float, calibrate: bool
    ) -> None:
        super().__init__(name="demo-publisher", daemon=True)
        self.client = _client(host, port, "pub")
        self.devices, self.rate, self.calibrate = devices, rate, calibrate
        self.sent = 0
        self.bytes = 0
        self.faulty: dict[str, bool] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        tick, start = 0, time.monotonic()
        while not self.stop_event.is_set():
            now = time.time()
            for d in self.devices:
                row, fault = d.next()
                if self.calibrate:
                    row = (row - d.mean) / d.scale
                topic = TOPIC.format(device=d.name)
                body = orjson.dumps({"ts": now, "seq": d.seq, "v": np.round(row, 5).tolist()})
                self.client.publish(topic, body, qos=0)
                self.sent += 1
                self.bytes += len(topic) + len(body)
                self.faulty[d.name] = fault
            tick += 1
            self.stop_event.wait(max(0.0, start + tick / self.rate - time.monotonic()))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.client.loop_stop()
        self.client.disconnect()


# -- views ----------------------------------------------------------------------------------
def _ratio(a: int, b: int) -> str:
    return f"{a / b:.1f}x" if b else "n/a"


def warmup_text(status: dict, devices: int, warmup: int | None) -> str:
    """How far the pumps' calibration is: nothing is scored until a pump has its warm-up."""
    if not warmup:
        return "calibrated at the source"
    warming = status.get("warming_up", devices)
    if not warming and not status.get("windows"):
        return f"all {devices} pumps calibrated ({warmup} samples each): first windows filling"
    if not warming:
        return f"all {devices} pumps calibrated ({warmup} samples each): scoring"
    done = min(1.0, status.get("received", 0) / (devices * warmup))
    return (
        f"{warming} of {devices} pumps learning their normal ({warmup} samples each, "
        f"{done:.0%}): nothing scored until then"
    )


def progress_line(elapsed: float, pub: Publisher, up: Upstream, status: dict, warmup) -> str:
    """One line of progress for a log or a pipe (no live view there)."""
    head = f"{elapsed:4.0f} s  sent {pub.sent}  received {status.get('received', 0)}  "
    if not status.get("windows"):  # a reduction before anything is scored means nothing
        return head + "warm-up: " + warmup_text(status, len(pub.devices), warmup)
    return head + (
        f"windows scored {status.get('windows', 0)}  anomalous {status.get('anomalies', 0)}  "
        f"events upstream {up.events}  reduction {_ratio(pub.bytes, up.bytes)}"
    )


DEVICE_NOTES = (
    "label now: the recording's own fault label for the row being sent (ground truth the agent "
    "never sees). SKAB pumps are named after the file they replay (other-1: other/1.csv). "
    "max score: the highest window score in the summaries; a score is the model's "
    "reconstruction error on the pump's normalised readings, anomalous above the pump's "
    "threshold (learned in its warm-up): a fault far outside the warm-up scores in the "
    "thousands."
)


def _live(lines: list[str], pub: Publisher, up: Upstream, agent, started: float, warmup):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    status = agent.status().get("pumps", {})
    warming = not status.get("windows")
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    head.add_row(
        f"[b]{time.monotonic() - started:.0f} s[/b]",
        f"samples sent [b]{pub.sent}[/b]",
        f"decoded [b]{status.get('decoded', 0)}[/b]",
        f"windows scored [b]{status.get('windows', 0)}[/b]",
    )
    reduction = "[dim]after warm-up[/dim]" if warming else f"[b]{_ratio(pub.bytes, up.bytes)}[/b]"
    head.add_row(
        f"anomalies [b]{status.get('anomalies', 0)}[/b]",
        f"in [b]{pub.bytes / 1024:.1f} KiB[/b]",
        f"upstream [b]{up.bytes / 1024:.1f} KiB[/b]",
        f"reduction {reduction}",
    )
    calibration = Text("warm-up: " + warmup_text(status, len(pub.devices), warmup))
    devs = Table(title="pumps (windows and max score from upstream summaries)", expand=True)
    for c in ("pump", "label now", "threshold", "windows", "events", "max score"):
        devs.add_column(c)
    unit = agent.units.get("pumps")
    processor = unit.processor if unit else None
    with up.lock:
        for d in pub.devices:
            w, e, m = up.per_device.get(d.name, [0, 0, 0.0])
            state = "[red]fault[/red]" if pub.faulty.get(d.name) else "[green]normal[/green]"
            t = processor.device_threshold(d.name) if processor else None
            devs.add_row(
                d.name, state, "-" if t is None else f"{t:.2f}", str(w), str(e), f"{m:.2f}"
            )
        events = Table(title="events as they arrive upstream", expand=True)
        for c in ("time", "pump", "event", "score", "threshold", "cause"):
            events.add_column(c)
        for t, e in list(up.recent):
            score = e.get("score", e.get("peak", 0))  # a closed episode reports its peak
            cause = ", ".join(f"{c['channel']} {c['share']:.0%}" for c in e.get("cause", []))
            events.add_row(
                t,
                str(e.get("device")),
                str(e.get("event", "window")),
                f"{score:.2f}",
                f"{e.get('threshold', 0):.2f}",
                cause,
            )
    about = Text("\n".join(lines), style="dim")
    notes = Text(DEVICE_NOTES, style="dim")
    return Panel(Group(about, head, calibration, devs, notes, events), title="edge-agent demo")


def final_table(rows: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = ["", "edge-agent demo: final", "-" * (width + 18)]
    lines += [f"{k:<{width}}  {v!s:>14}" for k, v in rows]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    from agent.config import parse_config
    from agent.runtime.agent import Agent, settle_heap
    from agent.tools.broker import EmbeddedBroker

    log.setup("error")
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    data = None if args.simulate else find_data(args.data)
    devices = skab_devices(data, args.devices) if data else []
    source = f"SKAB files in {data}" if devices else "simulator (8 pump channels, faults)"
    if not devices:
        devices = simulated_devices(args.devices, seed=args.seed)
    model = choose_model(workdir, devices)

    broker = None
    if args.broker:
        host, _, port_s = args.broker.rpartition(":")
        host, port, protocol = host or "127.0.0.1", int(port_s), "5"
    else:
        broker = EmbeddedBroker().start()
        host, port, protocol = "127.0.0.1", broker.port, "3.1.1"

    up = Upstream()
    sub = _client(host, port, "upstream")
    sub.on_message = up.on_message
    sub.subscribe(f"{UP}/#", qos=1)
    cfg = parse_config(_config(port, protocol, workdir, model, host), "demo")
    agent = Agent(cfg)
    agent.build()
    agent.start()
    settle_heap()
    deadline = time.monotonic() + 15
    while not all(u.source.conn.connected.is_set() for u in agent.units.values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the agent could not connect to {host}:{port}")
        time.sleep(0.05)
    time.sleep(0.3)  # the source's SUBACK follows the CONNACK

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pub = Publisher(host, port, devices, args.rate, model.calibrate_at_source)
    started = time.monotonic()
    pub.start()
    where = f"embedded amqtt 127.0.0.1:{port}" if broker else f"{host}:{port}"
    lines = [f"{len(devices)} pumps from {source}", f"model: {model.label}", f"broker: {where}"]
    print("edge-agent demo: " + "; ".join(lines), flush=True)
    if agent.metrics is not None:
        base = f"http://127.0.0.1:{agent.metrics.port}"
        print(f"console: {base}/  (open it in a browser while the demo runs)", flush=True)
        print(f"metrics: {base}/metrics  (/healthz, /readyz, /api/state)", flush=True)
    warmup = (model.calibration or {}).get("warmup")
    if args.headless or not sys.stdout.isatty():  # a pipe or a log: progress lines instead
        next_line = PROGRESS_EVERY
        while not stop.wait(0.25) and time.monotonic() - started < args.duration:
            elapsed = time.monotonic() - started
            if elapsed >= next_line:
                status = agent.status().get("pumps", {})
                print(progress_line(elapsed, pub, up, status, warmup), flush=True)
                next_line += PROGRESS_EVERY
    else:
        from rich.live import Live

        with Live(
            _live(lines, pub, up, agent, started, warmup), refresh_per_second=4, screen=False
        ) as live:
            while not stop.wait(0.25) and time.monotonic() - started < args.duration:
                live.update(_live(lines, pub, up, agent, started, warmup))
    pub.stop()
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 5  # let the agent take in what is on the wire
    while agent.status()["pumps"]["received"] < pub.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    status = agent.status()["pumps"]
    agent.stop()  # processes the queue, publishes the last summaries, delivers the spool
    deadline = time.monotonic() + 5
    while up.summarised < status["decoded"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    sub.loop_stop()
    sub.disconnect()
    if broker:
        broker.stop()
    rows = [
        ("data", source),
        ("model", model.label.split(" (")[0]),
        ("devices", len(devices)),
        ("seconds", f"{elapsed:.1f}"),
        ("samples published", pub.sent),
        ("samples received by agent", status["received"]),
        ("samples in summaries", up.summarised),
        ("windows scored", status["windows"]),
        ("anomalies", status["anomalies"]),
        ("events upstream", up.events),
        ("summaries upstream", up.summaries),
        ("bytes in (telemetry)", pub.bytes),
        ("bytes upstream", up.bytes),
        ("data reduction", _ratio(pub.bytes, up.bytes)),
    ]
    print(final_table(rows), end="", flush=True)
    return 0
