"""Helpers for writing shipped models: checksums and the manifest in ``agent/models``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def update_manifest(out: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Merge ``entries`` (name -> entry) into ``out/manifest.json``, adding each file's sha256."""
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for name, entry in entries.items():
        entry = {"file": entry["file"], "sha256": sha256(out / entry["file"]), **entry}
        manifest["models"][name] = entry
    manifest["models"] = dict(sorted(manifest["models"].items()))
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
