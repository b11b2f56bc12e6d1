"""paho-mqtt 2.x clients built from a broker config: TLS, auth, session, backoff, NODELAY."""

from __future__ import annotations

import contextlib
import random
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import log
from agent.config import TLS_FILES, BrokerConfig
from agent.errors import SettingError
from agent.transport import fastpath
from agent.transport.client import Client


def tls_context(broker: BrokerConfig, name: str = "?") -> ssl.SSLContext:
    """An SSL context for ``broker.tls``: CA, optional client cert, min version, hostname.

    A file that is missing or unreadable raises SettingError naming
    ``brokers.<name>.tls.<key>`` and the path, not a bare FileNotFoundError.
    """
    tls = broker.tls
    assert tls is not None
    where = f"brokers.{name}.tls"
    for key, what in TLS_FILES.items():
        path = getattr(tls, key)
        if path is not None and not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise SettingError(f"{where}.{key}: {path} {problem} (expected {what}, PEM)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    except (OSError, ssl.SSLError) as e:
        raise SettingError(f"{where}.ca: {tls.ca}: cannot load it as a PEM CA bundle ({e})") from e
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else (ssl.TLSVersion.TLSv1_2)
    )
    if tls.cert:
        try:
            ctx.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as e:
            raise SettingError(
                f"{where}.cert: {tls.cert} (key {tls.key or 'in the same file'}): cannot load "
                f"the client certificate and key ({e})"
            ) from e
    ctx.check_hostname = tls.check_hostname
    return ctx


def _lost_hint(broker: BrokerConfig) -> str:
    """Why a broker may close a connection before its CONNACK."""
    if broker.tls is not None and broker.tls.cert is None:
        return (
            "the broker closed the TLS connection before CONNACK: it may require a client "
            "certificate (tls.cert, tls.key)"
        )
    if broker.tls is not None:
        return "the broker closed the TLS connection before CONNACK: client certificate refused?"
    return "the broker closed the connection before CONNACK"


# OpenSSL's reasons for a handshake with no TLS version both ends accept.
_VERSION_REASONS = {
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "NO_PROTOCOLS_AVAILABLE",
    "WRONG_SSL_VERSION",
}


def _failed_hint(broker: BrokerConfig, error: BaseException | None) -> dict[str, str]:
    """What to change when a handshake fails for a reason OpenSSL's text leaves implicit."""
    if broker.tls is not None and getattr(error, "reason", None) in _VERSION_REASONS:
        return {
            "hint": "the broker and this client share no TLS version: tls.min_version is "
            f"{broker.tls.min_version}; the broker offers only other versions"
        }
    return {}


class Watch:
    """An acknowledgement someone waits for (:meth:`Connection.watch`)."""

    __slots__ = ("acked", "event")

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.acked = False


FLUSH_TOPIC = "edge-agent/flush"  # never subscribed: only its UNSUBACK is wanted
_NOT_IN_LEVEL = re.compile(r"[/+#\x00]")


def topic_level(name: str) -> str:
    """``name`` (a device id, say from a payload field) as one topic level: a wildcard,
    separator or NUL becomes ``_`` (paho refuses such a topic with ValueError at every
    retry; the payload keeps the id as is)."""
    return _NOT_IN_LEVEL.sub("_", name)


def client_id(configured: str | None, default: str, role: str) -> str:
    """The client id of one connection: ``<prefix>-<role>``, the prefix being the broker's
    configured ``client_id`` or ``default``. Every connection needs its own: a broker
    closes a connection whenever another one connects with the same id, so two sharing
    one would take turns being connected."""
    return f"{configured or default}-{role}"


class Connection:
    """One paho client with reconnect/backoff in paho's network thread.

    ``on_connected`` callbacks run (in the network thread) after every successful CONNACK,
    so subscriptions are renewed after each reconnect. Reconnects wait with jittered
    exponential backoff (:meth:`_backoff`); every failed attempt is logged with its reason
    and the delay before the next one.
    """

    def __init__(
        self,
        name: str,
        broker: BrokerConfig,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        will_retain: bool = True,
        on_publish: fastpath.PublishCallback | None = None,
        budget: float = 0.0,
    ) -> None:
        self.name = name
        self.client_id = client_id
        self.broker = broker
        self.v5 = broker.protocol == "5"
        self.log = log.get(component="mqtt", broker=name, client_id=client_id)
        protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        clean_session = None if self.v5 else broker.clean_start
        self.fast = on_publish is not None and fastpath.available()
        self.client: Client
        if on_publish is not None and self.fast:
            self.client = fastpath.FastClient(
                CallbackAPIVersion.VERSION2,
                on_publish=on_publish,
                budget=budget,
                client_id=client_id,
                protocol=protocol,
                clean_session=clean_session,
            )
        else:
            self.client = Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=protocol,
                clean_session=clean_session,
            )
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls is not None:
            self.client.tls_set_context(tls_context(broker, name))
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=will_retain)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_publish = self._on_acked
        self._watches: dict[int, Watch] = {}  # by mid: who waits for that acknowledgement
        self._acked_last: int | None = None  # the mid of the latest acknowledgement
        self._watch_lock = threading.Lock()
        self._flushes: dict[int, threading.Event] = {}
        self._flush_lock = threading.Lock()  # the UNSUBACK may come before the mid is stored
        self.on_connected: list[Callable[[mqtt.Client, bool], None]] = []
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.connects = 0
        self._stopping = False
        self._attempts = 0
        self._delay_set = False
        self._backoff()

    def _backoff(self) -> float:
        """Set and return the wait before the next connection attempt.

        Exponential from ``reconnect_min`` to ``reconnect_max`` with equal jitter (half
        fixed, half random) so that gateways cut off together do not reconnect in step.
        paho doubles its delay without jitter; setting its min = max to our delay before
        each wait keeps paho's own reconnect loop and public API.
        """
        b = self.broker
        base = min(b.reconnect_max, b.reconnect_min * 2 ** min(self._attempts, 30))
        self._attempts += 1
        delay = base * random.uniform(0.5, 1.0)
        self.client.reconnect_delay_set(delay, delay)
        return delay

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.last_error = str(reason)
            self._delay_set, delay = True, self._backoff()
            self.log.error(
                "mqtt_connect_refused",
                reason=str(reason),
                retry_in=round(delay, 2),
                hint="check username, password (from the environment) and the broker's ACL"
                if reason.value in (0x04, 0x05, 0x86, 0x87)
                else None,
            )
            return
        sock = client.socket()
        if isinstance(sock, socket.socket) or hasattr(sock, "setsockopt"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1
        self.last_error = None
        self._attempts = 0
        self.log.info(
            "mqtt_connected", session_present=bool(flags.session_present), fast_path=self.fast
        )
        for cb in self.on_connected:
            cb(client, bool(flags.session_present))
        self.connected.set()

    def _on_connect_fail(self, client, userdata) -> None:
        """TCP or TLS failed; paho calls this inside its ``except OSError`` block."""
        error = sys.exc_info()[1]
        self.last_error = f"{type(error).__name__}: {error}" if error else "connection failed"
        delay = self._backoff()
        self.log.error(
            "mqtt_connect_failed",
            error=self.last_error,
            retry_in=round(delay, 2),
            **_failed_hint(self.broker, error),
        )

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self._lost()
        if self._stopping:  # our own disconnect: no reconnect follows
            self.log.info("mqtt_disconnected", reason=str(reason))
            return
        delay = None if self._delay_set else self._backoff()
        self._delay_set = False
        if was:
            self.log.warning(
                "mqtt_disconnected", reason=str(reason), retry_in=delay and round(delay, 2)
            )
        elif delay is not None:  # lost before CONNACK: e.g. a TLS alert after the handshake
            self.log.error(
                "mqtt_connection_lost",
                reason=str(reason),
                retry_in=round(delay, 2),
                hint=_lost_hint(self.broker),
            )

    def watch(self, info: mqtt.MQTTMessageInfo, event: threading.Event) -> Watch:
        """Set ``event`` when the broker acknowledges ``info``'s message (a QoS 1 PUBACK) or
        the connection is lost, so a waiter sleeps until then instead of polling; ``acked``
        on the result says it was. The caller checks ``connected`` after this call (a loss
        before it notifies nobody)."""
        w = Watch(event)
        with self._watch_lock:
            # paho marks a message published only after on_publish: an acknowledgement that
            # came just before the watch may not show on the message yet
            w.acked = info.is_published() or info.mid == self._acked_last
            if not w.acked:
                self._watches[info.mid] = w
        return w

    def _on_acked(self, client, userdata, mid, reason, properties) -> None:
        with self._watch_lock:
            self._acked_last = mid
            w = self._watches.pop(mid, None)
        if w is not None:
            w.acked = True
            w.event.set()

    def _lost(self) -> None:
        """Wake every waiter: its acknowledgement will not come on this connection."""
        with self._watch_lock:
            lost, self._watches, self._acked_last = self._watches, {}, None
        for w in lost.values():
            w.event.set()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._flush_lock:
            done = self._flushes.pop(mid, None)
        if done is not None:
            done.set()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until the broker has read every packet sent so far (e.g. deferred PUBACKs).

        MQTT has no reply to DISCONNECT, and mosquitto hands a session to a new connection
        with the same client id before reading what the old one sent last: PUBACKs in
        flight would be lost and their messages redelivered. A broker answers packets in
        order, so the UNSUBACK of a topic never subscribed proves the earlier ones were read.
        """
        if not self.connected.is_set() or threading.current_thread() is self.client._thread:
            return False  # the network thread would wait for itself
        done = threading.Event()
        with self._flush_lock:
            rc, mid = self.client.unsubscribe(FLUSH_TOPIC)
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                return False
            self._flushes[mid] = done
        return done.wait(timeout)

    def start(self) -> None:
        """Connect in the background; paho reconnects with backoff until :meth:`stop`."""
        b = self.broker
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if b.clean_start else b.session_expiry
        try:
            if props is not None:
                self.client.connect_async(
                    b.host, b.port, b.keepalive, clean_start=b.clean_start, properties=props
                )
            else:
                self.client.connect_async(b.host, b.port, b.keepalive)
        except (OSError, ValueError) as e:
            self.log.error("mqtt_connect_failed", error=str(e))
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self.connected.clear()
            self._lost()
