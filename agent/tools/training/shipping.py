"""Helpers for writing shipped models: checksums and the manifest in ``agent/models``."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
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


def trainer_main(
    doc: str | None,
    build: Callable[[Path, Path | None], Any],
    argv: list[str] | None = None,
    out: Path = Path("agent/models"),
    data_help: str = "datasets folder (default: datasets/ of the clone)",
) -> int:
    """The command line every training script shares: ``--out``, ``--data``, results as JSON."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--data", type=Path, default=None, help=data_help)
    args = p.parse_args(argv)
    print(json.dumps(build(args.out, args.data), indent=2, default=str))
    return 0
