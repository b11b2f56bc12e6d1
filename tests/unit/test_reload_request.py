"""`reload -c FILE` hands FILE to the agent through a request beside its PID file; only a
request for this PID, written by this user and not writable by others, is taken."""

from __future__ import annotations

import os

from agent.runtime.reload import request_path, take_request, write_request


def test_request_for_this_pid_is_taken_once(tmp_path):
    pid_file = tmp_path / "edge-agent-x.pid"
    other = tmp_path / "other.yaml"
    write_request(pid_file, os.getpid(), other)
    assert take_request(pid_file) == str(other.resolve())
    assert take_request(pid_file) is None  # removed once read: a later SIGHUP re-reads
    assert not request_path(pid_file).exists()


def test_request_for_another_pid_or_writable_by_others_is_ignored(tmp_path):
    pid_file = tmp_path / "edge-agent-x.pid"
    write_request(pid_file, os.getpid() + 1, tmp_path / "other.yaml")
    assert take_request(pid_file) is None
    write_request(pid_file, os.getpid(), tmp_path / "other.yaml")
    request_path(pid_file).chmod(0o666)
    assert take_request(pid_file) is None
    assert take_request(None) is None
