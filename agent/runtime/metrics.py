"""Prometheus metrics, health and the web console over HTTP: ``/metrics``, ``/healthz``,
``/readyz``, ``/`` (the console) and ``/api/state``.

Nothing here runs per message. Scrapes read the counters the pipelines already keep
(:class:`AgentCollector`); the worker observes
:class:`agent.stages.batch_stats.BatchStats` once per inference batch.
Off unless the config has a ``metrics:`` section; listens on loopback by default. With
``metrics.username`` and ``metrics.password`` every path but the health checks needs HTTP
basic authentication; the console is served on a non-loopback address only then.
"""

from __future__ import annotations

import base64
import errno
import gzip
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import orjson

from agent import log
from agent.errors import SettingError
from agent.stages.batch_stats import BATCH_BUCKETS, LATENCY_BUCKETS

if TYPE_CHECKING:
    from agent.config import MetricsConfig
    from agent.console import Console
    from agent.runtime.unit import RunningPipeline
    from agent.runtime.view import RunningAgent

OPEN_PATHS = ("/healthz", "/readyz")  # container health checks carry no credentials
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
GZIP_ABOVE = 1024  # bytes: smaller bodies go as they are


def _buckets(bounds: tuple, counts: list[int]) -> list[tuple[str, int]]:
    out, total = [], 0
    for b, c in zip(bounds, counts):
        total += c
        out.append((repr(float(b)), total))
    out.append(("+Inf", total + counts[-1]))
    return out


# Per-pipeline figures of RunningPipeline.status(): (key, metric, type, help). Names end in
# their unit noun (Prometheus conventions); counters get ``_total`` from prometheus-client.
PIPELINE_METRICS = (
    ("received", "edge_agent_messages_received", "counter", "messages received from the source"),
    ("dropped", "edge_agent_messages_dropped", "counter", "messages dropped by a full intake"),
    ("queued", "edge_agent_intake_queue_messages", "gauge", "messages waiting in the intake"),
    ("decoded", "edge_agent_samples_decoded", "counter", "samples decoded into windows"),
    ("windows", "edge_agent_windows_scored", "counter", "windows scored"),
    ("anomalies", "edge_agent_windows_anomalous", "counter", "windows over the threshold"),
    ("events", "edge_agent_events_emitted", "counter", "event records handed to the spool"),
    ("episodes_opened", "edge_agent_episodes_opened", "counter", "episodes opened"),
    ("episodes_closed", "edge_agent_episodes_closed", "counter", "episodes closed"),
    (
        "episodes_suppressed",
        "edge_agent_episodes_suppressed",
        "counter",
        "openings suppressed by the flood guard",
    ),
    ("episodes_open", "edge_agent_episodes_open", "gauge", "episodes open now"),
    ("devices", "edge_agent_devices", "gauge", "devices tracked"),
    ("warming_up", "edge_agent_devices_warming_up", "gauge", "devices still in their warm-up"),
    (
        "warmup_deferred",
        "edge_agent_warmup_deferred_samples",
        "counter",
        "samples of new devices that waited for a warm-up buffer (calibration.max_warmup_mb)",
    ),
)


def build_info() -> dict[str, str]:
    """Versions for ``edge_agent_build_info``."""
    import platform

    import onnxruntime

    from agent import __version__

    return {
        "version": __version__,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


class AgentCollector:
    """A prometheus-client collector that reads the agent's counters at scrape time."""

    def __init__(self, agent: RunningAgent) -> None:
        self.agent = agent
        self.info = build_info()

    def collect(self) -> Iterator:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
        lbl = ["pipeline"]
        info = GaugeMetricFamily(
            "edge_agent_build_info", "versions of the agent and its runtime", labels=list(self.info)
        )
        info.add_metric(list(self.info.values()), 1)
        fams = {
            key: kinds[kind](name, text, labels=lbl) for key, name, kind, text in PIPELINE_METRICS
        }
        errors = CounterMetricFamily(
            "edge_agent_rejects",
            "payloads and samples rejected, by kind",
            labels=["pipeline", "kind"],
        )
        latency = HistogramMetricFamily(
            "edge_agent_inference_seconds", "one batched inference", labels=lbl
        )
        size = HistogramMetricFamily(
            "edge_agent_batch_windows", "windows per inference batch", labels=lbl
        )
        units = self.agent.units
        for name, unit in units.items():
            s = unit.status()
            for key, f in fams.items():
                if key in s:  # episode figures only in episode mode
                    f.add_metric([name], s[key])
            for kind, n in s["errors"].items():
                errors.add_metric([name, kind], n)
            b = unit.processor.batch_stats
            latency.add_metric([name], _buckets(LATENCY_BUCKETS, b.latency), b.latency_sum)
            size.add_metric([name], _buckets(BATCH_BUCKETS, b.size), b.size_sum)
        yield from (info, *fams.values(), errors, latency, size)
        yield from self._spool()
        yield from self._delivery(units)

    def _spool(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.agent.spool.stats() if self.agent.spool else {}
        records = GaugeMetricFamily("edge_agent_spool_records", "records waiting in the spool")
        records.add_metric([], st.get("depth", 0))
        size = GaugeMetricFamily(
            "edge_agent_spool_bytes", "approximate bytes of the records in the spool"
        )
        size.add_metric([], st.get("bytes", 0))
        dropped = CounterMetricFamily(
            "edge_agent_spool_records_dropped",
            "records dropped by the spool's size cap or TTL",
            labels=["reason"],
        )
        dropped.add_metric(["size_cap"], st.get("dropped", 0))
        dropped.add_metric(["ttl"], st.get("expired", 0))
        yield from (records, size, dropped)

    def _delivery(self, units: dict[str, RunningPipeline]) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        delivered = CounterMetricFamily(
            "edge_agent_records_delivered",
            "records delivered by a sink",
            labels=["pipeline", "sink", "type"],
        )
        for name, unit in units.items():
            for index, (f, sink) in enumerate(zip(unit.forwarders, unit.config.sinks)):
                delivered.add_metric([name, str(index), sink.type], f.delivered)
        connected = GaugeMetricFamily(
            "edge_agent_broker_connected",
            "1 when the MQTT connection is up",
            labels=["broker", "role"],
        )
        reconnects = CounterMetricFamily(
            "edge_agent_broker_reconnects",
            "connections made again after the first (each one a broken connection)",
            labels=["broker", "role"],
        )
        for broker, role, conn in self.agent.connections():
            connected.add_metric([broker, role], 1 if conn.connected.is_set() else 0)
            reconnects.add_metric([broker, role], max(0, conn.connects - 1))
        spool = self.agent.spool
        failing = GaugeMetricFamily(
            "edge_agent_spool_write_failing",
            "1 while spool commits fail (disk full, I/O error): intake is paused",
        )
        failing.add_metric([], 1 if spool and spool.failing else 0)
        dead = CounterMetricFamily(
            "edge_agent_spool_dead_lettered", "undecodable spool rows moved to dead_letter"
        )
        dead.add_metric([], spool.dead if spool else 0)
        yield from (delivered, connected, reconnects, failing, dead)


def readiness(agent: RunningAgent) -> tuple[bool, dict]:
    """Ready when every broker connection is up, every model is loaded and the spool
    can write."""
    units = agent.units
    down = [f"{b}/{r}" for b, r, up in agent.connection_states() if not up]
    failed = agent.failed()
    sources = [u.source for u in units.values()]
    unsubscribed = {s.conn.name: s.error for s in sources if s.error}
    spool = agent.spool is not None and agent.spool.failing
    ok = (
        agent.started and not down and not failed and not spool and not unsubscribed and bool(units)
    )
    body = {"ready": ok, "started": agent.started, "down": down, "failed": failed}
    if unsubscribed:
        body["unsubscribed"] = unsubscribed
    if spool and agent.spool is not None:
        body["spool_write_error"] = agent.spool.write_error
    return ok, body


def listen_problem(host: str, port: int, error: OSError) -> str:
    """Why ``metrics:`` cannot listen, as a config error line."""
    if error.errno == errno.EADDRINUSE:
        return (
            f"metrics.port: {host}:{port} is already in use (another agent or exporter?): "
            "choose a free port, or 0 for any free one"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return f"metrics.host: {host} is not an address of this machine"
    if error.errno == errno.EACCES:
        return f"metrics.port: {port} needs privileges (ports below 1024): choose 1024 or above"
    return f"metrics: cannot listen on {host}:{port}: {error.strerror or error}"


def console_refusal(config: MetricsConfig) -> str | None:
    """Why the console is not served with this config (None: it is)."""
    if not config.console:
        return "metrics.console is false"
    return config.exposure_problem()


class MetricsServer:
    """HTTP server (daemon thread) for ``/metrics``, ``/healthz``, ``/readyz`` and, with a
    :class:`agent.console.Console`, the console's pages and ``/api/state``."""

    def __init__(
        self, agent: RunningAgent, config: MetricsConfig, console: Console | None = None
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.agent = agent
        self.config = config
        self.console = console
        self.refusal = console_refusal(config)
        self.assets: dict[str, tuple[bytes, str]] = {}
        if console is not None and self.refusal is None:
            from agent.console import assets

            self.assets = assets()
        self.credentials = (
            f"{config.username}:{config.password}".encode() if config.username else None
        )
        self.token = config.token  # Bearer, accepted beside basic authentication
        from prometheus_client import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, _resident_memory
        self.log = log.get(component="metrics")
        try:
            self._server = ThreadingHTTPServer((config.host, config.port), self._handler())
        except OSError as e:
            raise SettingError(listen_problem(config.host, config.port, e)) from e
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    def authorised(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries a configured credential: the bearer
        ``token`` or the basic ``username``/``password`` (open when neither is set)."""
        if self.credentials is None and not self.token:
            return True
        if header and self.token and header.startswith("Bearer "):
            return hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode())
        if self.credentials is None or not header or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, self.credentials)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                path, _, query = self.path.partition("?")
                if path not in OPEN_PATHS and not server.authorised(
                    self.headers.get("Authorization")
                ):
                    self._send(
                        401,
                        b"authentication required\n",
                        "text/plain",
                        [("WWW-Authenticate", 'Basic realm="edge-agent", charset="UTF-8"')],
                    )
                elif path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"alive":true}\n', "application/json")
                elif path == "/readyz":
                    ok, body = readiness(server.agent)
                    self._send(200 if ok else 503, orjson.dumps(body) + b"\n", "application/json")
                elif path in ("/api/state", *server.assets, "/"):
                    self._console(path, query)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _console(self, path: str, query: str) -> None:
                if server.console is None or server.refusal is not None:
                    body = f"console not served: {server.refusal or 'no console'}\n".encode()
                    self._send(403, body, "text/plain")
                elif path == "/api/state":
                    body = server.console.state_json(_query(query))
                    self._send(200, body, "application/json", [("Cache-Control", "no-store")])
                else:
                    body, ctype = server.assets[path]
                    self._send(200, body, ctype, [("Cache-Control", "no-cache")])

            def _send(self, code: int, body: bytes, ctype: str, headers: list | tuple = ()) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                for name, value in (*SECURITY_HEADERS, *headers):
                    self.send_header(name, value)
                if len(body) > GZIP_ABOVE and "gzip" in self.headers.get("Accept-Encoding", ""):
                    body = gzip.compress(body, 1)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Vary", "Accept-Encoding")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                """No access log: scrapes come every few seconds."""

        return Handler

    def start(self) -> None:
        self._thread.start()
        served = self.console is not None and self.refusal is None
        self.log.info("metrics_listening", host=self.host, port=self.port, console=served)
        if self.config.console and self.refusal is not None:
            self.log.warning("console_not_served", reason=self.refusal)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _query(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query, keep_blank_values=True))
