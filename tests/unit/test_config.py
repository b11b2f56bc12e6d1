"""Config validation: every error names the file, the key path and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.config import load_config, parse_config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
W1 = (ROOT / "configs" / "w1.yaml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def w1_with(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(W1)
    edit(data)
    return write(tmp_path, yaml.safe_dump(data))


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert all(line.startswith(f"{path}: ") for line in str(e.value).splitlines())
    return e.value.errors


def test_every_example_config_loads():
    """Every file in configs/ validates."""
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_hop_must_be_positive(tmp_path):
    """The issue's example message, path-qualified."""
    p = w1_with(tmp_path, lambda d: d["pipelines"][0]["window"].update(hop=0))
    assert errors_of(p) == ["pipelines[0].window.hop: Input should be greater than 0"]


def test_every_error_is_reported(tmp_path):
    """Several problems come back together, components included."""

    def edit(d):
        d["pipelines"][0]["window"]["size"] = "big"
        d["pipelines"][0]["handler"]["threads"] = 0
        d["pipelines"][0]["sinks"][0]["unknown_key"] = 1
        d["brokers"]["local"]["port"] = 70000

    errs = errors_of(w1_with(tmp_path, edit))
    size_error = "pipelines[0].window.size: Input should be a valid integer, unable to parse"
    assert any(e.startswith(size_error) for e in errs), errs
    assert "pipelines[0].handler.threads: Input should be greater than or equal to 1" in errs
    extra = "pipelines[0].sinks[0].unknown_key: Extra inputs are not permitted; expected one of"
    assert any(e.startswith(extra) for e in errs), errs
    assert "brokers.local.port: Input should be less than 65536" in errs


def test_unknown_type_lists_known_names(tmp_path):
    p = w1_with(tmp_path, lambda d: d["pipelines"][0]["handler"].update(type="nope"))
    (err,) = errors_of(p)
    assert err.startswith("pipelines[0].handler.type: unknown handler 'nope'; known: ")
    assert "onnx_autoencoder" in err


def test_misspelt_keys_get_the_closest_known_key(tmp_path):
    """A typo anywhere (section, pipeline, component, broker by name) names what was meant."""

    def edit(d):
        pipe = d["pipelines"][0]
        pipe["windw"] = pipe.pop("window")
        pipe["decoder"]["devise"] = pipe["decoder"].pop("device")
        d["brokers"]["local"]["keepalvie"] = 10
        d["spol"] = {}

    errs = errors_of(w1_with(tmp_path, edit))
    for line in (
        "pipelines[0].windw: Extra inputs are not permitted; did you mean 'window'?",
        "pipelines[0].decoder.devise: Extra inputs are not permitted; did you mean 'device'?",
        "brokers.local.keepalvie: Extra inputs are not permitted; did you mean 'keepalive'?",
        "spol: Extra inputs are not permitted; did you mean 'spool'?",
    ):
        assert line in errs, errs


def test_fields_and_channels_must_agree(tmp_path):
    def edit(d):
        d["pipelines"][0]["decoder"].update(fields=["a", "b", "c"], channels=4)
        d["pipelines"][0]["decoder"].pop("values", None)

    assert errors_of(w1_with(tmp_path, edit)) == [
        "pipelines[0].decoder: Value error, `fields` names 3 fields but `channels` is 4: "
        "with `fields` the channels are the fields; drop `channels` or make the two agree"
    ]


def test_unknown_type_near_a_known_one(tmp_path):
    p = w1_with(tmp_path, lambda d: d["pipelines"][0]["sinks"][0].update(type="mqqt"))
    (err,) = errors_of(p)
    assert err.startswith("pipelines[0].sinks[0].type: unknown sink 'mqqt'; known: ")
    assert err.endswith("; did you mean 'mqtt'?")


def test_unknown_broker_and_missing_env(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_VAR", raising=False)

    def edit(d):
        d["pipelines"][0]["source"]["broker"] = "nowhere"
        d["agent"]["id"] = "${NOT_SET_VAR}"
        d["brokers"]["local"]["port"] = "${NOT_SET_VAR}"

    errs = errors_of(w1_with(tmp_path, edit))
    assert "agent.id: environment variable NOT_SET_VAR is not set" in errs
    # one error per key: not also "Input should be a valid integer" for the unset variable
    assert [e for e in errs if e.startswith("brokers.local.port")] == [
        "brokers.local.port: environment variable NOT_SET_VAR is not set"
    ]
    assert len([e for e in errs if e.startswith("agent.id")]) == 1


def test_env_substitution_with_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MQTT_PORT", "2883")
    monkeypatch.delenv("W1_QOS", raising=False)
    cfg = load_config(ROOT / "configs" / "w1.yaml")
    assert cfg.brokers["local"].port == 2883
    assert cfg.pipelines[0].source.qos == 0


def test_literal_password_rejected(tmp_path, monkeypatch):
    """Secrets come from the environment only."""
    monkeypatch.setenv("UPLINK_PASS", "s3cret")
    monkeypatch.setenv("UPLINK_USER", "gw1")
    p = w1_with(tmp_path, lambda d: d["brokers"]["local"].update(username="u", password="hunter2"))
    user, password = sorted(errors_of(p), reverse=True)
    assert user.startswith("brokers.local.username: secrets must come from an environment")
    assert password.startswith("brokers.local.password: secrets must come from an environment")
    assert "hunter2" not in password
    ok = w1_with(
        tmp_path,
        lambda d: d["brokers"]["local"].update(
            username="${UPLINK_USER}", password="${UPLINK_PASS}"
        ),
    )
    broker = load_config(ok).brokers["local"]
    assert (broker.username, broker.password) == ("gw1", "s3cret")


def test_broken_yaml_names_line(tmp_path):
    (err,) = errors_of(write(tmp_path, "agent: {id: [\n"))
    assert err.startswith("line ") and "not valid YAML" in err


def test_shared_subscription_rejected_for_windows(tmp_path):
    p = w1_with(tmp_path, lambda d: d["pipelines"][0]["source"].update(topics=["$share/g/a/#"]))
    (err,) = errors_of(p)
    assert "windows would split" in err


def test_check_command_exit_codes(tmp_path, capsys):
    """`edge-agent check` exits 0 on good files and 2 printing every error on bad ones."""
    good = ROOT / "configs" / "w1.yaml"  # its model is built by the demo: not checked here
    assert main(["check", "--offline", str(good)]) == 0
    bad = w1_with(tmp_path, lambda d: d["pipelines"][0]["window"].update(hop=0))
    assert main(["check", "--offline", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: pipelines[0].window.hop: Input should be greater than 0" in err


def test_schema_covers_components(capsys):
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert '"JsonDecoderConfig"' in out and '"MqttSinkConfig"' in out


@pytest.mark.parametrize("word", ["none", "None", "null", "~"])
def test_max_clock_skew_none_as_documented(tmp_path, word):
    """`max_clock_skew: none` (the docs' spelling) turns the check off, like YAML null."""
    text = W1.replace("      qos: ${W1_QOS:-0}\n", f"      qos: 0\n      max_clock_skew: {word}\n")
    assert "max_clock_skew" in text
    assert load_config(write(tmp_path, text)).pipelines[0].source.max_clock_skew is None


def test_max_clock_skew_bad_word_names_the_key(tmp_path):
    p = w1_with(tmp_path, lambda d: d["pipelines"][0]["source"].update(max_clock_skew="never"))
    (error,) = errors_of(p)
    assert error.startswith("pipelines[0].source.max_clock_skew: ") and "duration" in error


def test_a_secret_with_a_default_is_rejected(tmp_path, monkeypatch):
    """``${UNSET:-hunter2}`` would put a literal password in place: refused, with the key."""
    monkeypatch.delenv("UNSET_PW", raising=False)
    p = w1_with(tmp_path, lambda d: d["brokers"]["local"].update(password="${UNSET_PW:-hunter2}"))
    (err,) = errors_of(p)
    assert err.startswith("brokers.local.password: a secret cannot have a default")
    assert "hunter2" not in err


def test_an_invalid_topic_filter_is_rejected_after_substitution(tmp_path, monkeypatch):
    """``plant/${LINE}/+/telemetry`` with LINE='#' would make paho raise at subscribe time."""
    monkeypatch.setenv("LINE", "#")
    p = w1_with(
        tmp_path,
        lambda d: d["pipelines"][0]["source"].update(topics=["plant/${LINE}/+/telemetry"]),
    )
    (err,) = errors_of(p)
    assert err.startswith("pipelines[0].source.topics: ")
    assert "'plant/#/+/telemetry' is not a valid topic filter" in err


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"host": "0.0.0.0"}, "metrics.host: '0.0.0.0' is not a loopback address"),
        ({"host": "0.0.0.0", "allow_remote": True}, "metrics.token: a non-loopback"),
    ],
)
def test_a_remote_metrics_endpoint_needs_a_token(tmp_path, metrics, expected):
    (err,) = errors_of(w1_with(tmp_path, lambda d: d.update(metrics=metrics)))
    assert err.startswith(expected)


def test_check_names_missing_tls_and_model_files_with_their_keys(tmp_path, capsys):
    """Files ``run`` would open (TLS material, the model) are checked by ``check`` and
    ``run``, each named with its key; ``--offline`` skips them."""

    def edit(d):
        d["brokers"]["local"]["tls"] = {"ca": str(tmp_path / "nope-ca.pem")}
        d["pipelines"][0]["handler"]["model"] = str(tmp_path / "nope.onnx")

    p = w1_with(tmp_path, edit)
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"brokers.local.tls.ca: {tmp_path / 'nope-ca.pem'} does not exist (expected" in err
    assert f"pipelines[0].handler.model: {tmp_path / 'nope.onnx'} does not exist" in err
    assert main(["check", "--offline", str(p)]) == 0
    run = subprocess.run(  # a process of its own: run sets up logging for the process
        [sys.executable, "-m", "agent", "run", "-c", str(p)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "brokers.local.tls.ca" in run.stderr, run.stderr


@pytest.mark.parametrize(("given", "seconds"), [("2ms", 0.002), (0, 0.0), (0.5, 0.5)])
def test_max_delay_takes_a_duration_or_zero(tmp_path, given, seconds):
    p = w1_with(tmp_path, lambda d: d["pipelines"][0]["source"].update(max_delay=given))
    assert load_config(p).pipelines[0].source.max_delay == seconds


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2s", "pipelines[0].source.max_delay: Input should be less than or equal to 1"),
        (-1, "pipelines[0].source.max_delay: Input should be greater than or equal to 0"),
        ("soon", "pipelines[0].source.max_delay: Value error, expected a duration such as"),
    ],
)
def test_max_delay_out_of_range_names_the_key(tmp_path, given, expected):
    p = w1_with(tmp_path, lambda d: d["pipelines"][0]["source"].update(max_delay=given))
    [error] = errors_of(p)
    assert error.startswith(expected), error


def test_source_coalesce_names_its_replacement():
    """``source.coalesce`` (the fast path's read wait) became part of ``max_delay``: a config
    that still sets it is told what to do, at its key path."""
    raw = {
        "brokers": {"local": {}},
        "pipelines": [
            {
                "name": "p",
                "source": {"broker": "local", "topics": ["t/#"], "coalesce": "2ms"},
                "handler": {"type": "onnx", "model": "m.onnx"},
                "sinks": [{"type": "stdout"}],
            }
        ],
    }
    with pytest.raises(ConfigError) as e:
        parse_config(raw, "old.yaml")
    assert "pipelines[0].source" in str(e.value) and "replaced by max_delay" in str(e.value)
