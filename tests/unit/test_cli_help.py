"""The command line explains itself: every command and option has help, tools show their
own usage under `edge-agent NAME`, and `components` lists the shipped models."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from agent.cli import build_parser, main
from agent.models import manifest
from tests.support.mqtt import ROOT


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_command_and_option_has_help():
    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        if not sub.add_help:  # a tool: its own parser (below)
            continue
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["evaluate", "--help"], "usage: edge-agent evaluate"),
        (["components", "--help"], "usage: edge-agent components"),
    ],
)
def test_tools_show_their_own_usage(argv, usage):
    done = subprocess.run(
        [sys.executable, "-m", "agent", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(usage)
    assert len(done.stdout.splitlines()) > 3  # more than a bare usage line


def test_components_lists_shipped_models(capsys):
    assert main(["components"]) == 0
    lines = capsys.readouterr().out.splitlines()
    models = [line.split()[1] for line in lines if line.startswith("model ")]
    assert models == [f"builtin:{name}" for name in manifest()]
    assert any(line.split()[:2] == ["decoder", "json"] for line in lines)
