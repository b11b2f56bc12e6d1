"""Logs: one JSON object per line by default, a console rendering with --pretty, bound with
pipeline and component names, filtered by level."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.mqtt import ROOT

SCRIPT = """
import sys
from agent import log
log.setup("info", pretty=sys.argv[1] == "pretty")
logger = log.get(pipeline="w1", component="worker")
logger.debug("hidden")
logger.info("batch_failed", messages=3)
"""


def run(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_json_lines_bound_with_pipeline_and_component() -> None:
    (line,) = run("json").splitlines()  # the debug line is filtered out
    record = json.loads(line)
    assert record["event"] == "batch_failed" and record["messages"] == 3
    assert (record["pipeline"], record["component"], record["level"]) == ("w1", "worker", "info")
    assert record["timestamp"].endswith("Z")


def test_pretty_is_for_people_not_json() -> None:
    out = run("pretty")
    assert "batch_failed" in out and "pipeline" in out and "hidden" not in out
    assert not out.lstrip().startswith("{")
