"""The single-instance guard: flock on <spool>.lock and the PID file (the integration test
runs two real agents; these cover what a subprocess cannot show cheaply)."""

from __future__ import annotations

import os

import pytest

from agent.errors import SettingError
from agent.runtime.instance import AlreadyRunning, InstanceGuard, holder, lock_path


def test_second_guard_names_the_holder_and_the_first_releases_cleanly(tmp_path):
    spool, pid_file = tmp_path / "s.db", tmp_path / "a.pid"
    first = InstanceGuard("gw-1", spool, pid_file).acquire()
    assert pid_file.read_text() == f"{os.getpid()}\n"
    assert holder(spool) == str(os.getpid())
    with pytest.raises(AlreadyRunning) as e:
        InstanceGuard("gw-1", spool, tmp_path / "b.pid").acquire()
    assert str(e.value) == (
        f"agent gw-1 already running (PID {os.getpid()}, spool {spool.resolve()}); stop it "
        "first, or give this one its own spool.path and agent.id"
    )
    assert not (tmp_path / "b.pid").exists()  # refused before touching its PID file
    first.release()
    assert not pid_file.exists() and holder(spool) is None
    assert lock_path(spool).exists()  # the lock file stays; the lock went with the process


def test_unusable_spool_folder_is_a_setting_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingError) as e:
        InstanceGuard("gw-1", tmp_path / "file" / "s.db", None).acquire()
    assert str(e.value).startswith(f"spool.path: cannot create or lock {tmp_path}/file/s.db.lock")
