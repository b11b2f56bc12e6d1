"""`edge-agent evaluate`: the datasets replayed through the pipeline give the manifest's
numbers (so the runtime scores the way the models were measured)."""

from __future__ import annotations

import json

import pytest

from agent.cli import main
from agent.models import manifest

SKAB_KEYS = ("f1", "far_pct", "mar_pct", "cp_standard", "cp_lowfp", "cp_lowfn")


def run_json(capsys, *args: str) -> dict:
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["skab_pump_ae_int8", "skab_pump_ae_fp32"])
def test_skab_through_the_pipeline_matches_the_manifest(capsys, name):
    got = run_json(capsys, "skab", "--model", f"builtin:{name}")
    entry = manifest()[name]
    assert got["sha256"] == entry["sha256"]
    assert {k: got[k] for k in SKAB_KEYS} == {k: entry["metrics"][k] for k in SKAB_KEYS}


def test_ai4i_meets_its_target(capsys):
    got = run_json(capsys, "ai4i")
    entry = manifest()["ai4i_pdm"]["metrics"]
    assert got["f1"] == entry["f1"] and got["f1"] >= 0.90
    assert got["macro_f1"] == entry["macro_f1"]


def test_baseline_handler_evaluates_without_a_model(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "skab.png"
    got = run_json(capsys, "skab", "--handler", "baseline", "--plot", str(png))
    assert got["model"] == "baseline" and 0 < got["f1"] <= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_dataset_is_a_clear_error(capsys, tmp_path):
    assert main(["evaluate", "skab", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err


def test_missing_model_is_a_clear_error(capsys, tmp_path):
    assert main(["evaluate", "ai4i", "--model", str(tmp_path / "m.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err
