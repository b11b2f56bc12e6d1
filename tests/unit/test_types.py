"""The type checker runs over agent/ with the settings in pyproject.toml ([tool.mypy])."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (pip install -e '.[test]')",
)
def test_agent_type_checks() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-color-output", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in run.stdout.splitlines() if re.search(r": error: ", line)]
    assert run.returncode in (0, 1), f"mypy failed to run:\n{run.stdout}\n{run.stderr}"
    assert not errors, "\n".join(errors)
    assert run.returncode == 0
