"""The YAML config as pydantic v2 models, and ``load_config`` with path-qualified errors.

Components (decoder, handler, sinks) are validated against the config model their class
registers, so plugins get the same checks and schema as built-ins. ``${VAR}`` and
``${VAR:-default}`` in string values come from the environment; secrets must.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import os
import re
import types
from pathlib import Path
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    Protocol,
    Union,
    get_args,
    get_origin,
    runtime_checkable,
)

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError, PluginError
from agent.registry import Registry

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECRET_KEYS = frozenset({"username", "password", "token"})  # from the environment only


def topic_filter_problem(f: str) -> str | None:
    """Why ``f`` is not a valid MQTT topic filter (paho raises on it at subscribe), or None."""
    if not f:
        return "empty topic filter"
    if "\x00" in f or len(f.encode()) > 65535:
        return "NUL character or longer than 65,535 bytes"
    levels = f.split("/")
    if f.startswith("$share/"):
        if len(levels) < 3 or not levels[1] or any(c in levels[1] for c in "+#"):
            return "a shared subscription is $share/<group>/<filter>"
        levels = levels[2:]
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def _duration(v: Any) -> Any:
    if isinstance(v, str):
        m = _DURATION.match(v)
        if not m:
            raise ValueError("expected a duration such as 500ms, 10s, 5m, 1h or 7d")
        return float(m[1]) * _UNITS[m[2]]
    return v


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    Field(gt=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION.pattern},
            ]
        }
    ),
]


def _none_word(v: Any) -> Any:
    """``none`` written in YAML as a word (the docs' spelling) is the same as null."""
    return None if isinstance(v, str) and v.strip().lower() == "none" else v


_DURATION_SCHEMA = Duration.__metadata__[-1].json_schema  # type: ignore[attr-defined]
OptionalDuration = Annotated[
    Duration | None,
    BeforeValidator(_none_word),
    WithJsonSchema({"anyOf": [*_DURATION_SCHEMA["anyOf"], {"type": "null"}, {"const": "none"}]}),
]


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentConfig(Model):
    """Base of a component's config; ``type`` names the component in the registry.

    A handler's config declares what the pipeline must give it: ``needs_calibration`` (a
    model fitted per device on a warm-up) and ``learns_threshold()`` (a threshold learned
    on one); both need a ``calibration:`` section.
    """

    type: str
    needs_calibration: ClassVar[bool] = False

    def learns_threshold(self) -> bool:
        """Whether this config asks for a threshold learned during a calibration warm-up."""
        return False


@runtime_checkable
class UsesBroker(Protocol):
    """A component config that names a broker of ``brokers`` (a sink publishing there)."""

    broker: str


@runtime_checkable
class WritesFile(Protocol):
    """A component config that names a file it writes (a file sink): checked writable."""

    path: Path


@runtime_checkable
class UsesModelFile(Protocol):
    """A handler config that names its model file (``builtin:NAME`` for a shipped one)."""

    model: str | Path


class TlsConfig(Model):
    ca: Path | None = Field(None, description="CA bundle that signs the broker's certificate")
    cert: Path | None = Field(None, description="client certificate (mutual TLS)")
    key: Path | None = Field(None, description="client private key (mutual TLS)")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="lowest TLS version accepted")
    check_hostname: bool = Field(True, description="verify the broker's name in its certificate")


class BrokerConfig(Model):
    host: str = Field("127.0.0.1", description="broker host name or address")
    port: int = Field(1883, gt=0, lt=65536, description="broker TCP port")
    protocol: Literal["3.1.1", "5"] = Field("5", description="MQTT protocol version")
    client_id: str | None = Field(
        None,
        description="client id prefix; each connection adds its role: <prefix>-<pipeline>-in "
        "(a source), <prefix>-out (upstream sinks), <prefix>-spb (Sparkplug). Default prefix "
        "<agent.id> for sources, <agent.id>-<broker> otherwise; worker processes add "
        "-<pipeline>-w<k>",
    )
    keepalive: int = Field(30, ge=5, description="keepalive interval in seconds")
    username: str | None = Field(None, description="user name; must be ${VAR}, never literal")
    password: str | None = Field(None, description="password; must be ${VAR}, never literal")
    tls: TlsConfig | None = Field(None, description="TLS settings; plain TCP when absent")
    clean_start: bool = Field(True, description="false keeps a persistent session (QoS 1)")
    session_expiry: int = Field(3600, ge=0, description="MQTT 5 session expiry, seconds")
    reconnect_min: Duration = Field(0.5, description="first reconnect delay")
    reconnect_max: Duration = Field(30, description="longest reconnect delay")


class AgentSection(Model):
    id: str = Field("edge-agent", pattern=r"^[A-Za-z0-9_.-]+$", description="agent id")
    status_topic: str | None = Field(None, description="retained birth / last-will topic")
    status_broker: str | None = Field(None, description="broker for status; default: first sink")
    heartbeat: Duration = Field(30, description="period of status heartbeats")
    model_check: Duration = Field(
        30, description="how often model files are compared with the loaded models"
    )


class SpoolConfig(Model):
    path: Path = Field(Path("edge-agent-spool.db"), description="SQLite outbox file")
    max_mb: float = Field(256, gt=0, description="size cap; oldest rows dropped beyond it")
    ttl: Duration = Field(7 * 86400, description="rows older than this are dropped")
    replay_rate: float = Field(
        1000,
        gt=0,
        description="records/s per lane while draining a backlog left by an outage or a "
        "restart (live records are not paced); above the live record rate, or the backlog "
        "never drains",
    )
    batch: int = Field(200, gt=0, le=10000, description="records per publish round")
    sync: Literal["full", "normal"] = Field(
        "full",
        description="full: every commit is fsynced (a spooled record survives a power cut); "
        "normal: WAL without fsync per commit, ~0.5-1 ms less per event on a slow disk, "
        "survives a crash of the agent but a power cut may lose the last commits",
    )


class SourceConfig(Model):
    broker: str = Field(description="name of a broker in `brokers`")
    topics: list[str] = Field(min_length=1, description="topic filters (wildcards allowed)")

    @field_validator("topics")
    @classmethod
    def _valid_filters(cls, topics: list[str]) -> list[str]:
        for t in topics:
            problem = topic_filter_problem(t)
            if problem:
                raise ValueError(f"{t!r} is not a valid topic filter: {problem}")
        return topics

    qos: int = Field(0, ge=0, le=1, description="subscription QoS (0 or 1)")
    queue: int = Field(100_000, gt=0, description="intake bound, messages")
    overflow: Literal["drop_oldest", "drop_newest", "block"] = Field(
        "drop_oldest",
        description="what a full intake does: drop_oldest, drop_newest (both counted as "
        "dropped) or block (the broker holds the backlog); QoS 1 with clean_start: false "
        "always blocks",
    )
    max_payload: int = Field(65536, gt=0, description="larger payloads are rejected")
    max_device_id: int = Field(
        256,
        gt=0,
        description="bytes (UTF-8) of a decoded device id; a message naming a longer one is "
        "rejected as `device_id`",
    )
    max_clock_skew: OptionalDuration = Field(
        86400,
        description="a sample whose timestamp is further than this from the agent's clock is "
        "rejected (counted as ts_future / ts_past); none: accept any timestamp (a camera "
        "without NTP stamps 1970)",
    )
    fast_path: bool = Field(
        True, description="split PUBLISH packets in bulk beside paho (false: stock paho)"
    )
    max_delay: Annotated[float, BeforeValidator(_duration), Field(ge=0, le=1.0)] = Field(
        0.002,
        description="longest a message waits for others to join its batch (a duration up to "
        "1s, or 0: never wait); only a stream dense enough to bring 3 or more messages in "
        "that time waits (the fast path's socket reads wait it, or else the worker), and "
        "the worker wakes once per batch instead of once per message",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_coalesce(cls, data: Any) -> Any:
        if isinstance(data, dict) and "coalesce" in data:
            raise ValueError(
                "coalesce was replaced by max_delay, the one batching budget (the fast "
                "path's socket reads wait it on a dense stream); remove coalesce"
            )
        return data

    dead_letter: str | None = Field(
        None, description="topic template for rejected payloads ({pipeline}, {kind})"
    )


class WindowConfig(Model):
    size: int = Field(32, gt=0, description="samples per window")
    hop: int = Field(8, gt=0, description="a window is scored every `hop` new samples")
    ttl: Duration = Field(600, description="idle devices are evicted after this")
    max_devices: int = Field(100_000, gt=0, description="devices tracked at once")


def _window(v: Any) -> Any:
    """``window: none`` is a stateless pipeline: every sample is scored on its own."""
    if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
        return {"size": 1, "hop": 1}
    return v


class MetricsConfig(Model):
    host: str = Field("127.0.0.1", description="listen address (loopback by default)")
    port: int = Field(9464, ge=0, lt=65536, description="listen port (0: any free port)")
    username: str | None = Field(
        None,
        description="HTTP basic authentication for every path but /healthz and /readyz; "
        "must be ${VAR}, never literal",
    )
    password: str | None = Field(None, description="its password; must be ${VAR}, never literal")
    console: bool = Field(
        True,
        description="serve the read-only web console (/) and /api/state; on an address "
        "other than loopback only with username and password",
    )
    history: Duration = Field(
        600, description="console: score and threshold history kept per device"
    )
    history_mb: float = Field(
        8,
        gt=0,
        description="console: memory for that history (8 bytes per device per 2 s); devices "
        "beyond it show no chart",
    )
    allow_remote: bool = Field(
        False,
        description="true: a non-loopback host is allowed (needs `token` or `username`/`password`)",
    )
    token: str | None = Field(
        None,
        description="bearer token every request but /healthz and /readyz must carry (or "
        "basic authentication); must be ${VAR}",
    )

    @property
    def loopback(self) -> bool:
        """Whether the listen address only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def authenticated(self) -> bool:
        """Whether requests must carry a bearer token or basic credentials."""
        return bool(self.token or (self.username and self.password))

    def exposure_problem(self) -> str | None:
        """The one rule for serving metrics and the console: off loopback only when allowed
        explicitly and authenticated. None when the endpoint may listen where configured."""
        if self.loopback:
            return None
        if not self.allow_remote:
            return (
                f"metrics.host: {self.host!r} is not a loopback address; the endpoint has no "
                "authentication unless you set `allow_remote: true` and `token: ${VAR}` (or "
                "`username` and `password`)"
            )
        if not self.authenticated:
            return (
                "metrics.token: a non-loopback metrics endpoint needs a bearer token (or "
                "username and password)"
            )
        return None


class CalibrationConfig(Model):
    warmup: int = Field(400, ge=2, description="samples per device that calibrate it")
    max_warmup_mb: float = Field(
        128,
        gt=0,
        description="memory for the warm-up buffers of devices still warming up (`warmup x "
        "channels x 4` bytes each); new devices beyond it wait, counted as `warmup_deferred`",
    )
    normalise: bool = Field(True, description="per-device, per-channel (x - mean) / std")
    rel_floor: float = Field(
        0.01, ge=0, description="std floor as a fraction of |mean| (no drift amplification)"
    )
    quantile: float = Field(1.0, gt=0, le=1, description="threshold: auto = factor x quantile")
    factor: float = Field(1.05, gt=0, description="of the warm-up windows' scores")
    false_alarms_per_day: float | None = Field(
        None,
        gt=0,
        description="threshold: auto from a false-alarm budget instead of factor x quantile: "
        "the level that data like the warm-up exceeds in at most this many episodes per day "
        "(a generalised Pareto tail fitted to the warm-up window scores); see docs/alarms.md",
    )


class SeverityConfig(Model):
    critical: float | None = Field(
        2.0,
        gt=1,
        description="an open episode whose score exceeds this multiple of the threshold is "
        "critical (an `escalated` event); none: one level (warning)",
    )


class FloodConfig(Model):
    limit: int = Field(10, ge=1, description="episodes a pipeline may open per `period`")
    period: Duration = Field(600, description="sliding period of the limit (sample time)")


class RuleConfig(Model):
    hold: int = Field(
        0,
        ge=0,
        description="a window is also anomalous (counted, and in `events: windows` an event) "
        "when one of its device's previous `hold` windows scored over the threshold; 0: each "
        "window on its own",
    )
    events: Literal["episodes", "windows"] = Field(
        "episodes",
        description="episodes: one `opened` and one `closed` event per condition per device; "
        "windows: an event for every anomalous window",
    )
    open_after: int = Field(
        1, ge=1, description="consecutive windows over the threshold that open an episode"
    )
    clear: float = Field(
        0.9,
        gt=0,
        le=1,
        description="clear level as a fraction of the threshold (hysteresis)",
    )
    clear_after: int = Field(
        5, ge=1, description="consecutive windows at or below the clear level that close it"
    )
    repeat: Duration | None = Field(
        None, description="an `ongoing` reminder this often while open (sample time); none: off"
    )
    cooldown: Duration | None = Field(
        None, description="after a close, the device opens no episode for this long"
    )
    severity: SeverityConfig = SeverityConfig()
    reset_on_restart: bool = Field(
        False,
        description="a device whose `seq` goes back (the decoder's sequence field, e.g. an "
        "engine's cycle counter restarting after maintenance) starts a new life: its open "
        "episode closes (reason `reset`) and windows spanning the restart are not scored",
    )
    flood: FloodConfig | None = Field(
        FloodConfig(),
        description="flood guard: beyond `limit` openings per `period` one `flood` event, "
        "further openings suppressed and counted; none: off",
    )


class SummaryConfig(Model):
    every: Duration = Field(10, description="summary period")


class PipelineConfig(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="pipeline name")
    source: SourceConfig
    decoder: ComponentConfig = Field(description="decoder component (`type:` names it)")
    window: Annotated[WindowConfig, BeforeValidator(_window)] = Field(
        WindowConfig(),
        description="count window; `none` (size 1) makes the pipeline stateless, so it may "
        "use a shared subscription ($share/<group>/...)",
    )
    handler: ComponentConfig = Field(description="model handler component")
    summary: SummaryConfig = SummaryConfig()
    calibration: CalibrationConfig | None = Field(
        None,
        description="learn each device's normalisation (and `threshold: auto`) from its first "
        "samples, then freeze; those warm-up windows are never scored",
    )
    rule: RuleConfig = Field(
        RuleConfig(), description="threshold rule: a window is over when score > threshold"
    )
    sinks: list[ComponentConfig] = Field(min_length=1, description="where records go")
    max_batch: int = Field(2048, gt=0, description="messages processed per worker round")
    workers: int = Field(
        1, ge=1, le=64, description="worker processes; topic filter k goes to worker k mod N"
    )


def _public_key(v: Any) -> Any:
    """An Ed25519 public key as `edge-agent fleet keygen` writes it: base64 of 32 bytes."""
    if isinstance(v, str):
        try:
            raw = base64.b64decode(v.strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError("expected an Ed25519 public key: base64 of 32 bytes (a .pub file)")
    return v


class FleetHealthConfig(Model):
    window: Duration = Field(
        30, description="a new version must make the agent ready within this, or it is rolled back"
    )
    hold: Duration = Field(2, description="ready for this long in a row passes the health gate")


class FleetConfig(Model):
    broker: str = Field(description="name of a broker in `brokers` carrying the fleet topics")
    groups: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] = Field(
        [], description="groups this agent belongs to (`<topic>/group/<name>/desired`)"
    )
    trusted_keys: list[Annotated[str, BeforeValidator(_public_key)]] = Field(
        min_length=1,
        description="Ed25519 public keys (base64, `edge-agent fleet keygen`) that may sign "
        "desired states; only this local file can change them",
    )
    topic: str = Field("fleet", pattern=r"^[^+#]+$", description="root of the fleet topics")
    state_dir: Path = Field(
        Path("edge-agent-fleet"),
        description="staged versions, their models and the last good version (kept across "
        "restarts)",
    )
    max_bundle: int = Field(
        1 << 20, gt=0, description="a desired-state message larger than this (bytes) is refused"
    )
    max_model: int = Field(
        64 << 20, gt=0, description="a model larger than this (bytes) is refused"
    )
    chunk_timeout: Duration = Field(
        120, description="a chunked model not complete within this fails the version"
    )
    report_every: Duration = Field(60, description="period of the retained reported state")
    health: FleetHealthConfig = FleetHealthConfig()


class Config(Model):
    agent: AgentSection = AgentSection()
    brokers: dict[str, BrokerConfig] = Field(min_length=1)
    spool: SpoolConfig = SpoolConfig()
    metrics: MetricsConfig | None = Field(
        None,
        description="Prometheus /metrics, /healthz, /readyz and the web console over HTTP; "
        "off when absent",
    )
    pipelines: list[PipelineConfig] = Field(min_length=1)
    fleet: FleetConfig | None = Field(
        None,
        description="signed desired state (pipelines and models) over MQTT; see docs/fleet.md",
    )


COMPONENT_FIELDS = (("decoder", "decoder"), ("handler", "handler"))


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _candidates(tp: Any) -> list[Any]:
    """The types a value annotated ``tp`` may have (Annotated and Optional unwrapped)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _candidates(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for a in get_args(tp) if a is not type(None) for t in _candidates(a)]
    return [tp]


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...] | list[Any]) -> list[str]:
    """The keys the mapping at ``loc`` (inside ``model``) accepts; [] when not a model."""
    types_: list[Any] = [model]
    for part in loc:
        found: list[Any] = []
        for tp in types_:
            origin, args = get_origin(tp), get_args(tp)
            if isinstance(part, int) and origin is list and args:
                found += _candidates(args[0])
            elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
                found += _candidates(tp.model_fields[part].annotation)
            elif origin is dict and len(args) == 2:
                found += _candidates(args[1])
        types_ = found
    for tp in types_:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return list(tp.model_fields)
    return []


def _error_line(model: type[BaseModel], err: Any, prefix: list[Any] | None = None) -> str:
    """One pydantic error as ``key.path: message``; an unknown key gets the closest known."""
    loc = [*(prefix or []), *err["loc"]]
    line = f"{_loc(loc)}: {err['msg']}"
    if err["type"] == "extra_forbidden" and isinstance(err["loc"][-1], str):
        keys = _keys_at(model, err["loc"][:-1])
        close = difflib.get_close_matches(err["loc"][-1], keys, n=1, cutoff=0.6)
        if close:
            line += f"; did you mean {close[0]!r}?"
        elif keys:
            line += f"; expected one of {', '.join(keys)}"
    return line


def _substitute(node: Any, path: list[Any], errors: list[str]) -> Any:
    """Replace ${VAR} in strings; reject literal secrets."""
    if isinstance(node, dict):
        return {k: _substitute(v, [*path, k], errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, [*path, i], errors) for i, v in enumerate(node)]
    if not isinstance(node, str):
        if path and path[-1] in SECRET_KEYS and node is not None:
            errors.append(f"{_loc(path)}: secrets must come from an environment variable")
        return node
    if path and path[-1] in SECRET_KEYS:
        m = _ENV.fullmatch(node.strip())
        if not m:
            errors.append(
                f"{_loc(path)}: secrets must come from an environment variable (${{VAR}})"
            )
        elif m[2]:  # ${VAR:-default}: the default would be a literal secret in the file
            errors.append(
                f"{_loc(path)}: a secret cannot have a default (${{{m[1]}:-...}}): the default "
                f"would be a literal secret in the file; use ${{{m[1]}}}"
            )

    def repl(m: re.Match[str]) -> str:
        value = os.environ.get(m[1], m[2])
        if value is None:
            errors.append(f"{_loc(path)}: environment variable {m[1]} is not set")
            return ""
        return value

    return _ENV.sub(repl, node)


def _validate_components(data: dict, registry: Registry, errors: list[str]) -> dict:
    """Validate each pipeline's components against their registered models."""
    pipelines = data.get("pipelines")
    if not isinstance(pipelines, list):
        return data
    for i, pipe in enumerate(pipelines):
        if not isinstance(pipe, dict):
            continue
        slots: list[tuple[str, list[Any], Any]] = [
            (kind, ["pipelines", i, key], pipe.get(key)) for key, kind in COMPONENT_FIELDS
        ]
        sinks = pipe.get("sinks")
        if isinstance(sinks, list):
            slots += [("sink", ["pipelines", i, "sinks", j], s) for j, s in enumerate(sinks)]
        for kind, path, raw in slots:
            if not isinstance(raw, dict):
                continue  # the base model reports the missing or malformed component
            name = raw.get("type")
            if not isinstance(name, str):
                errors.append(f"{_loc([*path, 'type'])}: Field required (a {kind} name)")
                continue
            try:
                model = registry.get(kind, name).config_model
            except PluginError as e:
                errors.append(f"{_loc([*path, 'type'])}: {e}")
                continue
            try:
                validated = model.model_validate(raw)
            except ValidationError as e:
                errors += [_error_line(model, err, path) for err in e.errors()]
                continue
            node = pipe
            for p in path[2:-1]:
                node = node[p]
            node[path[-1]] = validated
    return data


def _cross_checks(cfg: Config) -> list[str]:
    errors = []
    m = cfg.metrics
    if m is not None and (m.username is None) != (m.password is None):
        errors.append(
            "metrics.username: basic authentication needs both metrics.username and "
            "metrics.password (or neither)"
        )
    names = set()
    for i, p in enumerate(cfg.pipelines):
        if p.name in names:
            errors.append(f"pipelines[{i}].name: duplicate pipeline name {p.name!r}")
        names.add(p.name)
        if p.source.broker not in cfg.brokers:
            errors.append(
                f"pipelines[{i}].source.broker: unknown broker {p.source.broker!r}; "
                f"expected one of {sorted(cfg.brokers)}"
            )
        if p.window.size > 1 and any(t.startswith("$share/") for t in p.source.topics):
            errors.append(
                f"pipelines[{i}].source.topics: a windowed pipeline cannot use a shared "
                "subscription ($share/...): each agent would see part of every device's "
                "samples and windows would split; partition by topic filter instead, or "
                "make the pipeline stateless with `window: none`"
            )
        if p.handler.needs_calibration and p.calibration is None:
            errors.append(
                f"pipelines[{i}].handler: the {p.handler.type} handler is fitted per device on "
                "a warm-up: add a `calibration:` section (e.g. {warmup: 400})"
            )
        elif p.handler.learns_threshold() and p.calibration is None:
            errors.append(
                f"pipelines[{i}].handler.threshold: 'auto' is learned during a warm-up: add a "
                "`calibration:` section (e.g. {warmup: 400})"
            )
        if p.workers > len(p.source.topics):
            errors.append(
                f"pipelines[{i}].workers: {p.workers} workers need at least as many topic "
                f"filters in source.topics (each worker takes whole filters), got "
                f"{len(p.source.topics)}"
            )
        for j, s in enumerate(p.sinks):
            broker = s.broker if isinstance(s, UsesBroker) else None
            if broker is not None and broker not in cfg.brokers:
                errors.append(
                    f"pipelines[{i}].sinks[{j}].broker: unknown broker {broker!r}; "
                    f"expected one of {sorted(cfg.brokers)}"
                )
    problem = cfg.metrics.exposure_problem() if cfg.metrics is not None else None
    if problem:
        errors.append(problem)
    if cfg.agent.status_broker and cfg.agent.status_broker not in cfg.brokers:
        errors.append(f"agent.status_broker: unknown broker {cfg.agent.status_broker!r}")
    if cfg.fleet is not None:
        if cfg.fleet.broker not in cfg.brokers:
            errors.append(
                f"fleet.broker: unknown broker {cfg.fleet.broker!r}; "
                f"expected one of {sorted(cfg.brokers)}"
            )
        for i, p in enumerate(cfg.pipelines):
            if p.workers > 1:
                errors.append(
                    f"pipelines[{i}].workers: a fleet-managed agent runs its pipelines in one "
                    "process (workers: 1)"
                )
    return errors


def parse_config(data: Any, source: str, registry: Registry | None = None) -> Config:
    """Validate an already-parsed YAML document; raise ConfigError with every problem."""
    registry = registry or Registry()
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    data = _substitute(data, [], errors)
    data = _validate_components(data, registry, errors)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        reported = {line.split(": ", 1)[0] for line in errors}  # e.g. a variable not set
        errors += [
            _error_line(Config, err)
            for err in e.errors()
            if not _is_component_loc(err["loc"]) and _loc(err["loc"]) not in reported
        ]
        raise ConfigError(source, errors) from None
    errors += _cross_checks(cfg)
    if errors:
        raise ConfigError(source, errors)
    return cfg


def _is_component_loc(loc: tuple[Any, ...]) -> bool:
    """Errors inside components were reported by their own model already."""
    if len(loc) > 3 and loc[0] == "pipelines" and loc[2] in ("decoder", "handler"):
        return True
    return len(loc) > 4 and loc[0] == "pipelines" and loc[2] == "sinks"


def load_config(path: str | Path, registry: Registry | None = None) -> Config:
    """Read and validate a YAML config file; raise ConfigError naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(source, [f"cannot read: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML ({getattr(e, 'problem', e)})"]) from None
    return parse_config(data, source, registry)


TLS_FILES = {
    "ca": "the CA bundle that signs the broker's certificate",
    "cert": "the client certificate",
    "key": "the client private key",
}


def _unreadable(path: Path) -> str | None:
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    return None if os.access(path, os.R_OK) else "is not readable by this user"


def file_problems(cfg: Config) -> list[str]:
    """Files ``run`` would open later (TLS material, model files) that are not readable now,
    each named with its key (``check`` and ``run`` report them; ``load_config`` does not, so
    a config can be validated on a machine without its models)."""
    out = []
    for name, b in cfg.brokers.items():
        for key, what in TLS_FILES.items():
            path = getattr(b.tls, key, None) if b.tls else None
            if path is not None and (problem := _unreadable(Path(path))):
                out.append(f"brokers.{name}.tls.{key}: {path} {problem} (expected {what}, PEM)")
    for i, p in enumerate(cfg.pipelines):
        model = p.handler.model if isinstance(p.handler, UsesModelFile) else None
        local = isinstance(model, str | Path) and not str(model).startswith("builtin:")
        if local and model is not None and (problem := _unreadable(Path(model))):
            out.append(
                f"pipelines[{i}].handler.model: {model} {problem} (expected an ONNX model file)"
            )
    return out
