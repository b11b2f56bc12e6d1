"""settle_heap: start-up garbage is collected, what is alive leaves the collector's scans."""

import gc
import weakref

from agent.runtime import settle_heap


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
