"""Third-party programs in their own virtual environment (their pins clash with ours)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.support.waiting import until

THIRDPARTY = Path(__file__).resolve().parents[1] / "thirdparty"


def venv_python(where: Path, requirement: str) -> Path:
    """The python of a virtual environment in ``where`` with ``requirement`` installed;
    created once (pip from the package index, as CI does) and reused while it matches."""
    python, stamp = where / "bin" / "python", where / "installed.txt"
    if stamp.exists() and stamp.read_text() == requirement and python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(where)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, requirement], capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"pip install {requirement} failed:\n{done.stderr[-2000:]}")
    stamp.write_text(requirement)
    return python


class Script:
    """A script of tests/thirdparty/ run by another python; its JSON lines collected."""

    def __init__(self, python: Path, name: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(THIRDPARTY / name), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(orjson.loads(line))

    def wait_for(self, predicate: Callable[[list[dict]], object], timeout: float = 30) -> None:
        if not until(lambda: predicate(list(self.lines)) or self.proc.poll() is not None, timeout):
            raise AssertionError(f"timed out; last lines: {self.lines[-5:]}")
        if not predicate(list(self.lines)):
            err = self.proc.stderr.read().decode(errors="replace")
            raise AssertionError(f"exited {self.proc.returncode}: {err[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()
