"""`edge-agent decode`: payload files and JSON-lines message logs through a pipeline's
decoder, one JSON object per input."""

from __future__ import annotations

import base64

import orjson
import pytest
import yaml

from agent.cli import main
from agent.proto.sparkplug import DOUBLE, INT8
from tests.conftest import ROOT
from tests.support.payloads import T0, analytics, births, ddata, full, minimal, spb


def _config(tmp_path, decoder: dict, **source) -> str:
    data = yaml.safe_load((ROOT / "configs" / "people_flow.yaml").read_text())
    data["pipelines"][0]["decoder"] = decoder
    data["pipelines"][0]["source"].update(source)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    status = main(["decode", *argv])
    out, err = capsys.readouterr()
    return status, [orjson.loads(line) for line in out.splitlines()], err


def test_camera_payload_files(tmp_path, capsys):
    """A full-schema message and a minimal frame: objects with label, track and box."""
    cfg = _config(tmp_path, {"type": "deepstream_full", "classes": ["person"]})
    f = tmp_path / "full.json"
    f.write_bytes(full("cam1", T0, 42, (10, 20, 40, 120), "Person").payload)
    status, (result,), _ = _run(capsys, "-c", cfg, "--topic", "ds/cam1", str(f))
    assert status == 0
    assert result["samples"] == 1 and result["devices"] == ["cam1"] and result["errors"] == {}
    assert result["values"] == [[1.0, 1.0]] and result["ts"] == [T0]
    assert result["objects"] == [
        {"frame": 0, "label": "Person", "track": 42, "box": [10, 20, 40, 120], "confidence": 0.9}
    ]
    status, (result,), _ = _run(
        capsys, "-c", str(ROOT / "configs" / "people_flow.yaml"), "--topic", "t", str(f)
    )
    assert status == 1 and result["errors"] == {"schema": 1}, "a full message, minimal decoder"
    assert result["rejects"][0].startswith("schema: bad or missing field")


def test_sparkplug_message_log_in_order(tmp_path, capsys):
    """Births then alias-only data from a JSON-lines log: the session carries over."""
    log = tmp_path / "spb.jsonl"
    ints = [{"name": "Pump/Pressure", "alias": 1, "datatype": INT8, "int_value": 0}]
    ints += [
        {"name": f"Pump/{n}", "alias": a, "datatype": DOUBLE, "double_value": 1.0}
        for a, n in ((2, "Flow"), (3, "Current"), (4, "Temperature"))
    ]
    msgs = [births(group="plant1")[0], spb("spBv1.0/plant1/DBIRTH/n1/pump1", 1, ints)]
    msgs.append(spb("spBv1.0/plant1/DDATA/n1/pump1", 2, [{"alias": 1, "int_value": 253}]))
    msgs.append(ddata(7, 1.0, group="plant1"))  # a gap
    log.write_bytes(
        b"".join(
            orjson.dumps({"topic": m.topic, "payload_b64": base64.b64encode(m.payload).decode()})
            + b"\n"
            for m in msgs
        )
    )
    status, out, _ = _run(
        capsys, "-c", str(ROOT / "configs" / "sparkplug.yaml"), "--messages", str(log)
    )
    assert status == 1
    assert [r["samples"] for r in out] == [0, 0, 1, 1]
    assert out[0]["states"] == [{"device": "plant1/n1", "state": "online", "ts": T0}]
    assert out[2]["values"] == [[-3.0, 1.0, 1.0, 1.0]] and out[2]["errors"] == {}
    assert out[3]["errors"] == {"seq_gap": 1} and out[3]["seq"] == [7]
    assert out[3]["control"] == ["spBv1.0/plant1/NCMD/n1"]


def test_nvdsanalytics_and_clock_rule(tmp_path, capsys):
    """Counts per camera and line/ROI; a 1970 clock is shown as what the pipeline drops."""
    cfg = _config(tmp_path, {"type": "deepstream_analytics"}, max_clock_skew="1d")
    on_time, unset = tmp_path / "a.json", tmp_path / "b.json"
    on_time.write_bytes(analytics("cam1", T0, 1, {"RF": 2}, {"Entry": 5}).payload)
    unset.write_bytes(analytics("cam2", 12.5, 1, {"RF": 1}, {}).payload)
    status, out, _ = _run(capsys, "-c", cfg, "--topic", "ds", str(on_time), str(unset))
    assert status == 1
    assert out[0]["devices"] == ["cam1/roi/RF", "cam1/line/Entry", "cam1/overcrowding/OC"]
    assert out[0]["values"] == [[2.0], [5.0], [0.0]] and out[0]["errors"] == {}
    assert out[1]["errors"] == {"ts_past": 2} and "max_clock_skew: none" in out[1]["rejects"][0]


def test_empty_minimal_payload_is_not_an_error(tmp_path, capsys):
    cfg = str(ROOT / "configs" / "people_flow.yaml")
    empty, frame = tmp_path / "empty", tmp_path / "frame.json"
    empty.write_bytes(b"")
    frame.write_bytes(minimal("c", T0, ["3|1|2|3|4|Person|#|male|45|||formal|0.92"], 7).payload)
    status, out, _ = _run(capsys, "-c", cfg, "--topic", "t", str(empty), str(frame))
    assert status == 0 and [r["samples"] for r in out] == [0, 1]
    assert out[1]["objects"][0]["confidence"] == 0.92 and out[1]["seq"] == [7]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "either --topic"),
        (["--topic", "t"], "at least one payload FILE"),
        (["--topic", "t", "--messages", "m.jsonl"], "either --topic"),
        (["--messages", "bad.jsonl"], "bad.jsonl:2: expected"),
        (["--pipeline", "other", "--topic", "t", "x"], "no pipeline 'other'"),
        (["--topic", "t", "missing.bin"], "cannot read missing.bin"),
    ],
)
def test_usage_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"topic": "t", "payload_b64": ""}\n{"topic": 1}\n')
    status, out, err = _run(capsys, "-c", str(ROOT / "configs" / "people_flow.yaml"), *argv)
    assert status == 2 and out == [] and message in err
