"""Measuring another git revision beside this checkout: a temporary worktree of it, and a
child process that runs code against one tree (``PYTHONPATH`` and working directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out (detached) into a temporary git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), rev],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
            )


def run_json(tree: Path, code: str, argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter importing from ``tree``; its last stdout line,
    parsed as JSON. Exits naming the tree when the child fails."""
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=tree,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{tree}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
