"""settle_heap: start-up garbage is collected, what is alive leaves the collector's scans."""

import gc
import weakref

from agent.runtime.agent import settle_heap


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_settle_heap_collects_cycles_and_freezes_the_rest():
    a, b = _Node(), _Node()
    a.peer, b.peer = b, a  # a cycle: only the collector can free it
    dead = weakref.ref(a)
    del a, b
    alive = [[i] for i in range(2_000)]  # tracked containers that stay
    before = gc.get_freeze_count()
    settle_heap()
    try:
        assert dead() is None
        assert gc.get_freeze_count() >= before + len(alive)
        scanned = {id(o) for o in gc.get_objects()}  # the permanent generation is not listed
        assert not any(id(x) in scanned for x in alive)
    finally:
        gc.unfreeze()


def test_what_was_frozen_and_let_go_is_collected_at_the_next_settle():
    """A reload drops the old pipeline, frozen at start-up: its cycles must not leak."""
    a, b = _Node(), _Node()
    a.peer, b.peer = b, a
    dead = weakref.ref(a)
    settle_heap()  # start-up: the cycle is alive and gets frozen
    try:
        del a, b  # the reload lets it go
        gc.collect()
        assert dead() is not None  # frozen: an ordinary collection never sees it
        settle_heap()  # after the reload
        assert dead() is None
    finally:
        gc.unfreeze()
