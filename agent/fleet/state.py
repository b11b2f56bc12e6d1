"""What a fleet-managed agent keeps on disk (``fleet.state_dir``).

    state.json          the last good version, the one being tried, the highest version
                        attempted, the last outcome and the refusal counters
    v<N>/pipelines.yaml a version's pipelines as signed
    v<N>/models/<name>  its models, each checked against its signed sha256

``state.json`` is replaced atomically (write, fsync, rename), so a power cut leaves the old
or the new one. A version becomes the last good one only after its health gate passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from pathlib import Path

import orjson


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    with contextlib.suppress(OSError):  # the rename itself, where the platform allows
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FleetState:
    """The persisted fleet state of one agent."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.file = self.root / "state.json"
        self.applied: dict | None = None  # version, digest, models {name: sha256}, applied_at
        self.trying: dict | None = None  # version, digest: a gate not (yet) passed
        self.highest = 0  # no version at or below this is applied again
        self.last: dict | None = None  # version, outcome, reason, ts
        self.counts: dict[str, int] = {}  # refusals and failures by reason
        self.load()

    def load(self) -> None:
        try:
            data = orjson.loads(self.file.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as e:
            # An unreadable state is kept aside and the local config runs: never guess.
            aside = self.file.with_name(f"state.json.bad-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.file.replace(aside)
            self.last = {"version": None, "outcome": "failed", "reason": f"state.json: {e}"}
            return
        self.applied = data.get("applied")
        self.trying = data.get("trying")
        self.highest = int(data.get("highest", 0))
        self.last = data.get("last")
        self.counts = dict(data.get("counts", {}))

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        body = {
            "applied": self.applied,
            "trying": self.trying,
            "highest": self.highest,
            "last": self.last,
            "counts": self.counts,
        }
        _write_atomic(self.file, orjson.dumps(body, option=orjson.OPT_INDENT_2))

    def count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def outcome(self, version: int | None, outcome: str, reason: str | None = None) -> None:
        self.last = {"version": version, "outcome": outcome, "reason": reason, "ts": time.time()}

    # -- a version's files ---------------------------------------------------------------
    def dir(self, version: int) -> Path:
        return self.root / f"v{version}"

    def write_pipelines(self, version: int, text: str) -> None:
        d = self.dir(version)
        d.mkdir(parents=True, exist_ok=True)
        _write_atomic(d / "pipelines.yaml", text.encode())

    def pipelines(self, version: int) -> str:
        return (self.dir(version) / "pipelines.yaml").read_text()

    def write_model(self, version: int, name: str, data: bytes) -> Path:
        d = self.dir(version) / "models"
        d.mkdir(parents=True, exist_ok=True)
        _write_atomic(d / name, data)
        return d / name

    def model_paths(self, version: int, names: list[str]) -> dict[str, Path]:
        return {n: self.dir(version) / "models" / n for n in names}

    def check_models(self, version: int, models: dict[str, str]) -> str | None:
        """Why the staged models of ``version`` cannot be used (missing, changed), or None."""
        for name, path in self.model_paths(version, list(models)).items():
            try:
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as e:
                return f"{path}: {e.strerror}"
            if sha != models[name]:
                return f"{path}: sha256 {sha} is not the signed {models[name]}"
        return None

    def prune(self, keep: set[int]) -> None:
        """Remove version directories other than ``keep`` (current and previous good)."""
        if not self.root.is_dir():
            return
        for d in self.root.iterdir():
            versioned = d.is_dir() and d.name.startswith("v") and d.name[1:].isdigit()
            if versioned and int(d.name[1:]) not in keep:
                shutil.rmtree(d, ignore_errors=True)
