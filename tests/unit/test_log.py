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


RUN = """
import sys
from agent import log
log.setup("info", log.console_wanted(sys.argv[1]))
log.get(component="worker").info("batch_failed", messages=3)
"""


def _through_pty(fmt: str) -> str:
    """stderr of a child whose stderr is a terminal (a pseudo-terminal)."""
    import os
    import pty

    main, child = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-c", RUN, fmt], cwd=ROOT, stderr=child, timeout=60)
        assert done.returncode == 0
        os.close(child)
        out = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child's side is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(main)
    return out.decode()


def test_auto_is_readable_on_a_terminal_and_json_in_a_pipe():
    on_tty = _through_pty("auto")
    assert "batch_failed" in on_tty and not on_tty.lstrip().startswith("{")
    assert "\x1b[" in on_tty  # coloured for a person
    piped = subprocess.run(
        [sys.executable, "-c", RUN, "auto"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert json.loads(piped.stderr)["event"] == "batch_failed"


def test_console_format_into_a_pipe_has_no_colour_codes():
    piped = subprocess.run(
        [sys.executable, "-c", RUN, "console"], cwd=ROOT, capture_output=True, text=True
    )
    assert "batch_failed" in piped.stderr and "\x1b[" not in piped.stderr
