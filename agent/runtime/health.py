"""``edge-agent health -c FILE``: the container's HEALTHCHECK, following the config.

With a ``metrics:`` section (and a fixed port) the agent is healthy when ``/readyz`` answers
200 (every broker connection up, every model loaded); without one, when an agent holds the
config's spool (:mod:`agent.runtime.instance`). Exit 0 healthy, 1 not; one line says why.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from agent.config import Config
from agent.runtime.instance import holder

WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def readyz_url(cfg: Config) -> str | None:
    """Where this machine reaches the agent's /readyz; None without a fixed metrics port."""
    m = cfg.metrics
    if m is None or m.port == 0:
        return None
    host = WILDCARDS.get(m.host, m.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{m.port}/readyz"


def check(cfg: Config) -> tuple[bool, str]:
    """(healthy, why) of the agent run from ``cfg``."""
    url = readyz_url(cfg)
    if url is None:
        pid = holder(cfg.spool.path)
        if pid is None:
            return False, f"no agent holds the spool {cfg.spool.path}"
        return True, f"agent running (PID {pid}, spool {cfg.spool.path}; no metrics port)"
    try:
        with urllib.request.urlopen(url, timeout=3):
            return True, f"ready ({url})"
    except urllib.error.HTTPError as e:
        return False, f"not ready ({url}): {e.read().decode(errors='replace').strip()}"
    except OSError as e:
        return False, f"no answer from {url}: {getattr(e, 'reason', e)}"
