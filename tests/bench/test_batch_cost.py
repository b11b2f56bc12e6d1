"""bench.batch_cost runs on this tree and prints a row per batch size."""

import subprocess
import sys

from bench.trees import ROOT


def test_batch_cost_prints_a_row_per_batch_size() -> None:
    argv = ["--sizes", "1,4", "--messages", "400", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.batch_cost", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cells = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line[:2] == "| "]
    assert [c for c in cells if c.isdigit()] == ["1", "4"]  # the table's first column
