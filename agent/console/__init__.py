"""The read-only web console: static pages in ``static/`` served by the metrics HTTP server,
and the one JSON document they read, ``/api/state`` (:mod:`agent.console.state`)."""

from __future__ import annotations

from importlib import resources

from agent.console.history import TICK, History
from agent.console.state import Console

__all__ = ["ASSETS", "TICK", "Console", "History", "assets"]

ASSETS = {  # URL path -> (file in static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/console/style.css": ("style.css", "text/css; charset=utf-8"),
    "/console/icon.svg": ("icon.svg", "image/svg+xml"),
}


def assets() -> dict[str, tuple[bytes, str]]:
    """Every static file by URL path, read once from the installed package (no network)."""
    static = resources.files(__package__) / "static"
    return {url: ((static / name).read_bytes(), ctype) for url, (name, ctype) in ASSETS.items()}
