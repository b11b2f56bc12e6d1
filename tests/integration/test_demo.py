"""`edge-agent demo` end to end on the embedded amqtt broker, headless."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKAB = ROOT / "datasets" / "skab" / "data"


def _final(out: str) -> dict[str, str]:
    tail = out.split("edge-agent demo: final", 1)[1]
    return {m[1].strip(): m[2] for m in re.finditer(r"^(.+?)\s{2,}(\S.*)$", tail, re.M)}


@pytest.mark.parametrize("data", ["skab", "simulator"])
def test_demo_headless_produces_events_and_final_table(data, tmp_path):
    """A few seconds of the demo: events go upstream, every sample the agent received is
    counted in a summary, and the final table reports the data reduction; exit 0."""
    args = ["--data", str(SKAB)] if data == "skab" else ["--simulate"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "demo",
            "--headless",
            "--duration",
            "9",
            "--rate",
            "80",
            "--devices",
            "3",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = _final(proc.stdout)
    assert table["model"] == "skab_pump_ae_int8"  # the shipped model, calibrated online
    assert int(table["events upstream"]) > 0
    assert int(table["samples in summaries"]) == int(table["samples received by agent"])
    assert int(table["samples received by agent"]) == int(table["samples published"])
    assert int(table["windows scored"]) > 0
    ratio = float(table["data reduction"].rstrip("x"))
    assert ratio > 5
    # stdout is a pipe: progress lines instead of a live view, warm-up first, then scoring
    progress = [line for line in proc.stdout.splitlines() if re.match(r"^\s*\d+ s  sent ", line)]
    assert progress, proc.stdout
    assert all("\x1b[" not in line for line in proc.stdout.splitlines())
