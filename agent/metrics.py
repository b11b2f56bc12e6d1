"""Prometheus metrics and health over HTTP: ``/metrics``, ``/healthz``, ``/readyz``.

Nothing here runs per message. Scrapes read the counters the pipelines already keep
(:class:`AgentCollector`); the worker observes :class:`BatchStats` once per inference batch.
Off unless the config has a ``metrics:`` section; listens on loopback by default.
"""

from __future__ import annotations

import bisect
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import orjson

from . import log

if TYPE_CHECKING:
    from .config import MetricsConfig
    from .runtime import Agent

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class BatchStats:
    """Cumulative histograms of inference latency and batch size; one ``observe`` per batch."""

    def __init__(self) -> None:
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.size = [0] * (len(BATCH_BUCKETS) + 1)
        self.size_sum = 0
        self.count = 0

    def observe(self, windows: int, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.size[bisect.bisect_left(BATCH_BUCKETS, windows)] += 1
        self.size_sum += windows
        self.count += 1


def _buckets(bounds: tuple, counts: list[int]) -> list[tuple[str, int]]:
    out, total = [], 0
    for b, c in zip(bounds, counts):
        total += c
        out.append((repr(float(b)), total))
    out.append(("+Inf", total + counts[-1]))
    return out


class AgentCollector:
    """A prometheus-client collector that reads the agent's counters at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        lbl = ["pipeline"]
        fam = {
            "received": CounterMetricFamily(
                "edge_agent_received", "messages received from the source", labels=lbl
            ),
            "decoded": CounterMetricFamily(
                "edge_agent_decoded", "samples decoded into windows", labels=lbl
            ),
            "dropped": CounterMetricFamily(
                "edge_agent_dropped", "messages dropped by a full intake", labels=lbl
            ),
            "windows": CounterMetricFamily("edge_agent_windows", "windows scored", labels=lbl),
            "anomalies": CounterMetricFamily(
                "edge_agent_anomalies", "windows above the threshold (events)", labels=lbl
            ),
        }
        errors = CounterMetricFamily(
            "edge_agent_decode_errors", "rejected payloads by kind", labels=["pipeline", "kind"]
        )
        queued = GaugeMetricFamily(
            "edge_agent_queued", "messages waiting in the intake", labels=lbl
        )
        devices = GaugeMetricFamily("edge_agent_devices", "devices tracked", labels=lbl)
        latency = HistogramMetricFamily(
            "edge_agent_inference_seconds", "one batched inference", labels=lbl
        )
        size = HistogramMetricFamily(
            "edge_agent_batch_windows", "windows per inference batch", labels=lbl
        )
        for name, s in self.agent.status().items():
            for key, f in fam.items():
                f.add_metric([name], s[key])
            for kind, n in s["errors"].items():
                errors.add_metric([name, kind], n)
            queued.add_metric([name], s["queued"])
            devices.add_metric([name], s["devices"])
        for p in list(self.agent.pipelines):
            b, name = p.processor.batch_stats, p.processor.name
            latency.add_metric([name], _buckets(LATENCY_BUCKETS, b.latency), b.latency_sum)
            size.add_metric([name], _buckets(BATCH_BUCKETS, b.size), b.size_sum)
        yield from (*fam.values(), errors, queued, devices, latency, size)

        spool = self.agent.spool
        depth = GaugeMetricFamily("edge_agent_spool_depth", "records waiting in the spool")
        depth.add_metric([], spool.depth() if spool else 0)
        spool_dropped = CounterMetricFamily(
            "edge_agent_spool_dropped", "records dropped by the spool cap or TTL"
        )
        spool_dropped.add_metric([], (spool.dropped + spool.expired) if spool else 0)
        delivered = CounterMetricFamily(
            "edge_agent_delivered", "records delivered by a sink", labels=["sink"]
        )
        for f in list(self.agent.forwarders):
            delivered.add_metric([f.name], f.delivered)
        connected = GaugeMetricFamily(
            "edge_agent_broker_connected",
            "1 when the MQTT connection is up",
            labels=["broker", "role"],
        )
        for broker, role, up in self.agent.connection_states():
            connected.add_metric([broker, role], 1 if up else 0)
        failing = GaugeMetricFamily(
            "edge_agent_spool_write_failing",
            "1 while spool commits fail (disk full, I/O error): intake is paused",
        )
        failing.add_metric([], 1 if spool and spool.failing else 0)
        dead = CounterMetricFamily(
            "edge_agent_spool_dead_lettered", "undecodable spool rows moved to dead_letter"
        )
        dead.add_metric([], spool.dead if spool else 0)
        yield from (depth, spool_dropped, delivered, connected, failing, dead)


def readiness(agent: Agent) -> tuple[bool, dict]:
    """Ready when every broker connection is up, every model is loaded and the spool
    can write."""
    down = [f"{b}/{r}" for b, r, up in agent.connection_states() if not up]
    failed = [p.processor.name for p in agent.pipelines if p.error is not None]
    unsubscribed = {s.conn.name: s.error for s in agent.sources if s.error}
    spool = agent.spool is not None and agent.spool.failing
    ok = (
        agent.started
        and not down
        and not failed
        and not spool
        and not unsubscribed
        and bool(agent.pipelines)
    )
    body = {"ready": ok, "started": agent.started, "down": down, "failed": failed}
    if unsubscribed:
        body["unsubscribed"] = unsubscribed
    if spool:
        body["spool_write_error"] = agent.spool.write_error
    return ok, body


class MetricsServer:
    """HTTP server (daemon thread) for ``/metrics``, ``/healthz`` and ``/readyz``."""

    def __init__(self, agent: Agent, config: MetricsConfig) -> None:
        from prometheus_client import CollectorRegistry

        self.agent = agent
        self.token = config.token  # required on every request when set (Bearer)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self.log = log.get(component="metrics")
        self._server = ThreadingHTTPServer((config.host, config.port), self._handler())
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                path = self.path.split("?", 1)[0]
                if server.token and not hmac.compare_digest(
                    self.headers.get("Authorization", "").encode(),
                    f"Bearer {server.token}".encode(),
                ):
                    self._send(401, b"unauthorized\n", "text/plain")
                elif path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"alive":true}\n', "application/json")
                elif path == "/readyz":
                    ok, body = readiness(server.agent)
                    self._send(200 if ok else 503, orjson.dumps(body) + b"\n", "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                """No access log: scrapes come every few seconds."""

        return Handler

    def start(self) -> None:
        self._thread.start()
        self.log.info("metrics_listening", host=self.host, port=self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
