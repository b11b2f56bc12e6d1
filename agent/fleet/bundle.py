"""Signed desired states ("bundles"): Ed25519 keys, signing, and the agent's verification.

A desired-state message is a JSON envelope ``{"format", "doc", "key", "sig"}``: ``doc`` is
the base64 of the signed document's exact bytes (so no canonical JSON is needed), ``key``
the signer's key id and ``sig`` the Ed25519 signature of those bytes. The document holds
the version, the pipelines (YAML text), optional groups it is meant for, and each model by
name, size and sha256: small ones inline (base64), larger ones as chunks published on
``<root>/blob/<sha256>/<i>``, which need no signature of their own since the signed sha256
covers them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import time
from dataclasses import dataclass, field

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "edge-agent-bundle/1"
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
INLINE_MAX = 256 << 10  # bytes: larger models go as chunks
CHUNK_SIZE = 128 << 10


class Refused(Exception):
    """A desired state that is not applied; ``reason`` is the counter it lands in."""

    def __init__(self, reason: str, detail: str, version: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.version = version
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class ModelEntry:
    """One model of a desired state: inline ``data``, or ``chunks`` of ``chunk_size``."""

    name: str
    sha256: str
    size: int
    data: bytes | None = None
    chunks: int = 0
    chunk_size: int = 0


@dataclass(frozen=True)
class Desired:
    """A verified desired state."""

    version: int
    digest: str  # sha256 of the signed document: identifies the exact bundle
    config: str  # YAML text: {pipelines: [...]}
    models: list[ModelEntry] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    key: str = ""
    issued: float = 0.0


# -- keys --------------------------------------------------------------------------------
def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_text(public: Ed25519PublicKey) -> str:
    """The base64 form that goes into ``fleet.trusted_keys``."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))


def trusted(keys: list[str]) -> dict[str, Ed25519PublicKey]:
    """Trusted keys by key id."""
    out = {}
    for text in keys:
        k = load_public(text)
        out[key_id(k)] = k
    return out


def generate() -> tuple[bytes, str]:
    """A new key pair: (private key PEM, public key base64)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, public_text(private.public_key())


def load_private(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


# -- the operator's side ------------------------------------------------------------------
def make_doc(
    version: int,
    config: str,
    models: dict[str, bytes],
    groups: list[str] | None = None,
    *,
    inline_max: int = INLINE_MAX,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[dict, dict[str, bytes]]:
    """The document to sign, and the blobs (by sha256) that travel as chunks."""
    entries, blobs = [], {}
    for name, data in models.items():
        if not NAME.match(name):
            raise ValueError(f"model name {name!r}: letters, digits, '_', '.', '-' only")
        sha = hashlib.sha256(data).hexdigest()
        entry: dict = {"name": name, "sha256": sha, "size": len(data)}
        if len(data) <= inline_max:
            entry["data"] = base64.b64encode(data).decode()
        else:
            entry["chunks"] = max(1, math.ceil(len(data) / chunk_size))
            entry["chunk_size"] = chunk_size
            blobs[sha] = data
        entries.append(entry)
    doc = {
        "version": version,
        "issued": time.time(),
        "groups": list(groups or []),
        "config": config,
        "models": entries,
    }
    return doc, blobs


def sign(doc: dict, private: Ed25519PrivateKey) -> dict:
    """The signed envelope of ``doc``."""
    body = orjson.dumps(doc)
    return {
        "format": FORMAT,
        "doc": base64.b64encode(body).decode(),
        "key": key_id(private.public_key()),
        "sig": base64.b64encode(private.sign(body)).decode(),
    }


def chunks(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


# -- the agent's side ---------------------------------------------------------------------
def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise Refused("malformed", f"{what}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("malformed", f"{what}: not valid base64") from None


def verify(
    payload: bytes,
    keys: dict[str, Ed25519PublicKey],
    *,
    max_bundle: int,
    max_model: int,
) -> Desired:
    """Check size, signature and content of a desired-state message; raise :class:`Refused`."""
    if len(payload) > max_bundle:
        raise Refused("oversized", f"{len(payload)} bytes > fleet.max_bundle {max_bundle}")
    try:
        env = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise Refused("malformed", f"not JSON ({e})") from None
    if not isinstance(env, dict) or env.get("format") != FORMAT:
        raise Refused("malformed", f"not an {FORMAT} envelope")
    if not env.get("sig"):
        raise Refused("unsigned", "the envelope has no signature")
    body, sig = _b64(env.get("doc"), "doc"), _b64(env.get("sig"), "sig")
    key = keys.get(env.get("key"))  # type: ignore[arg-type]
    if key is None:
        raise Refused("untrusted_key", f"key {env.get('key')!r} is not in fleet.trusted_keys")
    try:
        key.verify(sig, body)
    except InvalidSignature:
        raise Refused("bad_signature", f"signature does not verify with key {env['key']}") from None
    return _parse_doc(body, env["key"], max_model)


def _parse_doc(body: bytes, key: str, max_model: int) -> Desired:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Refused("malformed", f"signed document is not JSON ({e})") from None
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise Refused("malformed", "version: expected a positive integer")
    config, groups, models = doc.get("config"), doc.get("groups", []), doc.get("models", [])
    if not isinstance(config, str):
        raise Refused("malformed", "config: expected YAML text", version)
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise Refused("malformed", "groups: expected a list of names", version)
    if not isinstance(models, list):
        raise Refused("malformed", "models: expected a list", version)
    entries = [_model(m, i, version, max_model) for i, m in enumerate(models)]
    if len({m.name for m in entries}) != len(entries):
        raise Refused("malformed", "models: duplicate names", version)
    return Desired(
        version=version,
        digest=hashlib.sha256(body).hexdigest(),
        config=config,
        models=entries,
        groups=groups,
        key=key,
        issued=float(doc.get("issued") or 0),
    )


def _model(m: object, i: int, version: int, max_model: int) -> ModelEntry:
    where = f"models[{i}]"
    if not isinstance(m, dict):
        raise Refused("malformed", f"{where}: expected a mapping", version)
    name, sha, size = m.get("name"), m.get("sha256"), m.get("size")
    if not isinstance(name, str) or not NAME.match(name):
        raise Refused("malformed", f"{where}.name: letters, digits, '_', '.', '-' only", version)
    if not isinstance(sha, str) or not SHA256.match(sha):
        raise Refused("malformed", f"{where}.sha256: expected 64 lowercase hex digits", version)
    if not isinstance(size, int) or size < 0:
        raise Refused("malformed", f"{where}.size: expected a byte count", version)
    if size > max_model:
        raise Refused("oversized", f"{where} ({name}): {size} bytes > fleet.max_model", version)
    if "data" in m:
        data = _b64(m["data"], f"{where}.data")
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            raise Refused(
                "model_hash_mismatch", f"{name}: inline data does not match its sha256", version
            )
        return ModelEntry(name, sha, size, data=data)
    n, chunk_size = m.get("chunks"), m.get("chunk_size")
    if not isinstance(n, int) or not isinstance(chunk_size, int) or n < 1 or chunk_size < 1:
        raise Refused("malformed", f"{where}: expected data, or chunks and chunk_size", version)
    if n != max(1, math.ceil(size / chunk_size)):
        raise Refused("malformed", f"{where}: {n} chunks of {chunk_size} for {size}", version)
    return ModelEntry(name, sha, size, chunks=n, chunk_size=chunk_size)


def assemble(entry: ModelEntry, parts: dict[int, bytes]) -> bytes:
    """A chunked model's bytes once every chunk is in; raise Refused on a hash mismatch."""
    data = b"".join(parts[i] for i in range(entry.chunks))
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise Refused(
            "model_hash_mismatch",
            f"{entry.name}: the {entry.chunks} chunks received do not match its sha256",
        )
    return data
