"""The agent's side of the fleet: desired state in, checked, staged, applied, gated, reported.

One MQTT connection (persistent session, QoS 1) subscribes to the agent's own desired-state
topic and to its groups'. Its network thread only queues what arrives; the ``fleet`` thread
verifies (size, signature, version), stages the models on disk, validates the composed
config like ``edge-agent check``, applies it through the live reload (nothing accepted is
lost), then holds a health gate: the agent must be ready (every connection up, no pipeline
failed) for ``fleet.health.hold`` within ``fleet.health.window``, or the previous config is
applied again. Only a version that passed becomes the last good one, which the next start
runs instead of the local file's pipelines.

Of the desired states the agent holds (own topic, each group) the newest version wins; on
equal versions the most specific topic (the agent's own) wins.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from agent import __version__, log
from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError
from agent.fleet import bundle, topics
from agent.fleet.bundle import Desired, ModelEntry, Refused
from agent.fleet.compose import compose
from agent.fleet.state import FleetState
from agent.protocols import model_identity
from agent.transport.mqtt import Connection

if TYPE_CHECKING:
    from agent.runtime.agent import Agent

_WAKE = ("", b"")  # a queue item that only wakes the worker
_REPORT = ("report", b"")
KEEP_REFUSED = 64  # digests of refused messages remembered, so a redelivery is not recounted


class _Stopping(Exception):
    """The agent stops during an attempt: the version stays `trying` (failed at next start)."""


class FleetManager:
    """Applies the desired state of an agent's fleet section; reports what it did."""

    def __init__(self, config_path: str | Path, local: Config) -> None:
        assert local.fleet is not None
        self.path = Path(config_path)
        self.local = local
        self.cfg = local.fleet
        self.id = local.agent.id
        self.root = self.cfg.topic
        self.state = FleetState(self.cfg.state_dir)
        self.keys = bundle.trusted(self.cfg.trusted_keys)
        self.log = log.get(component="fleet", agent=self.id)
        self.agent: Agent | None = None
        self.conn: Connection | None = None
        self.inbox: queue.Queue[tuple[str, bytes | int]] = queue.Queue()
        self.desired: dict[str, Desired] = {}  # by topic
        self.pending: int | None = None
        self.phase: str | None = None
        self.refusal: dict | None = None
        self._refused: list[str] = []
        self._wanted: dict[str, ModelEntry] = {}  # chunked models being fetched, by sha256
        self._parts: dict[str, dict[int, bytes]] = {}
        self._started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)

    @property
    def desired_topics(self) -> list[str]:
        """Most specific first: the agent's own topic, then its groups in config order."""
        own = [topics.agent_desired(self.root, self.id)]
        return own + [topics.group_desired(self.root, g) for g in self.cfg.groups]

    # -- start-up and SIGHUP -------------------------------------------------------------
    def startup_config(self) -> Config:
        """The last good fleet version over the local file, or the local file alone."""
        st = self.state
        if st.trying:
            st.count("interrupted")
            st.outcome(
                st.trying["version"],
                "failed",
                "interrupted: the agent stopped before the health gate passed",
            )
            assert st.last is not None, "outcome() records the last attempt"
            st.last["digest"] = st.trying.get("digest")
            st.trying = None
            st.save()
        if st.applied is None:
            return self.local
        try:
            return self._compose_applied(self.path)
        except (AgentError, OSError) as e:
            self.log.error("fleet_state_unusable", version=st.applied["version"], error=str(e))
            st.outcome(st.applied["version"], "failed", f"unusable, the local config runs: {e}")
            st.applied = None
            st.save()
            return self.local

    def load(self, path: str | Path) -> Config:
        """What a SIGHUP applies: the local file, with the applied fleet pipelines if any."""
        local = load_config(path, self.agent.registry if self.agent else None)
        return local if self.state.applied is None else self._compose_applied(path)

    def _compose_applied(self, path: str | Path) -> Config:
        a = self.state.applied
        assert a is not None
        v = a["version"]
        problem = self.state.check_models(v, a["models"])
        if problem:
            raise AgentError(f"fleet version {v}: {problem}")
        paths = self.state.model_paths(v, list(a["models"]))
        registry = self.agent.registry if self.agent else None
        return compose(path, self.state.pipelines(v), paths, f"fleet version {v}", registry)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, agent: Agent) -> None:
        self.agent = agent
        agent.fleet = self
        broker = self.local.brokers[self.cfg.broker].model_copy(update={"clean_start": False})
        self.conn = Connection("fleet", broker, f"{self.id}-fleet")
        self.conn.on_connected.append(self._on_connected)
        self.conn.client.on_message = self._on_message
        self._thread.start()
        self.conn.start()
        self.log.info("fleet_started", topics=self.desired_topics, state=self.record()["state"])

    def stop(self) -> None:
        self._stop.set()
        self.inbox.put(_WAKE)
        if self._thread.is_alive():
            self._thread.join(30)
        if self.conn is not None:
            self.conn.stop()

    # -- the network thread: queue only ----------------------------------------------------
    def _on_connected(self, client, session_present: bool) -> None:
        wanted = list(self._wanted)  # the fleet thread may change it meanwhile
        filters = self.desired_topics + [topics.blob_filter(self.root, s) for s in wanted]
        client.subscribe([(t, 1) for t in filters])
        self.inbox.put(_REPORT)

    def _on_message(self, client, userdata, msg) -> None:
        cap = self.cfg.max_model if msg.topic.startswith(f"{self.root}/blob/") else None
        size = len(msg.payload)
        too_big = size > (cap if cap is not None else self.cfg.max_bundle)
        self.inbox.put((msg.topic, size if too_big else msg.payload))

    # -- the fleet thread -----------------------------------------------------------------
    def _run(self) -> None:
        next_report = time.monotonic()
        while not self._stop.is_set():
            try:
                items = [self.inbox.get(timeout=max(0.0, next_report - time.monotonic()))]
            except queue.Empty:
                items = []
            items += self._drain()
            try:
                for topic, payload in items:
                    self._take(topic, payload)
                target = self._target()
                if target is not None:
                    self._attempt(*target)
            except _Stopping:
                return
            except Exception:  # a defect: log it, keep the fleet thread alive
                self.log.exception("fleet_error")
            if items or time.monotonic() >= next_report:
                self.report()
                next_report = time.monotonic() + self.cfg.report_every

    def _drain(self) -> list[tuple[str, bytes | int]]:
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def _take(self, topic: str, payload: bytes | int) -> None:
        """Record one message: a chunk, or a desired state (verified, or refused)."""
        blob = topics.parse_blob(self.root, topic)
        if blob is not None:
            self._chunk(*blob, payload)
            return
        if topic not in self.desired_topics:
            return
        if payload == b"":  # a cleared retained desired state
            self.desired.pop(topic, None)
            return
        try:
            if isinstance(payload, int):
                raise Refused(
                    "oversized", f"{payload} bytes > fleet.max_bundle {self.cfg.max_bundle}"
                )
            d = bundle.verify(
                payload, self.keys, max_bundle=self.cfg.max_bundle, max_model=self.cfg.max_model
            )
            if d.groups and not set(d.groups) & set(self.cfg.groups):
                raise Refused(
                    "wrong_group", f"signed for groups {d.groups}, not {self.cfg.groups}", d.version
                )
        except Refused as r:
            self.desired.pop(topic, None)
            digest = hashlib.sha256(str(payload).encode() if isinstance(payload, int) else payload)
            self._refuse(topic, r, f"{topic}:{digest.hexdigest()}")
            return
        self.desired[topic] = d

    def _refuse(self, topic: str, r: Refused, key: str) -> None:
        """Count and log a refusal once per distinct message (a redelivery is not recounted)."""
        self.refusal = {
            "topic": topic,
            "version": r.version,
            "reason": r.reason,
            "detail": r.detail,
            "ts": time.time(),
        }
        if key in self._refused:
            return
        self._refused = [*self._refused[-KEEP_REFUSED + 1 :], key]
        self.state.count(r.reason)
        self.state.save()
        self.log.warning("fleet_refused", **self.refusal)

    def _target(self) -> tuple[str, Desired] | None:
        """The desired state to apply now, if any: newest version, most specific topic."""
        if not self.desired:
            return None
        rank = {t: i for i, t in enumerate(self.desired_topics)}
        topic, d = max(self.desired.items(), key=lambda kv: (kv[1].version, -rank[kv[0]]))
        st = self.state
        quiet = {st.applied and st.applied["digest"], st.last and st.last.get("digest")}
        if d.digest in quiet:  # the running or the last tried bundle again (a redelivery)
            return None
        if d.version <= st.highest:
            why = f"version {d.version} is not newer than {st.highest}"
            r = Refused("replayed", why, d.version)
            self._refuse(topic, r, f"{topic}:{d.digest}")
            return None
        return topic, d

    # -- one attempt -----------------------------------------------------------------------
    def _attempt(self, topic: str, d: Desired) -> None:
        st, agent = self.state, self.agent
        assert agent is not None
        st.highest = d.version
        st.trying = {"version": d.version, "digest": d.digest}
        st.save()
        self.pending, self.phase = d.version, "staging"
        self.report()
        self.log.info("fleet_desired", version=d.version, topic=topic, digest=d.digest)
        started = time.monotonic()
        outcome, reason = "failed", None
        try:
            paths = self._stage(d)
            cfg = compose(self.path, d.config, paths, f"fleet version {d.version}", agent.registry)
            self.phase = "applying"
            with agent.reload_lock:
                previous = agent.config
                changes = agent.apply(cfg)  # raises before changing anything if a model fails
            self.phase = "verifying"
            self.report()
            why = self._health_gate()
            if why is None:
                outcome = "applied"
                self._mark_good(d, changes.__dict__)
            else:
                outcome, reason = "rolled_back", why
                with agent.reload_lock:
                    agent.apply(previous)
                st.count("rolled_back")
        except Refused as r:
            reason = f"{r.reason}: {r.detail}"
            st.count(r.reason)
        except ConfigError as e:
            reason = f"invalid_config: {e}"
            st.count("invalid_config")
        except AgentError as e:  # a model that does not load or fit, a plugin missing
            reason = f"rejected: {e}"
            st.count("rejected")
        except _Stopping:
            raise
        except Exception as e:  # a defect or the disk: the version failed, the reason says why
            self.log.exception("fleet_attempt_error", version=d.version)
            reason = f"error: {type(e).__name__}: {e}"
            st.count("error")
        finally:
            self.pending = self.phase = None
        st.trying = None
        st.outcome(d.version, outcome, reason)
        assert st.last is not None, "outcome() records the last attempt"
        st.last.update(digest=d.digest, seconds=round(time.monotonic() - started, 3))
        st.save()
        st.prune({st.applied["version"]} if st.applied else set())
        if outcome == "applied":
            self.log.info("fleet_applied", version=d.version, seconds=st.last["seconds"])
        else:
            self.log.error("fleet_" + outcome, version=d.version, reason=reason)
        from agent.runtime.agent import settle_heap

        settle_heap()  # as after a SIGHUP reload: what the old pipelines held is freed
        self.report()

    def _mark_good(self, d: Desired, changes: dict) -> None:
        st = self.state
        previous = st.applied["version"] if st.applied else None
        st.applied = {
            "version": d.version,
            "digest": d.digest,
            "models": {m.name: m.sha256 for m in d.models},
            "applied_at": time.time(),
            "changes": changes,
        }
        st.count("applied")
        st.save()
        st.prune({d.version} | ({previous} if previous else set()))

    def _stage(self, d: Desired) -> dict[str, Path]:
        """Write the pipelines and every model (checked against its sha256) to disk."""
        self.state.write_pipelines(d.version, d.config)
        out = {}
        for m in d.models:
            data = m.data if m.data is not None else self._fetch(m)
            out[m.name] = self.state.write_model(d.version, m.name, data)
        return out

    def _fetch(self, m: ModelEntry) -> bytes:
        """Collect a chunked model from ``<root>/blob/<sha256>/<i>``."""
        assert self.conn is not None
        flt = topics.blob_filter(self.root, m.sha256)
        self._wanted[m.sha256], self._parts[m.sha256] = m, {}
        self.conn.client.subscribe(flt, qos=1)
        deadline = time.monotonic() + self.cfg.chunk_timeout
        try:
            while len(self._parts[m.sha256]) < m.chunks:
                left = deadline - time.monotonic()
                if self._stop.is_set():
                    raise _Stopping
                if left <= 0:
                    raise Refused(
                        "chunks_missing",
                        f"{m.name}: {len(self._parts[m.sha256])} of {m.chunks} chunks within "
                        f"{self.cfg.chunk_timeout:g} s",
                    )
                try:
                    topic, payload = self.inbox.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                self._take(topic, payload)  # chunks land in _parts; desired states wait
            return bundle.assemble(m, self._parts[m.sha256])
        finally:
            self.conn.client.unsubscribe(flt)
            self._wanted.pop(m.sha256, None)
            self._parts.pop(m.sha256, None)

    def _chunk(self, sha: str, index: int, payload: bytes | int) -> None:
        m = self._wanted.get(sha)
        if m is None or not isinstance(payload, bytes) or not payload or index >= m.chunks:
            return  # not wanted now, cleared, or beyond the signed count
        if len(payload) > m.chunk_size:
            payload = payload[: m.chunk_size + 1]  # kept only to fail the hash check
        self._parts[sha][index] = payload

    def _health_gate(self) -> str | None:
        """None once the agent was ready for ``hold`` in a row; else why it was not."""
        from agent.runtime.metrics import readiness

        agent, health = self.agent, self.cfg.health
        assert agent is not None, "the gate runs only after start(agent)"
        deadline = time.monotonic() + health.window
        since: float | None = None
        last: dict = {}
        while True:
            failed = agent.failed()
            if failed:
                return f"unready: pipeline(s) {failed} failed"
            ok, body = readiness(agent)
            now = time.monotonic()
            if ok:
                since = since or now
                if now - since >= health.hold:
                    return None
            else:
                since, last = None, body
            if now >= deadline:
                down = ", ".join(last.get("down", [])) or "not started"
                return f"unready: not ready within {health.window:g} s (down: {down})"
            if self._stop.wait(0.1):
                raise _Stopping

    # -- reported state -------------------------------------------------------------------
    def record(self) -> dict:
        st, a = self.state, self.state.applied
        last = st.last or {}
        if self.pending is not None:
            state = self.phase
        elif last.get("outcome") in ("failed", "rolled_back") and (
            a is None or (last.get("version") or 0) > a["version"]
        ):
            state = last["outcome"]
        else:
            state = "applied" if a else "local"
        agent = self.agent
        models = {}
        for name, unit in agent.units.items() if agent else []:
            sha = model_identity(unit.processor.handler)[1]
            if sha:
                models[name] = sha
        return {
            "agent": self.id,
            "groups": self.cfg.groups,
            "agent_version": __version__,
            "boot": agent.boot if agent else None,
            "uptime": round(time.time() - self._started, 1),
            "ts": time.time(),
            "state": state,
            "version": a and a["version"],
            "digest": a and a["digest"],
            "applied_at": a and a["applied_at"],
            "pending": self.pending,
            "last": st.last,
            "last_refused": self.refusal,
            "counts": st.counts,
            "models": models,
        }

    def report(self) -> None:
        """Publish the retained ``<root>/agent/<id>/reported`` record (QoS 1)."""
        if self.conn is None:
            return
        topic = topics.reported(self.root, self.id)
        self.conn.client.publish(topic, orjson.dumps(self.record()), qos=1, retain=True)
