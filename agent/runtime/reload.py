"""Live reload: apply a re-read config to a running agent, pipeline by pipeline.

The Agent (:meth:`agent.runtime.agent.Agent.apply`) diffs its running pipelines by name
against the new config; this module holds what it decides with, and the ``reload -c``
request file. An invalid config (or a model that fails its checks) is rejected with the
error logged and the running config kept. A pipeline whose source and sinks are unchanged
gets a new processor (decoder, model, rule, window, summary period) swapped in between two
batches of its worker; its queue is kept, so nothing accepted is lost, and its windows are
kept when the window and the channel count are unchanged. A model file whose content
changed counts as a change. A pipeline whose source or sinks changed is restarted (its
queue processed first); new pipelines start, removed ones stop the same way. ``agent``,
``brokers``, ``spool``, ``metrics`` and ``fleet`` apply at the next restart only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import Config
from agent.errors import ConfigError
from agent.handlers.onnx_model import sha256_of
from agent.protocols import ModelHandler, StreamHandler, model_identity

RESTART_SECTIONS = ("agent", "brokers", "spool", "metrics", "fleet")


@dataclass
class ReloadReport:
    """What one reload did, by pipeline name."""

    swapped: dict[str, bool] = field(default_factory=dict)  # name -> windows kept
    restarted: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)


def restart_sections(old: Config, new: Config) -> list[str]:
    """The sections that changed but apply at the next restart only."""
    return [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]


def kept_sections(old: Config, new: Config) -> Config:
    """``new`` with the running ``old``'s restart-only sections."""
    return new.model_copy(update={s: getattr(old, s) for s in RESTART_SECTIONS})


def check_brokers(old: Config, new: Config) -> None:
    """Raise when a pipeline of ``new`` reads from a broker ``old`` does not have."""
    for i, p in enumerate(new.pipelines):
        if p.source.broker not in old.brokers:
            raise ConfigError(
                "reload", [f"pipelines[{i}].source.broker: {p.source.broker!r} is new (restart)"]
            )


def model_changed(handler: ModelHandler | StreamHandler) -> bool:
    """Whether the handler's model file now holds other bytes than the ones loaded."""
    path, sha = model_identity(handler)
    if not path or not sha:
        return False
    try:
        return sha256_of(Path(path)) != sha
    except OSError:
        return True  # gone: let the new processor's load report it


def request_path(pid_file: Path) -> Path:
    """Where ``reload -c FILE`` leaves FILE's path for the agent that owns ``pid_file``."""
    return pid_file.with_name(pid_file.name + ".reload")


def write_request(pid_file: Path, pid: int, config: Path) -> Path:
    """Ask agent ``pid`` to apply ``config`` at its next SIGHUP (instead of its own file)."""
    path = request_path(pid_file)
    tmp = path.with_name(path.name + f".{os.getpid()}")
    tmp.write_text(f"{pid}\n{config.resolve()}\n")
    tmp.replace(path)
    return path


def take_request(pid_file: Path | None) -> str | None:
    """The config path a ``reload -c`` left for this process, removed once read.

    Only a request written by this user, for this PID, counts: anyone else who can write
    to the PID file's folder (``/tmp``) must not choose the agent's config.
    """
    if pid_file is None:
        return None
    path = request_path(pid_file)
    try:
        st = path.lstat()
        lines = path.read_text().splitlines()
        path.unlink()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o002:
        return None
    if len(lines) < 2 or lines[0].strip() != str(os.getpid()):
        return None
    return lines[1]
