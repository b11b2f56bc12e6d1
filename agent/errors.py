"""The agent's exception tree.

AgentError
├── ConfigError        a YAML file that does not validate; stops start-up (exit 2)
├── PluginError        a component that cannot be found, imported or registered
├── ModelError         a model file missing, corrupt, tampered, or of the wrong shape
├── NotConnectedError  a sink lost its broker; the spool keeps the records and retries
├── SettingError       a valid setting unusable here (file missing, port in use); exit 2
└── SpoolError         the spool could not commit; the agent takes no more data
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A config file failed validation; ``errors`` holds one line per problem."""

    def __init__(self, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        super().__init__("\n".join(f"{path}: {e}" for e in errors))


class PluginError(AgentError):
    """A component could not be found, imported or registered."""


class ModelError(AgentError):
    """A model file is missing, corrupt, fails its checksum or does not fit the window."""


class NotConnectedError(AgentError):
    """A sink cannot deliver now; the caller keeps the records and retries later."""


class SpoolError(AgentError):
    """The spool could not commit (disk full, I/O error): the agent must not take more data."""


class SettingError(AgentError):
    """A setting that validated but cannot be used on this machine: a file that is not
    there, a port in use. The message starts with the key path; ``run`` adds the file."""
