"""TLS (mutual) and username/password against real mosquitto listeners; secrets never logged."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.testing.mosquitto import Mosquitto, free_port
from tests.support.faults import write_config
from tests.support.mqtt import AgentProcess, Collector, kill_left, publish, w1_payloads
from tests.support.waiting import until

pytestmark = pytest.mark.mosquitto


LOOPBACK_NAMES = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def _cert(
    name, key, issuer=None, issuer_key=None, *, ca=False, server=False, names=None, valid=None
):
    """``server``: names ``names`` (default localhost and 127.0.0.1); ``valid``: the
    (from, to) offsets from now, default 5 min ago to a day ahead."""
    now = dt.datetime.now(dt.timezone.utc)
    start, end = valid or (-dt.timedelta(minutes=5), dt.timedelta(days=1))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + start)
        .not_valid_after(now + end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(names or LOOPBACK_NAMES), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert, key=None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    d.chmod(0o755)
    out = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, ca=True)
    out["ca"] = _write(d / "ca.pem", ca)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        out[name] = _write(d / f"{name}.pem", _cert(name, key, ca, ca_key, server=server), key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    out["other_ca"] = _write(d / "other-ca.pem", _cert("other-ca", other_key, ca=True))
    key = ec.generate_private_key(ec.SECP256R1())
    elsewhere = [x509.DNSName("broker.elsewhere.invalid")]  # neither localhost nor 127.0.0.1
    out["wrong_name"] = _write(
        d / "wrong-name.pem",
        _cert("wrong-name", key, ca, ca_key, server=True, names=elsewhere),
        key,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    past = (-dt.timedelta(days=2), -dt.timedelta(days=1))
    out["expired"] = _write(
        d / "expired.pem", _cert("expired", key, ca, ca_key, server=True, valid=past), key
    )
    return out


@pytest.fixture(scope="module")
def tls_broker(pki, tmp_path_factory):
    """mosquitto with a plain listener (for the test's own clients) and a mutual-TLS one."""
    port = free_port()
    extra = (
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki['ca']}\ncertfile {pki['server']}\n"
        f"keyfile {pki['server'].with_suffix('.key')}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
    )
    with Mosquitto(extra=extra, workdir=tmp_path_factory.mktemp("tlsmq")) as b:
        b.tls_port = port
        yield b


@pytest.fixture(scope="module")
def bad_tls_broker(pki, tmp_path_factory):
    """mosquitto with a plain listener and two TLS ones (no client certificate needed) whose
    server certificates fail the client's checks: one names another host, one has expired."""
    ports = {"wrong_name": free_port(), "expired": free_port()}
    extra = "".join(
        f"listener {port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki[name]}\n"
        f"keyfile {pki[name].with_suffix('.key')}\n"
        for name, port in ports.items()
    )
    with Mosquitto(extra=extra, workdir=tmp_path_factory.mktemp("badtlsmq")) as b:
        b.tls_ports = ports
        yield b


def _ready_then_stops(agent: AgentProcess) -> None:
    """The agent connects (gets ready) and stops with exit 0; killed whatever happens."""
    try:
        agent.wait_ready()
        assert agent.stop() == 0
    finally:
        kill_left(agent)


def _agent(tmp_path, local_port: int, upstream_port: int, model, **broker_extra) -> AgentProcess:
    cfg = write_config(
        tmp_path / f"agent-{uuid.uuid4().hex[:6]}.yaml",
        local=local_port,
        upstream=upstream_port,
        model=model,
        spool=tmp_path / "spool.db",
        qos=0,
        persistent=False,
        agent={"id": f"tls-{uuid.uuid4().hex[:6]}"},
        source_extra=broker_extra.get("source"),
        local_extra=broker_extra.get("local"),
        upstream_extra=broker_extra.get("upstream"),
    )
    return AgentProcess(cfg, broker_extra.get("env", {}))


def assert_backoff(delays: list[float], first: float = 0.2, longest: float = 2.0) -> None:
    """Each logged ``retry_in`` (k = 1, 2, ... failed attempts) is 50-100 % of its
    exponential step min(longest, first * 2**k), as write_config's backoff sets it: the
    figures the agent computed, checked against the rule, with no clock involved."""
    assert len(delays) >= 2, delays
    for k, d in enumerate(delays, start=1):
        step = min(longest, first * 2**k)
        assert step / 2 - 0.01 <= d <= step + 0.01, (k, d, delays)


def _wait_event(agent: AgentProcess, name: str, count: int = 1, timeout: float = 20) -> list:
    until(lambda: len(agent.events(name)) >= count, timeout, 0.1)
    return agent.events(name)


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "stock-paho"])
def test_mutual_tls_to_both_brokers(tls_broker, pki, w1_models, tmp_path, fast):
    """Source and sink over mutual TLS (hostname checked): samples in, summaries out; the
    source's fast path splits PUBLISH packets from the TLS socket like from plain TCP."""
    tls = {
        "tls": {
            "ca": str(pki["ca"]),
            "cert": str(pki["client"]),
            "key": str(pki["client"].with_suffix(".key")),
        }
    }
    col = Collector(tls_broker.port, ["summary/#"])
    agent = _agent(
        tmp_path,
        tls_broker.tls_port,
        tls_broker.tls_port,
        w1_models[1],
        local={"host": "localhost", **tls},
        upstream={"host": "127.0.0.1", **tls},
        source={"fast_path": fast},
    )
    try:
        agent.wait_ready()
        items = w1_payloads(devices=10, samples=40)
        publish(tls_broker.port, "plant/tls/{device}/telemetry", items, qos=1)
        assert col.wait_for(lambda: sum(s["count"] for s in col.of("summary/")) >= 400, 30)
        assert agent.stop() == 0
        source = [e for e in agent.events("mqtt_connected") if e["client_id"].endswith("-in")]
        assert source and all(e["fast_path"] is fast for e in source)
    finally:
        kill_left(agent)
        col.close()
    print(f"\nFIGURES mutual_tls: samples=400, in_summaries={sum(s['count'] for s in col.of(''))}")


@pytest.mark.parametrize(
    ("case", "tls", "expect"),
    [
        ("wrong_ca", {"ca": "other_ca", "cert": "client"}, "CERTIFICATE_VERIFY_FAILED"),
        ("no_client_cert", {"ca": "ca"}, "certificate"),
    ],
)
def test_tls_refusals_are_clear_errors_with_backoff(
    tls_broker, pki, w1_models, tmp_path, case, tls, expect
):
    """A wrong CA or a missing client certificate: logged errors naming it, retried, alive."""
    conf = {"ca": str(pki[tls["ca"]])}
    if "cert" in tls:
        conf |= {"cert": str(pki["client"]), "key": str(pki["client"].with_suffix(".key"))}
    agent = _agent(
        tmp_path, tls_broker.tls_port, tls_broker.port, w1_models[1], local={"tls": conf}
    )
    try:

        def errors() -> list[dict]:
            found = agent.events("mqtt_connect_failed") + agent.events("mqtt_connection_lost")
            return [e for e in found if e.get("broker") == "local"]

        until(lambda: len(errors()) >= 3, 20, 0.1)
        assert agent.proc.poll() is None, "the agent must keep running and retrying"
    finally:
        agent.proc.kill()
        agent.proc.wait()
    texts = [str(e.get("error") or e.get("hint")) for e in errors()]
    print(f"\nFIGURES tls_{case}: attempts_logged={len(texts)}, first={texts[:1]}")
    assert len(texts) >= 2 and all(expect.lower() in t.lower() for t in texts), texts
    assert_backoff([e["retry_in"] for e in errors()])  # backing off, not a tight loop


def _refused(agent: AgentProcess, count: int = 3) -> list[dict]:
    """The agent's connect errors for broker ``local`` once ``count`` are logged (or 20 s)."""

    def errors() -> list[dict]:
        found = agent.events("mqtt_connect_failed") + agent.events("mqtt_connection_lost")
        return [e for e in found if e.get("broker") == "local"]

    try:
        until(lambda: len(errors()) >= count, 20, 0.1)
        assert agent.proc.poll() is None, "the agent must keep running and retrying"
    finally:
        agent.proc.kill()
        agent.proc.wait()
    connected = [e for e in agent.events("mqtt_connected") if e.get("broker") == "local"]
    assert not connected, connected
    return errors()


@pytest.mark.parametrize(
    ("host", "expect"),
    [
        ("localhost", "Hostname mismatch, certificate is not valid for 'localhost'"),
        ("127.0.0.1", "IP address mismatch, certificate is not valid for '127.0.0.1'"),
    ],
)
def test_hostname_mismatch_is_refused(bad_tls_broker, pki, w1_models, tmp_path, host, expect):
    """A broker whose certificate (signed by the trusted CA) names another host: each attempt
    is an error naming the mismatch, retried with backoff, never connected. With
    ``check_hostname: false`` the same listener connects: the name was the only fault."""
    port = bad_tls_broker.tls_ports["wrong_name"]
    tls = {"ca": str(pki["ca"])}
    agent = _agent(
        tmp_path, port, bad_tls_broker.port, w1_models[1], local={"host": host, "tls": tls}
    )
    errors = _refused(agent)
    texts = [e.get("error", "") for e in errors]
    print(f"\nFIGURES tls_hostname_{host}: attempts_logged={len(texts)}, first={texts[:1]}")
    assert len(texts) >= 3 and all(expect in t for t in texts), texts
    assert_backoff([e["retry_in"] for e in errors])
    unchecked = {"host": host, "tls": {**tls, "check_hostname": False}}
    agent = _agent(tmp_path, port, bad_tls_broker.port, w1_models[1], local=unchecked)
    _ready_then_stops(agent)


def test_expired_broker_certificate_is_refused(bad_tls_broker, pki, w1_models, tmp_path):
    """A broker certificate that expired yesterday (right CA, right names): each attempt is
    an error saying so, retried with backoff, never connected."""
    port = bad_tls_broker.tls_ports["expired"]
    local = {"host": "localhost", "tls": {"ca": str(pki["ca"])}}
    errors = _refused(_agent(tmp_path, port, bad_tls_broker.port, w1_models[1], local=local))
    texts = [e.get("error", "") for e in errors]
    print(f"\nFIGURES tls_expired: attempts_logged={len(texts)}, first={texts[:1]}")
    assert all("certificate has expired" in t for t in texts), texts
    assert_backoff([e["retry_in"] for e in errors])


# OpenSSL's own configuration caps what mosquitto (2.x: ``tls_version`` is a minimum) offers.
TLS12_ONLY = """\
openssl_conf = conf
[conf]
ssl_conf = ssl
[ssl]
system_default = system_default
[system_default]
MaxProtocol = TLSv1.2
"""


def test_min_version_above_the_brokers_is_refused(pki, w1_models, tmp_path):
    """A broker that speaks TLS 1.2 at most and a client with ``min_version: "1.3"``: each
    attempt is an error naming the protocol version and saying which setting asks for it,
    never connected. The same client with the default ``min_version: "1.2"`` connects."""
    (tmp_path / "mq").mkdir()
    (tmp_path / "openssl.cnf").write_text(TLS12_ONLY)
    port = free_port()
    extra = (
        f"listener {port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki['server']}\n"
        f"keyfile {pki['server'].with_suffix('.key')}\n"
    )
    env = {"OPENSSL_CONF": str(tmp_path / "openssl.cnf")}
    with Mosquitto(extra=extra, workdir=tmp_path / "mq", env=env) as b:
        tls = {"ca": str(pki["ca"])}
        local = {"host": "localhost", "tls": {**tls, "min_version": "1.3"}}
        errors = _refused(_agent(tmp_path, port, b.port, w1_models[1], local=local))
        agent = _agent(
            tmp_path, port, b.port, w1_models[1], local={"host": "localhost", "tls": tls}
        )
        _ready_then_stops(agent)
    texts = [f"{e.get('error')} {e.get('hint')}" for e in errors]
    print(f"\nFIGURES tls_min_version: attempts_logged={len(texts)}, first={texts[:1]}")
    assert all("protocol version" in t and "tls.min_version" in t for t in texts), texts
    assert_backoff([e["retry_in"] for e in errors])


@pytest.mark.skipif(
    not shutil.which("mosquitto_passwd"),
    reason="needs mosquitto_passwd (apt-get install mosquitto; some distributions ship it in "
    "mosquitto-clients)",
)
def test_username_password(w1_models, tmp_path):
    """Right password connects; a wrong one is a clear, backed-off error and never logged."""
    pwfile = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pwfile), "agent", "s3cret-right"], check=True
    )
    (tmp_path / "mq").mkdir()
    with Mosquitto(
        extra=f"password_file {pwfile}\n", anonymous=False, workdir=tmp_path / "mq"
    ) as b:
        creds = {"username": "${MQTT_USER}", "password": "${MQTT_PASS}"}

        def with_password(password: str) -> AgentProcess:
            """The agent on ``b`` whose environment gives user ``agent`` this password."""
            env = {"MQTT_USER": "agent", "MQTT_PASS": password}
            return _agent(
                tmp_path, b.port, b.port, w1_models[1], local=creds, upstream=creds, env=env
            )

        good = with_password("s3cret-right")
        _ready_then_stops(good)
        bad = with_password("s3cret-wrong")
        try:
            refused = _wait_event(bad, "mqtt_connect_refused", 6)
            assert bad.proc.poll() is None
        finally:
            bad.proc.kill()
            bad.proc.wait()
    local = [e for e in refused if e["broker"] == "local"]
    print(f"\nFIGURES wrong_password: refusals_logged={len(refused)}, reason={local[0]['reason']}")
    assert local and all(
        e["reason"] in ("Not authorized", "Bad user name or password") for e in local
    )
    assert all("password" in e["hint"] for e in local)
    assert_backoff([e["retry_in"] for e in local])
    for logs in (good.logs, bad.logs):
        assert not any("s3cret" in str(rec) for rec in logs)
