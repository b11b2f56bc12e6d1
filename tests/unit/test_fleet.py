"""Fleet bundles without a broker: signing and every refusal, composing, choosing, restarts."""

from __future__ import annotations

import base64
import hashlib
import re

import orjson
import pytest
import yaml

from agent.config import parse_config
from agent.errors import ConfigError
from agent.fleet import bundle, topics
from agent.fleet.bundle import Refused
from agent.fleet.compose import compose, extract
from agent.fleet.manager import FleetManager
from agent.fleet.state import FleetState

LIMITS = {"max_bundle": 1 << 20, "max_model": 1 << 20}
MODEL = b"onnx-bytes-" * 100


@pytest.fixture(scope="module")
def key():
    pem, public = bundle.generate()
    return bundle.load_private(pem), public


def _pipes(model: str = "fleet:m.onnx", hop: int = 8) -> str:
    pipe = {
        "name": "w1",
        "source": {"broker": "local", "topics": ["x/+/t"]},
        "decoder": {"type": "json", "device": "topic[1]", "values": "v", "channels": 8},
        "window": {"size": 32, "hop": hop},
        "handler": {"type": "onnx_autoencoder", "model": model},
        "sinks": [{"type": "stdout"}],
    }
    return yaml.safe_dump({"pipelines": [pipe]})


def _signed(key, version=2, models=None, **kw) -> bytes:
    doc, _ = bundle.make_doc(
        version, _pipes(), {"m.onnx": MODEL} if models is None else models, **kw
    )
    return orjson.dumps(bundle.sign(doc, key[0]))


def _local(tmp_path, public: str, **fleet) -> dict:
    return {
        "agent": {"id": "gw1"},
        "brokers": {"local": {"port": 1883}},
        "pipelines": yaml.safe_load(_pipes(str(tmp_path / "local.onnx")))["pipelines"],
        "fleet": {
            "broker": "local",
            "groups": ["line-a"],
            "trusted_keys": [public],
            "state_dir": str(tmp_path / "fleet"),
            **fleet,
        },
    }


def test_signed_bundle_verifies_with_inline_model(key):
    d = bundle.verify(_signed(key), bundle.trusted([key[1]]), **LIMITS)
    assert d.version == 2 and d.models[0].data == MODEL
    assert d.models[0].sha256 == hashlib.sha256(MODEL).hexdigest()


def test_every_bad_bundle_is_refused_with_its_reason(key):
    keys = bundle.trusted([key[1]])
    env = orjson.loads(_signed(key))
    doc = orjson.loads(base64.b64decode(env["doc"]))
    forged = {**env, "doc": base64.b64encode(orjson.dumps({**doc, "version": 99})).decode()}
    other, _ = bundle.generate()
    untrusted = bundle.sign(doc, bundle.load_private(other))
    wrong_sha = {**doc, "models": [{**doc["models"][0], "sha256": "0" * 64}]}
    cases = {
        "bad_signature": orjson.dumps(forged),
        "untrusted_key": orjson.dumps(untrusted),
        "unsigned": orjson.dumps({k: v for k, v in env.items() if k != "sig"}),
        "malformed": b"{not json",
        "model_hash_mismatch": orjson.dumps(bundle.sign(wrong_sha, key[0])),
    }
    for reason, payload in cases.items():
        with pytest.raises(Refused) as e:
            bundle.verify(payload, keys, **LIMITS)
        assert e.value.reason == reason, (reason, e.value)
    with pytest.raises(Refused, match="max_bundle") as e:
        bundle.verify(_signed(key), keys, max_bundle=100, max_model=1 << 20)
    assert e.value.reason == "oversized"
    with pytest.raises(Refused, match="max_model") as e:
        bundle.verify(_signed(key), keys, max_bundle=1 << 20, max_model=100)
    assert e.value.reason == "oversized"


def test_chunked_model_is_assembled_and_checked(key):
    doc, blobs = bundle.make_doc(3, _pipes(), {"m.onnx": MODEL}, inline_max=10, chunk_size=256)
    d = bundle.verify(orjson.dumps(bundle.sign(doc, key[0])), bundle.trusted([key[1]]), **LIMITS)
    entry = d.models[0]
    parts = dict(enumerate(bundle.chunks(blobs[entry.sha256], entry.chunk_size)))
    assert entry.data is None and entry.chunks == len(parts) == 5
    assert bundle.assemble(entry, parts) == MODEL
    parts[2] = parts[2][:-1] + b"X"
    with pytest.raises(Refused) as e:
        bundle.assemble(entry, parts)
    assert e.value.reason == "model_hash_mismatch"
    assert topics.parse_blob("fleet", topics.blob("fleet", entry.sha256, 4)) == (entry.sha256, 4)


def test_compose_keeps_local_sections_and_resolves_models(tmp_path, key):
    local = tmp_path / "agent.yaml"
    local.write_text(yaml.safe_dump(_local(tmp_path, key[1])))
    staged = {"m.onnx": tmp_path / "v2" / "m.onnx"}
    cfg = compose(local, _pipes(hop=4), staged, "fleet version 2")
    assert cfg.agent.id == "gw1" and cfg.fleet.trusted_keys == [key[1]]
    assert cfg.pipelines[0].handler.model == str(staged["m.onnx"])
    with pytest.raises(ConfigError, match=re.escape("pipelines[0].window.hop")):
        compose(local, _pipes(hop=0), staged, "fleet version 3")
    with pytest.raises(ConfigError, match=re.escape("model 'm.onnx' is not in the bundle")):
        compose(local, _pipes(), {}, "fleet version 4")
    sneaky = yaml.safe_dump({**yaml.safe_load(_pipes()), "fleet": {"trusted_keys": []}})
    with pytest.raises(ConfigError, match="fleet: comes from the gateway's local config only"):
        compose(local, sneaky, staged, "fleet version 5")


def test_extract_names_models_by_bundle_name(tmp_path, key):
    model = tmp_path / "pump.onnx"
    model.write_bytes(MODEL)
    raw = _local(tmp_path, key[1])
    raw["pipelines"][0]["handler"]["model"] = str(model)
    path = tmp_path / "ops.yaml"
    path.write_text(yaml.safe_dump(raw))
    text, models = extract(path, [model])
    assert yaml.safe_load(text)["pipelines"][0]["handler"]["model"] == "fleet:pump.onnx"
    assert models == {"pump.onnx": MODEL}
    other = tmp_path / "other.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=re.escape("other.onnx")):
        extract(path, [model, other])


def test_fleet_section_is_checked(tmp_path, key):
    raw = _local(tmp_path, key[1], broker="nowhere", trusted_keys=["c2hvcnQ="])
    raw["pipelines"][0]["workers"] = 2
    raw["pipelines"][0]["source"]["topics"] = ["a/+/t", "b/+/t"]
    with pytest.raises(ConfigError) as e:
        parse_config(raw, "agent.yaml")
    text = str(e.value)
    assert "fleet.trusted_keys[0]" in text and "base64 of 32 bytes" in text
    raw["fleet"]["trusted_keys"] = [key[1]]
    with pytest.raises(ConfigError) as e:
        parse_config(raw, "agent.yaml")
    assert "fleet.broker: unknown broker 'nowhere'" in str(e.value)
    assert "pipelines[0].workers: a fleet-managed agent" in str(e.value)


def _manager(tmp_path, key) -> FleetManager:
    path = tmp_path / "agent.yaml"
    raw = _local(tmp_path, key[1])
    path.write_text(yaml.safe_dump(raw))
    return FleetManager(path, parse_config(raw, str(path)))


def test_newest_version_wins_redelivery_is_quiet_replay_is_counted(tmp_path, key):
    m = _manager(tmp_path, key)
    own, group = m.desired_topics
    m._take(group, _signed(key, version=3))
    m._take(own, _signed(key, version=2))
    topic, d = m._target()
    assert (topic, d.version) == (group, 3)
    m._take(own, _signed(key, version=3))  # same version on the agent's own topic: it wins
    assert m._target()[0] == own
    m.state.highest = 3
    m.state.applied = {"version": 3, "digest": d.digest, "models": {}, "applied_at": 0}
    m.desired = {group: d}
    assert m._target() is None and m.state.counts == {}  # the running bundle, redelivered
    old = _signed(key, version=1)
    m._take(group, old)
    assert m._target() is None and m.state.counts == {"replayed": 1}
    m._take(group, old)  # the same message again (a reconnect): not counted twice
    assert m._target() is None and m.state.counts == {"replayed": 1}
    m._take(group, _signed(key, version=4, groups=["line-b"]))
    assert m.state.counts["wrong_group"] == 1 and group not in m.desired
    m._take(group, 2_000_000)  # a payload the network thread measured and did not queue
    assert m.state.counts["oversized"] == 1
    assert FleetState(tmp_path / "fleet").counts == m.state.counts  # persisted


def test_a_version_interrupted_mid_gate_fails_and_an_unusable_one_falls_back(tmp_path, key):
    m = _manager(tmp_path, key)
    m.state.trying = {"version": 5, "digest": "d5"}
    m.state.save()
    cfg = _manager(tmp_path, key).startup_config()
    st = FleetState(tmp_path / "fleet")
    assert cfg.pipelines[0].handler.model == str(tmp_path / "local.onnx")
    assert st.trying is None and st.last["outcome"] == "failed" and st.counts["interrupted"] == 1
    assert "interrupted" in st.last["reason"] and st.last["digest"] == "d5"

    st.write_pipelines(4, _pipes())
    st.write_model(4, "m.onnx", MODEL)
    st.applied = {
        "version": 4,
        "digest": "d4",
        "models": {"m.onnx": hashlib.sha256(MODEL).hexdigest()},
    }
    st.save()
    cfg = _manager(tmp_path, key).startup_config()  # the last good version runs
    assert cfg.pipelines[0].handler.model == str(st.dir(4) / "models" / "m.onnx")
    (st.dir(4) / "models" / "m.onnx").write_bytes(b"changed on disk")
    cfg = _manager(tmp_path, key).startup_config()  # not the signed bytes: the local file runs
    st = FleetState(tmp_path / "fleet")
    assert cfg.pipelines[0].handler.model == str(tmp_path / "local.onnx")
    assert st.applied is None and "is not the signed" in st.last["reason"]
