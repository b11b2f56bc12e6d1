"""``edge-agent fleet``: the operator's side of a fleet rollout.

edge-agent fleet keygen --out ops                    # ops.key (private), ops.pub
edge-agent fleet sign agent.yaml model.onnx --key ops.key --version 7 -o v7.bundle
edge-agent fleet publish v7.bundle --broker host:1883 --group line-a --canary 25% --wait 60
edge-agent fleet publish v7.bundle --broker host:1883 --group line-a --wait 120
edge-agent fleet status --broker host:1883
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import AgentError
from agent.fleet import bundle, topics
from agent.fleet.compose import extract

DONE = ("applied", "failed", "rolled_back")
REFUSALS = frozenset(
    {"unsigned", "bad_signature", "untrusted_key", "replayed", "oversized", "malformed"}
    | {"wrong_group"}
)


# -- files ---------------------------------------------------------------------------------
def read_bundle(path: str | Path) -> tuple[bytes, dict, dict[str, bytes]]:
    """(desired-state message, its signed document, blobs by sha256) of a bundle file."""
    data = orjson.loads(Path(path).read_bytes())
    desired = orjson.dumps(data["desired"])
    doc = orjson.loads(base64.b64decode(data["desired"]["doc"]))
    blobs = {sha: base64.b64decode(b) for sha, b in data.get("blobs", {}).items()}
    return desired, doc, blobs


def doc_version(payload: bytes) -> int | None:
    """The version a desired-state message claims (unverified: for display only)."""
    try:
        return int(orjson.loads(base64.b64decode(orjson.loads(payload)["doc"]))["version"])
    except Exception:
        return None


def keygen(args: argparse.Namespace) -> int:
    key, pub = Path(args.out + ".key"), Path(args.out + ".pub")
    for p in (key, pub):
        if p.exists():
            print(f"error: {p} exists; choose another --out", file=sys.stderr)
            return 2
    pem, public = bundle.generate()
    key.touch(mode=0o600)
    key.write_bytes(pem)
    pub.write_text(public + "\n")
    print(f"private key: {key} (keep it off the gateways)\npublic key:  {pub}")
    print(f"agents trust it with:\n  fleet:\n    trusted_keys: [{public}]")
    return 0


def sign(args: argparse.Namespace) -> int:
    private = bundle.load_private(Path(args.key).read_bytes())
    text, models = extract(args.config, [Path(m) for m in args.models])
    doc, blobs = bundle.make_doc(
        args.version,
        text,
        models,
        args.group,
        inline_max=args.inline_max,
        chunk_size=args.chunk_size,
    )
    envelope = bundle.sign(doc, private)
    encoded = {sha: base64.b64encode(b).decode() for sha, b in blobs.items()}
    out = {"desired": envelope, "blobs": encoded}
    Path(args.output).write_bytes(orjson.dumps(out))
    size = len(orjson.dumps(envelope))
    kinds = [f"{m['name']} ({'chunked' if 'chunks' in m else 'inline'})" for m in doc["models"]]
    print(
        f"{args.output}: version {args.version}, key {envelope['key']}, desired state "
        f"{size} bytes, models: {', '.join(kinds) or 'none'}"
    )
    return 0


# -- the broker ------------------------------------------------------------------------------
class Fleet:
    """A paho session on the fleet broker: snapshots of retained state, publishing."""

    def __init__(self, args: argparse.Namespace) -> None:
        host, _, port = args.broker.partition(":")
        self.root = args.topic
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleet-cli-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if args.username:
            self.c.username_pw_set(args.username, os.environ.get(args.password_env or "", None))
        if args.ca:
            self.c.tls_set(ca_certs=args.ca)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.reported: dict[str, dict] = {}
        self.reported_at: dict[str, float] = {}
        self.desired: dict[str, bytes] = {}  # retained desired states by topic
        self._sentinel = f"{self.root}/cli/{uuid.uuid4().hex}"
        self._synced = threading.Event()
        self.c.on_message = self._on_message
        self.c.connect(host, int(port or 1883), 30)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.changed:
            if msg.topic == self._sentinel:
                self._synced.set()
            elif msg.topic.endswith("/reported"):
                try:
                    rec = orjson.loads(msg.payload)
                except orjson.JSONDecodeError:
                    return
                self.reported[rec.get("agent", msg.topic)] = rec
                self.reported_at[rec.get("agent", msg.topic)] = time.monotonic()
            elif msg.topic.endswith("/desired"):
                if msg.payload:
                    self.desired[msg.topic] = msg.payload
                else:
                    self.desired.pop(msg.topic, None)
            self.changed.notify_all()

    def snapshot(self, timeout: float = 10) -> None:
        """Receive every retained reported and desired state (in order before a marker)."""
        filters = [
            f"{self.root}/agent/+/reported",
            f"{self.root}/agent/+/desired",
            f"{self.root}/group/+/desired",
            self._sentinel,
        ]
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe([(f, 1) for f in filters])
        if not done.wait(timeout):
            raise TimeoutError("the broker did not acknowledge the subscription")
        self.c.publish(self._sentinel, b"x", qos=1).wait_for_publish(timeout)
        if not self._synced.wait(timeout):
            raise TimeoutError("retained fleet state did not arrive")

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(60)

    def members(self, group: str) -> list[str]:
        with self.lock:
            return sorted(a for a, r in self.reported.items() if group in r.get("groups", []))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _canary(spec: str, members: list[str]) -> list[str]:
    """Agent ids from ``a1,a2`` or ``N%`` of the group (the same ones for every version)."""
    if spec.endswith("%"):
        n = math.ceil(float(spec[:-1]) / 100 * len(members))
        ranked = sorted(members, key=lambda a: hashlib.sha256(a.encode()).hexdigest())
        return ranked[:n]
    return [a.strip() for a in spec.split(",") if a.strip()]


def publish(args: argparse.Namespace) -> int:
    desired, doc, blobs = read_bundle(args.bundle)
    version, groups = doc["version"], doc.get("groups") or []
    if args.group and groups and args.group not in groups:
        print(f"error: the bundle is signed for groups {groups}, not {args.group}", file=sys.stderr)
        return 2
    fleet = Fleet(args)
    try:
        fleet.snapshot()
        members = fleet.members(args.group) if args.group else []
        for m in doc["models"]:  # the chunks first: an agent fetches them once it has the state
            if "chunks" in m:
                parts = bundle.chunks(blobs[m["sha256"]], m["chunk_size"])
                for i, part in enumerate(parts):
                    fleet.publish(topics.blob(fleet.root, m["sha256"], i), part)
        targets: list[str]
        if args.agent or args.canary:
            targets = args.agent or _canary(args.canary, members)
            if not targets:
                print("error: the canary selects no agent (none reported yet?)", file=sys.stderr)
                return 2
            t0 = time.monotonic()
            for a in targets:
                fleet.publish(topics.agent_desired(fleet.root, a), desired)
        else:
            targets = members
            t0 = time.monotonic()
            fleet.publish(topics.group_desired(fleet.root, args.group), desired)
            for a in members:  # promoted: the canaries' own desired states are not needed
                t = topics.agent_desired(fleet.root, a)
                held = fleet.desired.get(t)
                if held is not None and (doc_version(held) or 0) <= version:
                    fleet.publish(t, b"")
        where = f"agents {targets}" if args.agent or args.canary else f"group {args.group}"
        print(f"published version {version} to {where}")
        if not args.wait:
            return 0
        return _wait(fleet, targets, version, t0, args.wait)
    finally:
        fleet.close()


def _outcome(rec: dict | None, version: int) -> str | None:
    if rec is None:
        return None
    if rec.get("version") == version and rec.get("state") == "applied":
        return "applied"
    last = rec.get("last") or {}
    if last.get("version") == version and last.get("outcome") in DONE:
        return last["outcome"]
    return None


def _wait(fleet: Fleet, targets: list[str], version: int, t0: float, timeout: float) -> int:
    """Wait until every target reports the version done; print when each got there."""
    deadline = t0 + timeout
    seen: dict[str, tuple[str, float]] = {}
    with fleet.changed:
        while len(seen) < len(targets):
            for a in targets:
                out = _outcome(fleet.reported.get(a), version)
                if out and a not in seen:  # 0: it had the version before this publish
                    seen[a] = (out, max(0.0, fleet.reported_at[a] - t0))
            left = deadline - time.monotonic()
            if len(seen) == len(targets) or left <= 0:
                break
            fleet.changed.wait(left)
    for a in targets:
        out, secs = seen.get(a, ("no answer", timeout))
        print(f"  {a:24} {out:12} {secs:7.2f} s")
    ok = all(seen.get(a, ("",))[0] == "applied" for a in targets)
    took = max((s for _, s in seen.values()), default=0.0)
    print(
        f"version {version}: applied on {sum(o == 'applied' for o, _ in seen.values())} of "
        f"{len(targets)} agents, the last after {took:.2f} s"
    )
    return 0 if ok else 1


def status(args: argparse.Namespace) -> int:
    fleet = Fleet(args)
    try:
        fleet.snapshot()
    finally:
        fleet.close()
    group_v = {t.split("/")[-2]: doc_version(p) for t, p in fleet.desired.items() if "/group/" in t}
    rows = []
    for a, r in sorted(fleet.reported.items()):
        if args.group and args.group not in r.get("groups", []):
            continue
        own = fleet.desired.get(topics.agent_desired(fleet.root, a))
        target = [doc_version(own)] if own else []
        target += [group_v[g] for g in r.get("groups", []) if g in group_v]
        last = r.get("last") or {}
        counts = r.get("counts") or {}
        refused = sum(v for k, v in counts.items() if k in REFUSALS)
        failed = sum(v for k, v in counts.items() if k not in REFUSALS and k != "applied")
        rows.append(
            {
                "agent": a,
                "groups": ",".join(r.get("groups", [])),
                "version": r.get("version") or "local",
                "state": r.get("state"),
                "desired": max((v for v in target if v), default="-"),
                "canary": "yes" if own else "",
                "last": f"v{last.get('version')} {last.get('outcome')}" if last else "",
                "reason": (last.get("reason") or "")[:100],
                "refusal": r.get("last_refused") or {},
                "refused": refused,
                "failed": failed,
                "uptime": r.get("uptime"),
                "age": round(time.time() - r.get("ts", 0), 1),
            }
        )
    if args.json:
        body = {"groups": group_v, "agents": rows}
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return 0
    cols = ["agent", "groups", "version", "state", "desired", "canary", "last", "refused"]
    cols += ["failed", "age"]
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
        if r["reason"]:
            print(f"    last: {r['reason']}")
        if r["refusal"]:
            f = r["refusal"]
            print(f"    refused v{f.get('version')}: {f.get('reason')}: {f.get('detail', '')[:80]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("keygen", help="a new Ed25519 key pair: PREFIX.key and PREFIX.pub")
    k.add_argument("--out", required=True, help="file prefix")
    k.set_defaults(func=keygen)

    s = sub.add_parser("sign", help="a config's pipelines and models -> a signed bundle")
    s.add_argument("config", help="a config `edge-agent check` accepts; its pipelines are sent")
    s.add_argument("models", nargs="*", help="model files the pipelines name")
    s.add_argument("--key", required=True, help="private key (from keygen)")
    s.add_argument("--version", required=True, type=int, help="greater than every earlier one")
    s.add_argument("--group", action="append", default=[], help="only for these groups")
    s.add_argument("--inline-max", type=int, default=bundle.INLINE_MAX, help="bytes (else chunked)")
    s.add_argument("--chunk-size", type=int, default=bundle.CHUNK_SIZE, help="bytes per chunk")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=sign)

    for name, func, text in (
        ("publish", publish, "publish a bundle to a group, its canaries, or agents"),
        ("status", status, "a table of the agents: version, state, last outcome"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--broker", required=True, help="HOST[:PORT]")
        c.add_argument("--topic", default="fleet", help="root of the fleet topics")
        c.add_argument("--username")
        c.add_argument("--password-env", help="environment variable holding the password")
        c.add_argument("--ca", help="CA file: connect with TLS")
        c.set_defaults(func=func)
        if name == "publish":
            c.add_argument("bundle")
            to = c.add_mutually_exclusive_group(required=True)
            to.add_argument("--group", help="the group's desired state")
            to.add_argument("--agent", action="append", help="an agent's own desired state")
            c.add_argument("--canary", help="with --group: only these agents (a1,a2) or N%%")
            c.add_argument("--wait", type=float, default=0, help="seconds to wait for the agents")
        else:
            c.add_argument("--group", help="only this group's agents")
            c.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "canary", None) and not args.group:
        print("error: --canary needs --group", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except AgentError as e:  # a config that `check` refuses
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
