"""A real small filesystem for disk-full tests: a tmpfs mounted for the test (needs root or
CAP_SYS_ADMIN; the test is skipped where mounting is not allowed). The mount and the filler
are :mod:`bench.fault_parts`' (the fault run uses them too)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fault_parts import MountError, fill, tmpfs

__all__ = ["fill", "small_disk"]


@contextlib.contextmanager
def small_disk(where: Path, size: str = "4m") -> Iterator[Path]:
    with contextlib.ExitStack() as stack:
        try:
            disk = stack.enter_context(tmpfs(where, size))
        except MountError as e:
            pytest.skip(str(e))
        yield disk
